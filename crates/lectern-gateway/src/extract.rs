//! What every HTTP route takes from a request, in one place: the authenticated caller
//! ([`Authed`], [`AuthedUntil`]), the body ([`RawBody`], JSON only; [`AnyBody`] for uploads)
//! and what is parsed out of them (ids, JSON objects, typed bodies, `Last-Event-ID`).
//!
//! Bodies are read as bytes and parsed here, so a malformed or oversized body gets the same
//! `{error: {code, message}}` answer as every other failure, not a framework's plain-text
//! rejection.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use lectern_model::{Caller, ResumeToken};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Gateway;
use crate::error::AppError;

/// An authenticated HTTP caller (token by header, cookie or query).
pub(crate) struct Authed(pub(crate) Caller);

impl FromRequestParts<Gateway> for Authed {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, gw: &Gateway) -> Result<Self, AppError> {
        Ok(Authed(AuthedUntil::from_request_parts(parts, gw).await?.0))
    }
}

/// An authenticated caller and when their token expires (streams end then).
pub(crate) struct AuthedUntil(pub(crate) Caller, pub(crate) u64);

impl FromRequestParts<Gateway> for AuthedUntil {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, gw: &Gateway) -> Result<Self, AppError> {
        let token = gw.request_token(&parts.headers, parts.uri.query())?;
        let verified = gw.verify(token.as_deref())?;
        Ok(AuthedUntil(verified.caller, verified.expires_at_s))
    }
}

/// A request body as bytes. A body past `payload_max_bytes` (or one that cannot be read) is
/// refused with the usual JSON error, not axum's plain-text rejection.
pub(crate) struct RawBody(pub(crate) Bytes);

impl FromRequest<Gateway> for RawBody {
    type Rejection = AppError;

    async fn from_request(req: Request, gw: &Gateway) -> Result<Self, AppError> {
        // JSON only: a page of another site can send a `text/plain` or form body without a
        // CORS preflight, a JSON one it cannot.
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().is_ok_and(is_json_media_type));
        if json == Some(false) {
            return Err(not_json());
        }
        let body = read_bytes(req, gw).await.map(RawBody)?;
        // No Content-Type is fine only for no body at all.
        if json.is_none() && !body.0.is_empty() {
            return Err(not_json());
        }
        Ok(body)
    }
}

/// A request body of any type (content uploads: `PUT`, which no other site can send without a
/// CORS preflight, so the JSON-only rule is not needed there).
pub(crate) struct AnyBody(pub(crate) Bytes);

impl FromRequest<Gateway> for AnyBody {
    type Rejection = AppError;

    async fn from_request(req: Request, gw: &Gateway) -> Result<Self, AppError> {
        read_bytes(req, gw).await.map(AnyBody)
    }
}

async fn read_bytes(req: Request, gw: &Gateway) -> Result<Bytes, AppError> {
    Bytes::from_request(req, gw)
        .await
        .map_err(|r: BytesRejection| {
            if crate::admission::is_body_timeout(&r) {
                return AppError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    "the request body did not arrive in time".to_owned(),
                );
            }
            let code = if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                "payload_too_large"
            } else {
                "bad_request"
            };
            AppError::new(r.status(), code, r.body_text())
        })
}

/// `application/json`, or any `application/…+json`, with or without parameters.
fn is_json_media_type(value: &str) -> bool {
    let media = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// The refusal of a body that is not declared JSON.
fn not_json() -> AppError {
    AppError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "send the body as JSON, with `Content-Type: application/json`",
    )
}

/// An id from a path or a field; a malformed one is `400 bad_request` naming `what` it is.
pub(crate) fn parse_id<T: std::str::FromStr<Err = lectern_model::IdError>>(
    s: &str,
    what: &str,
) -> Result<T, AppError> {
    s.parse()
        .map_err(|e| AppError::bad_request(format!("{what}: {e}")))
}

/// The answer to a path that is no route: `404 not_found`.
pub(crate) fn not_found() -> AppError {
    AppError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// A body that must be a JSON object (`{}` when empty): `400 malformed_json` when it is not
/// JSON, `400 bad_request` when it is JSON but no object.
pub(crate) fn json_object(body: &Bytes) -> Result<Value, AppError> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        AppError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("malformed JSON: {e}"),
        )
    })?;
    if !v.is_object() {
        return Err(AppError::bad_request("the body must be a JSON object"));
    }
    Ok(v)
}

/// A body of a known shape (an empty or blank body reads as `{}`); one that does not fit is
/// `422 invalid_input`.
pub(crate) fn typed_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, AppError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        AppError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            format!("the body does not fit: {e}"),
        )
    })
}

/// The resume token of a reconnecting stream (`Last-Event-ID`; absent or blank: none).
pub(crate) fn last_event_id(headers: &HeaderMap) -> Result<Option<ResumeToken>, AppError> {
    match headers.get("last-event-id").map(|v| v.to_str()) {
        None => Ok(None),
        Some(Ok(s)) if s.trim().is_empty() => Ok(None),
        Some(Ok(s)) => Ok(Some(ResumeToken::parse(s)?)),
        Some(Err(_)) => Err(AppError::bad_request("Last-Event-ID is not text")),
    }
}

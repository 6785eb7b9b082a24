//! Join codes on a classroom node: a teacher lets in a student who arrives while the school's
//! uplink is down, so the cohort's issuer (an LMS) cannot give them a token.
//!
//! `POST /api/sessions/{id}/join-codes` (the instructor of the session's cohort, on a classroom
//! node serving that cohort) makes a code of [`JOIN_CODE_SYMBOLS`] symbols from a 32-symbol
//! alphabet (50 random bits), shown once; the cohort document stores only its key, a keyed
//! hash of (cohort, session, code) under the cluster's HS256 key ([`key_of`]), with the role it
//! grants (student or TA), its expiry and its number of uses (`join_code.create`).
//! `POST /api/join` `{session, code, name}` (no token) redeems it: the node runs
//! `join_code.redeem` as itself, which puts a fresh user on the cohort's roster with the code's
//! role and names the code's session and maker (the audit, replicated to the region when the
//! uplink is back), and answers a token for that user, scoped to the cohort, which the page
//! keeps alive like any member's (`refresh.rs`). Attempts are limited per session
//! ([`JOIN_ATTEMPTS_PER_S`], [`JOIN_ATTEMPTS_BURST`]) before anything is read, and only for a
//! session this node stores, so guessing is bounded (≈ 86,000 guesses in 12 h against 2^50
//! codes) and a flood of made-up sessions creates no state. Unknown, expired and used-up codes
//! answer `join_code_unknown` (404), `join_code_expired` and `join_code_used_up` (403).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{Hmac, KeyInit, Mac};
use lectern_model::limits::{JOIN_CODE_KEY_LEN_CHARS, JOIN_CODE_TTL_MAX_MS, JOIN_CODE_USES_MAX};
use lectern_model::{Caller, CohortId, CommandBody, DocId, Role, SessionId, UserId};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;

use crate::Gateway;
use crate::auth::{self, Claims};
use crate::error::AppError;
use crate::extract::{Authed, RawBody, parse_id};
use crate::limits::Limits;
use crate::refresh::REFRESHED_TOKEN_LIFETIME_S;

/// Symbols in a join code: 10 of 32 is 50 bits.
pub const JOIN_CODE_SYMBOLS: usize = 10;

/// The alphabet of join codes (Crockford's base 32: no I, L, O or U, so nothing reads as
/// another symbol; `I`/`L` typed are read as `1`, `O` as `0`).
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Join-code attempts one session takes per second, sustained (a class arriving together
/// passes in seconds; a guesser gets ≈ 86,000 tries in 12 h).
pub const JOIN_ATTEMPTS_PER_S: f64 = 2.0;

/// Join-code attempts one session takes in a burst.
pub const JOIN_ATTEMPTS_BURST: u32 = 30;

/// How long a join code lives when its maker does not say, in minutes.
pub const JOIN_CODE_TTL_DEFAULT_MIN: u64 = 60;

/// How many newcomers a join code lets in when its maker does not say.
pub const JOIN_CODE_USES_DEFAULT: u32 = 50;

/// The limits of the join-attempt buckets.
pub(crate) fn attempt_limits() -> Limits {
    Limits {
        commands_per_s: JOIN_ATTEMPTS_PER_S,
        command_burst: JOIN_ATTEMPTS_BURST,
        ..Limits::default()
    }
}

/// The join-code routes.
pub(crate) fn routes(gw: Gateway) -> Router {
    Router::new()
        .route("/api/sessions/{id}/join-codes", post(create))
        .route("/api/join", post(redeem))
        .with_state(gw)
}

/// A code as typed, in its canonical form (upper case, no separators, `I`/`L` → `1`, `O` →
/// `0`), or `None` when it cannot be a code.
pub fn normalize(code: &str) -> Option<String> {
    let mut out = String::with_capacity(JOIN_CODE_SYMBOLS);
    for c in code.chars() {
        let c = match c.to_ascii_uppercase() {
            '-' | ' ' => continue,
            'I' | 'L' => '1',
            'O' => '0',
            c => c,
        };
        if !c.is_ascii() || !ALPHABET.contains(&(c as u8)) || out.len() == JOIN_CODE_SYMBOLS {
            return None;
        }
        out.push(c);
    }
    (out.len() == JOIN_CODE_SYMBOLS).then_some(out)
}

/// The key a code is stored under: HMAC-SHA256 under the cluster's key of (cohort, session,
/// canonical code), its first 16 bytes in hex. Without the key, the stored keys say nothing of
/// the codes; a code is good for its own session only.
pub fn key_of(secret: &[u8], cohort: &CohortId, session: &SessionId, code: &str) -> String {
    // Invariant: HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    // Domain-separated; ids cannot contain '\n'.
    mac.update(b"lectern-join-code\n");
    mac.update(cohort.as_str().as_bytes());
    mac.update(b"\n");
    mac.update(session.as_str().as_bytes());
    mac.update(b"\n");
    mac.update(code.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut key = String::with_capacity(JOIN_CODE_KEY_LEN_CHARS);
    for b in digest.iter().take(JOIN_CODE_KEY_LEN_CHARS / 2) {
        key.push_str(&format!("{b:02x}"));
    }
    key
}

/// A fresh code: [`JOIN_CODE_SYMBOLS`] symbols drawn from the OS's generator.
fn new_code() -> String {
    (0..JOIN_CODE_SYMBOLS)
        .map(|_| char::from(ALPHABET[usize::from(rand::random::<u8>() & 31)]))
        .collect()
}

/// A code as shown: two groups of five.
fn display(code: &str) -> String {
    let (a, b) = code.split_at(JOIN_CODE_SYMBOLS / 2);
    format!("{a}-{b}")
}

/// The refusal on a node that makes and takes no join codes (or not for this cohort).
fn off(message: &str) -> AppError {
    AppError::new(StatusCode::FORBIDDEN, "join_codes_off", message.to_owned())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    /// `student` (default) or `ta`.
    #[serde(default)]
    role: Option<String>,
    /// Minutes until it expires (default [`JOIN_CODE_TTL_DEFAULT_MIN`]).
    #[serde(default)]
    minutes: Option<u64>,
    /// How many it lets in (default [`JOIN_CODE_USES_DEFAULT`]).
    #[serde(default)]
    uses: Option<u32>,
}

/// `POST /api/sessions/{id}/join-codes` `{role, minutes, uses}`: `{code, session, cohort,
/// role, expiresAt (ms), uses}`. The code is in this answer only.
async fn create(
    State(gw): State<Gateway>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, AppError> {
    let session: SessionId = parse_id(&id, "session id")?;
    let body: CreateBody = if body.is_empty() {
        CreateBody {
            role: None,
            minutes: None,
            uses: None,
        }
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| AppError::bad_request(format!("join code: {e}")))?
    };
    let Some((policy, secret)) = gw.classroom_policy() else {
        return Err(off("only a classroom node makes join codes"));
    };
    let role = match body.role.as_deref().unwrap_or("student") {
        "student" => Role::Student,
        "ta" => Role::Ta,
        other => {
            return Err(AppError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_input",
                format!("a join code grants `student` or `ta`, not {other:?}"),
            ));
        }
    };
    let ttl_max_min = JOIN_CODE_TTL_MAX_MS / 60_000;
    let minutes = body.minutes.unwrap_or(JOIN_CODE_TTL_DEFAULT_MIN);
    if minutes == 0 || minutes > ttl_max_min {
        return Err(AppError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            format!("a join code lives 1 to {ttl_max_min} minutes"),
        ));
    }
    let uses = body.uses.unwrap_or(JOIN_CODE_USES_DEFAULT);
    if uses == 0 || uses > JOIN_CODE_USES_MAX {
        return Err(AppError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            format!("a join code lets in 1 to {JOIN_CODE_USES_MAX} newcomers"),
        ));
    }
    gw.take_command_token(caller.user.as_str())?;
    let cohort = gw
        .hub()
        .read(DocId::Session(session.clone()), |r| r.session_cohort())
        .await?
        .ok_or_else(|| AppError::new(StatusCode::NOT_FOUND, "doc_not_found", "no such session"))?;
    if !caller.is_member(&cohort) {
        // Another cohort's session reads as one that does not exist.
        return Err(AppError::new(
            StatusCode::NOT_FOUND,
            "doc_not_found",
            "no such session",
        ));
    }
    if !policy.cohorts.contains(&cohort) {
        return Err(off(
            "this classroom node does not serve the session's cohort",
        ));
    }
    let code = new_code();
    let expires_at = unix_now_ms().saturating_add(minutes.saturating_mul(60_000));
    let command = CommandBody::JoinCodeCreate {
        key: key_of(&secret, &cohort, &session, &code),
        session: session.clone(),
        role,
        expires_at,
        uses_max: uses,
    };
    gw.run_charged(&caller, DocId::Cohort(cohort.clone()), None, command)
        .await?;
    tracing::info!(%session, %cohort, by = %caller.user, role = role.as_str(), "join code made");
    Ok((
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "code": display(&code),
            "session": session.as_str(),
            "cohort": cohort.as_str(),
            "role": role.as_str(),
            "expiresAt": expires_at,
            "uses": uses,
        })),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedeemBody {
    session: String,
    code: String,
    name: String,
}

/// `POST /api/join` `{session, code, name}` (no token): `{token, user, name, role, cohort,
/// session, expiresAt (s)}`. Counted by result in `lectern_join_redemptions_total`.
async fn redeem(State(gw): State<Gateway>, RawBody(body): RawBody) -> Result<Response, AppError> {
    let result = redeem_body(&gw, &body).await;
    gw.metrics()
        .join_redemption(result.as_ref().map_or_else(|e| e.code, |_| "ok"));
    result
}

/// The work of [`redeem`].
async fn redeem_body(gw: &Gateway, body: &[u8]) -> Result<Response, AppError> {
    let body: RedeemBody =
        serde_json::from_slice(body).map_err(|e| AppError::bad_request(format!("join: {e}")))?;
    let Some((policy, secret)) = gw.classroom_policy() else {
        return Err(off("only a classroom node takes join codes"));
    };
    let session: SessionId = parse_id(&body.session, "session id")?;
    let doc = DocId::Session(session.clone());
    // A session this node does not store gets no bucket (no state for made-up ids).
    if gw.hub().doc_heads(&doc).is_none() {
        return Err(AppError::new(
            StatusCode::NOT_FOUND,
            "doc_not_found",
            "no such session",
        ));
    }
    gw.take_join_attempt(session.as_str())?;
    let unknown = || {
        AppError::new(
            StatusCode::NOT_FOUND,
            "join_code_unknown",
            "no such join code for this session: check it with your teacher",
        )
    };
    let code = normalize(&body.code).ok_or_else(unknown)?;
    let cohort = gw
        .hub()
        .read(doc, |r| r.session_cohort())
        .await?
        .ok_or_else(unknown)?;
    if !policy.cohorts.contains(&cohort) {
        return Err(off(
            "this classroom node does not serve the session's cohort",
        ));
    }
    let user = new_user_id();
    let name = body.name.trim().to_owned();
    let command = CommandBody::JoinCodeRedeem {
        key: key_of(&secret, &cohort, &session, &code),
        user: user.clone(),
        name: name.clone(),
    };
    let node = Caller {
        // Invariant: a fixed, valid id.
        user: "lectern-join".parse().expect("a valid user id"),
        name: "Lectern (join code)".to_owned(),
        role: Role::Admin,
        cohorts: Vec::new(),
    };
    gw.run_charged(&node, DocId::Cohort(cohort.clone()), None, command)
        .await?;
    // The role the code granted, as the roster now says.
    let who = user.as_str().to_owned();
    let role = gw
        .hub()
        .read(DocId::Cohort(cohort.clone()), move |r| r.roster_role(&who))
        .await?
        .filter(|r| matches!(r, Role::Student | Role::Ta))
        .ok_or_else(|| {
            tracing::error!(%cohort, user = %user, "a redeemed join code left no student or TA on the roster");
            AppError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; it has been logged",
            )
        })?;
    let now_s = auth::unix_now_s();
    let claims = Claims {
        sub: user.as_str().to_owned(),
        name: name.clone(),
        role: role.as_str().to_owned(),
        cohorts: vec![cohort.as_str().to_owned()],
        exp: now_s.saturating_add(REFRESHED_TOKEN_LIFETIME_S),
        iat: now_s,
        nbf: None,
    };
    let token = auth::mint(&secret, &claims)?;
    tracing::info!(%session, %cohort, user = %user, role = role.as_str(), "a newcomer joined with a code");
    Ok((
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "token": token,
            "user": user.as_str(),
            "name": name,
            "role": role.as_str(),
            "cohort": cohort.as_str(),
            "session": session.as_str(),
            "expiresAt": claims.exp,
        })),
    )
        .into_response())
}

/// A fresh user id for a newcomer: `j-` and 16 hex digits (64 random bits).
fn new_user_id() -> UserId {
    let n: u64 = rand::random();
    // Invariant: a letter, a dash and hex digits are a valid id.
    format!("j-{n:016x}")
        .parse()
        .expect("generated ids are valid")
}

/// Milliseconds since the Unix epoch (0 on a clock set before it).
fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_read_as_typed_in_any_case_with_separators_and_look_alikes() {
        assert_eq!(normalize("abcde-fghjk").as_deref(), Some("ABCDEFGHJK"));
        assert_eq!(normalize(" 0o1il 23456 ").as_deref(), Some("0011123456"));
        assert_eq!(normalize("ABCDE-FGHJ"), None, "too short");
        assert_eq!(normalize("ABCDE-FGHJKM"), None, "too long");
        assert_eq!(normalize("ABCDE-FGHJU"), None, "U is not a symbol");
        assert_eq!(normalize("ABCDÉ-FGHJK"), None);
        let code = new_code();
        assert_eq!(normalize(&display(&code)), Some(code));
    }

    #[test]
    fn a_key_depends_on_the_secret_the_cohort_the_session_and_the_code() {
        let cohort: CohortId = "c1".parse().expect("valid");
        let s1: SessionId = "s1".parse().expect("valid");
        let s2: SessionId = "s2".parse().expect("valid");
        let k = key_of(b"secret-one", &cohort, &s1, "ABCDEFGHJK");
        assert_eq!(k.len(), JOIN_CODE_KEY_LEN_CHARS);
        assert!(
            k.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(k, key_of(b"secret-one", &cohort, &s1, "ABCDEFGHJK"));
        assert_ne!(k, key_of(b"secret-two", &cohort, &s1, "ABCDEFGHJK"));
        assert_ne!(k, key_of(b"secret-one", &cohort, &s2, "ABCDEFGHJK"));
        assert_ne!(k, key_of(b"secret-one", &cohort, &s1, "ABCDEFGHJM"));
    }

    #[test]
    fn fresh_codes_use_the_whole_alphabet() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.extend(new_code().chars());
        }
        assert_eq!(seen.len(), ALPHABET.len());
    }
}

//! The one error type of the gateway: every transport turns failures into an [`AppError`] with
//! a stable `code`. Client faults keep their 4xx; internal faults answer a generic 500 and are
//! logged once, here.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lectern_hub::HubError;
use lectern_model::RejectCode;
use serde_json::{Value, json};

use crate::auth::AuthError;

/// A failure as a client sees it.
#[derive(Debug, Clone)]
pub struct AppError {
    /// HTTP status (also used to pick the Socket.IO ack shape).
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable sentence.
    pub message: String,
}

impl AppError {
    /// A client error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        AppError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// The `{code, message}` object, as in Socket.IO acks and HTTP bodies.
    pub fn body(&self) -> Value {
        json!({"code": self.code, "message": self.message})
    }

    /// The failed Socket.IO ack: `{ok: false, error: {code, message}}`.
    pub fn ack(&self) -> Value {
        json!({"ok": false, "error": self.body()})
    }
}

impl From<HubError> for AppError {
    fn from(e: HubError) -> Self {
        let status = match &e {
            HubError::Rejected(r) => match r.code {
                RejectCode::NotMember | RejectCode::Forbidden | RejectCode::FeatureDisabled => {
                    StatusCode::FORBIDDEN
                }
                RejectCode::JoinCodeExpired | RejectCode::JoinCodeUsedUp => StatusCode::FORBIDDEN,
                RejectCode::DocNotFound | RejectCode::NotFound | RejectCode::JoinCodeUnknown => {
                    StatusCode::NOT_FOUND
                }
                RejectCode::AlreadyExists | RejectCode::DuplicateCommand => StatusCode::CONFLICT,
                RejectCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            },
            HubError::Overloaded(_) | HubError::TooManyDocs(_) | HubError::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            HubError::TooManyDocsForUser(_) => StatusCode::TOO_MANY_REQUESTS,
            HubError::Sync(_) => StatusCode::BAD_REQUEST,
            HubError::Store(_) | HubError::Load { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "internal error");
            return AppError::new(status, "internal", "internal error; it has been logged");
        }
        let message = match &e {
            HubError::Rejected(r) => r.message.clone(),
            other => other.to_string(),
        };
        AppError::new(status, e.code(), message)
    }
}

/// A model refusal, with the status and code a hub refusal of it gets.
impl From<lectern_model::Rejection> for AppError {
    fn from(r: lectern_model::Rejection) -> Self {
        AppError::from(HubError::Rejected(r))
    }
}

impl From<AuthError> for AppError {
    fn from(e: AuthError) -> Self {
        if matches!(e, AuthError::Config(_)) {
            // The node's own keys failed (signing an extension or a newcomer's token): not the
            // client's fault, and a 401 would make a page stop renewing for good.
            tracing::error!(error = %e, "internal error");
            return AppError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; it has been logged",
            );
        }
        let status = match e {
            // The credential may be fine; where it comes from is not.
            AuthError::ForeignOrigin => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        };
        AppError::new(status, e.code(), e.to_string())
    }
}

/// The response header that carries an error's code to the metrics middleware.
pub(crate) const ERROR_CODE_HEADER: &str = "x-lectern-error";

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({"error": self.body()}))).into_response();
        response.headers_mut().insert(
            ERROR_CODE_HEADER,
            axum::http::HeaderValue::from_static(self.code),
        );
        response
    }
}

/// The Socket.IO handshake refusal carries this text as its `message`: the code first, so a
/// client can branch on it.
impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// A malformed resume token (`since`, `Last-Event-ID`): `400` with the token's own code.
impl From<lectern_model::ResumeError> for AppError {
    fn from(e: lectern_model::ResumeError) -> Self {
        AppError::new(StatusCode::BAD_REQUEST, e.code(), e.to_string())
    }
}

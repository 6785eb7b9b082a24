//! The browser client's files: the page at `/` and its modules and stylesheet under
//! `/static/`, all embedded in the binary by `lectern-web`. The page itself needs no token to
//! load; everything it shows comes over the authenticated transports.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use crate::error::AppError;

/// Browsers revalidate on every load: the files are small, and a stale client after a node
/// upgrade would speak an old contract.
const CACHE_CONTROL: &str = "no-cache";

/// `GET /`.
pub(crate) async fn index() -> Response {
    let mut r = Html(lectern_web::INDEX_HTML).into_response();
    set_common_headers(&mut r);
    r
}

/// The `/static/…` routes (mounted next to the gateway's own, see `Gateway::new`).
pub(crate) fn routes() -> Router {
    Router::new().route("/static/{*path}", get(asset))
}

async fn asset(Path(path): Path<String>) -> Response {
    let Some(a) = lectern_web::asset(&path) else {
        return AppError::new(StatusCode::NOT_FOUND, "not_found", "no such file").into_response();
    };
    let mut r = a.body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    set_common_headers(&mut r);
    r
}

fn set_common_headers(r: &mut Response) {
    let h = r.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The token travels in the page's query string: keep it out of Referer headers.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

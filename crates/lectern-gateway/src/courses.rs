//! Course content over HTTP, cached like a CDN origin: the content blobs
//! (`GET /content/{sha256}`, from `lectern-content`), the catalog (`GET /api/courses`) and a
//! course's metadata and outline (`GET /api/courses/{id}`).
//!
//! Course metadata is public and cached for 7 days (`public, max-age=604800`), with an `ETag`
//! made of the course document's heads: an edit changes the heads, so a client or CDN that
//! revalidates after an edit gets the new outline, and one that holds the current version gets
//! a `304` without a document read. Lesson bodies and assets are immutable blobs named by hash
//! in the outline, so a stale outline only ever points at lessons that still exist. The catalog's
//! `ETag` is a hash of every course's heads, built from memory without loading a document.
//!
//! These reads take no rate-limit token: they are public, cacheable, and a `304` costs a
//! map lookup.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lectern_content::BlobStore;
use lectern_model::{CourseId, DocId};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::Gateway;
use crate::error::AppError;
use crate::rest::parse_id;

/// 7 days, in seconds: how long clients and CDNs may use course metadata without revalidating.
pub const COURSE_MAX_AGE_S: u64 = 7 * 24 * 3600;
/// 1 day, in seconds: how long a cache may serve stale metadata while it revalidates.
pub const COURSE_STALE_WHILE_REVALIDATE_S: u64 = 24 * 3600;
/// Most courses listed in the catalog (the rest are left off, oldest ids last).
pub const CATALOG_COURSES_MAX: usize = 1000;

fn cache_control() -> HeaderValue {
    // Invariant: digits and ASCII punctuation make a valid header value.
    HeaderValue::from_str(&format!(
        "public, max-age={COURSE_MAX_AGE_S}, stale-while-revalidate={COURSE_STALE_WHILE_REVALIDATE_S}"
    ))
    .expect("an ASCII header value")
}

/// The content and course routes; `content` is the node's blob store, if it has one.
pub(crate) fn routes(gw: Gateway, content: Option<Arc<BlobStore>>) -> Router {
    let courses = Router::new()
        .route("/api/courses", get(catalog))
        .route("/api/courses/{id}", get(course))
        .with_state(gw);
    match content {
        Some(store) => courses.merge(lectern_content::routes(store)),
        None => courses,
    }
}

fn etag_of(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push('"');
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s.push('"');
    s
}

/// Whether `If-None-Match` names `etag` (or is `*`).
fn matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

fn cached(etag: &str, headers: &HeaderMap, body: impl FnOnce() -> Value) -> Response {
    let mut response = if matches(headers, etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        axum::Json(body()).into_response()
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, cache_control());
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    response
}

async fn course(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let course: CourseId = parse_id(&id, "course id")?;
    let doc = DocId::Course(course);
    // A document this node never stored has no heads: answered without touching the hub, so
    // a flood of made-up ids creates nothing and loads nothing.
    let Some(heads) = gw.hub().doc_heads(&doc) else {
        return Err(AppError::new(
            StatusCode::NOT_FOUND,
            "doc_not_found",
            "no such course",
        ));
    };
    let etag = etag_of(&heads);
    if matches(&headers, &etag) {
        return Ok(cached(&etag, &headers, || Value::Null));
    }
    let view = gw
        .hub()
        .read(doc, |r| r.course_view())
        .await?
        .map_err(|r| AppError::from(lectern_hub::HubError::Rejected(r)))?;
    Ok(cached(&etag, &headers, || view))
}

async fn catalog(State(gw): State<Gateway>, headers: HeaderMap) -> Result<Response, AppError> {
    let courses: Vec<(DocId, [u8; 32])> = gw
        .hub()
        .heads_summary()
        .into_iter()
        .filter(|(d, _)| matches!(d, DocId::Course(_)))
        .take(CATALOG_COURSES_MAX)
        .collect();
    let mut digest = Sha256::new();
    for (doc, heads) in &courses {
        digest.update(doc.to_string().as_bytes());
        digest.update([0]);
        digest.update(heads);
    }
    let etag = etag_of(&digest.finalize());
    if matches(&headers, &etag) {
        return Ok(cached(&etag, &headers, || Value::Null));
    }
    let mut list = Vec::with_capacity(courses.len());
    for (doc, _) in courses {
        // A course whose read fails (not created here after all) is left out, not an error.
        if let Ok(Ok(v)) = gw.hub().read(doc, |r| r.course_view()).await {
            list.push(json!({
                "id": v["id"],
                "title": v["title"],
                "description": v["description"],
                "version": v["version"],
            }));
        }
    }
    Ok(cached(&etag, &headers, || json!({ "courses": list })))
}

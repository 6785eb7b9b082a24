//! Course content over HTTP, cached like a CDN origin: the content blobs
//! (`GET /content/{sha256}`, from `lectern-content`), the catalog (`GET /api/courses`) and a
//! course's metadata and outline (`GET /api/courses/{id}`); and a user's enrollments
//! (`GET /api/me/enrollments`) and a cohort's roster for its staff
//! (`GET /api/cohorts/{id}/roster`), `private, max-age=60` with an `ETag` of the cohorts' heads.
//!
//! Course metadata is public and cached for 7 days (`public, max-age=604800`), with an `ETag`
//! made of the course document's heads: an edit changes the heads, so a client or CDN that
//! revalidates after an edit gets the new outline, and one that holds the current version gets
//! a `304` without a document read. Shared caches (a CDN) revalidate after
//! [`COURSE_SHARED_MAX_AGE_S`] (`s-maxage`), so a publication reaches every student through the
//! CDN within that time, with no purge; browsers keep the week (the page revalidates the
//! outline it shows). Lesson bodies and assets are immutable blobs named by hash
//! in the outline, so a stale outline only ever points at lessons that still exist. The catalog's
//! `ETag` is a hash of every course's heads, built from memory without loading a document.
//!
//! Publishing: `PUT /api/content/{sha256}` (an instructor or admin; the body must hash to the
//! name, its `Content-Type` must be one of [`UPLOAD_TYPES`], HTML only if it is already what
//! the sanitizer makes of it) stores a blob; `POST /api/courses/{id}/commands` runs
//! `course.create` / `course.publish`. A blob is never overwritten: the same name is the same
//! bytes, and a new lesson version is a new name.
//!
//! These reads take no rate-limit token: they are public, cacheable, and a `304` costs a
//! map lookup. The catalog is rendered once per set of course heads and kept, so a read of an
//! unchanged catalog costs no document read either.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use lectern_content::{BlobError, BlobHash, BlobStore, Encoding, choose_encoding};
use lectern_model::{CourseId, DocId};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::Gateway;
use crate::error::AppError;
use crate::extract::{AnyBody, Authed, RawBody, parse_id};

/// 7 days, in seconds: how long clients and CDNs may use course metadata without revalidating.
pub const COURSE_MAX_AGE_S: u64 = 7 * 24 * 3600;
/// 10 s: how long a shared cache (a CDN) may use course metadata before it revalidates it
/// with the node (`s-maxage`, which shared caches take over `max-age`); an unchanged course
/// answers that revalidation with a `304` from memory.
pub const COURSE_SHARED_MAX_AGE_S: u64 = 10;
/// 1 day, in seconds: how long a cache may serve stale metadata while it revalidates.
pub const COURSE_STALE_WHILE_REVALIDATE_S: u64 = 24 * 3600;
/// Most courses listed in the catalog (the rest are left off, oldest ids last).
pub const CATALOG_COURSES_MAX: usize = 1000;

/// Revalidated JSON answers shorter than this go out uncompressed (compressing saves too
/// little).
const COMPRESS_MIN_BYTES: usize = 1024;

/// Brotli/gzip quality of a revalidated answer compressed for one request (a course's outline,
/// enrollments): fast, most of the size win. The catalog, compressed once per version, uses the
/// best.
const COMPRESS_QUALITY: u32 = 4;

/// 60 s: how long a client may keep a user's enrollments or a cohort's roster before it
/// revalidates them (`private`: they are one user's, no shared cache may hold them).
pub const ENROLLMENT_MAX_AGE_S: u64 = 60;

/// Largest blob an upload may carry, in bytes (the store's own limit applies too).
pub const CONTENT_UPLOAD_MAX_BYTES: usize = 32 * 1024 * 1024;
/// Largest course command body, in bytes (an outline of hundreds of lessons).
pub const COURSE_COMMAND_MAX_BYTES: usize = 512 * 1024;

/// The content types an upload may declare: lesson sources and renderings, images, documents,
/// audio, video and captions.
pub const UPLOAD_TYPES: &[&str] = &[
    "text/markdown; charset=utf-8",
    "text/html; charset=utf-8",
    "text/plain; charset=utf-8",
    "text/vtt; charset=utf-8",
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "application/pdf",
    "audio/mpeg",
    "audio/ogg",
    "audio/wav",
    "video/mp4",
    "video/webm",
];

/// The body limit of a route of this module that takes more than the gateway's default (the
/// shared middleware's early 413 asks, so it does not refuse an upload by its declared size).
pub(crate) fn own_body_limit(path: &str) -> Option<usize> {
    if path.starts_with("/api/content/") {
        Some(CONTENT_UPLOAD_MAX_BYTES)
    } else if path.starts_with("/api/courses/") && path.ends_with("/commands") {
        Some(COURSE_COMMAND_MAX_BYTES)
    } else {
        None
    }
}

fn cache_control() -> HeaderValue {
    static VALUE: std::sync::LazyLock<HeaderValue> = std::sync::LazyLock::new(|| {
        // Invariant: digits and ASCII punctuation make a valid header value.
        HeaderValue::from_str(&format!(
            "public, max-age={COURSE_MAX_AGE_S}, s-maxage={COURSE_SHARED_MAX_AGE_S}, stale-while-revalidate={COURSE_STALE_WHILE_REVALIDATE_S}"
        ))
        .expect("an ASCII header value")
    });
    VALUE.clone()
}

/// The course routes and content uploads; `content` is the node's blob store, if it has one (its
/// `GET /content/…` is served by the front door, [`crate::router::content`]).
pub(crate) fn routes(gw: Gateway, content: Option<Arc<BlobStore>>) -> Router {
    let courses = Router::new()
        .route("/api/courses/{id}", get(course))
        .route("/api/me/enrollments", get(enrollments))
        .route("/api/cohorts/{id}/roster", get(roster))
        .merge(
            Router::new()
                .route("/api/courses/{id}/commands", post(course_command))
                .layer(DefaultBodyLimit::max(COURSE_COMMAND_MAX_BYTES)),
        )
        .with_state(gw.clone());
    match content {
        Some(store) => courses.merge(
            Router::new()
                .route("/api/content/{hash}", put(upload))
                .layer(DefaultBodyLimit::max(CONTENT_UPLOAD_MAX_BYTES))
                .layer(axum::Extension(store.clone()))
                .with_state(gw),
        ),
        None => courses,
    }
}

async fn course_command(
    State(gw): State<Gateway>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, AppError> {
    let course: CourseId = parse_id(&id, "course id")?;
    let cmd: lectern_model::Command = serde_json::from_slice(&body).map_err(|e| {
        AppError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_command",
            format!("not a valid command: {e}"),
        )
    })?;
    let ack = gw
        .run(&caller, DocId::Course(course), Some(cmd.id), cmd.body)
        .await?;
    Ok(axum::Json(ack).into_response())
}

async fn upload(
    axum::Extension(store): axum::Extension<Arc<BlobStore>>,
    Authed(caller): Authed,
    Path(name): Path<String>,
    headers: HeaderMap,
    AnyBody(body): AnyBody,
) -> Result<Response, AppError> {
    if !caller.role.is_instructor() {
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only an instructor or admin may upload content",
        ));
    }
    let hash: BlobHash = name.parse().map_err(|_| {
        AppError::bad_request("content is named by its SHA-256, 64 lowercase hex digits")
    })?;
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(content_type) = UPLOAD_TYPES
        .iter()
        .find(|t| t.eq_ignore_ascii_case(declared.trim()))
    else {
        return Err(AppError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_type",
            format!("{declared:?} is not an accepted content type; accepted: {UPLOAD_TYPES:?}"),
        ));
    };
    if content_type.starts_with("text/html") {
        // Clients insert a lesson's HTML into the page: only HTML the sanitizer leaves as it is
        // (what `markdown::render` makes) may be stored.
        let text =
            std::str::from_utf8(&body).map_err(|_| AppError::bad_request("HTML must be UTF-8"))?;
        if lectern_content::markdown::sanitize_html(text) != text {
            return Err(AppError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unsanitized_html",
                "the HTML is not what the sanitizer makes of it; upload a rendering made by \
                 `lectern content push`",
            ));
        }
    }
    let size = body.len();
    // Whether the node had it: a blob is never written twice, and a publisher that pushes a
    // package again learns what was new (201) and what was there (200).
    let stored = tokio::task::spawn_blocking(move || {
        let had = store.contains(hash);
        store.put_verified(hash, &body, content_type).map(|()| had)
    })
    .await
    .map_err(|_| {
        AppError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "upload task failed",
        )
    })?;
    match stored {
        Ok(had) => Ok((
            if had {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            },
            axum::Json(json!({"hash": hash.to_string(), "bytes": size})),
        )
            .into_response()),
        Err(BlobError::HashMismatch { actual, .. }) => Err(AppError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "hash_mismatch",
            format!("the body's SHA-256 is {actual}, not the name it was put at"),
        )),
        Err(BlobError::TooLarge { .. }) => Err(AppError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the blob is over the node's size limit",
        )),
        Err(e) => {
            tracing::error!(error = %e, "storing an uploaded blob failed");
            Err(AppError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the blob could not be stored",
            ))
        }
    }
}

fn etag_of(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push('"');
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    s.push('"');
    s
}

/// Whether `If-None-Match` names the representation tagged `base` in any coding (or is `*`):
/// the bytes differ by coding, the data they carry does not, so any of them is current.
fn matches(headers: &HeaderMap, base: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || without_coding(t) == base)
}

/// `"…-br"` and `"…-gzip"` back to `"…"`.
fn without_coding(tag: &str) -> std::borrow::Cow<'_, str> {
    for suffix in ["-br\"", "-gzip\""] {
        if let Some(inner) = tag.strip_suffix(suffix) {
            return format!("{inner}\"").into();
        }
    }
    tag.into()
}

/// The `ETag` of the representation tagged `base` in `coding`. A strong tag names one byte
/// sequence, so each coding gets its own (`"…-br"`, `"…-gzip"`, as Apache's `mod_deflate`
/// does). The tag follows the coding the request chose, not whether the body was large enough
/// to compress: the same tag always stands for the same bytes, compressed or not.
fn tag_for(base: &str, coding: Encoding) -> String {
    match (coding.token(), base.strip_suffix('"')) {
        (Some(token), Some(inner)) => format!("{inner}-{token}\""),
        _ => base.to_owned(),
    }
}

/// The coding a revalidated answer is sent in: brotli or gzip if the client takes them.
fn chosen_coding(headers: &HeaderMap) -> Encoding {
    choose_encoding(headers, true, true)
}

/// `body` in `coding` if it is worth compressing, at `quality`; with its `Content-Encoding`.
fn encode_body(body: Bytes, coding: Encoding, quality: u32) -> (Bytes, Option<&'static str>) {
    if body.len() < COMPRESS_MIN_BYTES {
        return (body, None);
    }
    match coding.encode(&body, quality) {
        Ok(encoded) if coding != Encoding::Identity => (Bytes::from(encoded), coding.token()),
        _ => (body, None),
    }
}

/// A public course answer: `body` with `etag`, or `304` when `headers` hold it already.
fn cached(etag: &str, headers: &HeaderMap, body: impl FnOnce() -> Value) -> Response {
    revalidated(etag, headers, cache_control(), body)
}

/// `body` (or `304` when `headers` hold `etag` already) with `etag` and `cache_control`,
/// compressed as the client allows.
fn revalidated(
    etag: &str,
    headers: &HeaderMap,
    cache_control: HeaderValue,
    body: impl FnOnce() -> Value,
) -> Response {
    let coding = chosen_coding(headers);
    if matches(headers, etag) {
        return tagged(
            StatusCode::NOT_MODIFIED.into_response(),
            etag,
            coding,
            cache_control,
        );
    }
    let json = Bytes::from(body().to_string());
    let (bytes, encoding) = encode_body(json, coding, COMPRESS_QUALITY);
    json_answer(bytes, encoding, etag, coding, cache_control)
}

/// A `200` of JSON `bytes` sent in `encoding`, tagged for `coding`.
fn json_answer(
    bytes: Bytes,
    encoding: Option<&'static str>,
    etag: &str,
    coding: Encoding,
    cache_control: HeaderValue,
) -> Response {
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response();
    if let Some(token) = encoding {
        response
            .headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static(token));
    }
    tagged(response, etag, coding, cache_control)
}

/// `response` with the caching headers of the representation tagged `base` in `coding`.
fn tagged(
    mut response: Response,
    base: &str,
    coding: Encoding,
    cache_control: HeaderValue,
) -> Response {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, cache_control);
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Ok(v) = HeaderValue::from_str(&tag_for(base, coding)) {
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
    let view = gw.hub().read(doc, |r| r.course_view()).await??;
    Ok(cached(&etag, &headers, || view))
}

/// `GET /api/courses`, the catalog, which the front door serves before the other routes'
/// middleware ([`crate::router::cacheable`]): it never answers with an `AppError`.
pub(crate) fn catalog_routes(gw: Gateway) -> Router {
    Router::new()
        .route("/api/courses", get(catalog))
        .with_state(Catalog {
            gw,
            rendered: Arc::default(),
        })
}

/// The catalog route's state: the gateway, and the catalog last rendered with its `ETag`.
#[derive(Clone)]
struct Catalog {
    gw: Gateway,
    rendered: Arc<std::sync::Mutex<Option<Arc<Rendered>>>>,
}

/// The catalog as rendered for one `ETag`: its JSON, and each compressed coding made once, on
/// the first request that asks for it.
struct Rendered {
    etag: String,
    json: Bytes,
    br: std::sync::OnceLock<(Bytes, Option<&'static str>)>,
    gzip: std::sync::OnceLock<(Bytes, Option<&'static str>)>,
}

impl Rendered {
    fn body(&self, coding: Encoding) -> (Bytes, Option<&'static str>) {
        // Made once per version and kept: the best quality costs nothing on later reads.
        let made = |quality| move || encode_body(self.json.clone(), coding, quality);
        match coding {
            Encoding::Br => self.br.get_or_init(made(11)).clone(),
            Encoding::Gzip => self.gzip.get_or_init(made(9)).clone(),
            Encoding::Identity => (self.json.clone(), None),
        }
    }
}

async fn catalog(State(cat): State<Catalog>, headers: HeaderMap) -> Response {
    let courses = cat.gw.hub().course_heads(CATALOG_COURSES_MAX);
    let mut digest = Sha256::new();
    for (doc, heads) in &courses {
        digest.update(doc.to_string().as_bytes());
        digest.update([0]);
        digest.update(heads);
    }
    let etag = etag_of(&digest.finalize());
    if matches(&headers, &etag) {
        return cached(&etag, &headers, || Value::Null);
    }
    let kept = cat
        .rendered
        .lock()
        .ok()
        .and_then(|r| r.as_ref().filter(|r| r.etag == etag).cloned());
    let rendered = match kept {
        Some(rendered) => rendered,
        None => {
            let mut list = Vec::with_capacity(courses.len());
            for (doc, _) in courses {
                // A course whose read fails (not created here after all) is left out, not an
                // error.
                if let Ok(Ok(v)) = cat.gw.hub().read(doc, |r| r.course_view()).await {
                    list.push(json!({
                        "id": v["id"],
                        "title": v["title"],
                        "description": v["description"],
                        "version": v["version"],
                    }));
                }
            }
            let rendered = Arc::new(Rendered {
                etag: etag.clone(),
                json: Bytes::from(json!({ "courses": list }).to_string()),
                br: std::sync::OnceLock::new(),
                gzip: std::sync::OnceLock::new(),
            });
            // Kept under the ETag of the heads it was rendered from: a publication meanwhile
            // changes the ETag of the next read, which renders again.
            if let Ok(mut r) = cat.rendered.lock() {
                *r = Some(rendered.clone());
            }
            rendered
        }
    };
    let coding = chosen_coding(&headers);
    let (bytes, encoding) = rendered.body(coding);
    json_answer(bytes, encoding, &etag, coding, cache_control())
}

/// A private, revalidated answer: `body` with `etag`, or `304` when `headers` hold it already.
fn private_cached(etag: &str, headers: &HeaderMap, body: impl FnOnce() -> Value) -> Response {
    static PRIVATE: std::sync::LazyLock<HeaderValue> = std::sync::LazyLock::new(|| {
        // Invariant: digits and ASCII punctuation make a valid header value.
        HeaderValue::from_str(&format!("private, max-age={ENROLLMENT_MAX_AGE_S}"))
            .expect("an ASCII header value")
    });
    revalidated(etag, headers, PRIVATE.clone(), body)
}

/// `GET /api/me/enrollments`: the cohorts the caller's token grants that this node stores, each
/// with its title, the course it follows and the caller's role. The `ETag` is a hash of the
/// caller and those cohorts' heads, from memory, so a revalidation of unchanged enrollments is a
/// `304` that reads no document and takes no rate-limit token; a full answer takes one.
async fn enrollments(
    State(gw): State<Gateway>,
    Authed(caller): Authed,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let cohorts: Vec<(lectern_model::CohortId, [u8; 32])> = caller
        .cohorts
        .iter()
        .filter_map(|c| {
            gw.hub()
                .doc_heads(&DocId::Cohort(c.clone()))
                .map(|h| (c.clone(), h))
        })
        .collect();
    let mut digest = Sha256::new();
    digest.update(caller.user.as_str().as_bytes());
    digest.update([0]);
    digest.update(caller.role.as_str().as_bytes());
    for (cohort, heads) in &cohorts {
        digest.update([0]);
        digest.update(cohort.as_str().as_bytes());
        digest.update(heads);
    }
    let etag = etag_of(&digest.finalize());
    if matches(&headers, &etag) {
        return Ok(private_cached(&etag, &headers, || Value::Null));
    }
    gw.take_command_token(caller.user.as_str())?;
    let mut list = Vec::with_capacity(cohorts.len());
    for (cohort, _) in cohorts {
        let viewer = caller.clone();
        // A cohort whose view fails to read (gone meanwhile) is left out, not an error.
        if let Ok(Ok(v)) = gw
            .hub()
            .read(DocId::Cohort(cohort.clone()), move |r| {
                r.cohort_view(&viewer)
            })
            .await
        {
            list.push(json!({
                "cohort": cohort.as_str(),
                "title": v["title"],
                "course": v["course"],
                "courseId": v["courseId"],
                "role": caller.role.as_str(),
            }));
        }
    }
    let body = json!({ "user": caller.user.as_str(), "enrollments": list });
    Ok(private_cached(&etag, &headers, || body))
}

/// `GET /api/cohorts/{id}/roster` (the cohort's staff): its members with their roles. The
/// `ETag` is the cohort document's heads digest, from memory.
async fn roster(
    State(gw): State<Gateway>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let cohort: lectern_model::CohortId = parse_id(&id, "cohort id")?;
    if !caller.is_staff_of(&cohort) {
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the roster is for the cohort's staff",
        ));
    }
    let doc = DocId::Cohort(cohort.clone());
    let Some(heads) = gw.hub().doc_heads(&doc) else {
        return Err(AppError::new(
            StatusCode::NOT_FOUND,
            "doc_not_found",
            "no such cohort",
        ));
    };
    let etag = etag_of(&heads);
    if matches(&headers, &etag) {
        return Ok(private_cached(&etag, &headers, || Value::Null));
    }
    gw.take_command_token(caller.user.as_str())?;
    let view = gw
        .hub()
        .read(doc, move |r| r.cohort_view(&caller))
        .await??;
    let body = json!({ "cohort": cohort.as_str(), "roster": view["roster"] });
    Ok(private_cached(&etag, &headers, || body))
}

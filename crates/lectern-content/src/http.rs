//! `GET /content/{sha256}[.ext]`: blobs served the way a CDN origin should serve immutable files.
//!
//! * `Cache-Control: public, max-age=2592000, immutable` (30 days) and a strong `ETag` (the
//!   hash): a blob's bytes never change under its name, so caches keep it for the whole month
//!   and browsers do not even revalidate.
//! * `If-None-Match` naming the hash answers `304` without touching the disk: the name is the
//!   content, so a client holding that tag holds the bytes.
//! * `Range` (one range) answers `206` with `Content-Range` (video and audio seeking); several
//!   ranges are answered with the whole blob, which RFC 9110 allows; an unsatisfiable range
//!   answers `416`. `If-Range` with another tag gets the whole blob.
//! * `gzip` and `br` variants, made once when the blob was stored, chosen by `Accept-Encoding`
//!   (q-values honoured, brotli preferred), always with `Vary: Accept-Encoding` so a shared
//!   cache keeps one copy per encoding. A range is always served from the identity bytes.
//! * `Content-Type` as stored, with `X-Content-Type-Options: nosniff` and a sandboxing
//!   `Content-Security-Policy`, so an uploaded HTML or SVG file opened directly can run no
//!   script on the node's origin.
//!
//! The extension is for people and for tools that guess types from URLs; it is ignored.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;

use crate::blob::{BlobHash, BlobStore};

/// 30 days, in seconds.
pub const CONTENT_MAX_AGE_S: u64 = 30 * 24 * 3600;

const CACHE_CONTROL: &str = "public, max-age=2592000, immutable";
const CSP: &str =
    "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; sandbox";

/// The content routes, over `store`. Merge them into the node's router.
pub fn routes(store: Arc<BlobStore>) -> Router {
    Router::new()
        .route("/content/{name}", get(get_content))
        .with_state(store)
}

async fn get_content(
    State(store): State<Arc<BlobStore>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let hash_part = name.split_once('.').map_or(name.as_str(), |(h, _)| h);
    let Ok(hash) = hash_part.parse::<BlobHash>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "content is named by its SHA-256, 64 lowercase hex digits",
        );
    };
    let etag = format!("\"{hash}\"");
    if let Some(inm) = headers.get(header::IF_NONE_MATCH)
        && etag_matches(inm, &etag)
    {
        store.count_not_modified();
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        cache_headers(resp.headers_mut(), &etag);
        return resp;
    }
    // A blob in the memory cache is served from this task; only a read from disk (and its
    // verification) goes to a blocking thread, whose hand-offs would cost more than the copy.
    // A blob this node lacks (or whose copy failed verification) comes from a peer if one of
    // the node's courses names it.
    let found = match store.cached(hash) {
        Some(blob) => Ok(Some(blob)),
        None => store.get_or_pull(hash).await,
    };
    let blob = match found {
        Ok(Some(blob)) => blob,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no content with that hash on this node",
            );
        }
        Err(e) => {
            tracing::error!(blob = %hash, "reading a blob failed: {e}");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the content could not be read",
            );
        }
    };

    let len = blob.body.len() as u64;
    let range = headers
        .get(header::RANGE)
        .filter(|_| if_range_holds(&headers, &etag))
        .and_then(|r| r.to_str().ok());
    if let Some(range) = range {
        match single_range(range, len) {
            RangeAnswer::Whole => {}
            RangeAnswer::Unsatisfiable => {
                let mut resp = error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "range_not_satisfiable",
                    "the range lies outside the content",
                );
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return resp;
            }
            RangeAnswer::Part(start, end) => {
                let body = blob.body.slice(start as usize..=end as usize);
                let mut resp = (StatusCode::PARTIAL_CONTENT, Body::from(body)).into_response();
                let h = resp.headers_mut();
                blob_headers(h, &etag, &blob.content_type);
                if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
                    h.insert(header::CONTENT_RANGE, v);
                }
                return resp;
            }
        }
    }

    let (body, encoding): (Bytes, Option<&str>) =
        match choose_encoding(&headers, blob.br.is_some(), blob.gzip.is_some()) {
            Encoding::Br => (blob.br.clone().unwrap_or_default(), Some("br")),
            Encoding::Gzip => (blob.gzip.clone().unwrap_or_default(), Some("gzip")),
            Encoding::Identity => (blob.body.clone(), None),
        };
    let mut resp = (StatusCode::OK, Body::from(body)).into_response();
    let h = resp.headers_mut();
    blob_headers(h, &etag, &blob.content_type);
    if let Some(enc) = encoding {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(enc));
    }
    resp
}

/// The headers every answer about a blob carries (also a 304's).
fn cache_headers(h: &mut HeaderMap, etag: &str) {
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
}

fn blob_headers(h: &mut HeaderMap, etag: &str, content_type: &str) {
    cache_headers(h, etag);
    let ct = HeaderValue::from_str(content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_TYPE, ct);
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
}

fn error(status: StatusCode, code: &'static str, message: &'static str) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    let mut resp = (status, axum::Json(body)).into_response();
    // A miss may be filled a moment later (a peer's copy arriving): never cache it.
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Whether an `If-None-Match` value names `etag` (weak comparison, as RFC 9110 asks for it).
fn etag_matches(value: &HeaderValue, etag: &str) -> bool {
    let Ok(v) = value.to_str() else { return false };
    v.split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// `If-Range` absent, or naming this blob's tag (strong comparison).
fn if_range_holds(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_RANGE)
        .is_none_or(|v| v.to_str().is_ok_and(|v| v.trim() == etag))
}

enum RangeAnswer {
    Whole,
    Unsatisfiable,
    Part(u64, u64),
}

/// One satisfiable range, or the whole blob (no valid single range), or 416.
fn single_range(value: &str, len: u64) -> RangeAnswer {
    let Ok(parsed) = http_range_header::parse_range_header(value) else {
        // A Range header the server cannot parse is ignored (RFC 9110 §14.2).
        return RangeAnswer::Whole;
    };
    match parsed.validate(len) {
        Ok(ranges) => match ranges.as_slice() {
            [one] => RangeAnswer::Part(*one.start(), *one.end()),
            _ => RangeAnswer::Whole,
        },
        Err(_) => RangeAnswer::Unsatisfiable,
    }
}

/// A content coding a response may be sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `br`.
    Br,
    /// `gzip`.
    Gzip,
    /// The bytes as they are.
    Identity,
}

impl Encoding {
    /// Its `Content-Encoding` token, `None` for identity.
    pub fn token(self) -> Option<&'static str> {
        match self {
            Encoding::Br => Some("br"),
            Encoding::Gzip => Some("gzip"),
            Encoding::Identity => None,
        }
    }

    /// `bytes` in this coding (compressed at `quality`, 0 to 11 for brotli, 0 to 9 for gzip).
    pub fn encode(self, bytes: &[u8], quality: u32) -> std::io::Result<Vec<u8>> {
        match self {
            Encoding::Br => crate::blob::brotli_at(bytes, quality),
            Encoding::Gzip => crate::blob::gzip_at(bytes, quality),
            Encoding::Identity => Ok(bytes.to_vec()),
        }
    }
}

/// Brotli, then gzip (each only if `has_br`/`has_gzip`), then the bytes as stored, by what
/// `Accept-Encoding` allows (q-values honoured; `*` counts for a coding it does not name).
pub fn choose_encoding(headers: &HeaderMap, has_br: bool, has_gzip: bool) -> Encoding {
    let Some(accept) = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
    else {
        return Encoding::Identity;
    };
    let mut br = None;
    let mut gzip = None;
    let mut star = None;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let ok = q > 0.0;
        match coding.as_str() {
            "br" => br = Some(ok),
            "gzip" | "x-gzip" => gzip = Some(ok),
            "*" => star = Some(ok),
            _ => {}
        }
    }
    let allowed = |explicit: Option<bool>| explicit.or(star).unwrap_or(false);
    if has_br && allowed(br) {
        Encoding::Br
    } else if has_gzip && allowed(gzip) {
        Encoding::Gzip
    } else {
        Encoding::Identity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::{BlobLimits, gunzip, unbrotli};
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    struct Fixture {
        _dir: crate::test_dir::TestDir,
        store: Arc<BlobStore>,
        router: Router,
        lesson: Vec<u8>,
        lesson_hash: BlobHash,
        video: Vec<u8>,
        video_hash: BlobHash,
    }

    fn fixture(tag: &str) -> Fixture {
        let dir = crate::test_dir::TestDir::new(tag);
        let store = Arc::new(BlobStore::open(&dir.0, BlobLimits::default()).unwrap());
        let lesson = "# Week 1\n\nRead this twice. ".repeat(300).into_bytes();
        let lesson_hash = store.put(&lesson, "text/markdown; charset=utf-8").unwrap();
        let video: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let video_hash = store.put(&video, "video/webm").unwrap();
        Fixture {
            _dir: dir,
            router: routes(Arc::clone(&store)),
            store,
            lesson,
            lesson_hash,
            video,
            video_hash,
        }
    }

    async fn get(
        router: &Router,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut req = Request::get(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = router
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, headers, body)
    }

    fn h<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    #[tokio::test]
    async fn a_blob_is_served_immutable_with_its_hash_as_etag() {
        let f = fixture("ok");
        let (status, headers, body) =
            get(&f.router, &format!("/content/{}.md", f.lesson_hash), &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, f.lesson);
        assert_eq!(
            h(&headers, "cache-control"),
            "public, max-age=2592000, immutable"
        );
        assert_eq!(h(&headers, "etag"), format!("\"{}\"", f.lesson_hash));
        assert_eq!(h(&headers, "content-type"), "text/markdown; charset=utf-8");
        assert_eq!(h(&headers, "x-content-type-options"), "nosniff");
        assert_eq!(h(&headers, "vary"), "Accept-Encoding");
        assert_eq!(h(&headers, "accept-ranges"), "bytes");
        assert!(h(&headers, "content-security-policy").contains("sandbox"));
        assert_eq!(h(&headers, "content-encoding"), "");
    }

    #[tokio::test]
    async fn if_none_match_answers_304_with_the_cache_headers() {
        let f = fixture("304");
        let tag = format!("\"{}\"", f.lesson_hash);
        for inm in [
            tag.clone(),
            format!("W/{tag}"),
            format!("\"other\", {tag}"),
            "*".into(),
        ] {
            let (status, headers, body) = get(
                &f.router,
                &format!("/content/{}", f.lesson_hash),
                &[("if-none-match", &inm)],
            )
            .await;
            assert_eq!(status, StatusCode::NOT_MODIFIED, "{inm}");
            assert!(body.is_empty());
            assert_eq!(h(&headers, "etag"), tag);
            assert_eq!(h(&headers, "cache-control"), CACHE_CONTROL);
        }
        // Each 304 is counted, and none of them read the blob.
        let stats = f.store.stats();
        assert_eq!(stats.not_modified, 4, "{stats:?}");
        assert_eq!(stats.cache_hits + stats.disk_reads, 0, "{stats:?}");
        let (status, _, _) = get(
            &f.router,
            &format!("/content/{}", f.lesson_hash),
            &[("if-none-match", "\"someone-else\"")],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn gzip_and_br_decode_to_the_original_and_follow_q_values() {
        let f = fixture("enc");
        let uri = format!("/content/{}", f.lesson_hash);
        let (_, headers, body) =
            get(&f.router, &uri, &[("accept-encoding", "gzip, deflate, br")]).await;
        assert_eq!(h(&headers, "content-encoding"), "br");
        assert_eq!(unbrotli(&body).unwrap(), f.lesson);
        assert!(body.len() < f.lesson.len() / 4);
        let (_, headers, body) = get(&f.router, &uri, &[("accept-encoding", "gzip, br;q=0")]).await;
        assert_eq!(h(&headers, "content-encoding"), "gzip");
        assert_eq!(gunzip(&body).unwrap(), f.lesson);
        let (_, headers, body) = get(&f.router, &uri, &[("accept-encoding", "identity")]).await;
        assert_eq!(h(&headers, "content-encoding"), "");
        assert_eq!(body, f.lesson);
        let (_, headers, _) = get(&f.router, &uri, &[("accept-encoding", "*")]).await;
        assert_eq!(h(&headers, "content-encoding"), "br");
        // A video is not compressed whatever the client takes.
        let (_, headers, body) = get(
            &f.router,
            &format!("/content/{}", f.video_hash),
            &[("accept-encoding", "gzip, br")],
        )
        .await;
        assert_eq!(h(&headers, "content-encoding"), "");
        assert_eq!(body, f.video);
    }

    #[tokio::test]
    async fn a_range_answers_206_with_exactly_those_bytes() {
        let f = fixture("range");
        let uri = format!("/content/{}.webm", f.video_hash);
        let len = f.video.len();
        let cases: [(&str, usize, usize); 3] = [
            ("bytes=0-99", 0, 99),
            ("bytes=50000-", 50_000, len - 1),
            ("bytes=-10", len - 10, len - 1),
        ];
        for (range, start, end) in cases {
            let (status, headers, body) = get(
                &f.router,
                &uri,
                &[("range", range), ("accept-encoding", "br")],
            )
            .await;
            assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{range}");
            assert_eq!(body, &f.video[start..=end], "{range}");
            assert_eq!(
                h(&headers, "content-range"),
                format!("bytes {start}-{end}/{len}")
            );
            assert_eq!(h(&headers, "content-encoding"), "");
        }
        let (status, headers, _) = get(&f.router, &uri, &[("range", "bytes=200000-")]).await;
        assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(h(&headers, "content-range"), format!("bytes */{len}"));
        // Several ranges, or an If-Range naming another version: the whole blob.
        let (status, _, body) = get(&f.router, &uri, &[("range", "bytes=0-1, 5-6")]).await;
        assert_eq!((status, body.len()), (StatusCode::OK, len));
        let (status, _, body) = get(
            &f.router,
            &uri,
            &[("range", "bytes=0-1"), ("if-range", "\"an-older-version\"")],
        )
        .await;
        assert_eq!((status, body.len()), (StatusCode::OK, len));
    }

    #[tokio::test]
    async fn unknown_and_malformed_names_are_refused_uncached() {
        let f = fixture("404");
        let absent = BlobHash::of(b"nobody stored this");
        let (status, headers, body) = get(&f.router, &format!("/content/{absent}"), &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(h(&headers, "cache-control"), "no-store");
        assert!(String::from_utf8_lossy(&body).contains("\"not_found\""));
        for bad in [
            "/content/abc",
            "/content/ZZ.png",
            "/content/..%2f..%2fetc%2fpasswd",
        ] {
            let (status, _, _) = get(&f.router, bad, &[]).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}

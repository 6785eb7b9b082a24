//! The gateway's HTTP surface put together: every router merged (REST, the page, notifications,
//! boards, courses, nodes), then the middleware every route shares, applied once after the
//! last merge (axum layers only the routes that exist when a layer is added): the body limit,
//! the fast 413, the rejection counter, the Socket.IO layer and request compaction; CORS
//! outermost. The node's whole router then gets the front door's layers (body deadline,
//! compression).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use socketioxide::layer::SocketIoLayer;

use crate::config::GatewayConfig;
use crate::error::AppError;
use crate::{
    Gateway, admission, boards, courses, flags, join, nodes, notifications, page, refresh, rest,
    sse, uplink,
};

/// The gateway's router: every route, the shared middleware, the Socket.IO `layer`.
pub(crate) fn build(gw: &Gateway, config: &GatewayConfig, layer: SocketIoLayer) -> Router {
    let merged = rest::routes(gw.clone())
        .merge(page::routes())
        .merge(notifications::routes(
            gw.clone(),
            Arc::from(config.unsubscribe_key.as_slice()),
        ))
        .merge(sse::routes(gw.clone()))
        .merge(boards::routes(gw.clone()))
        .merge(flags::routes(gw.clone()))
        .merge(courses::routes(gw.clone(), config.content.clone()))
        .merge(nodes::routes(config.nodes.clone()))
        .merge(refresh::routes(gw.clone()))
        .merge(join::routes(gw.clone()))
        .merge(uplink::routes(gw.clone()));
    // After every merge: a layer covers only the routes that exist when it is added.
    let router = shared_middleware(merged, gw)
        .layer(layer)
        .layer(axum::middleware::map_request(compact_request));
    // Outermost: a preflight is answered before any other layer sees it.
    match nodes::cors(&config.nodes) {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// The node's whole router (the gateway's routes and the node's own) with what every request
/// passes first: its body read under `body_timeout` (408 `body_timeout`), and its JSON answer
/// compressed when the client accepts it ([`compression`]). The public cacheable reads
/// (`cacheable`, from [`cacheable`]) are matched before all of it: a `GET` of an immutable blob
/// or of the catalog carries no body, is never refused, is compressed ahead of time or not at
/// all (its `ETag` names one representation), and costs less to answer from memory than the
/// routes' middleware costs to pass (measured by `lectern-bench content`).
pub(crate) fn front_door(app: Router, body_timeout: Duration, cacheable: Router) -> Router {
    let app = app
        .layer(axum::middleware::from_fn_with_state(
            body_timeout,
            admission::body_deadline,
        ))
        .layer(compression());
    cacheable.fallback_service(app)
}

/// The public cacheable reads the front door serves first: `GET /content/{sha256}` over
/// `content` and the catalog, `GET /api/courses`, with the cluster's CORS (a page that failed
/// over to another node reads them from it). Neither answers with an `AppError`, so neither
/// needs the rejection counter.
pub(crate) fn cacheable(
    gw: &Gateway,
    content: Option<Arc<lectern_content::BlobStore>>,
    nodes: &[String],
) -> Router {
    let mut routes = courses::catalog_routes(gw.clone());
    if let Some(store) = content {
        routes = routes.merge(lectern_content::routes(store));
    }
    match nodes::cors(nodes) {
        Some(cors) => routes.layer(cors),
        None => routes,
    }
}

/// The middleware every HTTP route shares, applied once every router is merged (a router
/// merged after this would skip it): the body limit, a fast 413 for a declared body past it
/// (also on routes that never read their body), and the rejection counter, which also takes the
/// internal error-code header off every response.
fn shared_middleware(router: Router, gw: &Gateway) -> Router {
    let body_max = gw.limits().payload_max_bytes;
    router
        .layer(DefaultBodyLimit::max(body_max))
        .layer(axum::middleware::from_fn_with_state(
            body_max,
            refuse_declared_oversized,
        ))
        .layer(axum::middleware::from_fn_with_state(
            gw.clone(),
            count_rejections,
        ))
}

/// Counts every refused HTTP request by its code (the Socket.IO handlers count their own).
async fn count_rejections(
    State(gw): State<Gateway>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut response = next.run(request).await;
    if let Some(code) = response
        .headers_mut()
        .remove(crate::error::ERROR_CODE_HEADER)
        .and_then(|v| v.to_str().ok().map(str::to_owned))
    {
        gw.count_rejection(&code);
    }
    response
}

/// Refuses a request whose `Content-Length` is past `body_max` bytes before any handler runs.
async fn refuse_declared_oversized(
    State(body_max): State<usize>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // Upload routes set a larger limit of their own (their route layer enforces it).
    let body_max = courses::own_body_limit(request.uri().path()).unwrap_or(body_max);
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > body_max as u64 => AppError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is {n} bytes, past the limit of {body_max}"),
        )
        .into_response(),
        _ => next.run(request).await,
    }
}

/// JSON answers shorter than this go out as they are (compressing them saves too little).
const JSON_COMPRESS_MIN_BYTES: u16 = 1024;

/// Brotli and gzip quality for JSON answers: fast, most of the size win (views compress ~10×).
const JSON_COMPRESS_LEVEL: i32 = 4;

/// Compression of JSON answers (views, listings) of at least [`JSON_COMPRESS_MIN_BYTES`], br
/// or gzip by `Accept-Encoding`, with `Vary: accept-encoding`. Not compressed: other types
/// (content blobs bring their own stored variants, Socket.IO polling is text), and answers
/// with an `ETag`: a strong tag names one byte sequence, so those (the catalog, a course, the
/// enrollments) are compressed where they are made, with a tag per coding (`courses.rs`).
fn compression()
-> tower_http::compression::CompressionLayer<impl tower_http::compression::Predicate> {
    use tower_http::compression::predicate::{Predicate, SizeAbove};
    let json_without_etag = |_: StatusCode,
                             _: axum::http::Version,
                             headers: &axum::http::HeaderMap,
                             _: &axum::http::Extensions| {
        !headers.contains_key(header::ETAG)
            && headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"))
    };
    tower_http::compression::CompressionLayer::new()
        .quality(tower_http::CompressionLevel::Precise(JSON_COMPRESS_LEVEL))
        .compress_when(SizeAbove::new(JSON_COMPRESS_MIN_BYTES).and(json_without_etag))
}

/// Copies a request's URI and headers into allocations of their own.
///
/// hyper parses them as slices of the connection's read buffer, and engineioxide keeps the
/// request parts of every WebSocket for the socket's whole life: without this copy each idle
/// socket pins a whole read buffer (≈ 7 KB per socket, docs/dependencies.md). Runs before the
/// Socket.IO layer (it is the outer layer).
async fn compact_request(mut req: axum::extract::Request) -> axum::extract::Request {
    if let Ok(uri) = req.uri().to_string().parse::<axum::http::Uri>() {
        *req.uri_mut() = uri;
    }
    let mut headers = axum::http::HeaderMap::with_capacity(req.headers().len());
    for (name, value) in req.headers() {
        if let (Ok(n), Ok(v)) = (
            axum::http::HeaderName::from_bytes(name.as_str().as_bytes()),
            axum::http::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.append(n, v);
        }
    }
    *req.headers_mut() = headers;
    req
}

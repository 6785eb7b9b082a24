//! The cluster's client URLs, for a browser that must leave its node: `GET /api/nodes` lists
//! this node's public URL and then the other nodes', in the order a page should try them
//! (the configuration's order: nearest region first), and requests from those origins are
//! allowed cross-origin (CORS), so a page that failed over keeps calling the REST API and
//! long-poll of another node with its bearer token. The token is never a cookie across
//! origins (no credentials mode): a stolen page cannot ride a session.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may reuse a preflight's answer, in seconds.
const PREFLIGHT_MAX_AGE_S: u64 = 600;

/// `GET /api/nodes`: `{"nodes": [url, …]}`, this node's first (empty when nothing is
/// configured: the page then stays on its own origin).
pub(crate) fn routes(nodes: Vec<String>) -> Router {
    let body = json!({ "nodes": nodes });
    Router::new().route(
        "/api/nodes",
        get(move || {
            let body = body.clone();
            async move { ([(CACHE_CONTROL, "no-cache")], Json(body)).into_response() }
        }),
    )
}

/// The CORS layer for the cluster's origins (scheme, host and port of each URL), or none when
/// the node has no other node to send pages to.
pub(crate) fn cors(nodes: &[String]) -> Option<CorsLayer> {
    let origins: Vec<HeaderValue> = nodes
        .iter()
        .filter_map(|url| HeaderValue::from_str(origin_of(url)).ok())
        .collect();
    if origins.len() < 2 {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                AUTHORIZATION,
                CONTENT_TYPE,
                HeaderName::from_static("last-event-id"),
            ])
            .max_age(Duration::from_secs(PREFLIGHT_MAX_AGE_S)),
    )
}

/// `https://host:port` of `https://host:port/path`.
fn origin_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_is_the_url_without_its_path() {
        assert_eq!(
            origin_of("https://eu.example.edu/lectern"),
            "https://eu.example.edu"
        );
        assert_eq!(origin_of("http://127.0.0.1:8081"), "http://127.0.0.1:8081");
    }

    #[test]
    fn one_node_alone_allows_no_other_origin() {
        assert!(cors(&["http://a.example".into()]).is_none());
        assert!(cors(&["http://a.example".into(), "http://b.example".into()]).is_some());
    }
}

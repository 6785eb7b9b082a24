//! A small page served at `/` so the demo's links open something usable. It needs no client
//! library: it reads the session over REST, follows it over SSE, and posts commands, so it also
//! shows the fallback path a browser takes when WebSocket is blocked. The full web client is
//! its own crate (lectern-web).

use axum::response::Html;

/// `GET /`.
pub(crate) async fn index() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

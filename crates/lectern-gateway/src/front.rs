//! The front door: the HTTP accept loop, one task per accepted socket, where every route the
//! gateway serves is told apart (the node hands it its listener and its router, and knows no
//! URL). SSE streams (`GET /api/stream/…`) are
//! written by the task itself, and a Socket.IO WebSocket that opens directly
//! (`GET /socket.io/?EIO=4&transport=websocket`, no `sid`) is handed with its socket to the
//! lean transport (`Gateway::open_websocket`); every other request is served by
//! hyper's HTTP/1.1 connection, upgrades allowed (a Socket.IO polling session upgrading to
//! WebSocket), and a stop lets open requests finish.
//!
//! Why not `axum::serve`: it serves through hyper's auto (HTTP/1 + HTTP/2) builder, which grows
//! each connection's read buffer to 16 KiB, and it builds the service per connection; with
//! thousands of idle SSE and Socket.IO connections those buffers are most of the node's memory
//! (20.4 → 11.0 KB per idle SSE connection with this loop: docs/dependencies.md). `writev(true)`:
//! hyper writes a response's head and body with one vectored write instead of copying the body
//! into its write buffer first (a 100 KB course asset: 0.64× → 0.83× nginx's requests/s,
//! `lectern-bench content`); the streams and lean WebSockets that hold most connections do not
//! go through hyper at all.
//!
//! Why SSE bypasses hyper: a hyper connection keeps its read and write buffers (8 KiB each)
//! and its state machine for as long as a response streams, which for an idle SSE client is
//! hours. The task reads the request head into a small buffer, parses it with `httparse`, and
//! for a stream route hands it to `Gateway::open_stream`, then writes the response itself:
//! `connection: close` framing (the body ends when the socket closes), each chunk formatted
//! into a fresh buffer that is dropped once written. Any other request goes to hyper with the
//! bytes already read replayed first ([`Prefixed`]). The lean WebSocket bypasses hyper for the
//! same reason (and socketioxide's per-socket tasks and queues: see the gateway's `ws.rs`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::admission::{Admitted, PreauthSession, Refused, Source};
use crate::sio::packet::EngineQuery;
use crate::ws::is_lean_websocket;
use crate::{AppError, Gateway};
use axum::Router;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use futures_util::FutureExt;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tracing::{debug, warn};

/// How long a stopping node waits for open requests (streams end at once: the gateway has
/// already told them to) before it drops the rest.
const DRAIN_MAX: Duration = Duration::from_secs(10);

/// Longest a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest request head read before deciding; a longer one goes to hyper, which applies
/// its own limits.
const HEAD_MAX_BYTES: usize = 64 * 1024;

/// Most headers a request may have to take the lean SSE path (more go to hyper).
const HEADERS_MAX: usize = 64;

/// Serves `app` (the gateway's router, with the node's own routes merged, passed through
/// [`Gateway::front_door`]) and `gateway`'s streams and lean WebSockets on `listener` until
/// `stop` fires, then lets open requests finish (for at most 10 s).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    gateway: Gateway,
    mut stop: oneshot::Receiver<()>,
) -> io::Result<()> {
    let (closing, closed) = watch::channel(false);
    // Every connection task holds a clone; the drain waits for all of them to be dropped.
    let (alive, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut stop => break,
        };
        let (stream, from) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors or a connection reset before accept: keep serving the
                // others, and give the system a moment to free descriptors.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Before a byte is read: a connection past the pre-authentication caps gets its fixed
        // refusal (if the socket takes it at once) and is closed.
        let admitted = match gateway.admit(from.ip()) {
            Ok(admitted) => admitted,
            Err(refused) => {
                let _ = stream.try_write(refused.response());
                debug!(%from, code = refused.code(), "connection refused before authentication");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let gateway = gateway.clone();
        let closed = closed.clone();
        let alive = alive.clone();
        tokio::spawn(connection(stream, admitted, app, gateway, closed, alive));
    }
    drop(listener);
    drop(gateway);
    let _ = closing.send(true);
    drop(alive);
    if tokio::time::timeout(DRAIN_MAX, all_done.recv())
        .await
        .is_err()
    {
        warn!("connections still open after {DRAIN_MAX:?}; dropping them");
    }
    Ok(())
}

/// What the first request of a connection is.
pub(crate) enum Head {
    /// `GET /api/stream/…`: its target and headers.
    Stream(String, HeaderMap),
    /// A Socket.IO WebSocket that opens directly (see [`is_lean_websocket`]): its target,
    /// headers and any bytes the client sent after the head.
    WebSocket(String, HeaderMap, Vec<u8>),
    /// Anything else, for hyper: the bytes read so far.
    Other(Vec<u8>),
}

/// One connection: a stream written here, or hyper. `admitted` is its place among the
/// connections waiting to authenticate, given up once it has: a stream once it opens, a lean
/// WebSocket once its `CONNECT` is accepted, a hyper connection once its first response is
/// ready. `alive` is held until the connection ends (the drain waits for it).
async fn connection(
    mut stream: TcpStream,
    admitted: Admitted,
    app: Router,
    gateway: Gateway,
    closed: watch::Receiver<bool>,
    alive: tokio::sync::mpsc::Sender<()>,
) {
    let head = match tokio::time::timeout(HEADER_READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            debug!(error = %e, "reading a request head failed");
            return;
        }
        Err(_) => {
            debug!("no request head within {HEADER_READ_TIMEOUT:?}");
            return;
        }
    };
    // What serves the connection from here runs in a task of its own, and this one (sized
    // for reading a head) ends: a task's allocation is sized by its largest state, and an idle
    // lean WebSocket or SSE stream holds its task for hours, per client. `alive` rides in a
    // `map` rather than an `async` block: a block that captures a future and awaits it keeps
    // room for both, which doubled every idle WebSocket's task.
    let done = move |()| drop(alive);
    match head {
        Head::Stream(target, headers) => {
            drop(app);
            // Opened here (a short wait for the hub); only the writing lives on.
            let opened = Box::pin(gateway.open_stream(&target, &headers)).await;
            drop((target, headers, gateway, admitted));
            match opened {
                Ok(lean) => {
                    tokio::spawn(lean.write_through(stream, closed).map(done));
                }
                Err(e) => {
                    if let Err(e) = write_error(stream, &e).await {
                        debug!(error = %e, "answering a refused stream failed");
                    }
                }
            }
        }
        Head::WebSocket(target, headers, early) => {
            drop((app, closed));
            // The gateway ends it when the node stops (it tells the client first).
            if let Some(socket) = gateway.open_websocket(stream, &target, &headers, early, admitted)
            {
                tokio::spawn(socket.map(done));
            }
        }
        Head::Other(prefix) => {
            let served = serve_hyper(Prefixed::new(prefix, stream), admitted, app, closed);
            tokio::spawn(served.map(done));
        }
    }
}

/// Reads until a whole request head is in; `None` when the client closed before sending one.
async fn read_head(stream: &mut TcpStream) -> io::Result<Option<Head>> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(buf.len());
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok((!buf.is_empty()).then_some(Head::Other(buf)));
        }
        if let Some(head) = head_of(&mut buf) {
            return Ok(Some(head));
        }
    }
}

/// What the request head at the start of `buf` asks for, or `None` while it is incomplete
/// (and short enough to wait for more). Sans-IO, so that the fuzz targets (`fuzz/`) run it on
/// any bytes; [`Head::Other`] takes `buf` whole, to be replayed to hyper.
pub(crate) fn head_of(buf: &mut Vec<u8>) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(head_len)) => {
            let get = req.method == Some("GET");
            let path = req.path.unwrap_or_default();
            let stream = get && path.starts_with("/api/stream/");
            let socket_io = get && path.starts_with("/socket.io");
            if !stream && !socket_io {
                return Some(Head::Other(std::mem::take(buf)));
            }
            let target = req.path.unwrap_or_default().to_owned();
            let mut map = HeaderMap::with_capacity(req.headers.len());
            for h in req.headers.iter() {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(h.name.as_bytes()),
                    HeaderValue::from_bytes(h.value),
                ) {
                    map.append(n, v);
                }
            }
            if stream {
                // A stream request that declares a body takes the router's path, where
                // the shared body limit and header hygiene apply to it like any route.
                let has_body = map.contains_key(axum::http::header::TRANSFER_ENCODING)
                    || map
                        .get(axum::http::header::CONTENT_LENGTH)
                        .is_some_and(|v| v.as_bytes() != b"0");
                if has_body {
                    return Some(Head::Other(std::mem::take(buf)));
                }
                return Some(Head::Stream(target, map));
            }
            if !is_lean_websocket(&target, &map) {
                // Polling, an upgrade of a polling session: socketioxide's.
                return Some(Head::Other(std::mem::take(buf)));
            }
            let early = buf.get(head_len..).unwrap_or_default().to_vec();
            Some(Head::WebSocket(target, map, early))
        }
        Ok(httparse::Status::Partial) if buf.len() < HEAD_MAX_BYTES => None,
        // Malformed, too many headers or too long: hyper answers it.
        _ => Some(Head::Other(std::mem::take(buf))),
    }
}

/// Answers a refused stream request with the usual JSON error, then closes.
async fn write_error(mut stream: TcpStream, e: &AppError) -> io::Result<()> {
    let body = serde_json::json!({"error": e.body()}).to_string();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        e.status.as_u16(),
        e.status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    stream.write_all(&out).await?;
    stream.shutdown().await
}

/// Serves a connection with hyper until it ends, or gracefully once the server stops.
async fn serve_hyper(
    io: Prefixed,
    admitted: Admitted,
    app: Router,
    mut closed: watch::Receiver<bool>,
) {
    let service = FirstResponseAdmits {
        inner: TowerToHyperService::new(app),
        source: admitted.source(),
        admitted: std::sync::Mutex::new(Some(admitted)),
    };
    let conn = http1::Builder::new()
        .writev(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        _ = closed.wait_for(|c| *c) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// The app as hyper calls it, holding the connection's place among those waiting to
/// authenticate until its first response is ready (its body read, its caller known): what a
/// connection does after that is counted per user. An Engine.IO polling handshake on it takes
/// a place of its own for the session it opens ([`PreauthSession`]), or is refused.
struct FirstResponseAdmits {
    inner: TowerToHyperService<Router>,
    admitted: std::sync::Mutex<Option<Admitted>>,
    /// The connection's address, for the places of the polling sessions it opens.
    source: Source,
}

/// Whether a request opens an Engine.IO polling session: `GET /socket.io/…?transport=polling`
/// without a `sid`.
fn opens_polling_session(request: &hyper::Request<hyper::body::Incoming>) -> bool {
    if request.method() != axum::http::Method::GET
        || !request.uri().path().starts_with("/socket.io")
    {
        return false;
    }
    EngineQuery::parse(request.uri().query().unwrap_or_default()).opens("polling")
}

/// The 503 a refused polling handshake gets (the same error as a refused connection).
fn refused_response(refused: Refused) -> axum::response::Response {
    let body =
        serde_json::json!({"error": {"code": refused.code(), "message": refused.to_string()}});
    let mut response = axum::response::Response::new(axum::body::Body::from(body.to_string()));
    *response.status_mut() = axum::http::StatusCode::SERVICE_UNAVAILABLE;
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        HeaderValue::from_static("5"),
    );
    response
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for FirstResponseAdmits {
    type Response = <TowerToHyperService<Router> as hyper::service::Service<
        hyper::Request<hyper::body::Incoming>,
    >>::Response;
    type Error = <TowerToHyperService<Router> as hyper::service::Service<
        hyper::Request<hyper::body::Incoming>,
    >>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, mut request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let mut admitted = self
            .admitted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if opens_polling_session(&request) {
            // The connection's own place (on its first request) moves to the session, which
            // keeps waiting to authenticate after this response; a later request takes one.
            match admitted.take().map_or_else(|| self.source.admit(), Ok) {
                Ok(place) => {
                    request.extensions_mut().insert(PreauthSession::new(place));
                }
                Err(refused) => {
                    return Box::pin(async move {
                        drop(admitted);
                        Ok(refused_response(refused))
                    });
                }
            }
        }
        let response = hyper::service::Service::call(&self.inner, request);
        Box::pin(async move {
            let response = response.await;
            drop(admitted);
            response
        })
    }
}

/// A socket whose first bytes were already read: they are read again first.
struct Prefixed {
    prefix: Vec<u8>,
    at: usize,
    inner: TcpStream,
}

impl Prefixed {
    fn new(prefix: Vec<u8>, inner: TcpStream) -> Prefixed {
        Prefixed {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                // Replayed: free it (a WebSocket keeps this connection for hours).
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

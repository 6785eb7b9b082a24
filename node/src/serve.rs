//! The HTTP accept loop: one hyper HTTP/1.1 connection per accepted socket, upgrades allowed
//! (Socket.IO's WebSocket), and a graceful stop that lets open requests finish.
//!
//! Why not `axum::serve`: it serves through hyper's auto (HTTP/1 + HTTP/2) builder, which grows
//! each connection's read buffer to 16 KiB, and it builds the service per connection; with
//! thousands of idle SSE and Socket.IO connections those buffers are most of the node's memory
//! (NOTES.md: 20.4 → 11.0 KB per idle SSE connection with this loop). `writev(false)` makes
//! hyper flatten small writes into its one write buffer instead of keeping a queue.

use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tracing::{debug, warn};

/// How long a stopping node waits for open requests (streams end at once: the gateway has
/// already told them to) before it drops the rest.
const DRAIN_MAX: Duration = Duration::from_secs(10);

/// Longest a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until `stop` fires, then drains.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    mut stop: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let (closing, closed) = watch::channel(false);
    // Every connection task holds a clone; the drain waits for all of them to be dropped.
    let (alive, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut stop => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors or a connection reset before accept: keep serving the
                // others, and give the system a moment to free descriptors.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = http1::Builder::new()
            .writev(false)
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut closed = closed.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            let _alive = alive;
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
        });
    }
    drop(listener);
    let _ = closing.send(true);
    drop(alive);
    if tokio::time::timeout(DRAIN_MAX, all_done.recv()).await.is_err() {
        warn!("connections still open after {DRAIN_MAX:?}; dropping them");
    }
    Ok(())
}

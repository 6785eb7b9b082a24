//! A Lectern regional node: opens the sled store, runs the hub of live documents and serves
//! HTTP. `run(config, shutdown)` is the whole life of a node; tests start one in-process on
//! `127.0.0.1:0` with [`start`] and stop it with [`Node::stop`].
//!
//! This crate is the only one that will know both HTTP and QUIC (an ARCHITECTURE.md
//! invariant); today it serves `/healthz`, and the gateway and mesh plug in here.

mod demo;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use lectern_hub::{Hub, HubConfig};
use lectern_store::Store;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::info;

pub use demo::seed_demo;

/// What a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Directory of the sled store (created if missing).
    pub data_dir: PathBuf,
    /// Address to serve HTTP on; port 0 picks a free port.
    pub http: SocketAddr,
    /// Seed the demo course, cohort and live session.
    pub demo: bool,
}

/// A running node.
pub struct Node {
    /// The address HTTP is served on.
    pub http_addr: SocketAddr,
    /// The node's live documents.
    pub hub: Hub,
    stop: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
}

/// The HTTP routes of a node.
pub fn router(hub: Hub) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .with_state(hub)
}

async fn healthz(State(hub): State<Hub>) -> Json<serde_json::Value> {
    let id = hub.identity();
    Json(json!({
        "status": "ok",
        "node": id.node_id.to_string(),
        "bootEpoch": id.boot_epoch,
        "docsLoaded": hub.loaded_docs(),
    }))
}

/// Opens the store, starts the hub and the HTTP server.
pub async fn start(config: NodeConfig) -> anyhow::Result<Node> {
    let dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&dir))
        .await
        .context("join the store-opening task")?
        .with_context(|| format!("open store at {}", config.data_dir.display()))?;
    let identity = store.identity();
    info!(
        node = %identity.node_id,
        boot_epoch = identity.boot_epoch,
        data_dir = %config.data_dir.display(),
        "node started"
    );
    let hub = Hub::new(store, HubConfig::default());
    if config.demo {
        seed_demo(&hub).await.context("seed the demo class")?;
    }
    let listener = tokio::net::TcpListener::bind(config.http)
        .await
        .with_context(|| format!("bind HTTP on {}", config.http))?;
    let http_addr = listener.local_addr().context("read the bound address")?;
    info!(%http_addr, "serving HTTP");
    let (stop, stopped) = oneshot::channel::<()>();
    let app = router(hub.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    Ok(Node {
        http_addr,
        hub,
        stop,
        server,
    })
}

impl Node {
    /// Stops serving, lets the hub finish queued work and flushes the store.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.server
            .await
            .context("join the HTTP server")?
            .context("serve HTTP")?;
        self.hub.shutdown().await.context("shut the hub down")?;
        info!("node stopped");
        Ok(())
    }
}

/// Runs a node until `shutdown` completes, then stops it cleanly.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let node = start(config).await?;
    shutdown.await;
    info!("shutdown requested");
    node.stop().await
}

/// The id of the demo session `--demo` seeds.
pub fn demo_session_id() -> &'static str {
    demo::DEMO_SESSION
}

/// A future that completes on SIGINT or SIGTERM: the signal that stops a node. The handlers
/// are installed when this function is called, not when the future is first polled, so a
/// signal that arrives in between is not lost to the default action.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        async move {
            match (int, term) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {},
                        _ = term.recv() => {},
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

//! A Lectern regional node: opens the sled store, runs the hub of live documents and serves
//! the gateway (Socket.IO, SSE, REST) over HTTP. `run(config, shutdown)` is the whole life of a
//! node; tests start one in-process on `127.0.0.1:0` with [`start`] and stop it with
//! [`Node::stop`].
//!
//! This crate is the only one that will know both HTTP and QUIC (an ARCHITECTURE.md
//! invariant); the mesh plugs in here.

pub mod config;
mod demo;
mod serve;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Json;
use axum::routing::get;
use lectern_gateway::auth::{Claims, PublicKey, PublicKeyAlg, mint};
use lectern_gateway::{AuthConfig, Gateway, GatewayConfig};
use lectern_hub::{Hub, HubConfig};
use lectern_jobs::{JobRunner, JobsConfig, MailIdentity, Mailer, SmtpConfig};
use lectern_store::Store;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::info;

pub use config::Config;
pub use demo::{DEMO_COHORT, DEMO_SESSION, seed_demo};

/// The demo's links, each with its token in a `token` query parameter.
#[derive(Debug, Clone)]
pub struct DemoLinks {
    /// The demo session's id.
    pub session: String,
    /// A student's link.
    pub student: String,
    /// The instructor's link.
    pub instructor: String,
}

/// A running node.
pub struct Node {
    /// The address HTTP is served on.
    pub http_addr: SocketAddr,
    /// The node's live documents.
    pub hub: Hub,
    /// The client-facing gateway.
    pub gateway: Gateway,
    /// The demo's links, when started with `demo`.
    pub demo: Option<DemoLinks>,
    /// The HS256 secret tokens are signed with (tests mint tokens with it).
    pub secret: Vec<u8>,
    /// The notification job runner.
    pub jobs: JobRunner,
    stop: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
}

fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The gateway's auth settings from the node's configuration.
fn auth_config(config: &Config, secret: Vec<u8>) -> anyhow::Result<AuthConfig> {
    let public_key = match (
        &config.auth.public_key_pem_file,
        &config.auth.public_key_alg,
    ) {
        (Some(file), Some(alg)) => {
            let pem = std::fs::read_to_string(file)
                .with_context(|| format!("read the public key {}", file.display()))?;
            let alg = match alg.as_str() {
                "EdDSA" => PublicKeyAlg::EdDsa,
                "RS256" => PublicKeyAlg::Rs256,
                other => anyhow::bail!("auth.public_key_alg: unknown algorithm {other}"),
            };
            Some(PublicKey { alg, pem })
        }
        (None, None) => None,
        _ => anyhow::bail!("auth.public_key_pem_file and auth.public_key_alg go together"),
    };
    Ok(AuthConfig {
        hs256_secret: secret,
        public_key,
        leeway_s: config.auth.leeway_s,
    })
}

/// Mints a demo token valid for a week.
fn demo_token(secret: &[u8], user: &str, name: &str, role: &str) -> anyhow::Result<String> {
    let now = unix_now_s();
    let claims = Claims {
        sub: user.into(),
        name: name.into(),
        role: role.into(),
        cohorts: vec![DEMO_COHORT.into()],
        exp: now + 7 * 24 * 3600,
        iat: now,
    };
    mint(secret, &claims).context("mint a demo token")
}

/// Opens the store, starts the hub, the gateway and the HTTP server.
pub async fn start(config: Config) -> anyhow::Result<Node> {
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
    let secret = config
        .resolve_secret()
        .context("resolve the token secret")?;
    let listener = tokio::net::TcpListener::bind(config.http)
        .await
        .with_context(|| format!("bind HTTP on {}", config.http))?;
    let http_addr = listener.local_addr().context("read the bound address")?;
    let public_base = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{http_addr}"));
    let jobs_config = jobs_config(&config, &secret, &public_base);
    let (queue, queue_rx) = lectern_jobs::queue(&jobs_config);
    let hub = Hub::new(
        store,
        HubConfig {
            jobs: Some(std::sync::Arc::new(queue)),
            ..HubConfig::default()
        },
    );
    let mailer = mailer(&config)?;
    let jobs = JobRunner::start(hub.clone(), queue_rx, mailer, jobs_config)
        .await
        .map_err(|e| anyhow::anyhow!(e))
        .context("start the job runner")?;
    let gateway_config = GatewayConfig {
        limits: config.limits.clone(),
        boards: lectern_gateway::BoardSettings {
            leaderboard_interval_ms: config.notify.leaderboard_interval_ms,
            dashboard_interval_ms: config.notify.dashboard_interval_ms,
            inactive_days: config.notify.inactive_days,
            ..Default::default()
        },
        ..GatewayConfig::new(auth_config(&config, secret.clone())?)
    };
    let (gateway, routes) =
        Gateway::new(hub.clone(), gateway_config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let demo = if config.demo {
        let session = seed_demo(&hub).await.context("seed the demo class")?;
        let base = public_base.clone();
        let link = |user: &str, name: &str, role: &str| -> anyhow::Result<String> {
            let token = demo_token(&secret, user, name, role)?;
            Ok(format!("{base}/?session={session}&token={token}"))
        };
        Some(DemoLinks {
            session: session.to_string(),
            student: link("student1", "Grace", "student")?,
            instructor: link("ada", "Ada (instructor)", "instructor")?,
        })
    } else {
        None
    };
    info!(%http_addr, "serving HTTP");
    let health_hub = hub.clone();
    let app = routes.route(
        "/healthz",
        get(move || {
            let hub = health_hub.clone();
            async move {
                let id = hub.identity();
                Json(json!({
                    "status": "ok",
                    "node": id.node_id.to_string(),
                    "bootEpoch": id.boot_epoch,
                    "docsLoaded": hub.loaded_docs(),
                }))
            }
        }),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve::serve(listener, app, gateway.clone(), stopped));
    Ok(Node {
        http_addr,
        hub,
        gateway,
        demo,
        secret,
        jobs,
        stop,
        server,
    })
}

/// The mail domain of the demo's users when nothing else is configured (`.invalid` is reserved:
/// nothing is ever delivered there, and without SMTP nothing is sent anyway).
pub const DEMO_EMAIL_DOMAIN: &str = "demo.invalid";

/// The job runner's settings from the node's configuration.
fn jobs_config(config: &Config, secret: &[u8], public_base: &str) -> JobsConfig {
    let n = &config.notify;
    JobsConfig {
        workers: n.workers,
        attempts_max: n.attempts_max,
        backoff_base_ms: n.backoff_base_ms,
        backoff_max_ms: n.backoff_max_ms,
        // The demo writes its emails to the outbox: give its users addresses there.
        email_domain: n
            .email_domain
            .clone()
            .or_else(|| (config.demo && n.smtp.is_none()).then(|| DEMO_EMAIL_DOMAIN.to_owned())),
        digest_offset_ms: n.digest_hour_utc * 3_600_000,
        digest_period_ms: n.digest_period_ms,
        ..JobsConfig::new(MailIdentity {
            from: n.from.clone(),
            public_url: public_base.to_owned(),
            // The gateway verifies unsubscribe links with the same key (GatewayConfig's default).
            unsubscribe_key: secret.to_vec(),
        })
    }
}

/// SMTP when configured, else the outbox folder (`{data_dir}/outbox` by default).
fn mailer(config: &Config) -> anyhow::Result<Mailer> {
    match &config.notify.smtp {
        Some(s) => Mailer::smtp(&SmtpConfig {
            host: s.host.clone(),
            port: s.port,
            tls: s.tls,
            username: s.username.clone(),
            password: s.password.clone(),
            timeout_ms: s.timeout_ms,
            connections_max: 4,
        })
        .map_err(|e| anyhow::anyhow!(e))
        .context("set up SMTP"),
        None => Ok(Mailer::Outbox(
            config
                .notify
                .outbox_dir
                .clone()
                .unwrap_or_else(|| config.data_dir.join("outbox")),
        )),
    }
}

impl Node {
    /// Tells clients to reconnect elsewhere, stops serving, lets the hub finish queued work
    /// and flushes the store.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.gateway.shutdown().await;
        let _ = self.stop.send(());
        self.server
            .await
            .context("join the HTTP server")?
            .context("serve HTTP")?;
        // Running jobs write inboxes through the hub: they finish (or stay queued) first.
        self.jobs.stop().await;
        self.hub.shutdown().await.context("shut the hub down")?;
        // Connection tasks that outlive the graceful shutdown by a moment still hold the router,
        // and through it the hub and the open store. Wait for them, so that the data directory
        // is free when `stop` returns (a restart in the same process must be able to open it).
        drop(self.gateway);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.hub.handles() > 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if self.hub.handles() > 1 {
            tracing::warn!("the store is still held after 5 s; it closes when the last user goes");
        }
        drop(self.hub);
        info!("node stopped");
        Ok(())
    }
}

/// Runs a node until `shutdown` completes, then stops it cleanly.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let node = start(config).await?;
    shutdown.await;
    info!("shutdown requested");
    node.stop().await
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

//! A Lectern regional node: opens the sled store, runs the hub of live documents and serves
//! the gateway (Socket.IO, SSE, REST) over HTTP. `run(config, shutdown)` is the whole life of a
//! node; tests start one in-process on `127.0.0.1:0` with [`start`] and stop it with
//! [`Node::stop`].
//!
//! This crate is the only one that knows both HTTP and QUIC (an ARCHITECTURE.md invariant):
//! it starts the mesh (`lectern-mesh`) next to the gateway when `mesh.tls_dir` is configured,
//! and serves the admin API (`/admin/status`, `/admin/peers`) that reports on both.

mod admin;
pub mod backup;
mod blobs;
mod classroom;
pub mod config;
mod demo;
mod demo_course;
pub mod error_tracking;
mod metrics;
mod presence;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Json;
use axum::routing::get;
use lectern_gateway::auth::{Claims, PublicKey, PublicKeyAlg, mint};
use lectern_gateway::{AuthConfig, Gateway, GatewayConfig};
use lectern_hub::{Hub, HubConfig};
use lectern_jobs::{JobRunner, JobsConfig, MailIdentity, Mailer, SmtpConfig};
use lectern_mesh::{Mesh, MeshConfig, NodeTls, PeerAddr};
use lectern_store::Store;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::info;

pub use config::{Config, create_cluster_secret, install_cluster_secret};
pub use demo::{DEMO_COHORT, DEMO_SESSION, seed_demo};
pub use demo_course::DEMO_COURSE;

/// How long [`Node::stop`] waits for the tasks that outlive the graceful shutdown (connection
/// tasks past the drain, mesh tasks being aborted) to let go of the hub and so of the store.
/// The wait ends as soon as they are gone (milliseconds, in every test that stops a node); past
/// it, `stop` returns anyway and the store closes when the last handle goes.
const STORE_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

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
    /// The private address of `/metrics` and `/admin/*`, when `admin_http` is set.
    pub admin_addr: Option<SocketAddr>,
    admin_server: Option<AdminServer>,
    /// The node's live documents.
    pub hub: Hub,
    /// The client-facing gateway.
    pub gateway: Gateway,
    /// The demo's links, when started with `demo`.
    pub demo: Option<DemoLinks>,
    /// The HS256 secret tokens are signed with (tests mint tokens with it).
    pub secret: Vec<u8>,
    /// The regional mesh, when configured.
    pub mesh: Option<Arc<Mesh>>,
    /// The content blob store (`{data_dir}/content`).
    pub content: Arc<lectern_content::BlobStore>,
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
        token_lifetime_max_s: config.auth.token_lifetime_max_s,
        audience: config.auth.audience.clone(),
        issuer: config.auth.issuer.clone(),
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
        nbf: None,
    };
    mint(secret, &claims).context("mint a demo token")
}

/// The demo session's links on the node at `base`.
pub fn demo_links(secret: &[u8], base: &str) -> anyhow::Result<DemoLinks> {
    let link = |user: &str, name: &str, role: &str| -> anyhow::Result<String> {
        let token = demo_token(secret, user, name, role)?;
        Ok(format!("{base}/?session={DEMO_SESSION}&token={token}"))
    };
    Ok(DemoLinks {
        session: DEMO_SESSION.to_owned(),
        student: link("student1", "Grace", "student")?,
        instructor: link("ada", "Ada (instructor)", "instructor")?,
    })
}

/// The directory under the data directory that holds the content blobs.
pub const CONTENT_DIR_NAME: &str = "content";

/// Opens the store, starts the hub, the gateway and the HTTP server.
pub async fn start(config: Config) -> anyhow::Result<Node> {
    let dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&dir))
        .await
        .context("join the store-opening task")?
        .with_context(|| format!("open store at {}", config.data_dir.display()))?;
    start_on(config, store).await
}

/// [`start`] on a store the caller opened on `config.data_dir`, so that it can install a
/// [`lectern_store::CommitHook`] before anything (the job runner's first jobs) writes.
pub async fn start_on(mut config: Config, store: Store) -> anyhow::Result<Node> {
    // A classroom node: its upstream among the peers, its cohorts as the share policy.
    let classroom = config.classroom.clone();
    classroom.apply(&mut config.mesh)?;
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
            // With peers, a client failing over from a node that is ahead waits for the mesh.
            resume_wait_ms: if config.mesh.tls_dir.is_some() {
                config.mesh.resume_wait_ms
            } else {
                0
            },
            ..HubConfig::default()
        },
    );
    // The flags in force before anything is served: a feature switched off stays off across
    // a restart.
    hub.load_flags()
        .await
        .map_err(|e| anyhow::anyhow!("load the feature flags: {e}"))?;
    let mailer = mailer(&config)?;
    // Content blobs live beside the store's files, in their own directory.
    let content_dir = config.data_dir.join(CONTENT_DIR_NAME);
    let content = tokio::task::spawn_blocking(move || {
        lectern_content::BlobStore::open(&content_dir, lectern_content::BlobLimits::default())
    })
    .await
    .context("join the content-opening task")?
    .context("open the content blob store")?;
    let content = std::sync::Arc::new(content);
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
            dashboard_sessions_max: config.notify.dashboard_sessions_max,
        },
        content: Some(content.clone()),
        keepalive_s: config.sse_keepalive_s,
        // Pages fail over to the cluster's other nodes: this one first, then the configured.
        nodes: if config.cluster_urls.is_empty() {
            Vec::new()
        } else {
            std::iter::once(public_base.clone())
                .chain(
                    config
                        .cluster_urls
                        .iter()
                        .filter(|u| **u != public_base)
                        .cloned(),
                )
                .collect()
        },
        // Pages of the public URL may use the cookie too (behind a proxy its host is not the
        // request's `Host`).
        allowed_origins: std::iter::once(public_base.clone())
            .chain(config.allowed_origins.iter().cloned())
            .collect(),
        classroom: config.classroom.classroom_policy(),
        ..GatewayConfig::new(auth_config(&config, secret.clone())?)
    };
    let (gateway, routes) =
        Gateway::new(hub.clone(), gateway_config).map_err(|e| anyhow::anyhow!("{e}"))?;
    gateway.add_metrics(metrics::jobs(&jobs));
    gateway.add_metrics(metrics::hub(&hub));
    gateway.add_metrics(metrics::content(&content));
    gateway.add_metrics(metrics::process());
    let demo = if config.demo {
        seed_demo(&hub).await.context("seed the demo class")?;
        demo_course::seed_demo_course(&hub, &content).await?;
        Some(demo_links(&secret, &public_base)?)
    } else if config.demo_links {
        Some(demo_links(&secret, &public_base)?)
    } else {
        None
    };
    let mesh = match &config.mesh.tls_dir {
        Some(dir) => {
            let mesh = start_mesh(&config, dir, hub.clone(), &content).await?;
            presence::start(gateway.clone(), &mesh);
            blobs::start(
                hub.clone(),
                content.clone(),
                &mesh,
                config.mesh.prefetch_content,
            );
            if config.classroom.is_on() {
                classroom::start(&gateway, &mesh, config.classroom.clone());
            }
            gateway.add_metrics(metrics::mesh(&mesh));
            Some(mesh)
        }
        None => None,
    };
    info!(%http_addr, "serving HTTP");
    let admin_routes = admin::routes(admin::AdminParts {
        hub: hub.clone(),
        gateway: gateway.clone(),
        mesh: mesh.clone(),
        content: content.clone(),
        jobs: jobs.control(),
        token: config.admin_token.clone(),
        classroom: config.classroom.is_on().then(|| config.classroom.clone()),
        flags_writable: config.mesh.share_cohorts.is_none(),
    });
    let (health_hub, health_gateway) = (hub.clone(), gateway.clone());
    let health = get(move || {
        let (hub, gateway) = (health_hub.clone(), health_gateway.clone());
        async move {
            let id = hub.identity();
            // Alive either way; a draining node fails `/readyz` instead.
            let status = if gateway.is_draining() {
                "draining"
            } else {
                "ok"
            };
            Json(json!({
                "status": status,
                "node": id.node_id.to_string(),
                "bootEpoch": id.boot_epoch,
                "docsLoaded": hub.loaded_docs(),
            }))
        }
    });
    let (app, admin_server) = match config.admin_http {
        None => (routes.merge(admin_routes).route("/healthz", health), None),
        Some(addr) => {
            let admin_server =
                AdminServer::start(addr, admin_routes, health.clone(), &gateway).await?;
            let app = routes
                .route("/healthz", health)
                .layer(axum::middleware::from_fn(hide_operator_routes));
            (app, Some(admin_server))
        }
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let app = gateway.front_door(app);
    let server = tokio::spawn(lectern_gateway::serve(
        listener,
        app,
        gateway.clone(),
        stopped,
    ));
    Ok(Node {
        http_addr,
        admin_addr: admin_server.as_ref().map(|a| a.addr),
        admin_server,
        hub,
        gateway,
        demo,
        secret,
        mesh,
        content,
        jobs,
        stop,
        server,
    })
}

/// The operator's listener (`admin_http`): `/metrics`, `/admin/*` and `/healthz` on a private
/// address, served by axum (a handful of requests a minute; none of the public listener's
/// memory concerns apply).
struct AdminServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl AdminServer {
    async fn start(
        addr: SocketAddr,
        admin_routes: axum::Router,
        health: axum::routing::MethodRouter,
        gateway: &Gateway,
    ) -> anyhow::Result<AdminServer> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind the admin listener on {addr}"))?;
        let addr = listener.local_addr().context("read the admin address")?;
        let gw = gateway.clone();
        let app = admin_routes.route("/healthz", health).route(
            "/metrics",
            get(move || {
                let gw = gw.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        gw.metrics_text(),
                    )
                }
            }),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        info!(%addr, "serving /metrics and /admin on the admin listener");
        Ok(AdminServer { addr, stop, task })
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the admin listener failed"),
            Err(e) => tracing::warn!(error = %e, "the admin listener task failed"),
        }
    }
}

/// With a separate admin listener, the public one answers 404 for the operator's routes (as if
/// they did not exist: nothing tells a client where they are).
async fn hide_operator_routes(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = request.uri().path();
    if path == "/metrics" || path == "/admin" || path.starts_with("/admin/") {
        use axum::response::IntoResponse;
        return (
            axum::http::StatusCode::NOT_FOUND,
            Json(json!({"error": {"code": "not_found", "message": "no such route"}})),
        )
            .into_response();
    }
    next.run(request).await
}

/// The regions of a demo cluster's nodes, in order.
const DEMO_REGIONS: [&str; 9] = [
    "sydney", "berlin", "virginia", "tokyo", "saopaulo", "mumbai", "london", "toronto", "cairo",
];

/// Starts a demo cluster of `n` nodes in this process (see `lectern-node --demo --nodes`): a
/// cluster CA and node certificates under `{data_dir}/cluster`, one store per node under
/// `{data_dir}/{name}`, HTTP and QUIC ports counted up from the configured ones, every node
/// dialling the ones started before it. Port 0 for HTTP or QUIC gives every node a free port.
/// The first node seeds the demo class; the others receive it over the mesh. Returns
/// `(name, node)` in order.
pub async fn start_demo_cluster(config: Config, n: usize) -> anyhow::Result<Vec<(String, Node)>> {
    start_demo_cluster_with(config, n, false).await
}

/// The name of the classroom node of a demo cluster (`--demo-classroom`).
pub const DEMO_CLASSROOM: &str = "classroom";

/// [`start_demo_cluster`], and with `classroom` one more node, [`DEMO_CLASSROOM`]: a classroom
/// node of the demo cohort whose upstream is the first node (which holds it to that cohort),
/// so its instructor page shows the uplink and makes join codes (ports: the next after the
/// region nodes').
pub async fn start_demo_cluster_with(
    config: Config,
    n: usize,
    classroom: bool,
) -> anyhow::Result<Vec<(String, Node)>> {
    let n = n.clamp(1, DEMO_REGIONS.len());
    let cluster_dir = config.data_dir.join("cluster");
    let ca_dir = cluster_dir.join("ca");
    let ca = if ca_dir.join(lectern_mesh::tls::CA_CERT_FILE).is_file() {
        lectern_mesh::ClusterCa::read(&ca_dir)?
    } else {
        let ca = lectern_mesh::ClusterCa::generate()?;
        ca.write(&ca_dir)?;
        ca
    };
    let secret = config
        .resolve_secret()
        .context("resolve the token secret")?;
    let secret = String::from_utf8(secret).context("the demo secret must be text")?;
    let port = |base: u16, i: usize| -> u16 {
        if base == 0 {
            0
        } else {
            base.saturating_add(u16::try_from(i).unwrap_or(u16::MAX))
        }
    };
    let names: Vec<&str> = DEMO_REGIONS[..n].to_vec();
    let mut nodes: Vec<(String, Node)> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let tls_dir = cluster_dir.join(name);
        if !tls_dir.join(lectern_mesh::tls::NODE_CERT_FILE).is_file() {
            ca.issue_node(name, lectern_mesh::tls::NODE_CERT_VALIDITY_DEFAULT)?
                .write(&tls_dir)?;
        }
        let mut c = config.clone();
        c.data_dir = config.data_dir.join(name);
        c.http = SocketAddr::new(config.http.ip(), port(config.http.port(), i));
        c.admin_http = config
            .admin_http
            .map(|a| SocketAddr::new(a.ip(), port(a.port(), i)));
        c.auth.hs256_secret = Some(secret.clone());
        c.demo = i == 0;
        c.demo_links = i != 0;
        c.public_url = None;
        // With known ports, the pages learn the other demo nodes for failover (`/api/nodes`).
        c.cluster_urls = if config.http.port() == 0 {
            Vec::new()
        } else {
            (0..n)
                .filter(|j| *j != i)
                .map(|j| {
                    format!(
                        "http://{}:{}",
                        config.http.ip(),
                        port(config.http.port(), j)
                    )
                })
                .collect()
        };
        c.mesh.name = (*name).to_owned();
        c.mesh.region = (*name).to_owned();
        c.mesh.listen =
            SocketAddr::new(config.mesh.listen.ip(), port(config.mesh.listen.port(), i));
        c.mesh.tls_dir = Some(tls_dir);
        // Each node dials the ones started before it (their addresses are known by now, even
        // with port 0): every pair is connected once.
        c.mesh.peers = nodes
            .iter()
            .filter_map(|(peer, node)| {
                let addr = node.mesh.as_ref()?.local_addr().ok()?;
                Some(format!("{peer}@{addr}"))
            })
            .collect();
        // ...and admits the ones started after it (every other node of the demo).
        c.mesh.accept_from = names.iter().map(|n| (*n).to_owned()).collect();
        if classroom && i == 0 {
            // The classroom dials the first node, which holds it to the demo cohort.
            c.mesh.accept_from.push(DEMO_CLASSROOM.to_owned());
            c.mesh
                .peer_cohorts
                .push((DEMO_CLASSROOM.to_owned(), vec![DEMO_COHORT.to_owned()]));
        }
        let node = start(c)
            .await
            .with_context(|| format!("start demo node {name}"))?;
        nodes.push(((*name).to_owned(), node));
    }
    if classroom {
        let tls_dir = cluster_dir.join(DEMO_CLASSROOM);
        if !tls_dir.join(lectern_mesh::tls::NODE_CERT_FILE).is_file() {
            ca.issue_node(
                DEMO_CLASSROOM,
                lectern_mesh::tls::NODE_CERT_VALIDITY_DEFAULT,
            )?
            .write(&tls_dir)?;
        }
        let (first, first_node) = nodes.first().context("a demo cluster has a first node")?;
        let upstream = first_node
            .mesh
            .as_ref()
            .and_then(|m| m.local_addr().ok())
            .context("the first demo node runs a mesh")?;
        let mut c = config.clone();
        c.data_dir = config.data_dir.join(DEMO_CLASSROOM);
        c.http = SocketAddr::new(config.http.ip(), port(config.http.port(), n));
        c.admin_http = config
            .admin_http
            .map(|a| SocketAddr::new(a.ip(), port(a.port(), n)));
        c.auth.hs256_secret = Some(secret.clone());
        c.demo = false;
        c.demo_links = true;
        c.public_url = None;
        c.cluster_urls = Vec::new();
        c.mesh.name = DEMO_CLASSROOM.to_owned();
        c.mesh.region = DEMO_CLASSROOM.to_owned();
        c.mesh.listen =
            SocketAddr::new(config.mesh.listen.ip(), port(config.mesh.listen.port(), n));
        c.mesh.tls_dir = Some(tls_dir);
        c.mesh.peers = Vec::new();
        c.mesh.accept_from = Vec::new();
        c.classroom.upstream = Some(format!("{first}@{upstream}"));
        c.classroom.cohorts = Some(vec![DEMO_COHORT.to_owned()]);
        let node = start(c).await.context("start the demo classroom node")?;
        nodes.push((DEMO_CLASSROOM.to_owned(), node));
    }
    Ok(nodes)
}

/// The revocation lists this node learned from its peers, in its data directory (PEM).
pub const REVOCATIONS_FILE: &str = "mesh-crl.pem";

/// Starts the mesh from the node's configuration.
async fn start_mesh(
    config: &Config,
    tls_dir: &std::path::Path,
    hub: Hub,
    content: &Arc<lectern_content::BlobStore>,
) -> anyhow::Result<Arc<Mesh>> {
    let tls = NodeTls::load(tls_dir)?;
    let settings = &config.mesh;
    let mut mesh_config = MeshConfig::new(&settings.name, &settings.region, settings.listen, tls);
    mesh_config.peers = settings
        .peers
        .iter()
        .map(|p| p.parse::<PeerAddr>())
        .collect::<anyhow::Result<Vec<_>>>()?;
    mesh_config.accept_from = settings.accept_from.clone();
    mesh_config.push_coalesce_ms = settings.push_coalesce_ms;
    mesh_config.backoff_max_ms = settings.reconnect_max_ms;
    mesh_config.idle_timeout_ms = settings.peer_idle_timeout_ms;
    mesh_config.connect_timeout_ms = settings.connect_timeout_ms;
    mesh_config.handshakes_max = settings.handshakes_max;
    mesh_config.tls_dir = Some(tls_dir.to_path_buf());
    mesh_config.tls_reload_ms = settings.tls_reload_ms;
    mesh_config.revocations_file = Some(config.data_dir.join(REVOCATIONS_FILE));
    mesh_config.backoff_min_ms = mesh_config.backoff_min_ms.min(settings.reconnect_max_ms);
    mesh_config.blobs = Some(Arc::new(blobs::StoreSource(content.clone())));
    // Each filter's refresh ticks when it admits new sessions: anti-entropy runs again.
    let mut admitted = Vec::new();
    if let Some(cohorts) = &settings.share_cohorts {
        let (filter, ticks) = admin::share_filter(&hub, cohorts);
        mesh_config.share = filter;
        admitted.push(ticks);
    }
    let mut scopes = std::collections::HashMap::new();
    for (peer, cohorts) in &settings.peer_cohorts {
        let (filter, ticks) = admin::share_filter(&hub, cohorts);
        scopes.insert(peer.clone(), filter);
        admitted.push(ticks);
    }
    mesh_config.peer_scopes = Arc::new(scopes);
    let mesh = Arc::new(
        Mesh::start(mesh_config, hub)
            .await
            .with_context(|| format!("start the mesh on {}", settings.listen))?,
    );
    for mut ticks in admitted {
        // New sessions admitted by the share policy: run anti-entropy again to fetch them.
        // Ends when the mesh stops, dropping the ticks, which ends the share policy's refresh
        // task and its handle on the hub (so a stopped node lets go of its store).
        let mesh = mesh.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = ticks.changed() => match changed {
                        Ok(()) => mesh.resync(),
                        Err(_) => return,
                    },
                    () = mesh.stopped() => return,
                }
            }
        });
    }
    Ok(mesh)
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
        finished_kept_ms: n.finished_jobs_kept_ms,
        park_unreachable_ms: n.park_unreachable_ms,
        park_probe_max_ms: n.park_probe_max_ms,
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
        if let Some(mesh) = &self.mesh {
            mesh.stop().await;
        }
        self.gateway.shutdown().await;
        let _ = self.stop.send(());
        if let Some(admin) = self.admin_server {
            admin.stop().await;
        }
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
        drop(self.mesh);
        let deadline = std::time::Instant::now() + STORE_RELEASE_WAIT;
        while self.hub.handles() > 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if self.hub.handles() > 1 {
            tracing::warn!(
                "the store is still held after {STORE_RELEASE_WAIT:?}; it closes when the last user goes"
            );
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

/// The node's log subscriber: `filter` decides the levels (`LECTERN_LOG`), `format` the lines
/// (text, or one JSON object a line with the timestamp, level, target, message and fields),
/// `writer` where they go (stderr for `lectern-node`).
pub fn log_subscriber<W>(
    format: config::LogFormat,
    filter: tracing_subscriber::EnvFilter,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt;
    // Error-level events also go to error tracking (a no-op unless `error_tracking::init`
    // started it). A registry, because that layer filters on its own.
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(error_tracking::layer());
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        config::LogFormat::Text => Box::new(registry.with(fmt)),
        config::LogFormat::Json => Box::new(registry.with(fmt.json().flatten_event(true))),
    }
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

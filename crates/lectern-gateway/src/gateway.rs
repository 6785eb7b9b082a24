//! The [`Gateway`] itself: its settings, the state every transport shares (the hub, the token
//! verifier, the limiter, presence, metrics, the shutdown signal, the board tickers, the
//! Socket.IO handle), its life (build, drain, shutdown) and the narrow accessors the transports
//! use. The state's fields are private to this file: a transport asks for what it needs by
//! name (`take_command_token`, `connection_slot`, `shutdown_signal`, …), so what each part of
//! the gateway touches can be read off its calls.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use lectern_hub::Hub;
use lectern_model::SessionId;
use serde_json::Value;
use socketioxide::SocketIo;
use tokio::sync::watch;

use crate::admission;
use crate::auth::{self, Verified, Verifier};
use crate::boards::{BoardSettings, Boards};
use crate::config::ClassroomPolicy;
use crate::config::GatewayConfig;
use crate::error::AppError;
use crate::fanout::{Fanouts, Outlet};
use crate::limits::{self, ConnSlot, Limits};
use crate::metrics::{self, MetricsSection};
use crate::presence::Presence;
use crate::sync::lock;
use crate::uplink::{UplinkReport, UplinkSource};
use crate::{router, sio, socket};

/// The gateway's shared state, private to this file (the transports use the accessors below).
struct Inner {
    hub: Hub,
    verifier: Verifier,
    limiter: Arc<limits::Limiter>,
    presence: Presence,
    /// The Socket.IO handle. It holds the gateway as its state, so shutdown takes it out to
    /// break that cycle.
    io: Mutex<Option<SocketIo>>,
    metrics: metrics::Metrics,
    shutting_down: AtomicBool,
    shutdown: watch::Sender<bool>,
    keepalive: Duration,
    boards: Boards,
    boards_settings: BoardSettings,
    /// Origins whose pages may authenticate with the cookie (see `auth::origin_allowed`).
    origins: Vec<String>,
    /// Connections waiting to authenticate (see `admission.rs`).
    admission: Arc<admission::Admission>,
    /// How long a request body may take once its head is in.
    body_timeout: Duration,
    /// The node's content blob store, if it has one.
    content: Option<Arc<lectern_content::BlobStore>>,
    /// The cluster's public client URLs (for CORS on the routes the front door serves first).
    nodes: Vec<String>,
    /// Set by [`Gateway::drain`], cleared by [`Gateway::undrain`].
    draining: AtomicBool,
    /// A classroom node's policy (token extensions, join codes) and the key it signs tokens
    /// and join-code keys with; `None` on any other node.
    classroom: Option<(ClassroomPolicy, Arc<[u8]>)>,
    /// Join-code attempts per session (`join.rs`), apart from the users' command buckets.
    join_attempts: Arc<limits::Limiter>,
    /// A classroom node's uplink, given by the node once its mesh runs (`uplink.rs`).
    uplink: Mutex<Option<UplinkSource>>,
    /// The write-through fan-outs of the channels lean connections follow (`fanout.rs`).
    fanouts: Fanouts,
}

/// The gateway. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl Gateway {
    /// Builds the gateway and its router.
    pub fn new(hub: Hub, config: GatewayConfig) -> Result<(Gateway, Router), AppError> {
        let verifier = Verifier::new(&config.auth)?;
        let limits = config.limits.clone();
        let (shutdown, _) = watch::channel(false);
        let gw = Gateway {
            inner: Arc::new(Inner {
                hub,
                verifier,
                limiter: Arc::new(limits::Limiter::new(limits.clone())),
                presence: Presence::default(),
                io: Mutex::new(None),
                metrics: metrics::Metrics::default(),
                shutting_down: AtomicBool::new(false),
                shutdown,
                keepalive: Duration::from_secs(config.keepalive_s.max(1)),
                boards: Boards::default(),
                boards_settings: config.boards.clone(),
                origins: config
                    .allowed_origins
                    .iter()
                    .chain(&config.nodes)
                    .cloned()
                    .collect(),
                admission: Arc::new(admission::Admission::new(
                    limits.preauth_max,
                    limits.preauth_per_address_max,
                )),
                body_timeout: Duration::from_millis(limits.body_read_timeout_ms.max(1)),
                content: config.content.clone(),
                nodes: config.nodes.clone(),
                draining: AtomicBool::new(false),
                // Tokens are signed with the cluster's HS256 key: without one, no classroom.
                classroom: config
                    .classroom
                    .clone()
                    .filter(|_| {
                        let keyed = !config.auth.hs256_secret.is_empty();
                        if !keyed {
                            tracing::warn!(
                                "a classroom node without an HS256 token key: no token extensions and no join codes"
                            );
                        }
                        keyed
                    })
                    .map(|p| (p, Arc::from(config.auth.hs256_secret.as_slice()))),
                join_attempts: Arc::new(limits::Limiter::new(crate::join::attempt_limits())),
                uplink: Mutex::new(None),
                fanouts: Fanouts::default(),
            }),
        };
        let admission = gw.inner.admission.clone();
        gw.add_metrics(Arc::new(move |out: &mut String| admission.render(out)));
        // socketioxide takes its state at build time, and the gateway holds the io handle:
        // the handle is set once, right after.
        let (layer, io) = SocketIo::builder()
            .max_payload(limits.payload_max_bytes as u64)
            // `max_payload` bounds polling bodies only; WebSocket messages have their own
            // limits (64 MiB by default), held to the same payload limit here.
            .ws_max_message_size(limits.payload_max_bytes)
            .ws_max_frame_size(limits.payload_max_bytes)
            .max_buffer_size(limits.outbound_queue_max)
            .ws_read_buffer_size(512)
            .ping_interval(Duration::from_millis(limits.ping_interval_ms.max(1)))
            .ping_timeout(Duration::from_millis(limits.ping_timeout_ms.max(1)))
            .connect_timeout(Duration::from_millis(limits.connect_timeout_ms.max(1)))
            .with_state(gw.clone())
            .build_layer();
        socket::register(&io);
        *lock(&gw.inner.io) = Some(io);
        let router = router::build(&gw, &config, layer);
        Ok((gw, router))
    }

    /// The hub behind the gateway.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// Prometheus text for `/metrics`.
    pub fn metrics_text(&self) -> String {
        self.inner
            .metrics
            .render(self.inner.limiter.connections(), &self.inner.hub)
    }

    /// Drains the node for maintenance: new Socket.IO connections and streams are refused
    /// (503 `draining`; REST and the admin API still answer), `/readyz` answers 503 `draining`
    /// so a load balancer sends no one here, and every connected client is told to reconnect
    /// to another node (`server:shutdown` with `reconnect: true`; the page carries its resume
    /// tokens there) and its connection ends. Requests in flight finish.
    /// [`Gateway::undrain`] takes clients again.
    pub async fn drain(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
        self.inner.shutdown.send_replace(true);
        let io = lock(&self.inner.io).clone();
        if let Some(io) = io {
            let _ = io.emit("server:shutdown", &sio::shutdown_payload()).await;
            let _ = io.disconnect().await;
        }
    }

    /// Ends a drain: the node takes new clients again.
    pub fn undrain(&self) {
        self.inner.draining.store(false, Ordering::SeqCst);
        self.inner.shutdown.send_replace(false);
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Client connections open now (Socket.IO, SSE, long-poll), what a drain waits to see at 0.
    pub fn connections(&self) -> usize {
        self.inner.limiter.connections()
    }

    /// The node's whole router (the gateway's routes and the node's own), with what every
    /// request passes first: its body read under the body deadline (408 `body_timeout`), and
    /// its JSON answer compressed when the client accepts it.
    pub fn front_door(&self, app: Router) -> Router {
        let cacheable = router::cacheable(self, self.inner.content.clone(), &self.inner.nodes);
        router::front_door(app, self.inner.body_timeout, cacheable)
    }

    /// Adds a section to `/metrics` (the node's job runner and mesh add theirs).
    pub fn add_metrics(&self, section: MetricsSection) {
        self.inner.metrics.add_section(section);
    }

    /// Tells every client to reconnect elsewhere and ends every stream.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        self.inner.shutdown.send_replace(true);
        let io = lock(&self.inner.io).take();
        if let Some(io) = io {
            let _ = io.emit("server:shutdown", &sio::shutdown_payload()).await;
            io.close().await;
        }
    }

    /// Whether the node is stopping (streams end, leaving users are not recorded as leaving).
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::SeqCst)
    }

    /// Admits a connection accepted from `address`, before a byte of it is read: its place
    /// among the connections waiting to authenticate (held until it authenticates or ends), or
    /// the refusal to answer at once ([`admission::Refused::response`]) before closing it.
    pub(crate) fn admit(
        &self,
        address: std::net::IpAddr,
    ) -> Result<admission::Admitted, admission::Refused> {
        self.inner.admission.admit(address)
    }

    /// The token of a request (see [`auth::token_from_parts`]), with this node's origins.
    pub(crate) fn request_token(
        &self,
        headers: &axum::http::HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<String>, auth::AuthError> {
        auth::token_from_parts(headers, query, &self.inner.origins)
    }

    /// A classroom node's policy and the key that signs its tokens, if this is one.
    pub(crate) fn classroom_policy(&self) -> Option<(ClassroomPolicy, Arc<[u8]>)> {
        self.inner.classroom.clone()
    }

    /// Sets where a classroom node's uplink report comes from (`GET /api/classroom`); the node
    /// calls it once its mesh runs.
    pub fn set_uplink(&self, source: UplinkSource) {
        *lock(&self.inner.uplink) = Some(source);
    }

    /// The classroom node's uplink now, if this is one.
    pub(crate) fn uplink_report(&self) -> Option<UplinkReport> {
        let source = lock(&self.inner.uplink).clone();
        source.and_then(|f| f())
    }

    /// Takes one join-code attempt from `session`'s bucket (see `join.rs`).
    pub(crate) fn take_join_attempt(&self, session: &str) -> Result<(), AppError> {
        self.inner.join_attempts.command(session).map_err(|_| {
            AppError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many join-code attempts for this session: wait a minute and try again",
            )
        })
    }

    /// Verifies a token presented for an extension ([`Verifier::verify_for_refresh`]).
    pub(crate) fn verify_for_refresh(
        &self,
        token: &str,
        now_s: u64,
        grace_s: u64,
    ) -> Result<auth::Presented, AppError> {
        Ok(self
            .inner
            .verifier
            .verify_for_refresh(token, now_s, grace_s)?)
    }

    /// Verifies a token (None → `missing_token`).
    pub(crate) fn verify(&self, token: Option<&str>) -> Result<Verified, AppError> {
        let token = token.ok_or(auth::AuthError::Missing)?;
        Ok(self.inner.verifier.verify(token, auth::unix_now_s())?)
    }

    /// Takes a token from `bucket`'s command rate (a user id, or a named bucket such as
    /// `unsubscribe:{user}`): every command, and every read or stream that loads a document,
    /// pays one, so no client loads documents faster than it may send commands.
    pub(crate) fn take_command_token(&self, bucket: &str) -> Result<(), AppError> {
        self.inner.limiter.command(bucket)
    }

    /// A connection slot of `user` under the per-user and node-wide caps, held by a stream or
    /// a socket while it lives.
    pub(crate) fn connection_slot(&self, user: &str) -> Result<ConnSlot, AppError> {
        self.inner.limiter.connect(user)
    }

    /// The rates, sizes and caps the gateway runs under.
    pub(crate) fn limits(&self) -> &Limits {
        self.inner.limiter.limits()
    }

    /// The fan-outs lean connections follow their channels through.
    pub(crate) fn fanouts(&self) -> &Fanouts {
        &self.inner.fanouts
    }

    /// An outlet for a lean connection's `stream`, with the outbound queue's budget.
    pub(crate) fn outlet(&self, stream: tokio::net::TcpStream) -> Arc<Outlet> {
        let limits = self.limits();
        Outlet::new(stream, limits.outbound_queue_max, limits.outbound_bytes_max)
    }

    /// The gateway's counters, for the parts that count what they do.
    pub(crate) fn metrics(&self) -> &metrics::Metrics {
        &self.inner.metrics
    }

    /// Counts a refused HTTP request (see `router::count_rejections`).
    pub(crate) fn count_rejection(&self, code: &str) {
        self.inner.metrics.rejected_named(code);
    }

    /// Turns `true` when every stream must end (drain or shutdown).
    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    /// How long an SSE stream stays silent before a keep-alive comment.
    pub(crate) fn keepalive(&self) -> Duration {
        self.inner.keepalive
    }

    /// The running board tickers (see `boards.rs`).
    pub(crate) fn boards(&self) -> &Boards {
        &self.inner.boards
    }

    /// How often boards update, and what the dashboard counts.
    pub(crate) fn board_settings(&self) -> &BoardSettings {
        &self.inner.boards_settings
    }

    /// Who is present in which session on this node and on its peers (see `presence.rs`).
    pub(crate) fn presence(&self) -> &Presence {
        &self.inner.presence
    }

    /// Emits `event` with `payload` to every socketioxide socket that joined `session` (the
    /// lean WebSocket's sockets follow their own feeds).
    pub(crate) async fn emit_to_session(&self, session: &SessionId, event: &str, payload: &Value) {
        let io = lock(&self.inner.io).clone();
        if let Some(io) = io {
            let _ = io
                .to(socket::session_room(session))
                .emit(event, payload)
                .await;
        }
    }
}

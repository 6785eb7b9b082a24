//! The client-facing gateway of a node: Socket.IO (a lean WebSocket transport of our own, and
//! socketioxide for long-polling and upgrades), SSE, REST and a long-poll events route, all
//! behind JWT authentication and limits, all speaking to the hub.
//!
//! Every transport turns a request into the same thing: an authenticated [`Caller`] and a
//! [`Command`] for the hub, or a subscription to a document's events. Authorization is the
//! model's (`lectern-model`), so it is the same on every transport; failures are one
//! [`AppError`] with a stable code.

mod admission;
pub mod auth;
mod boards;
mod commands;
mod courses;
mod error;
mod front;
#[doc(hidden)]
pub mod fuzzing;
mod limits;
mod metrics;
mod nodes;
mod notifications;
mod page;
mod rest;
mod sio;
mod socket;
mod sse;
mod ws;
mod wsframe;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::http::StatusCode;
use lectern_hub::{Acked, Hub};
use lectern_model::{Caller, Command, CommandBody, CommandId, DocId, SessionId};
use serde_json::{Value, json};
use socketioxide::SocketIo;
use tokio::sync::{broadcast, watch};

pub use auth::{AuthConfig, Verified, Verifier};
pub use boards::BoardSettings;
pub use error::AppError;
pub use front::serve;
pub use limits::Limits;
pub use metrics::MetricsSection;

use commands::{Body, Parsed};

/// Gateway settings.
#[derive(Clone)]
pub struct GatewayConfig {
    /// Token verification.
    pub auth: AuthConfig,
    /// Rates, sizes and caps.
    pub limits: Limits,
    /// Seconds between SSE keep-alive comments. Default 15.
    pub keepalive_s: u64,
    /// The key unsubscribe links in emails are signed with (the node's job runner signs them
    /// with the same key). Default: the HS256 token secret; the signed text is
    /// domain-separated, so no signature of one kind passes as the other.
    pub unsubscribe_key: Vec<u8>,
    /// The leaderboard and instructor dashboard streams.
    pub boards: BoardSettings,
    /// The node's content blob store, served at `/content/{sha256}`; `None` serves no content.
    pub content: Option<std::sync::Arc<lectern_content::BlobStore>>,
    /// The public client URLs of this node and then of the cluster's other nodes, in the order
    /// a page should fail over to them (`GET /api/nodes`; CORS allows their origins). Default
    /// none: pages stay on their node.
    pub nodes: Vec<String>,
    /// Browser origins (`https://class.example`) whose pages may use the `lectern_token`
    /// cookie, besides the request's own host and the origins of [`GatewayConfig::nodes`].
    /// A request with no `Origin` (curl, a server) is not a browser's and passes. Default none.
    pub allowed_origins: Vec<String>,
}

impl GatewayConfig {
    /// Defaults around an auth configuration.
    pub fn new(auth: AuthConfig) -> Self {
        GatewayConfig {
            unsubscribe_key: auth.hs256_secret.clone(),
            auth,
            limits: Limits::default(),
            keepalive_s: 15,
            boards: BoardSettings::default(),
            content: None,
            nodes: Vec::new(),
            allowed_origins: Vec::new(),
        }
    }
}

/// Per-session presence on this node: connections per user, and the throttle of
/// `attendance:update`.
#[derive(Default)]
struct Presence {
    sessions: HashMap<SessionId, SessionPresence>,
}

struct SessionPresence {
    users: HashMap<String, usize>,
    /// Users present on other nodes, by the node that reported them (the mesh's presence).
    remote: HashMap<String, HashSet<String>>,
    last_update: Option<Instant>,
    update_pending: bool,
    /// The latest `attendance:update` frame, for the lean WebSocket sockets that joined the
    /// session (socketioxide's sockets get it through their room). Latest wins: a socket that
    /// missed one update only needs the next.
    attendance: watch::Sender<Option<Arc<[u8]>>>,
}

impl Default for SessionPresence {
    fn default() -> Self {
        SessionPresence {
            users: HashMap::new(),
            remote: HashMap::new(),
            last_update: None,
            update_pending: false,
            attendance: watch::Sender::new(None),
        }
    }
}

impl SessionPresence {
    /// Everyone present in the session, on this node or another, each user once.
    fn present(&self) -> usize {
        let mut all: HashSet<&str> = self.users.keys().map(String::as_str).collect();
        for users in self.remote.values() {
            all.extend(users.iter().map(String::as_str));
        }
        all.len()
    }
}

/// Capacity of the local-presence change feed (sessions whose local presence changed).
const PRESENCE_FEED_CAPACITY: usize = 1024;

pub(crate) struct Inner {
    hub: Hub,
    verifier: Verifier,
    limiter: Arc<limits::Limiter>,
    presence: Mutex<Presence>,
    /// Sessions whose local presence changed (the node relays them to peers).
    presence_feed: broadcast::Sender<SessionId>,
    /// The Socket.IO handle. It holds the gateway as its state, so shutdown takes it out to
    /// break that cycle.
    io: Mutex<Option<SocketIo>>,
    metrics: metrics::Metrics,
    shutting_down: AtomicBool,
    shutdown: watch::Sender<bool>,
    keepalive: Duration,
    boards: boards::Boards,
    boards_settings: BoardSettings,
    /// Origins whose pages may authenticate with the cookie (see `auth::origin_allowed`).
    origins: Vec<String>,
    /// Connections waiting to authenticate (see `admission.rs`).
    admission: Arc<admission::Admission>,
    /// How long a request body may take once its head is in.
    body_timeout: Duration,
    /// Set by [`Gateway::drain`], cleared by [`Gateway::undrain`].
    draining: AtomicBool,
}

/// The gateway. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl Gateway {
    /// The token of a request (see [`auth::token_from_parts`]), with this node's origins.
    pub(crate) fn request_token(
        &self,
        headers: &axum::http::HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<String>, auth::AuthError> {
        auth::token_from_parts(headers, query, &self.inner.origins)
    }
}

/// Locks `m`, recovering the data if a holder panicked (the tables behind gateway mutexes are
/// always left consistent between statements).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// JSON answers shorter than this go out as they are (compressing them saves too little).
const JSON_COMPRESS_MIN_BYTES: u16 = 1024;

/// Brotli and gzip quality for JSON answers: fast, most of the size win (views compress ~10×).
const JSON_COMPRESS_LEVEL: i32 = 4;

/// Compression of JSON answers (views, listings) of at least [`JSON_COMPRESS_MIN_BYTES`], br
/// or gzip by `Accept-Encoding`, with `Vary: accept-encoding`. Not compressed: other types
/// (content blobs bring their own stored variants, Socket.IO polling is text), and answers
/// with an `ETag` (the catalog's heads-based ETag names one representation; a compressed one
/// would need its own).
fn compression()
-> tower_http::compression::CompressionLayer<impl tower_http::compression::Predicate> {
    use tower_http::compression::predicate::{Predicate, SizeAbove};
    let json_without_etag = |_: axum::http::StatusCode,
                             _: axum::http::Version,
                             headers: &axum::http::HeaderMap,
                             _: &axum::http::Extensions| {
        !headers.contains_key(axum::http::header::ETAG)
            && headers
                .get(axum::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"))
    };
    tower_http::compression::CompressionLayer::new()
        .quality(tower_http::CompressionLevel::Precise(JSON_COMPRESS_LEVEL))
        .compress_when(SizeAbove::new(JSON_COMPRESS_MIN_BYTES).and(json_without_etag))
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
                presence: Mutex::new(Presence::default()),
                presence_feed: broadcast::channel(PRESENCE_FEED_CAPACITY).0,
                io: Mutex::new(None),
                metrics: metrics::Metrics::default(),
                shutting_down: AtomicBool::new(false),
                shutdown,
                keepalive: Duration::from_secs(config.keepalive_s.max(1)),
                boards: boards::Boards::default(),
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
                draining: AtomicBool::new(false),
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
        *gw.inner.io.lock().unwrap_or_else(|e| e.into_inner()) = Some(io);
        let merged = rest::routes(gw.clone())
            .merge(page::routes())
            .merge(notifications::routes(
                gw.clone(),
                Arc::from(config.unsubscribe_key.as_slice()),
            ))
            .merge(boards::routes(gw.clone()))
            .merge(courses::routes(gw.clone(), config.content.clone()))
            .merge(nodes::routes(config.nodes.clone()));
        // After every merge: a layer covers only the routes that exist when it is added.
        let router = rest::shared_middleware(merged, &gw)
            .layer(layer)
            .layer(axum::middleware::map_request(compact_request));
        // Outermost: a preflight is answered before any other layer sees it.
        let router = match nodes::cors(&config.nodes) {
            Some(cors) => router.layer(cors),
            None => router,
        };
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

    /// Admits a connection accepted from `address`, before a byte of it is read: its place
    /// among the connections waiting to authenticate (held until it authenticates or ends), or
    /// the refusal to answer at once ([`Refused::response`]) before closing it.
    pub(crate) fn admit(
        &self,
        address: std::net::IpAddr,
    ) -> Result<admission::Admitted, admission::Refused> {
        self.inner.admission.admit(address)
    }

    /// Drains the node for maintenance: new Socket.IO connections and streams are refused
    /// (503 `draining`; REST and the admin API still answer), `/readyz` answers 503 `draining`
    /// so a load balancer sends no one here, and every connected client is told to reconnect to another node (`server:shutdown` with
    /// `reconnect: true`; the page carries its resume tokens there) and its connection ends.
    /// Requests in flight finish. [`Gateway::undrain`] takes clients again.
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
    /// its JSON answer compressed when the client accepts it ([`compression`]).
    pub fn front_door(&self, app: Router) -> Router {
        app.layer(axum::middleware::from_fn_with_state(
            self.inner.body_timeout,
            admission::body_deadline,
        ))
        .layer(compression())
    }

    /// Adds a section to `/metrics` (the node's job runner and mesh add theirs).
    pub fn add_metrics(&self, section: MetricsSection) {
        self.inner.metrics.add_section(section);
    }

    /// Tells every client to reconnect elsewhere and ends every stream.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        self.inner.shutdown.send_replace(true);
        let io = self
            .inner
            .io
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(io) = io {
            let _ = io.emit("server:shutdown", &sio::shutdown_payload()).await;
            io.close().await;
        }
    }

    /// Counts a refused HTTP request (see `rest::count_rejections`).
    pub(crate) fn count_rejection(&self, code: &str) {
        self.inner.metrics.rejected_named(code);
    }

    fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::SeqCst)
    }

    /// Verifies a token (None → `missing_token`).
    pub(crate) fn verify(&self, token: Option<&str>) -> Result<Verified, AppError> {
        let token = token.ok_or(auth::AuthError::Missing)?;
        Ok(self.inner.verifier.verify(token, unix_now_s())?)
    }

    /// Runs a command for `caller` on `doc` under the rate limit; the ack JSON.
    pub(crate) async fn run(
        &self,
        caller: &Caller,
        doc: DocId,
        id: Option<CommandId>,
        body: CommandBody,
    ) -> Result<Value, AppError> {
        self.inner.limiter.command(caller.user.as_str())?;
        self.run_charged(caller, doc, id, body).await
    }

    /// [`Gateway::run`] for a command whose rate token was already taken.
    async fn run_charged(
        &self,
        caller: &Caller,
        doc: DocId,
        id: Option<CommandId>,
        body: CommandBody,
    ) -> Result<Value, AppError> {
        // A cohort may link only its own sessions; the cohort document cannot see the session's.
        if let (DocId::Cohort(cohort), CommandBody::SessionLink { session, .. }) = (&doc, &body) {
            let owner = self
                .inner
                .hub
                .read(DocId::Session(session.clone()), |r| r.session_cohort())
                .await?;
            lectern_model::check_session_link(cohort, owner.as_ref())?;
        }
        let id = id.unwrap_or_else(new_command_id);
        let started = Instant::now();
        let result = self
            .inner
            .hub
            .execute(
                doc,
                caller.clone(),
                Command {
                    id: id.clone(),
                    body,
                },
            )
            .await;
        self.inner.metrics.command_latency(started.elapsed());
        let Acked { token, .. } = result?;
        self.inner.metrics.event_in();
        Ok(json!({"ok": true, "id": id.as_str(), "token": token.to_string()}))
    }

    /// Runs a parsed Socket.IO event.
    pub(crate) async fn run_parsed(
        &self,
        caller: &Caller,
        parsed: Parsed,
    ) -> Result<Value, AppError> {
        let doc = DocId::Session(parsed.session);
        let body = match parsed.body {
            Body::Ready(b) => b,
            Body::Vote(poll, raw) => {
                // The vote's rate token is taken before the poll is read, and the poll is
                // shown only to a member of the session's cohort: a flood of votes on random
                // sessions spends the sender's tokens, and another cohort's session answers
                // as one that does not exist (no existence oracle).
                self.inner.limiter.command(caller.user.as_str())?;
                let p = poll.clone();
                let (cohort, kind) = self
                    .inner
                    .hub
                    .read(doc.clone(), move |r| (r.session_cohort(), r.poll_kind(&p)))
                    .await?;
                if !cohort.is_some_and(|c| caller.is_member(&c)) {
                    return Err(AppError::new(
                        StatusCode::NOT_FOUND,
                        "doc_not_found",
                        format!("no session {doc}"),
                    ));
                }
                let kind = kind.ok_or_else(|| {
                    AppError::new(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        format!("no poll {poll}"),
                    )
                })?;
                let body = CommandBody::PollVote {
                    poll,
                    choice: commands::choice(kind, &raw)?,
                };
                return self.run_charged(caller, doc, parsed.id, body).await;
            }
        };
        self.run(caller, doc, parsed.id, body).await
    }

    /// Sessions whose presence on this node changed (for the mesh to tell peers). A lagging
    /// receiver should resend [`Gateway::local_presence_all`].
    pub fn presence_changes(&self) -> broadcast::Receiver<SessionId> {
        self.inner.presence_feed.subscribe()
    }

    /// The users present in `session` on this node.
    pub fn local_presence(&self, session: &SessionId) -> Vec<String> {
        let p = crate::lock(&self.inner.presence);
        let mut users: Vec<String> = p
            .sessions
            .get(session)
            .map(|sp| sp.users.keys().cloned().collect())
            .unwrap_or_default();
        users.sort();
        users
    }

    /// Every session with users present on this node, and those users.
    pub fn local_presence_all(&self) -> Vec<(SessionId, Vec<String>)> {
        let p = crate::lock(&self.inner.presence);
        p.sessions
            .iter()
            .filter(|(_, sp)| !sp.users.is_empty())
            .map(|(s, sp)| (s.clone(), sp.users.keys().cloned().collect()))
            .collect()
    }

    /// Records that node `source` has `users` present in `session` (replacing what it said
    /// before; an empty list removes it). `attendance:update` counts them with the local ones.
    pub fn set_remote_presence(&self, source: &str, session: &SessionId, users: Vec<String>) {
        let changed = {
            let mut p = crate::lock(&self.inner.presence);
            let sp = p.sessions.entry(session.clone()).or_default();
            let users: HashSet<String> = users.into_iter().collect();
            let before = sp.present();
            if users.is_empty() {
                sp.remote.remove(source);
            } else {
                sp.remote.insert(source.to_owned(), users);
            }
            sp.present() != before
        };
        if changed {
            self.schedule_attendance_update(session);
        }
    }

    /// Forgets everything node `source` reported (it disconnected or went silent).
    pub fn clear_remote_presence(&self, source: &str) {
        let sessions: Vec<SessionId> = {
            let p = crate::lock(&self.inner.presence);
            p.sessions
                .iter()
                .filter(|(_, sp)| sp.remote.contains_key(source))
                .map(|(s, _)| s.clone())
                .collect()
        };
        for session in sessions {
            self.set_remote_presence(source, &session, Vec::new());
        }
    }

    /// A user's connection to a session opened; the first one records attendance.
    pub(crate) async fn presence_join(&self, session: &SessionId, caller: &Caller) {
        let first = {
            let mut p = crate::lock(&self.inner.presence);
            let sp = p.sessions.entry(session.clone()).or_default();
            let n = sp.users.entry(caller.user.to_string()).or_insert(0);
            *n += 1;
            *n == 1
        };
        if first {
            let _ = self.inner.presence_feed.send(session.clone());
            self.attendance(session, caller, CommandBody::AttendanceJoin)
                .await;
        }
        self.schedule_attendance_update(session);
    }

    /// A user's connection to a session closed; the last one records their leaving.
    pub(crate) async fn presence_leave(&self, session: &SessionId, caller: &Caller) {
        let last = {
            let mut p = crate::lock(&self.inner.presence);
            let Some(sp) = p.sessions.get_mut(session) else {
                return;
            };
            let user = caller.user.to_string();
            let Some(n) = sp.users.get_mut(&user) else {
                return;
            };
            *n -= 1;
            let last = *n == 0;
            if last {
                sp.users.remove(&user);
            }
            last
        };
        if last {
            let _ = self.inner.presence_feed.send(session.clone());
        }
        if last && !self.is_shutting_down() {
            self.attendance(session, caller, CommandBody::AttendanceLeave)
                .await;
        }
        self.schedule_attendance_update(session);
    }

    async fn attendance(&self, session: &SessionId, caller: &Caller, body: CommandBody) {
        let cmd = Command {
            id: new_command_id(),
            body,
        };
        if let Err(e) = self
            .inner
            .hub
            .execute(DocId::Session(session.clone()), caller.clone(), cmd)
            .await
        {
            tracing::debug!(error = %e, "attendance not recorded");
        }
    }

    /// The `attendance:update` frames of `session` for a lean WebSocket socket: it sees every
    /// update sent after this call (the latest, if several pass while it is busy).
    pub(crate) fn attendance_watch(
        &self,
        session: &SessionId,
    ) -> watch::Receiver<Option<Arc<[u8]>>> {
        let mut p = crate::lock(&self.inner.presence);
        p.sessions
            .entry(session.clone())
            .or_default()
            .attendance
            .subscribe()
    }

    /// Emits `attendance:update {present}` to the session's sockets, at most once per second.
    fn schedule_attendance_update(&self, session: &SessionId) {
        let delay = {
            let mut p = crate::lock(&self.inner.presence);
            let sp = p.sessions.entry(session.clone()).or_default();
            if sp.update_pending {
                return;
            }
            sp.update_pending = true;
            match sp.last_update {
                Some(t) if t.elapsed() < Duration::from_secs(1) => {
                    Duration::from_secs(1) - t.elapsed()
                }
                _ => Duration::ZERO,
            }
        };
        let gw = self.clone();
        let session = session.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let payload = {
                let mut p = crate::lock(&gw.inner.presence);
                let Some(sp) = p.sessions.get_mut(&session) else {
                    return;
                };
                sp.update_pending = false;
                sp.last_update = Some(Instant::now());
                let payload = sio::attendance_payload(&session, sp.present());
                let packet = sio::event_packet("attendance:update", &[&payload]);
                sp.attendance
                    .send_replace(Some(Arc::from(wsframe::text(packet.as_bytes()))));
                payload
            };
            gw.inner.presence_emit(&session, payload).await;
        });
    }
}

impl Inner {
    /// Sends `attendance:update` to every socket that joined `session`.
    async fn presence_emit(&self, session: &SessionId, payload: Value) {
        let io = self.io.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(io) = io {
            let _ = io
                .to(socket::session_room(session))
                .emit("attendance:update", &payload)
                .await;
        }
    }
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

/// A fresh command id for commands whose client gave none.
pub(crate) fn new_command_id() -> CommandId {
    let n: u128 = rand::random();
    // Invariant: 32 hex digits after a letter are a valid id.
    format!("g{n:032x}")
        .parse()
        .expect("generated ids are valid")
}

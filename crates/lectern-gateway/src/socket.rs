//! The Socket.IO namespace `/`: authentication at the handshake, the class commands as events
//! with acks, `session:join` with resume, one forwarding task per joined session per socket,
//! presence and `attendance:update`.
//!
//! Each joined socket has its own subscription to the document's room (from `Hub::join`), so
//! the snapshot or replay it gets and the events it receives after it have no gap and no
//! overlap. Payloads come serialized once per audience; a socket that cannot keep up (its queue
//! is full or it lags the room) is told why and disconnected, and resumes with its last token.

use std::sync::Arc;
use std::time::Duration;

use lectern_hub::{JoinStart, Published};
use lectern_model::{Caller, DocId, ResumeToken, SessionId};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Extension, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use tokio::sync::broadcast::error::RecvError;
use tracing::debug;

use crate::commands::{self, COMMAND_EVENTS};
use crate::error::AppError;
use crate::limits::ConnSlot;
use crate::{Gateway, unix_now_s};

/// What the handshake established about a socket.
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) caller: Arc<Caller>,
    expires_at_s: u64,
    /// Set to true when the socket disconnects, so its forwarding tasks end at once.
    closed: Arc<tokio::sync::watch::Sender<bool>>,
    _slot: Arc<ConnSlot>,
}

/// The Socket.IO room of a session's sockets on this node (for `attendance:update`).
pub(crate) fn session_room(session: &SessionId) -> String {
    format!("session:{session}")
}

/// Registers the namespace on `io`.
pub(crate) fn register(io: &SocketIo) {
    io.ns("/", on_connect.with(authenticate));
}

/// The handshake: a token in `auth: {token}` (or `?token=` / Authorization on the request).
async fn authenticate(
    s: SocketRef,
    TryData(auth): TryData<Value>,
    State(gw): State<Gateway>,
) -> Result<(), AppError> {
    if gw.is_shutting_down() {
        return Err(AppError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "this node is shutting down; connect to another",
        ));
    }
    let from_auth = auth
        .ok()
        .and_then(|a| a.get("token").and_then(Value::as_str).map(str::to_owned));
    let parts = s.req_parts();
    let token =
        from_auth.or_else(|| crate::auth::token_from_parts(&parts.headers, parts.uri.query()));
    let verified = gw.verify(token.as_deref())?;
    let slot = gw.inner.limiter.connect(verified.caller.user.as_str())?;
    gw.inner.metrics.connection_opened("socketio");
    s.extensions.insert(Conn {
        caller: Arc::new(verified.caller),
        expires_at_s: verified.expires_at_s,
        closed: Arc::new(tokio::sync::watch::channel(false).0),
        _slot: Arc::new(slot),
    });
    // The handlers are registered here, not in `on_connect`: socketioxide sends the connect
    // reply before it spawns the connect handler, so an event a client sends right after the
    // reply could otherwise arrive before its handler exists and be dropped without an ack.
    for event in COMMAND_EVENTS {
        s.on(*event, on_command);
    }
    s.on("session:join", on_join);
    s.on("session:leave", on_leave);
    s.on_fallback(on_unknown);
    s.on_disconnect(on_disconnect);
    Ok(())
}

async fn on_connect(s: SocketRef, Extension(conn): Extension<Conn>) {
    debug!(sid = %s.id, user = %conn.caller.user, "socket connected");
    // Disconnect the socket when its token expires, saying why.
    let exp = conn.expires_at_s;
    let sock = s.clone();
    let mut closed = conn.closed.subscribe();
    tokio::spawn(async move {
        let wait = Duration::from_secs(exp.saturating_sub(unix_now_s()));
        tokio::select! {
            () = tokio::time::sleep(wait) => {
                if sock.connected() {
                    cut_off(&sock, "token_expired", "your token expired; reconnect with a fresh one");
                }
            }
            _ = closed.wait_for(|c| *c) => {}
        }
    });
}

/// Every argument of an event, however many. socketioxide hands a handler all of an event's
/// arguments only when the extracted type deserializes as a tuple (otherwise just the first),
/// so this type asks serde for a tuple and collects what is there.
pub(crate) struct Args(Vec<Value>);

impl<'de> serde::Deserialize<'de> for Args {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Args;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("event arguments")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Args, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<Value>()? {
                    if out.len() >= ARGS_MAX {
                        return Err(serde::de::Error::custom("too many arguments"));
                    }
                    out.push(v);
                }
                Ok(Args(out))
            }
        }
        d.deserialize_tuple(ARGS_MAX, V)
    }
}

/// Most arguments an event may carry.
const ARGS_MAX: usize = 8;

fn arg_list(data: Result<Args, impl std::fmt::Display>) -> Result<Vec<Value>, AppError> {
    data.map(|a| a.0)
        .map_err(|e| AppError::bad_request(format!("malformed event data: {e}")))
}

async fn on_command(
    s: SocketRef,
    socketioxide::extract::Event(event): socketioxide::extract::Event,
    TryData(data): TryData<Args>,
    ack: AckSender,
    Extension(conn): Extension<Conn>,
    State(gw): State<Gateway>,
) {
    let result = async {
        let args = arg_list(data)?;
        let parsed = commands::parse(&event, args)?;
        gw.run_parsed(&conn.caller, parsed).await
    }
    .await;
    let reply = match result {
        Ok(v) => v,
        Err(e) => {
            gw.inner.metrics.rejected(e.code);
            e.ack()
        }
    };
    let _ = ack.send(&reply);
    let _ = s;
}

async fn on_unknown(
    socketioxide::extract::Event(event): socketioxide::extract::Event,
    ack: AckSender,
    State(gw): State<Gateway>,
) {
    let e = AppError::new(
        axum::http::StatusCode::NOT_FOUND,
        "unknown_event",
        format!("no event {event}"),
    );
    gw.inner.metrics.rejected(e.code);
    let _ = ack.send(&e.ack());
}

/// `session:join (sessionId, [resumeToken], ack)` → `{ok, state | events, token}`.
async fn on_join(
    s: SocketRef,
    TryData(data): TryData<Args>,
    ack: AckSender,
    Extension(conn): Extension<Conn>,
    State(gw): State<Gateway>,
) {
    let result = async {
        let args = arg_list(data)?;
        let session: SessionId = args
            .first()
            .and_then(Value::as_str)
            .ok_or_else(|| AppError::bad_request("session:join takes a session id"))?
            .parse()
            .map_err(|e| AppError::bad_request(format!("session id: {e}")))?;
        let since = match args.get(1) {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) => Some(
                ResumeToken::parse(t)
                    .map_err(|e| AppError::new(axum::http::StatusCode::BAD_REQUEST, e.code(), e.to_string()))?,
            ),
            Some(_) => return Err(AppError::bad_request("the resume token must be a string")),
        };
        let doc = DocId::Session(session.clone());
        if s.extensions.get::<Joined>().is_some_and(|j| j.0.contains(&session)) {
            return Err(AppError::new(
                axum::http::StatusCode::CONFLICT,
                "already_joined",
                "this socket already joined that session",
            ));
        }
        // Joining loads a document: it counts against the caller's command rate.
        gw.inner.limiter.command(conn.caller.user.as_str())?;
        let joined = gw.inner.hub.join(doc.clone(), (*conn.caller).clone(), since).await?;
        let staff = conn.caller.role.is_staff();
        let user = conn.caller.user.to_string();
        let reply = match joined.start {
            JoinStart::Snapshot {
                state,
                token,
                resume_refused,
            } => json!({"ok": true, "state": state, "token": token.to_string(), "resumeRefused": resume_refused}),
            JoinStart::Replay { events, token } => {
                let events: Vec<Value> = events
                    .iter()
                    .filter_map(|e| {
                        let payload = e.payload_for(&user, staff)?;
                        let payload: Value = serde_json::from_str(payload).ok()?;
                        Some(json!({"event": e.name, "data": payload, "token": e.token}))
                    })
                    .collect();
                json!({"ok": true, "events": events, "token": token.to_string()})
            }
        };
        let mut sessions = s.extensions.get::<Joined>().map(|j| j.0).unwrap_or_default();
        sessions.push(session.clone());
        s.extensions.insert(Joined(sessions));
        s.join(session_room(&session));
        gw.presence_join(&session, &conn.caller).await;
        let closed = conn.closed.subscribe();
        tokio::spawn(forward(s.clone(), gw.clone(), session, joined.events, closed, user, staff));
        Ok(reply)
    }
    .await;
    let reply = result.unwrap_or_else(|e: AppError| e.ack());
    let _ = ack.send(&reply);
}

/// Sessions a socket has joined.
#[derive(Clone, Default)]
struct Joined(Vec<SessionId>);

async fn on_leave(
    s: SocketRef,
    TryData(data): TryData<Args>,
    ack: AckSender,
    Extension(conn): Extension<Conn>,
    State(gw): State<Gateway>,
) {
    let session = arg_list(data).ok().and_then(|a| {
        a.first()
            .and_then(Value::as_str)
            .and_then(|x| x.parse::<SessionId>().ok())
    });
    let Some(session) = session else {
        let _ = ack.send(&AppError::bad_request("session:leave takes a session id").ack());
        return;
    };
    let mut sessions = s
        .extensions
        .get::<Joined>()
        .map(|j| j.0)
        .unwrap_or_default();
    let before = sessions.len();
    sessions.retain(|x| x != &session);
    let left = sessions.len() < before;
    s.extensions.insert(Joined(sessions));
    if left {
        s.leave(session_room(&session));
        gw.presence_leave(&session, &conn.caller).await;
    }
    let _ = ack.send(&json!({"ok": true, "left": left}));
}

async fn on_disconnect(s: SocketRef, State(gw): State<Gateway>) {
    gw.inner.metrics.connection_closed("socketio");
    let Some(conn) = s.extensions.get::<Conn>() else {
        return;
    };
    conn.closed.send_replace(true);
    let sessions = s
        .extensions
        .get::<Joined>()
        .map(|j| j.0)
        .unwrap_or_default();
    for session in sessions {
        gw.presence_leave(&session, &conn.caller).await;
    }
}

/// Forwards a session's events to one socket until it leaves, disconnects or falls behind.
async fn forward(
    s: SocketRef,
    gw: Gateway,
    session: SessionId,
    mut events: tokio::sync::broadcast::Receiver<Arc<Published>>,
    mut closed: tokio::sync::watch::Receiver<bool>,
    user: String,
    staff: bool,
) {
    loop {
        let joined = |s: &SocketRef| {
            s.extensions
                .get::<Joined>()
                .is_some_and(|j| j.0.contains(&session))
        };
        let event = tokio::select! {
            e = events.recv() => e,
            _ = closed.wait_for(|c| *c) => return,
        };
        if !s.connected() || !joined(&s) {
            return;
        }
        match event {
            Ok(e) => {
                let Some(payload) = e.payload_for(&user, staff) else {
                    continue;
                };
                let Ok(raw) = RawValue::from_string(payload.to_string()) else {
                    continue;
                };
                let meta = json!({"token": e.token, "session": session.as_str()});
                gw.inner.metrics.event_out("socketio");
                if s.emit(e.name, &(raw, meta)).is_err() {
                    cut_off(
                        &s,
                        "slow_consumer",
                        "your connection could not keep up; reconnect and resume with your last token",
                    );
                    return;
                }
            }
            Err(RecvError::Lagged(_)) => {
                cut_off(
                    &s,
                    "slow_consumer",
                    "you fell behind the session; reconnect and resume with your last token",
                );
                return;
            }
            Err(RecvError::Closed) => {
                if s.connected() {
                    cut_off(
                        &s,
                        "shutting_down",
                        "this node is shutting down; reconnect to another",
                    );
                }
                return;
            }
        }
    }
}

fn cut_off(s: &SocketRef, code: &str, message: &str) {
    let _ = s.emit("server:error", &json!({"code": code, "message": message}));
    let s = s.clone();
    // Give the error frame a moment to leave before the socket closes.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = s.disconnect();
    });
}

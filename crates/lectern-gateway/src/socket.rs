//! The Socket.IO namespace `/` on socketioxide: the transport of clients that long-poll, or
//! that start on polling and upgrade to WebSocket (socket.io-client's default). A client that
//! opens with `transport=websocket` gets the lean transport instead (`ws.rs`); both call the
//! same Socket.IO core (`sio.rs`) for authentication, commands, joins and presence.
//!
//! Each joined socket has its own subscription to the document's room (from `Hub::join`), so
//! the snapshot or replay it gets and the events it receives after it have no gap and no
//! overlap. Payloads come serialized once per audience; a socket that cannot keep up (its queue
//! is full or it lags the room) is told why and disconnected, and resumes with its last token.

use std::sync::Arc;
use std::time::Duration;

use lectern_hub::Published;
use lectern_model::SessionId;
use serde_json::Value;
use serde_json::value::RawValue;
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Extension, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use tokio::sync::broadcast::error::RecvError;
use tracing::debug;

use crate::commands::COMMAND_EVENTS;
use crate::error::AppError;
use crate::sio::{self, Args, Cut, TRANSPORT_SOCKETIOXIDE};
use crate::{Gateway, unix_now_s};

/// What the handshake established about a socket (kept in its extensions).
#[derive(Clone)]
pub(crate) struct Conn {
    conn: Arc<sio::Conn>,
    /// Set to true when the socket disconnects, so its forwarding tasks end at once.
    closed: Arc<tokio::sync::watch::Sender<bool>>,
}

/// The Socket.IO room of a session's sockets on this node (for `attendance:update`).
pub(crate) fn session_room(session: &SessionId) -> String {
    format!("session:{session}")
}

/// Registers the namespace on `io`.
pub(crate) fn register(io: &SocketIo) {
    io.ns("/", on_connect.with(authenticate));
}

/// The handshake (see [`sio::authenticate`]).
async fn authenticate(
    s: SocketRef,
    TryData(auth): TryData<Value>,
    State(gw): State<Gateway>,
) -> Result<(), AppError> {
    let parts = s.req_parts();
    let conn = sio::authenticate(
        &gw,
        auth.ok().as_ref(),
        crate::auth::token_from_parts(&parts.headers, parts.uri.query()),
        TRANSPORT_SOCKETIOXIDE,
    )?;
    s.extensions.insert(Conn {
        conn: Arc::new(conn),
        closed: Arc::new(tokio::sync::watch::channel(false).0),
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
    debug!(sid = %s.id, user = %conn.conn.caller.user, "socket connected");
    // Disconnect the socket when its token expires, saying why.
    let exp = conn.conn.expires_at_s;
    let sock = s.clone();
    let mut closed = conn.closed.subscribe();
    tokio::spawn(async move {
        let wait = Duration::from_secs(exp.saturating_sub(unix_now_s()));
        tokio::select! {
            () = tokio::time::sleep(wait) => {
                if sock.connected() {
                    cut_off(&sock, Cut::TokenExpired);
                }
            }
            _ = closed.wait_for(|c| *c) => {}
        }
    });
}

async fn on_command(
    socketioxide::extract::Event(event): socketioxide::extract::Event,
    TryData(data): TryData<Args>,
    ack: AckSender,
    Extension(conn): Extension<Conn>,
    State(gw): State<Gateway>,
) {
    let reply = sio::command(&gw, &conn.conn.caller, &event, sio::arg_list(data)).await;
    let _ = ack.send(&reply);
}

async fn on_unknown(
    socketioxide::extract::Event(event): socketioxide::extract::Event,
    ack: AckSender,
    State(gw): State<Gateway>,
) {
    let _ = ack.send(&sio::unknown_event(&gw, &event));
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
        let args = sio::arg_list(data)?;
        let (session, since) = sio::join_args(&args)?;
        if s.extensions
            .get::<Joined>()
            .is_some_and(|j| j.0.contains(&session))
        {
            return Err(sio::already_joined());
        }
        let caller = &conn.conn.caller;
        let room = session_room(&session);
        let (reply, events, ()) = sio::join(&gw, caller, &session, since, || s.join(room)).await?;
        let mut sessions = s
            .extensions
            .get::<Joined>()
            .map(|j| j.0)
            .unwrap_or_default();
        sessions.push(session.clone());
        s.extensions.insert(Joined(sessions));
        let closed = conn.closed.subscribe();
        let (user, staff) = (caller.user.to_string(), caller.role.is_staff());
        tokio::spawn(forward(
            s.clone(),
            gw.clone(),
            session,
            events,
            closed,
            user,
            staff,
        ));
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
    let session = sio::arg_list(data).and_then(|a| sio::leave_args(&a));
    let session = match session {
        Ok(session) => session,
        Err(e) => {
            let _ = ack.send(&e.ack());
            return;
        }
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
        gw.presence_leave(&session, &conn.conn.caller).await;
    }
    let _ = ack.send(&serde_json::json!({"ok": true, "left": left}));
}

async fn on_disconnect(s: SocketRef, State(gw): State<Gateway>) {
    gw.inner.metrics.connection_closed(TRANSPORT_SOCKETIOXIDE);
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
        gw.presence_leave(&session, &conn.conn.caller).await;
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
                let meta = sio::event_meta(&e, &session);
                gw.inner
                    .metrics
                    .event_out(TRANSPORT_SOCKETIOXIDE, e.published_at);
                if s.emit(e.name, &(raw, meta)).is_err() {
                    cut_off(&s, Cut::SlowConsumer);
                    return;
                }
            }
            Err(RecvError::Lagged(_)) => {
                cut_off(&s, Cut::Lagged);
                return;
            }
            Err(RecvError::Closed) => {
                if s.connected() {
                    cut_off(&s, Cut::ShuttingDown);
                }
                return;
            }
        }
    }
}

fn cut_off(s: &SocketRef, cut: Cut) {
    let _ = s.emit("server:error", &cut.payload());
    let s = s.clone();
    // Give the error frame a moment to leave before the socket closes.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = s.disconnect();
    });
}

//! Socket.IO semantics, in one place for the gateway's two Socket.IO transports: socketioxide
//! (`socket.rs`: long-polling, and a polling session that upgrades to WebSocket) and the lean
//! WebSocket (`ws.rs`: a client that opens with `transport=websocket`).
//!
//! [`client::SioClient`] is a connection's protocol state with no IO: both transports feed it
//! what arrives and carry out the [`client::Action`]s it answers with. The functions here do
//! the work those actions name: the handshake's authentication and connection slot
//! ([`authenticate`], [`ConnGuard`]), command events and their acks, `session:join` with
//! resume (and presence), the `server:error` cut-offs and the `server:shutdown` notice.
//! [`packet`] parses what clients send; [`recovery`] holds Connection State Recovery's pid and
//! offsets, and [`recover`] joins a recovered connection's sessions again. What differs between
//! transports is only how packets travel.

pub(crate) mod client;
pub(crate) mod packet;
pub(crate) mod recovery;

use std::sync::Arc;

use axum::http::StatusCode;
use lectern_hub::{Encoding, JoinStart, Published};
use lectern_model::{Caller, DocId, ResumeToken, SessionId};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::commands;
use crate::error::AppError;
use crate::limits::ConnSlot;
use crate::{Gateway, wsframe};

/// The transports a client connection comes over (the label in `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// socketioxide: long-polling, and polling upgraded to WebSocket.
    SocketIo,
    /// The lean WebSocket.
    WebSocket,
    /// Server-sent events.
    Sse,
    /// The long-poll events route.
    LongPoll,
}

impl Transport {
    /// The label in `/metrics`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Transport::SocketIo => "socketio",
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
            Transport::LongPoll => "longpoll",
        }
    }
}

/// A client connection counted while it lives: its connection slot (the per-node and per-user
/// caps) and its count in `/metrics`, both released on drop, however the connection ends
/// (a panicking task included).
pub(crate) struct ConnGuard {
    gw: Gateway,
    transport: Transport,
    _slot: ConnSlot,
}

impl ConnGuard {
    /// Takes a connection slot for `user` and counts the connection as `transport`.
    pub(crate) fn open(gw: &Gateway, user: &str, transport: Transport) -> Result<Self, AppError> {
        let slot = gw.connection_slot(user)?;
        Ok(Self::counted(gw, slot, transport))
    }

    /// Counts a connection whose slot is already taken as `transport`.
    pub(crate) fn counted(gw: &Gateway, slot: ConnSlot, transport: Transport) -> Self {
        gw.metrics().connection_opened(transport.label());
        ConnGuard {
            gw: gw.clone(),
            transport,
            _slot: slot,
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.gw.metrics().connection_closed(self.transport.label());
    }
}

/// What the handshake established about a socket: who, until when, and its connection slot.
pub(crate) struct Conn {
    /// The authenticated caller.
    pub(crate) caller: Arc<Caller>,
    /// When the token expires (Unix seconds): the socket is cut off then.
    pub(crate) expires_at_s: u64,
    _guard: ConnGuard,
}

impl Conn {
    /// How long the token stays valid from now.
    pub(crate) fn valid_for(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.expires_at_s.saturating_sub(crate::unix_now_s()))
    }
}

/// The heartbeat and connect deadlines the gateway's limits set.
pub(crate) fn timing(gw: &Gateway) -> client::Timing {
    let limits = gw.limits();
    let ms = |v: u64| std::time::Duration::from_millis(v.max(1));
    client::Timing::new(
        ms(limits.ping_interval_ms),
        ms(limits.ping_timeout_ms),
        ms(limits.connect_timeout_ms),
    )
}

/// The handshake: a token in the connect packet's `auth: {token}`, or else `request_token`
/// (the request's `?token=` / Authorization / cookie, by `Gateway::request_token`);
/// then a connection slot, counted as `transport` in `/metrics` while the [`Conn`] lives.
pub(crate) fn authenticate(
    gw: &Gateway,
    auth: Option<&Value>,
    request_token: Option<String>,
    transport: Transport,
) -> Result<Conn, AppError> {
    let conn = open_conn(gw, auth, request_token, transport);
    if conn.is_err() {
        gw.metrics().connection_failed(transport.label());
    }
    conn
}

/// [`authenticate`] before the failure is counted.
fn open_conn(
    gw: &Gateway,
    auth: Option<&Value>,
    request_token: Option<String>,
    transport: Transport,
) -> Result<Conn, AppError> {
    if gw.is_shutting_down() {
        return Err(AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "this node is shutting down; connect to another",
        ));
    }
    if gw.is_draining() {
        return Err(AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this node is draining for maintenance; connect to another",
        ));
    }
    let from_auth = auth
        .and_then(|a| a.get("token"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let token = from_auth.or(request_token);
    let verified = gw.verify(token.as_deref())?;
    let guard = ConnGuard::open(gw, verified.caller.user.as_str(), transport)?;
    Ok(Conn {
        caller: Arc::new(verified.caller),
        expires_at_s: verified.expires_at_s,
        _guard: guard,
    })
}

/// Every argument of an event, however many (at most [`ARGS_MAX`]). socketioxide hands a
/// handler all of an event's arguments only when the extracted type deserializes as a tuple
/// (otherwise just the first), so this type asks serde for a tuple and collects what is there.
pub(crate) struct Args(pub(crate) Vec<Value>);

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
                        return Err(serde::de::Error::custom(TOO_MANY_ARGS));
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
pub(crate) const ARGS_MAX: usize = 8;

const TOO_MANY_ARGS: &str = "too many arguments";

/// An event's arguments, or the `bad_request` its malformed data gets.
pub(crate) fn arg_list(data: Result<Args, impl std::fmt::Display>) -> Result<Vec<Value>, AppError> {
    data.map(|a| a.0)
        .map_err(|e| AppError::bad_request(format!("malformed event data: {e}")))
}

/// A command event (`qa:ask` …, or an unknown name): runs it as `caller`; the ack to send.
/// Refusals are counted in `/metrics`.
pub(crate) async fn command(
    gw: &Gateway,
    caller: &Caller,
    event: &str,
    args: Result<Vec<Value>, AppError>,
) -> Value {
    let result = async {
        let parsed = commands::parse(event, args?)?;
        gw.run_parsed(caller, parsed).await
    }
    .await;
    result.unwrap_or_else(|e| refused(gw, &e))
}

/// Counts a refusal and returns its ack.
pub(crate) fn refused(gw: &Gateway, e: &AppError) -> Value {
    gw.metrics().rejected(e.code);
    e.ack()
}

/// The refusal of a second join of the same session on one socket.
pub(crate) fn already_joined() -> AppError {
    AppError::new(
        StatusCode::CONFLICT,
        "already_joined",
        "this socket already joined that session",
    )
}

/// `session:join`'s arguments: `(sessionId, [resumeToken])`.
pub(crate) fn join_args(args: &[Value]) -> Result<(SessionId, Option<ResumeToken>), AppError> {
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
                .map_err(|e| AppError::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()))?,
        ),
        Some(_) => return Err(AppError::bad_request("the resume token must be a string")),
    };
    Ok((session, since))
}

/// `session:leave`'s argument: the session id.
pub(crate) fn leave_args(args: &[Value]) -> Result<SessionId, AppError> {
    args.first()
        .and_then(Value::as_str)
        .and_then(|x| x.parse::<SessionId>().ok())
        .ok_or_else(|| AppError::bad_request("session:leave takes a session id"))
}

/// Joins `session` for `caller`: the rate limit (joining loads a document), the hub's join
/// (a snapshot, or the replay after `since`), then `subscribe` (the transport subscribes the
/// socket to the session's `attendance:update`s, once the caller is known to be allowed in),
/// then presence, so the socket sees the update its own arrival causes. The ack (`{ok, state |
/// events, token}`), the token it starts from, the subscription to the events after it (no
/// gap, no overlap) and what `subscribe` returned.
pub(crate) async fn join<T>(
    gw: &Gateway,
    transport: Transport,
    caller: &Caller,
    session: &SessionId,
    since: Option<ResumeToken>,
    subscribe: impl FnOnce() -> T,
) -> Result<(Value, Arc<str>, broadcast::Receiver<Arc<Published>>, T), AppError> {
    let (start, events, subscribed) =
        join_start(gw, transport, caller, session, since, subscribe).await?;
    let staff = caller.role.is_staff();
    let user = caller.user.as_str();
    let (reply, token) = match start {
        JoinStart::Snapshot {
            state,
            token,
            resume_refused,
        } => {
            let token = token.to_string();
            let reply = json!({"ok": true, "state": state, "token": token, "resumeRefused": resume_refused});
            (reply, token)
        }
        JoinStart::Replay { events, token } => {
            let events: Vec<Value> = events
                .iter()
                .filter_map(|e| {
                    let payload = e.payload_for(user, staff)?;
                    let payload: Value = serde_json::from_str(payload).ok()?;
                    Some(json!({"event": e.name, "data": payload, "token": &*e.token}))
                })
                .collect();
            let token = token.to_string();
            (json!({"ok": true, "events": events, "token": token}), token)
        }
    };
    Ok((reply, Arc::from(token), events, subscribed))
}

/// [`join`] up to the hub's answer: how the session starts for this socket, its events after
/// that, and what `subscribe` returned (presence already counts the socket). A join from a
/// resume token is counted, resumed or refused, under `transport`.
async fn join_start<T>(
    gw: &Gateway,
    transport: Transport,
    caller: &Caller,
    session: &SessionId,
    since: Option<ResumeToken>,
    subscribe: impl FnOnce() -> T,
) -> Result<(JoinStart, broadcast::Receiver<Arc<Published>>, T), AppError> {
    gw.take_command_token(caller.user.as_str())?;
    let resuming = since.is_some();
    let joined = gw
        .hub()
        .join(DocId::Session(session.clone()), caller.clone(), since)
        .await?;
    if resuming {
        gw.metrics().resume_start(transport.label(), &joined.start);
    }
    let subscribed = subscribe();
    gw.presence_join(session, caller).await;
    Ok((joined.start, joined.events, subscribed))
}

/// The recovery a CONNECT's auth payload asks for ([`recovery::Recovery::from_auth`]). One
/// that asks (it names a `pid`) with an offset that does not parse connects afresh, and is
/// counted as a resume refused `bad_token` under `transport`.
pub(crate) fn recovery_asked(
    gw: &Gateway,
    transport: Transport,
    auth: Option<&Value>,
) -> Option<recovery::Recovery> {
    let asked = recovery::Recovery::from_auth(auth);
    if asked.is_none() && auth.is_some_and(|a| a.get("pid").is_some()) {
        gw.metrics()
            .resume(transport.label(), Some(crate::metrics::BAD_TOKEN));
    }
    asked
}

/// One session a recovery joined again.
pub(crate) struct Rejoined<T> {
    /// The session.
    pub(crate) session: SessionId,
    /// The token the client's offset named (where it stood).
    pub(crate) from: Arc<str>,
    /// The events after it, in order, to send before any live one.
    pub(crate) missed: Vec<Arc<Published>>,
    /// The token after the last of them.
    pub(crate) to: Arc<str>,
    /// The session's events after `to`.
    pub(crate) events: broadcast::Receiver<Arc<Published>>,
    /// What the transport's `subscribe` returned.
    pub(crate) subscribed: T,
}

/// Joins every session of a recovery again (see [`recovery`]), each as [`join`] does, from the
/// token its offset names. `Ok` with every session if each can be replayed; otherwise the
/// sessions joined so far are left again (presence) and `Err` hands back what `subscribe`
/// returned for each, for the transport to undo: the client then connects afresh.
///
/// Each session's join is counted under `transport` as a resume or a resume refused; a join
/// that fails (the session gone, the caller no longer a member, the rate limit) as refused
/// `join_failed`. The sessions after the first that fails are not tried, nor counted.
pub(crate) async fn recover<T>(
    gw: &Gateway,
    transport: Transport,
    caller: &Caller,
    recovery: &recovery::Recovery,
    mut subscribe: impl FnMut(&SessionId) -> T,
) -> Result<Vec<Rejoined<T>>, Vec<(SessionId, T)>> {
    let mut rejoined: Vec<Rejoined<T>> = Vec::with_capacity(recovery.sessions.len());
    let mut failed = None;
    for (session, since) in &recovery.sessions {
        let from = Arc::from(since.to_string());
        let start = join_start(gw, transport, caller, session, Some(since.clone()), || {
            subscribe(session)
        });
        match start.await {
            Ok((
                JoinStart::Replay {
                    events: missed,
                    token,
                },
                events,
                subscribed,
            )) => {
                rejoined.push(Rejoined {
                    session: session.clone(),
                    from,
                    missed,
                    to: Arc::from(token.to_string()),
                    events,
                    subscribed,
                });
            }
            // Not replayable here (a token this node cannot place, or too far behind).
            Ok((JoinStart::Snapshot { .. }, _, subscribed)) => {
                failed = Some(Some((session.clone(), subscribed)));
                break;
            }
            Err(_) => {
                gw.metrics()
                    .resume(transport.label(), Some(crate::metrics::JOIN_FAILED));
                failed = Some(None);
                break;
            }
        }
    }
    let Some(last) = failed else {
        return Ok(rejoined);
    };
    let mut undo: Vec<(SessionId, T)> = rejoined
        .into_iter()
        .map(|r| (r.session, r.subscribed))
        .collect();
    undo.extend(last);
    for (session, _) in &undo {
        gw.presence_leave(session, caller).await;
    }
    Err(undo)
}

/// The `{token, session}` meta that follows every event's payload.
pub(crate) fn event_meta(e: &Published, session: &SessionId) -> Value {
    json!({"token": &*e.token, "session": session.as_str()})
}

/// The offset an event of `session` carries when the socket joined that session only: its own
/// `session~token` (see [`recovery`]).
pub(crate) fn own_offset(e: &Published, session: &SessionId) -> String {
    let mut offset = String::with_capacity(session.as_str().len() + 1 + e.token.len());
    recovery::push_offset(&mut offset, session.as_str(), &e.token);
    offset
}

/// The finished WebSocket frame of event `e`
/// (`42["qa:new",payload,{token,session},"offset"]`) for a subscriber (`user`, staff or not) of
/// `session`, if they may see it. With `offset` `None` (the socket joined `session` only, see
/// [`client::SioClient::advance`]) the frame is made once per event and audience and shared by
/// every socket that gets the same payload; with an offset of several sessions it is the
/// socket's own.
pub(crate) fn event_frame(
    e: &Published,
    session: &SessionId,
    user: &str,
    staff: bool,
    offset: Option<&str>,
) -> Option<Arc<[u8]>> {
    let delivery = e.delivery_for(user, staff)?;
    let frame = |payload: &str, offset: &str| {
        let name = Value::from(e.name);
        let meta = event_meta(e, session);
        let offset = Value::from(offset);
        wsframe::text(format!("42[{name},{payload},{meta},{offset}]").as_bytes())
    };
    match offset {
        None => e.encoded(delivery, Encoding::SocketIoFrame, |payload| {
            frame(payload, &own_offset(e, session))
        }),
        Some(offset) => {
            let (_, payload) = e.deliveries.get(delivery)?;
            Some(Arc::from(frame(payload, offset)))
        }
    }
}

/// The Engine.IO message of an event emitted by the server: `42[name, …args]`.
pub(crate) fn event_packet(name: &str, args: &[&Value]) -> String {
    let mut packet = vec![Value::from(name)];
    packet.extend(args.iter().map(|a| (*a).clone()));
    format!("42{}", Value::Array(packet))
}

/// Why the server ends a socket, told to the client first as `server:error {code, message}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// Its outbound queue filled up.
    SlowConsumer,
    /// It fell behind the session's room.
    Lagged,
    /// Its token expired.
    TokenExpired,
    /// The node is stopping.
    ShuttingDown,
}

impl Cut {
    /// The stable code.
    pub(crate) fn code(self) -> &'static str {
        match self {
            Cut::SlowConsumer | Cut::Lagged => "slow_consumer",
            Cut::TokenExpired => "token_expired",
            Cut::ShuttingDown => "shutting_down",
        }
    }

    /// `server:error`'s payload.
    pub(crate) fn payload(self) -> Value {
        let message = match self {
            Cut::SlowConsumer => {
                "your connection could not keep up; reconnect and resume with your last token"
            }
            Cut::Lagged => "you fell behind the session; reconnect and resume with your last token",
            Cut::TokenExpired => "your token expired; reconnect with a fresh one",
            Cut::ShuttingDown => "this node is shutting down; reconnect to another",
        };
        json!({"code": self.code(), "message": message})
    }
}

/// `server:shutdown`'s payload: reconnect elsewhere.
pub(crate) fn shutdown_payload() -> Value {
    json!({"code": "shutting_down", "message": "this node is shutting down; reconnect to another", "reconnect": true})
}

/// The socketioxide room of a session's sockets on this node.
pub(crate) fn session_room(session: &SessionId) -> String {
    format!("session:{session}")
}

/// `attendance:update`'s payload.
pub(crate) fn attendance_payload(session: &SessionId, present: usize) -> Value {
    json!({"session": session.as_str(), "present": present})
}

//! The Socket.IO namespace `/` on socketioxide: the transport of clients that long-poll, or
//! that start on polling and upgrade to WebSocket (socket.io-client's default). A client that
//! opens with `transport=websocket` gets the lean transport instead (`ws.rs`); both drive
//! the same sans-IO core ([`SioClient`]) for what events mean, and call `sio` for
//! authentication, commands, joins and presence. This file is only socketioxide glue:
//! socketioxide does Engine.IO (handshake, heartbeat, upgrades), parses packets and closes a
//! connection on a parse error or a CONNECT timeout (`connect_timeout_ms`).
//!
//! Each joined socket has its own subscription to the document's room (from `Hub::join`), so
//! the snapshot or replay it gets and the events it receives after it have no gap and no
//! overlap. Payloads come serialized once per audience; a socket that cannot keep up (its queue
//! is full or it lags the room) is told why and disconnected, and resumes with its last token.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lectern_hub::Published;
use lectern_model::SessionId;
use serde_json::Value;
use serde_json::value::RawValue;
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extensions::ConnectPid;
use socketioxide::extract::{AckSender, Event, Extension, SocketRef, State, TryData};
use socketioxide::handler::{ConnectHandler, FromMessageParts, Value as Payload};
use socketioxide::socket::Socket;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tracing::debug;

use crate::admission::PreauthSession;
use crate::error::AppError;
use crate::sio::client::{self, Action, Dispatch, SioClient, Why};
use crate::sio::recovery;
use crate::sio::{self, Args, Cut, Rejoined, Transport};
use crate::{Gateway, lock};

/// How long a closing socket's last event (`server:error`) gets to leave before the socket is
/// disconnected.
const NOTICE_FLUSH: Duration = Duration::from_millis(50);

/// What the handshake established about a socket (kept in its extensions).
#[derive(Clone)]
pub(crate) struct Conn {
    conn: Arc<sio::Conn>,
    /// The socket's protocol state (joined sessions, the token's expiry).
    client: Arc<Mutex<SioClient>>,
    /// Set to true when the socket disconnects, so its forwarding tasks end at once.
    closed: Arc<tokio::sync::watch::Sender<bool>>,
    /// The sessions a recovery joined again, until the connect handler sends what they missed.
    recovered: Arc<Mutex<Vec<Rejoined<()>>>>,
}

/// The Socket.IO room of a session's sockets on this node (for `attendance:update`).
pub(crate) fn session_room(session: &SessionId) -> String {
    sio::session_room(session)
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
    let auth = auth.ok();
    let parts = s.req_parts();
    let conn = sio::authenticate(
        &gw,
        auth.as_ref(),
        // A cookie from a foreign origin counts as no token (see `ws.rs`).
        gw.request_token(&parts.headers, parts.uri.query())
            .ok()
            .flatten(),
        Transport::SocketIo,
    )?;
    // Authenticated: the session's place among those waiting to authenticate is freed.
    if let Some(place) = parts.extensions.get::<PreauthSession>() {
        place.release();
    }
    let mut client =
        SioClient::connected_elsewhere(sio::timing(&gw), conn.valid_for(), Instant::now());
    // Connection State Recovery: the sessions are joined again before socketioxide sends the
    // CONNECT reply, whose pid (set here) says whether they were.
    let mut pid = recovery::new_id();
    let mut recovered = Vec::new();
    if let Some(r) = sio::recovery_asked(&gw, Transport::SocketIo, auth.as_ref()) {
        let room = |session: &SessionId| s.join(session_room(session));
        match sio::recover(&gw, Transport::SocketIo, &conn.caller, &r, room).await {
            Ok(rejoined) => {
                client.recovered(rejoined.iter().map(|j| (j.session.clone(), j.from.clone())));
                recovered = rejoined;
                pid = r.pid;
            }
            Err(undo) => {
                for (session, ()) in undo {
                    s.leave(session_room(&session));
                }
            }
        }
    }
    s.extensions.insert(ConnectPid(pid));
    s.extensions.insert(Conn {
        conn: Arc::new(conn),
        client: Arc::new(Mutex::new(client)),
        closed: Arc::new(tokio::sync::watch::channel(false).0),
        recovered: Arc::new(Mutex::new(recovered)),
    });
    // The handler is registered here, not in `on_connect`: socketioxide sends the connect
    // reply before it spawns the connect handler, so an event a client sends right after the
    // reply could otherwise arrive before its handler exists and be dropped without an ack.
    // One handler for every event: the core says what each means.
    s.on_fallback(on_event);
    s.on_disconnect(on_disconnect);
    Ok(())
}

async fn on_connect(s: SocketRef, Extension(conn): Extension<Conn>, State(gw): State<Gateway>) {
    debug!(sid = %s.id, user = %conn.conn.caller.user, "socket connected");
    // After the CONNECT reply: what each recovered session missed, then its live events.
    let recovered = std::mem::take(&mut *lock(&conn.recovered));
    for r in recovered {
        let mut cut = None;
        for e in &r.missed {
            cut = emit(&s, &gw, &conn, &r.session, e);
            if cut.is_some() {
                break;
            }
        }
        lock(&conn.client).advance(&r.session, &r.to);
        if let Some(cut) = cut {
            cut_off(&s, &gw, &conn, cut);
            break;
        }
        tokio::spawn(forward(
            s.clone(),
            gw.clone(),
            conn.clone(),
            r.session,
            r.events,
        ));
    }
    // The core's deadlines (the token's expiry): the socket is cut off when one is due.
    let mut closed = conn.closed.subscribe();
    tokio::spawn(async move {
        loop {
            let Some(at) = lock(&conn.client).next_deadline() else {
                return;
            };
            tokio::select! {
                () = tokio::time::sleep_until(at) => {
                    let due = lock(&conn.client).on_timer(Instant::now());
                    if let Some(Action::Close(why)) = due {
                        close(&s, why);
                        return;
                    }
                }
                _ = closed.wait_for(|c| *c) => return,
            }
        }
    });
}

/// Whether an event came with binary attachments (a BINARY_EVENT).
struct Binary(bool);

impl<A: Adapter> FromMessageParts<A> for Binary {
    type Error = std::convert::Infallible;

    fn from_message_parts(
        _: &Arc<Socket<A>>,
        v: &mut Payload,
        _: &Option<i64>,
    ) -> Result<Self, Self::Error> {
        Ok(Binary(match v {
            Payload::Str(_, bins) => bins.as_ref().is_some_and(|b| !b.is_empty()),
            Payload::Bytes(_) => true,
        }))
    }
}

/// Every event of a connected socket: the core says what it is, this carries it out.
async fn on_event(
    Binary(binary): Binary,
    s: SocketRef,
    Event(event): Event,
    TryData(data): TryData<Args>,
    ack: AckSender,
    Extension(conn): Extension<Conn>,
    State(gw): State<Gateway>,
) {
    let dispatch = if binary {
        lock(&conn.client).on_binary_event()
    } else {
        lock(&conn.client).on_event(&event, sio::arg_list(data))
    };
    let Some(dispatch) = dispatch else { return };
    let caller = &conn.conn.caller;
    let reply = match dispatch {
        Dispatch::Reply(reply) => reply,
        Dispatch::Refuse(e) => sio::refused(&gw, &e),
        Dispatch::Command { event, args } => sio::command(&gw, caller, &event, Ok(args)).await,
        Dispatch::Join { session, since } => {
            let room = session_room(&session);
            let joined = sio::join(&gw, Transport::SocketIo, caller, &session, since, || {
                s.join(room.clone())
            })
            .await;
            let at = joined.as_ref().ok().map(|(_, token, _, _)| token.clone());
            let keep = lock(&conn.client).join_done(&session, at);
            match joined {
                Ok((reply, _, events, ())) if keep => {
                    tokio::spawn(forward(
                        s.clone(),
                        gw.clone(),
                        conn.clone(),
                        session,
                        events,
                    ));
                    reply
                }
                Ok(_) => {
                    // The socket closed while the join ran.
                    s.leave(room);
                    gw.presence_leave(&session, caller).await;
                    return;
                }
                Err(e) => e.ack(),
            }
        }
        Dispatch::Leave { session } => {
            s.leave(session_room(&session));
            gw.presence_leave(&session, caller).await;
            client::left_reply(true)
        }
    };
    let _ = ack.send(&reply);
}

async fn on_disconnect(s: SocketRef, State(gw): State<Gateway>) {
    // Removed, so the connection's slot and count go as soon as running handlers finish.
    let Some(conn) = s.extensions.remove::<Conn>() else {
        return;
    };
    conn.closed.send_replace(true);
    let sessions = lock(&conn.client).take_sessions();
    for session in sessions {
        gw.presence_leave(&session, &conn.conn.caller).await;
    }
}

/// Forwards a session's events to one socket until it leaves, disconnects or falls behind.
async fn forward(
    s: SocketRef,
    gw: Gateway,
    conn: Conn,
    session: SessionId,
    mut events: tokio::sync::broadcast::Receiver<Arc<Published>>,
) {
    let mut closed = conn.closed.subscribe();
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = closed.wait_for(|c| *c) => return,
        };
        if !s.connected() || !lock(&conn.client).is_joined(&session) {
            return;
        }
        let cut = match event {
            Ok(e) => match emit(&s, &gw, &conn, &session, &e) {
                None => continue,
                Some(cut) => cut,
            },
            Err(RecvError::Lagged(_)) => Cut::Lagged,
            Err(RecvError::Closed) => Cut::ShuttingDown,
        };
        cut_off(&s, &gw, &conn, cut);
        return;
    }
}

/// Sends event `e` of `session` to the socket, if its caller may see it, with its meta and
/// offset (`42[name,payload,{token,session},offset]`); the cut-off due if its queue is full.
fn emit(
    s: &SocketRef,
    gw: &Gateway,
    conn: &Conn,
    session: &SessionId,
    e: &Published,
) -> Option<Cut> {
    let caller = &conn.conn.caller;
    let payload = e.payload_for(caller.user.as_str(), caller.role.is_staff())?;
    let raw = RawValue::from_string(payload.to_string()).ok()?;
    let meta = sio::event_meta(e, session);
    let offset = lock(&conn.client)
        .advance(session, &e.token)
        .unwrap_or_else(|| sio::own_offset(e, session));
    gw.metrics()
        .event_out(Transport::SocketIo.label(), e.published_at);
    match s.emit(e.name, &(raw, meta, offset)) {
        Ok(()) => None,
        Err(_) => Some(Cut::SlowConsumer),
    }
}

/// Cuts the socket off for `cut` (it fell behind, or the node stops), telling it why.
fn cut_off(s: &SocketRef, gw: &Gateway, conn: &Conn, cut: Cut) {
    if s.connected()
        && let Some(Action::Close(why)) = lock(&conn.client).cut(cut)
    {
        gw.count_rejection(cut.code());
        close(s, why);
    }
}

/// Tells the client why (if there is a notice for `why`), then disconnects it. socketioxide
/// cannot queue its disconnect packet into a full queue (a client that stopped reading): such a
/// socket ends at its next heartbeat ping, which cannot be queued either, so within
/// `ping_interval_ms`; nothing more is queued for it meanwhile.
fn close(s: &SocketRef, why: Why) {
    if let Some((event, payload)) = why.notice() {
        let _ = s.emit(event, &payload);
    }
    let s = s.clone();
    // Give the notice a moment to leave before the socket closes.
    tokio::spawn(async move {
        tokio::time::sleep(NOTICE_FLUSH).await;
        let _ = s.disconnect();
    });
}

//! [`SioClient`]: one Socket.IO connection's protocol state, with no IO (in the manner of
//! `quinn-proto`). It takes what the transport received (Engine.IO text packets, binary
//! messages, the result of an authentication or a join) and the clock, and answers with an
//! [`Action`] for the transport to carry out: send a packet, authenticate a CONNECT, run a
//! command, join or leave a session, close with a reason. It never touches a socket, the hub
//! or a task, so unit tests drive it packet by packet and timeout by timeout.
//!
//! The lean WebSocket (`ws.rs`) feeds it every packet. socketioxide (`socket.rs`) parses
//! Engine.IO and Socket.IO itself and sends its own heartbeat, so it feeds only the events of a
//! connected socket ([`SioClient::on_event`]) and the clock (for the token's expiry).
//!
//! Protocol rules it enforces (Engine.IO v4, Socket.IO v5): a packet that is not valid Engine.IO
//! or Socket.IO, a Socket.IO packet other than CONNECT before the namespace is connected, and
//! an EVENT whose payload is not a non-empty array starting with a name each close the
//! connection at once; no CONNECT within the connect timeout closes it; `41` leaves the
//! namespace (and every session joined through it) and keeps the Engine.IO connection, which
//! may CONNECT again within a fresh connect timeout; the first PING goes out one ping interval
//! after the handshake; binary events are refused with `unsupported` (their attachments are
//! skipped).

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use lectern_model::{ResumeToken, SessionId};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::packet::{self, EnginePacket, SioKind};
use super::recovery::push_offset;
use super::{ARGS_MAX, Cut, already_joined, join_args, leave_args, shutdown_payload};
use crate::commands::COMMAND_EVENTS;
use crate::error::AppError;

/// The event that joins a session: `session:join (sessionId, [resumeToken])`.
pub(crate) const JOIN_EVENT: &str = "session:join";
/// The event that leaves a session: `session:leave (sessionId)`.
pub(crate) const LEAVE_EVENT: &str = "session:leave";
/// The event that tells a client why the server ends its connection.
pub(crate) const SERVER_ERROR_EVENT: &str = "server:error";
/// The event that tells every client the node is stopping.
pub(crate) const SERVER_SHUTDOWN_EVENT: &str = "server:shutdown";

/// The heartbeat and connect deadlines of a connection, in milliseconds (`u32`: every
/// connection holds one, and 49 days is past any deadline worth setting).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    ping_interval_ms: u32,
    ping_timeout_ms: u32,
    connect_timeout_ms: u32,
}

impl Timing {
    /// Between the server's pings, how long a ping may go unanswered, and how long a
    /// connection may go without a connected namespace (each capped at `u32::MAX` ms).
    pub(crate) fn new(ping_interval: Duration, ping_timeout: Duration, connect: Duration) -> Self {
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        Timing {
            ping_interval_ms: ms(ping_interval),
            ping_timeout_ms: ms(ping_timeout),
            connect_timeout_ms: ms(connect),
        }
    }

    /// Between the server's pings.
    pub(crate) fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms.into())
    }

    /// How long a ping may go unanswered.
    pub(crate) fn ping_timeout(&self) -> Duration {
        Duration::from_millis(self.ping_timeout_ms.into())
    }

    /// How long a connection may go without a connected namespace.
    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.into())
    }
}

/// Where the connection's namespace `/` stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No namespace connected; closed if none is by the deadline.
    Waiting { by: Option<Instant> },
    /// Namespace `/` connected; cut off when the token expires (`None`: not within the
    /// clock's range).
    Connected { expires: Option<Instant> },
    /// Closed: every further input is ignored.
    Closed,
}

/// A session joined (or being joined) through this connection.
#[derive(Debug)]
struct Joined {
    session: SessionId,
    /// False while the join runs.
    settled: bool,
    /// The resume token of the last event the client was sent from this session (or of the
    /// join): its place in the offsets of Connection State Recovery (`sio::recovery`).
    at: Option<Arc<str>>,
}

/// What an event asks of the transport (the ack, if the client asked for one, is the
/// transport's to send: an ack id on the lean WebSocket, socketioxide's ack sender).
#[derive(Debug)]
pub(crate) enum Dispatch {
    /// Answer with this at once.
    Reply(Value),
    /// Answer with this refusal (the transport counts it in `/metrics`).
    Refuse(AppError),
    /// Run a command event and answer with its result.
    Command {
        /// The event's name (one of the command events).
        event: String,
        /// Its arguments.
        args: Vec<Value>,
    },
    /// Join a session, then tell the core ([`SioClient::join_done`]) and answer.
    Join {
        /// The session.
        session: SessionId,
        /// Where the client resumes from.
        since: Option<ResumeToken>,
    },
    /// Leave a session (the core already forgot it): unsubscribe, update presence, answer
    /// with [`left_reply`]`(true)`.
    Leave {
        /// The session.
        session: SessionId,
    },
}

/// What the transport does next.
#[derive(Debug)]
pub(crate) enum Action {
    /// Send this Engine.IO text packet.
    Send(String),
    /// Send the Engine.IO ping.
    Ping,
    /// Authenticate this CONNECT's payload, then call [`SioClient::connected`] or
    /// [`SioClient::connect_refused`].
    Authenticate(Option<Value>),
    /// Carry out an event; answer it through the ack id, if there is one.
    Event(Option<u64>, Dispatch),
    /// The namespace disconnected (`41`): leave these sessions and release the connection's
    /// authentication; the Engine.IO connection stays.
    Disconnected(Vec<SessionId>),
    /// Send the notice (if any), then close the connection.
    Close(Why),
}

/// Why a connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// The client closed it (`1`, or its transport ended).
    ClientClosed,
    /// A packet was not valid Engine.IO or Socket.IO, or broke the protocol's order.
    Invalid(&'static str),
    /// No namespace was connected within the connect timeout.
    ConnectTimeout,
    /// A ping went unanswered.
    PingTimeout,
    /// The server cut it off, saying why in `server:error`.
    Cut(Cut),
    /// The node is stopping, as `server:shutdown` says.
    ShuttingDown,
}

impl Why {
    /// The event to send before closing, and its payload.
    pub(crate) fn notice(self) -> Option<(&'static str, Value)> {
        match self {
            Why::Cut(cut) => Some((SERVER_ERROR_EVENT, cut.payload())),
            Why::ShuttingDown => Some((SERVER_SHUTDOWN_EVENT, shutdown_payload())),
            _ => None,
        }
    }

    /// The WebSocket close status and reason (RFC 6455 §7.4.1).
    pub(crate) fn ws_close(self) -> (u16, &'static str) {
        match self {
            Why::ClientClosed | Why::Cut(_) => (1000, ""),
            Why::Invalid(why) => (1002, why),
            Why::ConnectTimeout => (1008, "no namespace connect"),
            Why::PingTimeout => (1001, "ping timeout"),
            Why::ShuttingDown => (1001, "node shutting down"),
        }
    }

    /// The stable code counted in `/metrics` when the server closes for this reason.
    pub(crate) fn code(self) -> Option<&'static str> {
        match self {
            Why::ClientClosed => None,
            Why::Invalid(_) => Some("invalid_packet"),
            Why::ConnectTimeout => Some("connect_timeout"),
            Why::PingTimeout => Some("ping_timeout"),
            Why::Cut(cut) => Some(cut.code()),
            Why::ShuttingDown => Some("shutting_down"),
        }
    }
}

/// `session:leave`'s ack.
pub(crate) fn left_reply(left: bool) -> Value {
    json!({"ok": true, "left": left})
}

/// The refusal of a binary event.
fn unsupported_binary() -> AppError {
    AppError::new(
        StatusCode::BAD_REQUEST,
        "unsupported",
        "binary events are not supported; send JSON",
    )
}

/// The refusal of an event with no handler.
fn unknown_event(name: &str) -> AppError {
    AppError::new(
        StatusCode::NOT_FOUND,
        "unknown_event",
        format!("no event {name}"),
    )
}

/// `now + d`, or `None` past the clock's range (a deadline that never comes).
fn after(now: Instant, d: Duration) -> Option<Instant> {
    now.checked_add(d)
}

/// One connection's Socket.IO state. See the module documentation.
#[derive(Debug)]
pub(crate) struct SioClient {
    timing: Timing,
    phase: Phase,
    /// The next ping; `None` when the transport pings itself (socketioxide).
    ping_at: Option<Instant>,
    pong_by: Option<Instant>,
    sessions: Vec<Joined>,
    /// Binary messages still due for the last binary packet (skipped).
    attachments_due: u32,
}

impl SioClient {
    /// A connection that has just sent its Engine.IO open packet ([`open_packet`]): the first
    /// ping is one interval away, and a namespace must connect within the connect timeout.
    pub(crate) fn open(timing: Timing, now: Instant) -> SioClient {
        SioClient {
            timing,
            phase: Phase::Waiting {
                by: after(now, timing.connect_timeout()),
            },
            ping_at: after(now, timing.ping_interval()),
            pong_by: None,
            sessions: Vec::new(),
            attachments_due: 0,
        }
    }

    /// A socket whose transport did the handshake, the CONNECT and the heartbeat itself
    /// (socketioxide), connected with a token valid for `valid_for`.
    pub(crate) fn connected_elsewhere(timing: Timing, valid_for: Duration, now: Instant) -> Self {
        SioClient {
            timing,
            phase: Phase::Connected {
                expires: after(now, valid_for),
            },
            ping_at: None,
            pong_by: None,
            sessions: Vec::new(),
            attachments_due: 0,
        }
    }

    /// Whether namespace `/` is connected.
    pub(crate) fn is_connected(&self) -> bool {
        matches!(self.phase, Phase::Connected { .. })
    }

    /// Whether the connection is closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Whether `session` is joined (its join finished and it was not left).
    pub(crate) fn is_joined(&self, session: &SessionId) -> bool {
        self.sessions
            .iter()
            .any(|j| j.settled && &j.session == session)
    }

    /// The earliest deadline ([`SioClient::on_timer`] is due then), if any.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let phase = match self.phase {
            Phase::Waiting { by } => by,
            Phase::Connected { expires } => expires,
            Phase::Closed => return None,
        };
        [phase, self.ping_at, self.pong_by]
            .into_iter()
            .flatten()
            .min()
    }

    /// An Engine.IO text packet arrived.
    pub(crate) fn on_text(&mut self, text: &str, now: Instant) -> Option<Action> {
        if self.is_closed() {
            return None;
        }
        if self.attachments_due > 0 {
            return self.close(Why::Invalid("a text packet where an attachment was due"));
        }
        match packet::engine(text) {
            Err(e) => self.close(Why::Invalid(e.0)),
            Ok(EnginePacket::Close) => self.close(Why::ClientClosed),
            // A client ping (a probe) is answered with its data.
            Ok(EnginePacket::Ping(data)) => Some(Action::Send(format!("3{data}"))),
            Ok(EnginePacket::Pong) => {
                self.pong_by = None;
                None
            }
            Ok(EnginePacket::Message(m)) => self.on_socketio(m, now),
            // A connection that opened as WebSocket has nothing to upgrade.
            Ok(EnginePacket::Upgrade) => self.close(Why::Invalid("an upgrade on a WebSocket")),
            Ok(EnginePacket::Noop) => None,
        }
    }

    /// A binary message arrived: an attachment of the last binary packet (skipped), or a
    /// protocol error.
    pub(crate) fn on_binary(&mut self) -> Option<Action> {
        if self.is_closed() {
            return None;
        }
        if self.attachments_due == 0 {
            return self.close(Why::Invalid("a binary message with no binary packet"));
        }
        self.attachments_due -= 1;
        None
    }

    fn on_socketio(&mut self, text: &str, now: Instant) -> Option<Action> {
        let p = match packet::socketio(text) {
            Ok(p) => p,
            Err(e) => return self.close(Why::Invalid(e.0)),
        };
        if p.namespace != "/" {
            if p.kind == SioKind::Connect {
                // socket.io answers a CONNECT of an unknown namespace and keeps the connection.
                let message = json!({"message": "Invalid namespace"});
                return Some(Action::Send(format!("44{},{message}", p.namespace)));
            }
            return self.close(Why::Invalid("a packet for a namespace not connected"));
        }
        if p.kind != SioKind::Connect && !self.is_connected() {
            return self.close(Why::Invalid("a Socket.IO packet before CONNECT"));
        }
        match p.kind {
            SioKind::Connect => {
                if self.is_connected() {
                    // A second CONNECT of a connected namespace is ignored, as socket.io does.
                    return None;
                }
                if p.data.is_empty() {
                    return Some(Action::Authenticate(None));
                }
                match serde_json::from_str::<Value>(p.data) {
                    Ok(auth @ Value::Object(_)) => Some(Action::Authenticate(Some(auth))),
                    _ => self.close(Why::Invalid("a CONNECT payload that is not an object")),
                }
            }
            SioKind::Disconnect => {
                // Leaving the namespace starts a fresh wait for a CONNECT: a connection
                // without one holds nothing for long.
                self.phase = Phase::Waiting {
                    by: after(now, self.timing.connect_timeout()),
                };
                let left = self.sessions.drain(..).filter(|j| j.settled);
                Some(Action::Disconnected(left.map(|j| j.session).collect()))
            }
            SioKind::Event => {
                let mut args = match serde_json::from_str::<Vec<Value>>(p.data) {
                    Ok(args) if matches!(args.first(), Some(Value::String(_))) => args,
                    _ => {
                        return self.close(Why::Invalid(
                            "an EVENT payload that is not a non-empty array starting with a name",
                        ));
                    }
                };
                let Value::String(name) = args.remove(0) else {
                    return None;
                };
                let args = if args.len() > ARGS_MAX {
                    Err(AppError::bad_request(
                        "malformed event data: too many arguments",
                    ))
                } else {
                    Ok(args)
                };
                self.on_event(&name, args).map(|d| Action::Event(p.ack, d))
            }
            SioKind::BinaryEvent => {
                self.attachments_due = p.attachments;
                match p.ack {
                    Some(_) => self.on_binary_event().map(|d| Action::Event(p.ack, d)),
                    None => None,
                }
            }
            SioKind::BinaryAck => {
                self.attachments_due = p.attachments;
                None
            }
            // The server asks for no acks: an ack from the client answers nothing.
            SioKind::Ack => None,
        }
    }

    /// An event of the connected namespace: what it asks of the transport. socketioxide's
    /// handlers call this directly; the lean WebSocket through [`SioClient::on_text`].
    pub(crate) fn on_event(
        &mut self,
        name: &str,
        args: Result<Vec<Value>, AppError>,
    ) -> Option<Dispatch> {
        if !self.is_connected() {
            return None;
        }
        let args = match args {
            Ok(args) => args,
            Err(e) => return Some(Dispatch::Refuse(e)),
        };
        Some(match name {
            JOIN_EVENT => match join_args(&args) {
                Err(e) => Dispatch::Refuse(e),
                Ok((session, _)) if self.sessions.iter().any(|j| j.session == session) => {
                    Dispatch::Refuse(already_joined())
                }
                Ok((session, since)) => {
                    // Most connections join one session: no spare capacity (idle memory).
                    self.sessions.reserve_exact(1);
                    self.sessions.push(Joined {
                        session: session.clone(),
                        settled: false,
                        at: None,
                    });
                    Dispatch::Join { session, since }
                }
            },
            LEAVE_EVENT => match leave_args(&args) {
                Err(e) => Dispatch::Refuse(e),
                Ok(session) => {
                    let before = self.sessions.len();
                    self.sessions
                        .retain(|j| !(j.settled && j.session == session));
                    if self.sessions.len() < before {
                        Dispatch::Leave { session }
                    } else {
                        Dispatch::Reply(left_reply(false))
                    }
                }
            },
            name if COMMAND_EVENTS.contains(&name) => Dispatch::Command {
                event: name.to_owned(),
                args,
            },
            name => Dispatch::Refuse(unknown_event(name)),
        })
    }

    /// An event with binary attachments (socketioxide's handlers call this directly; the
    /// lean WebSocket through [`SioClient::on_text`]): refused, whatever its name.
    pub(crate) fn on_binary_event(&self) -> Option<Dispatch> {
        self.is_connected()
            .then(|| Dispatch::Refuse(unsupported_binary()))
    }

    /// A join the core asked for finished: `joined` is the resume token it started from, or
    /// `None` if it failed. Whether the transport keeps it: false when the namespace
    /// disconnected or the connection closed meanwhile (the transport then leaves the session
    /// again and sends no ack).
    pub(crate) fn join_done(&mut self, session: &SessionId, joined: Option<Arc<str>>) -> bool {
        let Some(i) = self
            .sessions
            .iter()
            .position(|j| !j.settled && &j.session == session)
        else {
            return false;
        };
        if let Some(at) = joined
            && self.is_connected()
        {
            self.sessions[i].settled = true;
            self.sessions[i].at = Some(at);
            true
        } else {
            self.sessions.remove(i);
            if self.sessions.is_empty() {
                self.sessions = Vec::new();
            }
            false
        }
    }

    /// The CONNECT was authenticated (a token valid for `valid_for`): the reply to send,
    /// `40{sid, pid}` (`pid`: the connection's private id, the client's own when it recovered,
    /// see `sio::recovery`).
    pub(crate) fn connected(
        &mut self,
        sid: &str,
        pid: &str,
        valid_for: Duration,
        now: Instant,
    ) -> Action {
        self.phase = Phase::Connected {
            expires: after(now, valid_for),
        };
        Action::Send(format!("40{}", json!({ "sid": sid, "pid": pid })))
    }

    /// A recovery joined these sessions again, each from the token the client's offset named:
    /// they count as joined (before [`SioClient::connected`], on the lean WebSocket).
    pub(crate) fn recovered(&mut self, sessions: impl IntoIterator<Item = (SessionId, Arc<str>)>) {
        for (session, at) in sessions {
            self.sessions.push(Joined {
                session,
                settled: true,
                at: Some(at),
            });
        }
    }

    /// An event of `session` whose resume token is `token` goes to the client, which moves the
    /// session's place there. The offset the event carries as its last argument: `None` when
    /// `session` is the only one joined (then it is the event's own `session~token`, the same
    /// for every socket of the session, so its frame stays shared), else the place in every
    /// joined session (`sio::recovery`).
    pub(crate) fn advance(&mut self, session: &SessionId, token: &Arc<str>) -> Option<String> {
        let mut settled = 0;
        for j in self.sessions.iter_mut().filter(|j| j.settled) {
            settled += 1;
            if &j.session == session {
                j.at = Some(token.clone());
            }
        }
        if settled <= 1 {
            return None;
        }
        let mut offset = String::new();
        for j in self.sessions.iter().filter(|j| j.settled) {
            if let Some(at) = &j.at {
                push_offset(&mut offset, j.session.as_str(), at);
            }
        }
        Some(offset)
    }

    /// The CONNECT was refused: the reply to send, `44{message}`. The client may try again
    /// until the connect deadline.
    pub(crate) fn connect_refused(&mut self, message: &str) -> Action {
        Action::Send(format!("44{}", json!({ "message": message })))
    }

    /// The clock reached [`SioClient::next_deadline`]: what is due, if anything.
    pub(crate) fn on_timer(&mut self, now: Instant) -> Option<Action> {
        let due = |t: Option<Instant>| t.is_some_and(|t| now >= t);
        match self.phase {
            Phase::Closed => return None,
            Phase::Waiting { by } if due(by) => return self.close(Why::ConnectTimeout),
            _ => {}
        }
        if due(self.pong_by) {
            return self.close(Why::PingTimeout);
        }
        if let Phase::Connected { expires } = self.phase
            && due(expires)
        {
            return self.cut(Cut::TokenExpired);
        }
        if due(self.ping_at) {
            self.ping_at = after(now, self.timing.ping_interval());
            if self.pong_by.is_none() {
                self.pong_by = after(now, self.timing.ping_timeout());
            }
            return Some(Action::Ping);
        }
        None
    }

    /// The server cuts the connection off (it fell behind, its token expired …).
    pub(crate) fn cut(&mut self, cut: Cut) -> Option<Action> {
        self.close(Why::Cut(cut))
    }

    /// The node is stopping.
    pub(crate) fn shut_down(&mut self) -> Option<Action> {
        self.close(Why::ShuttingDown)
    }

    /// The connection ended: the sessions still joined (to leave), once.
    pub(crate) fn take_sessions(&mut self) -> Vec<SessionId> {
        self.phase = Phase::Closed;
        std::mem::take(&mut self.sessions)
            .into_iter()
            .filter(|j| j.settled)
            .map(|j| j.session)
            .collect()
    }

    fn close(&mut self, why: Why) -> Option<Action> {
        if self.is_closed() {
            return None;
        }
        self.phase = Phase::Closed;
        Some(Action::Close(why))
    }
}

/// The Engine.IO open packet of a lean WebSocket: `0{sid, upgrades: [], pingInterval,
/// pingTimeout, maxPayload}`.
pub(crate) fn open_packet(sid: &str, timing: &Timing, payload_max_bytes: usize) -> String {
    let open = json!({
        "sid": sid,
        "upgrades": [],
        "pingInterval": timing.ping_interval_ms,
        "pingTimeout": timing.ping_timeout_ms,
        "maxPayload": payload_max_bytes,
    });
    format!("0{open}")
}

/// The Engine.IO packet of an ack: `43<id>[reply]`.
pub(crate) fn ack_packet(id: u64, reply: &Value) -> String {
    format!("43{id}[{reply}]")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn timing() -> Timing {
        Timing::new(25 * SECOND, 20 * SECOND, 45 * SECOND)
    }

    /// A client whose namespace is connected with a token valid for an hour.
    fn connected(now: Instant) -> SioClient {
        let mut c = SioClient::open(timing(), now);
        assert!(matches!(
            c.on_text("40{\"token\":\"t\"}", now),
            Some(Action::Authenticate(Some(_)))
        ));
        let reply = c.connected("abc", "pid", 3600 * SECOND, now);
        assert!(matches!(reply, Action::Send(ref t) if t == "40{\"pid\":\"pid\",\"sid\":\"abc\"}"));
        c
    }

    fn closed_invalid(a: Option<Action>) -> bool {
        matches!(a, Some(Action::Close(Why::Invalid(_))))
    }

    const SESSION: &str = "s1";

    /// A resume token's text (the core treats it as opaque).
    fn at(token: &str) -> Arc<str> {
        Arc::from(token)
    }

    fn session() -> SessionId {
        SESSION.parse().unwrap()
    }

    #[test]
    fn the_first_ping_is_one_interval_after_the_handshake() {
        let t0 = Instant::now();
        let mut c = SioClient::open(timing(), t0);
        assert!(c.on_timer(t0).is_none(), "no ping at once");
        assert!(c.on_timer(t0 + 24 * SECOND).is_none());
        assert!(matches!(c.on_timer(t0 + 25 * SECOND), Some(Action::Ping)));
    }

    #[test]
    fn heartbeat_pong_keeps_and_silence_closes() {
        let t0 = Instant::now();
        let mut c = connected(t0);
        let t1 = t0 + 25 * SECOND;
        assert!(matches!(c.on_timer(t1), Some(Action::Ping)));
        assert_eq!(c.next_deadline(), Some(t1 + 20 * SECOND));
        assert!(c.on_text("3", t1 + SECOND).is_none());
        let t2 = t1 + 25 * SECOND;
        assert!(matches!(c.on_timer(t2), Some(Action::Ping)));
        assert!(matches!(
            c.on_timer(t2 + 20 * SECOND),
            Some(Action::Close(Why::PingTimeout))
        ));
        assert!(c.is_closed());
        assert!(c.on_timer(t2 + 60 * SECOND).is_none(), "closed once");
        assert!(c.on_text("3", t2).is_none(), "closed ignores input");
    }

    #[test]
    fn no_connect_within_the_timeout_closes() {
        let t0 = Instant::now();
        let mut c = SioClient::open(timing(), t0);
        // Pings and pongs do not count as a CONNECT.
        assert!(matches!(c.on_timer(t0 + 25 * SECOND), Some(Action::Ping)));
        assert!(c.on_text("3", t0 + 26 * SECOND).is_none());
        assert!(matches!(
            c.on_timer(t0 + 45 * SECOND),
            Some(Action::Close(Why::ConnectTimeout))
        ));
    }

    #[test]
    fn a_refused_connect_may_be_retried_until_the_deadline() {
        let t0 = Instant::now();
        let mut c = SioClient::open(timing(), t0);
        assert!(matches!(
            c.on_text("40", t0),
            Some(Action::Authenticate(None))
        ));
        let reply = c.connect_refused("missing token");
        assert!(matches!(reply, Action::Send(ref t) if t.starts_with("44{\"message\"")));
        assert!(!c.is_connected());
        assert!(matches!(
            c.on_text("40{\"token\":\"x\"}", t0),
            Some(Action::Authenticate(Some(_)))
        ));
        c.connected("sid", "pid", SECOND, t0);
        assert!(c.is_connected());
        // A second CONNECT of the connected namespace is ignored.
        assert!(c.on_text("40{}", t0).is_none());
        assert!(
            c.on_timer(t0 + 45 * SECOND)
                .is_some_and(|a| !matches!(a, Action::Close(Why::ConnectTimeout)))
        );
    }

    #[test]
    fn a_connect_of_another_namespace_is_answered_and_kept() {
        let t0 = Instant::now();
        let mut c = SioClient::open(timing(), t0);
        let a = c.on_text("40/admin,{}", t0);
        assert!(
            matches!(a, Some(Action::Send(ref t)) if t == "44/admin,{\"message\":\"Invalid namespace\"}")
        );
        assert!(!c.is_closed());
        // Anything else for that namespace breaks the protocol.
        assert!(closed_invalid(c.on_text("42/admin,[\"x\"]", t0)));
    }

    #[test]
    fn socketio_packets_before_connect_close() {
        let t0 = Instant::now();
        for p in [
            "42[\"qa:ask\",\"s\"]",
            "421[\"x\"]",
            "41",
            "43[]",
            "451-[\"x\",{}]",
        ] {
            let mut c = SioClient::open(timing(), t0);
            assert!(closed_invalid(c.on_text(p, t0)), "{p}");
        }
    }

    #[test]
    fn invalid_packets_close_at_once() {
        let t0 = Instant::now();
        for p in [
            "",
            "0",
            "7",
            "x",
            "5",
            "4",
            "44{}",
            "49[\"x\"]",
            "42[not json",
            "42{\"a\":1}",
            "42[]",
            "42[12]",
            "42\"x\"",
            "42",
        ] {
            let mut c = connected(t0);
            assert!(closed_invalid(c.on_text(p, t0)), "{p:?}");
        }
        let mut c = SioClient::open(timing(), t0);
        assert!(
            closed_invalid(c.on_text("40[1]", t0)),
            "a CONNECT payload not an object"
        );
        let mut c = SioClient::open(timing(), t0);
        assert!(
            closed_invalid(c.on_text("40{oops", t0)),
            "a CONNECT payload not JSON"
        );
        let mut c = connected(t0);
        assert!(
            closed_invalid(c.on_binary()),
            "a binary message out of nowhere"
        );
    }

    #[test]
    fn the_harmless_packets_are_answered_or_ignored() {
        let t0 = Instant::now();
        let mut c = connected(t0);
        assert!(matches!(c.on_text("2probe", t0), Some(Action::Send(ref t)) if t == "3probe"));
        assert!(c.on_text("6", t0).is_none());
        assert!(
            c.on_text("43[\"late\"]", t0).is_none(),
            "an ack answers nothing"
        );
        assert!(matches!(
            c.on_text("1", t0),
            Some(Action::Close(Why::ClientClosed))
        ));
    }

    #[test]
    fn events_dispatch_by_name() {
        let t0 = Instant::now();
        let mut c = connected(t0);
        let a = c.on_text("427[\"qa:ask\",\"s1\",\"why?\"]", t0);
        assert!(matches!(
            a,
            Some(Action::Event(Some(7), Dispatch::Command { ref event, ref args }))
                if event == "qa:ask" && args.len() == 2
        ));
        let a = c.on_text("42[\"nope\"]", t0);
        assert!(matches!(
            a,
            Some(Action::Event(None, Dispatch::Refuse(ref e))) if e.code == "unknown_event"
        ));
        let nine = format!("421[\"qa:ask\"{}]", ",1".repeat(ARGS_MAX + 1));
        let a = c.on_text(&nine, t0);
        assert!(matches!(
            a,
            Some(Action::Event(Some(1), Dispatch::Refuse(ref e))) if e.code == "bad_request"
        ));
        let a = c.on_text("421[\"session:join\",42]", t0);
        assert!(matches!(
            a,
            Some(Action::Event(Some(1), Dispatch::Refuse(ref e))) if e.code == "bad_request"
        ));
    }

    #[test]
    fn joins_and_leaves_are_tracked() {
        let t0 = Instant::now();
        let mut c = connected(t0);
        let join = format!("421[\"session:join\",\"{SESSION}\"]");
        assert!(matches!(
            c.on_text(&join, t0),
            Some(Action::Event(Some(1), Dispatch::Join { .. }))
        ));
        // A second join, running or done, is refused.
        let again = |c: &mut SioClient| {
            matches!(
                c.on_text(&join, t0),
                Some(Action::Event(_, Dispatch::Refuse(ref e))) if e.code == "already_joined"
            )
        };
        assert!(again(&mut c));
        assert!(!c.is_joined(&session()));
        assert!(c.join_done(&session(), Some(at("t0"))));
        assert!(c.is_joined(&session()));
        assert!(again(&mut c));
        let leave = format!("422[\"session:leave\",\"{SESSION}\"]");
        assert!(matches!(
            c.on_text(&leave, t0),
            Some(Action::Event(Some(2), Dispatch::Leave { .. }))
        ));
        assert!(matches!(
            c.on_text(&leave, t0),
            Some(Action::Event(Some(2), Dispatch::Reply(ref r))) if r["left"] == false
        ));
        // A failed join is forgotten: it may be tried again.
        assert!(matches!(
            c.on_text(&join, t0),
            Some(Action::Event(_, Dispatch::Join { .. }))
        ));
        assert!(!c.join_done(&session(), None));
        assert!(matches!(
            c.on_text(&join, t0),
            Some(Action::Event(_, Dispatch::Join { .. }))
        ));
        assert!(c.join_done(&session(), Some(at("t0"))));
        assert_eq!(c.take_sessions(), vec![session()]);
        assert!(c.is_closed());
    }

    #[test]
    fn a_namespace_disconnect_leaves_its_sessions_and_keeps_the_connection() {
        let t0 = Instant::now();
        let mut c = connected(t0);
        let join = format!("42[\"session:join\",\"{SESSION}\"]");
        c.on_text(&join, t0);
        c.join_done(&session(), Some(at("t0")));
        c.on_text("42[\"session:join\",\"s2\"]", t0);
        let t1 = t0 + 10 * SECOND;
        let a = c.on_text("41", t1);
        assert!(matches!(a, Some(Action::Disconnected(ref s)) if s == &vec![session()]));
        assert!(!c.is_closed() && !c.is_connected());
        // The join that was running when the namespace left is not kept.
        assert!(!c.join_done(&"s2".parse().unwrap(), Some(at("t0"))));
        // Events need a CONNECT again; the connection may CONNECT within a fresh timeout.
        assert_eq!(c.next_deadline(), Some(t0 + 25 * SECOND));
        assert!(matches!(c.on_timer(t0 + 25 * SECOND), Some(Action::Ping)));
        c.on_text("3", t0 + 25 * SECOND);
        assert!(matches!(
            c.on_timer(t1 + 45 * SECOND),
            Some(Action::Close(Why::ConnectTimeout))
        ));
        let mut c = connected(t0);
        c.on_text("41", t1);
        assert!(matches!(
            c.on_text("40", t1),
            Some(Action::Authenticate(None))
        ));
        c.connected("again", "pid", SECOND, t1);
        assert!(c.is_connected());
        let mut c = connected(t0);
        c.on_text("41", t1);
        assert!(closed_invalid(c.on_text(&join, t1)));
    }

    #[test]
    fn binary_events_are_refused_and_their_attachments_skipped() {
        let t0 = Instant::now();
        let mut c = connected(t0);
        let a = c.on_text(
            "452-3[\"qa:ask\",{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]",
            t0,
        );
        assert!(matches!(
            a,
            Some(Action::Event(Some(3), Dispatch::Refuse(ref e))) if e.code == "unsupported"
        ));
        assert!(c.on_binary().is_none());
        // A text packet while an attachment is still due breaks the protocol.
        let mut d = connected(t0);
        d.on_text("451-[\"x\",{}]", t0);
        assert!(closed_invalid(d.on_text("42[\"x\"]", t0)));
        assert!(c.on_binary().is_none());
        // Without an ack id there is nothing to answer.
        assert!(c.on_text("451-[\"x\",{}]", t0).is_none());
        assert!(c.on_binary().is_none());
        assert!(closed_invalid(c.on_binary()));
    }

    #[test]
    fn an_expired_token_is_cut_off_and_one_past_the_clock_never_is() {
        let t0 = Instant::now();
        let mut c = connected(t0);
        c.pong_by = None;
        c.ping_at = None;
        assert_eq!(c.next_deadline(), Some(t0 + 3600 * SECOND));
        assert!(matches!(
            c.on_timer(t0 + 3600 * SECOND),
            Some(Action::Close(Why::Cut(Cut::TokenExpired)))
        ));
        // A token valid until the end of time (a signed `exp` near u64::MAX): no overflow.
        let mut c = SioClient::open(timing(), t0);
        c.on_text("40", t0);
        c.connected("sid", "pid", Duration::from_secs(u64::MAX), t0);
        assert!(c.is_connected());
        assert_eq!(c.next_deadline(), Some(t0 + 25 * SECOND));
        let c = SioClient::connected_elsewhere(timing(), Duration::MAX, t0);
        assert_eq!(c.next_deadline(), None);
        // And a configured interval past the clock does not overflow either: it is capped.
        let huge = Timing::new(Duration::MAX, Duration::MAX, Duration::MAX);
        let cap = Duration::from_millis(u32::MAX.into());
        assert_eq!(huge.ping_interval(), cap);
        assert_eq!(SioClient::open(huge, t0).next_deadline(), Some(t0 + cap));
    }

    #[test]
    fn the_server_closes_with_a_notice() {
        let t0 = Instant::now();
        let mut c = connected(t0);
        let a = c.cut(Cut::SlowConsumer);
        let Some(Action::Close(why)) = a else {
            panic!("{a:?}")
        };
        let (event, payload) = why.notice().unwrap();
        assert_eq!(
            (event, payload["code"].as_str()),
            (SERVER_ERROR_EVENT, Some("slow_consumer"))
        );
        assert!(c.cut(Cut::Lagged).is_none(), "closed once");
        let mut c = connected(t0);
        let Some(Action::Close(why)) = c.shut_down() else {
            panic!("no close")
        };
        assert_eq!(why.notice().unwrap().0, SERVER_SHUTDOWN_EVENT);
        assert_eq!(why.ws_close().0, 1001);
        assert_eq!(Why::Invalid("x").ws_close(), (1002, "x"));
    }

    #[test]
    fn the_open_packet_and_acks() {
        let open = open_packet("sid1", &timing(), 16384);
        let v: Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
        assert_eq!(v["pingInterval"], 25_000);
        assert_eq!(v["pingTimeout"], 20_000);
        assert_eq!(v["maxPayload"], 16384);
        assert_eq!(v["upgrades"], json!([]));
        assert_eq!(ack_packet(4, &json!({"ok": true})), "434[{\"ok\":true}]");
    }

    #[test]
    fn offsets_name_the_only_session_by_its_event_and_several_by_their_places() {
        let t0 = Instant::now();
        let mut c = connected(t0);
        let (s1, s2): (SessionId, SessionId) = ("s1".parse().unwrap(), "s2".parse().unwrap());
        for (i, s) in [&s1, &s2].into_iter().enumerate() {
            let join = format!("42{i}[\"session:join\",\"{s}\"]");
            assert!(matches!(
                c.on_text(&join, t0),
                Some(Action::Event(_, Dispatch::Join { .. }))
            ));
        }
        // One session settled: its events carry their own offset (a shared frame).
        assert!(c.join_done(&s1, Some(at("j1"))));
        assert_eq!(c.advance(&s1, &at("e1")), None);
        // Two: every event carries both places, the one it moves included.
        assert!(c.join_done(&s2, Some(at("j2"))));
        assert_eq!(c.advance(&s2, &at("e2")).as_deref(), Some("s1~e1.s2~e2"));
        assert_eq!(c.advance(&s1, &at("e3")).as_deref(), Some("s1~e3.s2~e2"));
        // Leaving one goes back to the shared form.
        let leave = "423[\"session:leave\",\"s1\"]";
        assert!(matches!(
            c.on_text(leave, t0),
            Some(Action::Event(_, Dispatch::Leave { .. }))
        ));
        assert_eq!(c.advance(&s2, &at("e4")), None);
    }

    #[test]
    fn a_recovery_rejoins_its_sessions_before_the_connect_reply() {
        let t0 = Instant::now();
        let mut c = SioClient::open(timing(), t0);
        assert!(matches!(
            c.on_text("40{\"token\":\"t\",\"pid\":\"p\",\"offset\":\"s1~x\"}", t0),
            Some(Action::Authenticate(Some(_)))
        ));
        let (s1, s2): (SessionId, SessionId) = ("s1".parse().unwrap(), "s2".parse().unwrap());
        c.recovered([(s1.clone(), at("a")), (s2.clone(), at("b"))]);
        let reply = c.connected("sid2", "p", SECOND, t0);
        assert!(matches!(reply, Action::Send(ref t) if t == "40{\"pid\":\"p\",\"sid\":\"sid2\"}"));
        assert!(c.is_joined(&s1) && c.is_joined(&s2));
        assert_eq!(c.advance(&s2, &at("c")).as_deref(), Some("s1~a.s2~c"));
        // A recovered session is joined: joining it again is refused, as any second join.
        let join = "421[\"session:join\",\"s1\"]";
        assert!(matches!(
            c.on_text(join, t0),
            Some(Action::Event(_, Dispatch::Refuse(ref e))) if e.code == "already_joined"
        ));
        assert_eq!(c.take_sessions(), vec![s1, s2]);
    }
}

//! The lean Socket.IO WebSocket transport: Engine.IO v4 / Socket.IO v5 for a client that opens
//! with `GET /socket.io/?EIO=4&transport=websocket` (no `sid`), served by ONE tokio task per
//! socket that owns its reading, the joined sessions, the heartbeat and the token's expiry, and
//! shares its outbound side (the TCP stream's writes and the queue) with its sessions' fan-outs.
//!
//! Why not socketioxide for these: it gives every socket three tasks (reader, writer,
//! heartbeat), a 32-slot `mpsc` block queue, per-event boxed handlers, tungstenite's buffers
//! and the upgrade request's parts — ≈ 25 KiB of heap per idle socket, none of it configurable
//! (BENCHMARKS.md §5). Here an idle socket holds its task, the socket, its subscription and a
//! few timers; no read or write buffer lives between frames. The fan-out writes the event's
//! finished frame, made once per event and audience ([`sio::event_frame`]), with one `write`.
//!
//! This file keeps only the TCP stream, WebSocket framing, the queue and the timers: what the
//! packets mean (the handshake, CONNECT, events and acks, joins, the heartbeat and connect
//! deadlines, the token's expiry, the protocol rules) is decided by the sans-IO
//! [`SioClient`](crate::sio::client::SioClient), which socketioxide's path (`socket.rs`, for
//! long-polling and clients that upgrade from it) drives too. This file carries out its
//! [`Action`]s.
//!
//! Events reach the socket through its [`Outlet`]: the fan-out of each session it joined
//! writes them (`fanout.rs`), and this task is woken only to flush what did not go out or to
//! end the socket. The task's own frames go through the same outlet, in order with them.
//!
//! Every frame the socket sends (events, acks, pongs, Engine.IO echoes, pings) counts against
//! ONE budget of `outbound_queue_max` frames and `outbound_bytes_max` bytes queued: while the
//! queue is at the budget the socket's input is not read (so a client that sends and never
//! reads stops itself by TCP flow control), and a push past it cuts the socket off as a slow
//! consumer (the client is told why and resumes by token).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lectern_hub::Published;
use lectern_model::SessionId;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tracing::debug;

use lectern_model::Caller;

use crate::Gateway;
use crate::admission::Admitted;
use crate::error::AppError;
use crate::fanout::{self, Framer, Out, Outlet, Positions, Pushed, Tap, Trouble};
use crate::sio::client::{self, Action, Dispatch, SioClient, Why};
use crate::sio::packet::EngineQuery;
use crate::sio::recovery;
use crate::sio::{self, Cut, Rejoined, Transport};
use crate::wsframe::{self, Message};

/// Milliseconds since the first call, wrapping (the clock of rate-limit pauses).
fn pause_clock_ms() -> u32 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u32
}

/// Bounds of the pause in reading after a `rate_limited` refusal (one token's refill at the
/// configured rate, within these).
const RATE_PAUSE_MIN: Duration = Duration::from_millis(10);
/// See [`RATE_PAUSE_MIN`].
const RATE_PAUSE_MAX: Duration = Duration::from_millis(250);

/// Commands (and joins, leaves) of one socket running at once; past this the socket's input is
/// neither read nor decoded until one finishes (backpressure, not an error): frames already
/// read wait undecoded in the input buffer, so a burst of small events packed into one read
/// cannot start more than this many.
const INFLIGHT_MAX: usize = 16;

/// Bytes read from the socket per wake-up (a stack buffer: nothing is kept between frames).
const READ_CHUNK_BYTES: usize = 2048;

/// How long the task sleeps when the core has no deadline (it then re-asks).
const IDLE_WAKE: Duration = Duration::from_secs(86_400);

/// How long a closing socket may take to drain its last frames (`server:error`, the close
/// frame) before it is dropped.
const CLOSE_FLUSH_MAX: Duration = Duration::from_secs(5);

/// Whether a request head is a Socket.IO WebSocket that opens directly, which the lean
/// transport serves: `/socket.io/?EIO=4&transport=websocket` without a `sid` (an upgrade of a
/// polling session has one and stays on socketioxide), asking for a version-13 WebSocket with
/// a key. The method (`GET`) is the caller's to check.
pub(crate) fn is_lean_websocket(target: &str, headers: &HeaderMap) -> bool {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/socket.io/" && path != "/socket.io" {
        return false;
    }
    let query = EngineQuery::parse(query);
    let has = |name: &str, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    query.eio4
        && query.opens("websocket")
        && has("upgrade", "websocket")
        && has("connection", "upgrade")
        && has("sec-websocket-version", "13")
        && headers.contains_key("sec-websocket-key")
}

impl Gateway {
    /// Takes over a request that [`is_lean_websocket`] accepted, on its `stream`: the returned
    /// future answers the upgrade and then speaks Engine.IO and Socket.IO until the socket
    /// ends (the caller runs it; nothing else of the request is kept). `early` holds bytes
    /// the caller read past the request head; `admitted` is the connection's place among those
    /// waiting to authenticate ([`Gateway::admit`]), held until its `CONNECT` is accepted.
    /// `None` when the request has no WebSocket key.
    pub(crate) fn open_websocket(
        &self,
        stream: TcpStream,
        target: &str,
        headers: &HeaderMap,
        early: Vec<u8>,
        admitted: Admitted,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        let key = headers.get("sec-websocket-key")?;
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let query = target.split_once('?').map(|(_, q)| q);
        let timing = sio::timing(self);
        let mut handshake = format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
             sec-websocket-accept: {accept}\r\n\r\n"
        )
        .into_bytes();
        let open = client::open_packet(
            &recovery::new_id(),
            &timing,
            self.limits().payload_max_bytes,
        );
        handshake.extend_from_slice(&wsframe::text(open.as_bytes()));
        let outlet = self.outlet(stream);
        let mut ending = None;
        if outlet.push(Out::Owned(handshake)) == Pushed::Gone {
            ending = Some(End::Gone);
        }
        let socket = Socket {
            gw: self.clone(),
            outlet,
            decoder: wsframe::Decoder::new(self.limits().payload_max_bytes),
            inbuf: early,
            // A cookie from a foreign origin counts as no token: the CONNECT is then refused
            // unless its own `auth: {token}` carries one.
            stage: Stage::Waiting {
                fallback_token: self.request_token(headers, query).ok().flatten(),
                preauth: admitted,
            },
            subs: Vec::new(),
            inflight: None,
            client: SioClient::open(timing, Instant::now()),
            read_paused_until: None,
            ending,
        };
        Some(socket.run(self.shutdown_signal()))
    }
}

/// A socket's Socket.IO life. What it needs only before `CONNECT` (the request's token, its
/// place among the connections waiting to authenticate) and what it holds only after share
/// one field: every idle socket carries it.
enum Stage {
    /// Namespace `/` not connected yet.
    Waiting {
        /// A token from the request (query, header, cookie), used when the connect packet has
        /// none.
        fallback_token: Option<String>,
        /// The socket's place among connections waiting to authenticate (`admission.rs`).
        preauth: Admitted,
    },
    /// Namespace `/` connected.
    Connected(sio::Conn),
    /// The namespace left (a new `CONNECT` must carry its token).
    Left,
}

impl Stage {
    /// The connection, if connected; the stage becomes [`Stage::Left`].
    fn take_conn(&mut self) -> Option<sio::Conn> {
        match std::mem::replace(self, Stage::Left) {
            Stage::Connected(conn) => Some(conn),
            other => {
                *self = other;
                None
            }
        }
    }
}

/// The Engine.IO ping, as a finished frame.
const PING_FRAME: &[u8] = &[0x81, 0x01, b'2'];

/// How a socket ends.
#[derive(Debug, Clone, Copy)]
enum End {
    /// The connection is gone (EOF, reset, a write error): nothing more to send.
    Gone,
    /// Send what is queued, then a close frame with this status and reason.
    Close(u16, &'static str),
}

/// One joined session.
struct Sub {
    session: SessionId,
    /// The session's events, written by its fan-out; dropping it stops them.
    _events: Tap,
    /// The wait for the session's next `attendance:update`, kept from one wake-up to the
    /// next: made afresh on every event, it would join (and leave) the watch's list of waiters,
    /// shared by every socket of the session, once per event and socket.
    attendance: AttendanceWait,
}

/// A wait for a change of an attendance watch: the receiver back, once there is one.
type AttendanceWait = Pin<Box<dyn Future<Output = AttendanceWatch> + Send>>;

/// Waits for `watch` to change (never, once the gateway is gone).
fn wait_attendance(mut watch: AttendanceWatch) -> AttendanceWait {
    Box::pin(async move {
        if watch.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        watch
    })
}

impl Sub {
    /// The finished frame of the session's next `attendance:update`.
    async fn next(&mut self) -> Option<Arc<[u8]>> {
        let mut watch = (&mut self.attendance).await;
        let frame = watch.borrow_and_update().clone();
        self.attendance = wait_attendance(watch);
        frame
    }
}

/// How a socket frames the events of one session it joined (its fan-out calls it).
struct SessionFramer {
    gw: Gateway,
    session: SessionId,
    caller: Arc<Caller>,
}

impl Framer for SessionFramer {
    fn frame(&self, e: &Published, positions: &Positions<'_>) -> Option<Arc<[u8]>> {
        let (user, staff) = (self.caller.user.as_str(), self.caller.role.is_staff());
        // With more than one session joined, each event carries every session's position
        // (Connection State Recovery's offset); with one, the event's own.
        let offset = (positions.len() > 1).then(|| {
            let mut offset = String::new();
            for (session, at) in positions.iter() {
                if let Some(at) = at {
                    recovery::push_offset(&mut offset, session, at);
                }
            }
            offset
        });
        let frame = sio::event_frame(e, &self.session, user, staff, offset.as_deref())?;
        self.gw
            .metrics()
            .event_out(Transport::WebSocket.label(), e.published_at);
        Some(frame)
    }
}

/// A command, join or leave that finished.
enum Done {
    /// Send this ack (if the client asked for one).
    Ack(Option<u64>, Value),
    /// Nothing to send (the sessions a `41` left are left).
    Nothing,
    /// A join finished.
    Joined {
        ack: Option<u64>,
        session: SessionId,
        caller: Arc<Caller>,
        result: Result<JoinedSession, AppError>,
    },
    /// A recovery (Connection State Recovery) finished: `Ok` with every session joined again,
    /// or `Err` when the client connects afresh (nothing is joined).
    Recovered {
        pid: String,
        caller: Arc<Caller>,
        result: Result<Vec<Rejoined<AttendanceWatch>>, ()>,
    },
}

/// A socket's `attendance:update`s of one session (the finished frame of the latest).
type AttendanceWatch = watch::Receiver<Option<Arc<[u8]>>>;

/// A join's ack, the token it starts from, the session's events after it and the socket's
/// `attendance:update`s.
type JoinedSession = (
    Value,
    Arc<str>,
    broadcast::Receiver<Arc<Published>>,
    AttendanceWatch,
);

type Work = Pin<Box<dyn Future<Output = Done> + Send>>;

/// One socket: everything it holds, owned by its one task.
struct Socket {
    gw: Gateway,
    /// The TCP stream and the frames queued for it, shared with the fan-outs of the joined
    /// sessions.
    outlet: Arc<Outlet>,
    decoder: wsframe::Decoder,
    /// Bytes read and not yet decoded (part of a frame); empty and unallocated between frames.
    inbuf: Vec<u8>,
    /// Before, during or after namespace `/`'s connection.
    stage: Stage,
    /// The joined sessions' subscriptions (each one counts in presence).
    subs: Vec<Sub>,
    /// Commands, joins and leaves running; `None` (no allocation) when there are none.
    inflight: Option<FuturesUnordered<Work>>,
    /// The protocol state.
    client: SioClient,
    /// Set by a `rate_limited` refusal: nothing more is read until then, so a client past its
    /// rate is slowed down by TCP instead of costing the node a refusal per packet. In
    /// [`pause_clock_ms`] time (four bytes, not an `Instant`'s sixteen, in every socket).
    read_paused_until: Option<std::num::NonZeroU32>,
    ending: Option<End>,
}

impl Socket {
    // Not an `async fn`: its parameters would be moved into the future's locals beside the
    // captured ones, and every idle socket's task would hold the `Socket` twice.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would hold its parameters twice"
    )]
    fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send + 'static {
        async move {
            // One wait for the node's stop, for the socket's life: re-created per wake-up, it
            // would link into (and out of) a list every socket shares, once per event.
            let stopping = shutdown.wait_for(|stop| *stop);
            tokio::pin!(stopping);
            let mut stop_pending = true;
            if !self.inbuf.is_empty() {
                self.decode_all();
            }
            let sleep = tokio::time::sleep_until(self.next_wake());
            tokio::pin!(sleep);
            while self.ending.is_none() {
                // A rate-limit pause that has passed, or a command slot freed: frames read before
                // go on.
                if !self.inbuf.is_empty() && self.has_slot() && !self.read_paused() {
                    self.decode_all();
                }
                if let Err(e) = self.write_some() {
                    debug!(error = %e, "websocket write failed");
                    self.ending = Some(End::Gone);
                    break;
                }
                let wake = self.next_wake();
                if sleep.deadline() != wake {
                    sleep.as_mut().reset(wake);
                }
                // Input is read only while output keeps up: what a client sends can make the socket
                // queue answers (acks, pongs), and the queue is bounded.
                let reading = self.has_slot() && !self.outlet.at_budget() && !self.read_paused();
                let writing = self.outlet.is_queued();
                let outlet = &*self.outlet;
                tokio::select! {
                    r = &mut stopping, if stop_pending => {
                        // Never polled again once done. (An error would mean the gateway is gone,
                        // which this socket's own handle on it rules out.)
                        stop_pending = false;
                        if r.is_ok() {
                            self.shut_down();
                        }
                    }
                    r = fanout::ready(outlet.stream(), reading, writing) => match r {
                        Ok(readable) => {
                            if readable {
                                self.on_readable();
                            }
                        }
                        Err(_) => self.ending = Some(End::Gone),
                    },
                    () = std::future::poll_fn(|cx| outlet.poll_nudged(cx)) => self.on_nudged(),
                    frame = next_attendance(&mut self.subs) => self.on_attendance(frame),
                    done = next_done(&mut self.inflight), if self.inflight.is_some() => match done {
                        // A slot is free: frames read while the socket was at its cap go on at
                        // the loop's top.
                        Some(done) => self.on_done(done),
                        None => self.inflight = None,
                    },
                    () = &mut sleep => self.on_timer(),
                }
            }
            // Boxed: its presence and hub futures are large, and would otherwise size every idle
            // socket's task.
            Box::pin(self.finish()).await;
        }
    }

    /// The core's next deadline (the next ping, a pong's deadline, the connect deadline, the
    /// token's expiry), or a day away when it has none within the clock's range.
    fn next_wake(&self) -> Instant {
        let core = self.client.next_deadline().unwrap_or_else(|| {
            let now = Instant::now();
            now.checked_add(IDLE_WAKE).unwrap_or(now)
        });
        match self.pause_left() {
            Some(left) => core.min(Instant::now() + left),
            None => core,
        }
    }

    /// What is left of a rate-limit pause, if one is on.
    fn pause_left(&self) -> Option<Duration> {
        let until = self.read_paused_until?.get();
        // Serial arithmetic: the clock wraps every 49 days, a pause lasts 250 ms at most.
        let left = until.wrapping_sub(pause_clock_ms()) as i32;
        (left > 0).then(|| Duration::from_millis(left.unsigned_abs().into()))
    }

    /// Whether reading waits out a rate-limit pause (cleared once it has passed).
    fn read_paused(&mut self) -> bool {
        if self.read_paused_until.is_none() {
            return false;
        }
        if self.pause_left().is_some() {
            return true;
        }
        self.read_paused_until = None;
        false
    }

    /// Writes queued frames until the socket would block.
    fn write_some(&mut self) -> io::Result<()> {
        self.outlet.flush()
    }

    /// Sends `frame` after what is queued (see [`Outlet::push`]). A push past the budget cuts
    /// the socket off (once closing, the last frames are let through).
    fn push(&mut self, frame: Out) {
        match self.outlet.push(frame) {
            Pushed::Ok => {}
            Pushed::OverBudget => {
                if self.ending.is_none() {
                    let cut = self.client.cut(Cut::SlowConsumer);
                    self.act(cut);
                }
            }
            Pushed::Gone => self.ending = Some(End::Gone),
        }
    }

    fn push_text(&mut self, text: &str) {
        self.push(Out::Owned(wsframe::text(text.as_bytes())));
    }

    fn on_readable(&mut self) {
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        match self.outlet.stream().try_read(&mut chunk) {
            Ok(0) => self.ending = Some(End::Gone),
            Ok(n) => {
                self.inbuf.extend_from_slice(&chunk[..n]);
                self.decode_all();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => self.ending = Some(End::Gone),
        }
    }

    /// Whether another command may start ([`INFLIGHT_MAX`]).
    fn has_slot(&self) -> bool {
        self.inflight.as_ref().map_or(0, FuturesUnordered::len) < INFLIGHT_MAX
    }

    /// Handles the complete frames in `inbuf` until the socket is at its cap of commands in
    /// flight; keeps the rest.
    fn decode_all(&mut self) {
        let mut at = 0;
        while self.ending.is_none() && self.has_slot() && !self.read_paused() {
            match self.decoder.decode(&mut self.inbuf[at..]) {
                Ok(None) => break,
                Ok(Some((n, message))) => {
                    at += n;
                    if let Some(m) = message {
                        self.on_message(m);
                    }
                }
                Err(fault) => {
                    debug!(
                        reason = fault.reason(),
                        "closing a websocket on a bad frame"
                    );
                    self.ending = Some(End::Close(fault.code(), fault.reason()));
                }
            }
        }
        if at >= self.inbuf.len() {
            self.inbuf = Vec::new();
        } else {
            self.inbuf.drain(..at);
        }
    }

    fn on_message(&mut self, message: Message) {
        let action = match message {
            Message::Text(t) => self.client.on_text(&t, Instant::now()),
            Message::Binary => self.client.on_binary(),
            Message::Pong => None,
            Message::Ping(payload) => {
                self.push(Out::Owned(wsframe::pong(&payload)));
                None
            }
            Message::Close => self.client.on_text("1", Instant::now()),
        };
        self.act(action);
    }

    /// Carries out what the core asked for.
    fn act(&mut self, action: Option<Action>) {
        let Some(action) = action else { return };
        match action {
            Action::Send(text) => self.push_text(&text),
            Action::Ping => self.push(Out::Static(PING_FRAME)),
            Action::Authenticate(auth) => self.authenticate(auth),
            Action::Event(ack, dispatch) => self.dispatch(ack, dispatch),
            Action::Disconnected(sessions) => {
                self.subs.retain(|s| !sessions.contains(&s.session));
                let (gw, conn) = (self.gw.clone(), self.stage.take_conn());
                if let Some(conn) = conn {
                    self.start(Box::pin(async move {
                        for session in &sessions {
                            gw.presence_leave(session, &conn.caller).await;
                        }
                        // The connection's slot and count go with it.
                        drop(conn);
                        Done::Nothing
                    }));
                }
            }
            Action::Close(why) => self.close(why),
        }
    }

    fn authenticate(&mut self, auth: Option<Value>) {
        if matches!(self.stage, Stage::Connected(_)) {
            // A CONNECT while a recovery runs: the first one is being answered.
            return;
        }
        let (fallback, preauth) = match std::mem::replace(&mut self.stage, Stage::Left) {
            Stage::Waiting {
                fallback_token,
                preauth,
            } => (fallback_token, Some(preauth)),
            other => {
                self.stage = other;
                (None, None)
            }
        };
        let result = sio::authenticate(
            &self.gw,
            auth.as_ref(),
            fallback.clone(),
            Transport::WebSocket,
        );
        let reply = match result {
            Ok(conn) => {
                debug!(user = %conn.caller.user, "websocket connected");
                let recovery = sio::recovery_asked(&self.gw, Transport::WebSocket, auth.as_ref());
                let caller = conn.caller.clone();
                // The place among connections waiting to authenticate goes with `preauth`.
                self.stage = Stage::Connected(conn);
                let Some(recovery) = recovery else {
                    self.reply_connected(recovery::new_id());
                    return;
                };
                // The sessions are joined again before the CONNECT reply, which says whether
                // they were (the core stays unconnected meanwhile).
                let gw = self.gw.clone();
                self.start(Box::pin(async move {
                    let result =
                        sio::recover(&gw, Transport::WebSocket, &caller, &recovery, |session| {
                            gw.attendance_watch(session)
                        })
                        .await
                        .map_err(drop);
                    Done::Recovered {
                        pid: recovery.pid,
                        caller,
                        result,
                    }
                }));
                return;
            }
            Err(e) => {
                // The client may try again (with a fresh token) until the connect deadline.
                if let Some(preauth) = preauth {
                    self.stage = Stage::Waiting {
                        fallback_token: fallback,
                        preauth,
                    };
                }
                self.gw.count_rejection(e.code);
                self.client.connect_refused(&e.to_string())
            }
        };
        self.act(Some(reply));
    }

    /// Answers the CONNECT: `40{sid, pid}`.
    fn reply_connected(&mut self, pid: String) {
        let Stage::Connected(conn) = &self.stage else {
            return;
        };
        let valid_for = conn.valid_for();
        let reply = self
            .client
            .connected(&recovery::new_id(), &pid, valid_for, Instant::now());
        self.act(Some(reply));
    }

    /// A recovery finished: the CONNECT reply (the client's pid if every session was joined
    /// again, else a fresh one), then each session's missed events in order, then live ones.
    fn on_recovered(
        &mut self,
        pid: String,
        caller: &Arc<Caller>,
        result: Result<Vec<Rejoined<AttendanceWatch>>, ()>,
    ) {
        let Ok(rejoined) = result else {
            self.reply_connected(recovery::new_id());
            return;
        };
        self.client
            .recovered(rejoined.iter().map(|r| (r.session.clone(), r.from.clone())));
        self.reply_connected(pid);
        let (user, staff) = (caller.user.as_str(), caller.role.is_staff());
        for r in rejoined {
            for e in &r.missed {
                if e.delivery_for(user, staff).is_none() {
                    continue;
                }
                let offset = self.client.advance(&r.session, &e.token);
                if let Some(frame) = sio::event_frame(e, &r.session, user, staff, offset.as_deref())
                {
                    self.push(Out::Shared(frame));
                }
            }
            self.client.advance(&r.session, &r.to);
            let events = self.follow(&r.session, r.events, r.to, caller);
            self.subs.reserve_exact(1);
            self.subs.push(Sub {
                session: r.session,
                _events: events,
                attendance: wait_attendance(r.subscribed),
            });
        }
    }

    /// Has the session's fan-out write its events after `at` (where `events` stands) to the
    /// socket.
    fn follow(
        &self,
        session: &SessionId,
        events: broadcast::Receiver<Arc<Published>>,
        at: Arc<str>,
        caller: &Arc<Caller>,
    ) -> Tap {
        let framer = SessionFramer {
            gw: self.gw.clone(),
            session: session.clone(),
            caller: caller.clone(),
        };
        self.gw.fanouts().follow(
            session.as_str(),
            events,
            Some(at),
            &self.outlet,
            Box::new(framer),
        )
    }

    fn dispatch(&mut self, ack: Option<u64>, dispatch: Dispatch) {
        let Stage::Connected(conn) = &self.stage else {
            return;
        };
        let (gw, caller) = (self.gw.clone(), conn.caller.clone());
        match dispatch {
            Dispatch::Reply(reply) => self.ack(ack, &reply),
            Dispatch::Refuse(e) => {
                let reply = sio::refused(&self.gw, &e);
                self.ack(ack, &reply);
            }
            Dispatch::Command { event, args } => self.start(Box::pin(async move {
                Done::Ack(ack, sio::command(&gw, &caller, &event, Ok(args)).await)
            })),
            Dispatch::Join { session, since } => self.start(Box::pin(async move {
                // Subscribed before presence counts this socket, so it sees that update.
                let result = sio::join(&gw, Transport::WebSocket, &caller, &session, since, || {
                    gw.attendance_watch(&session)
                })
                .await;
                Done::Joined {
                    ack,
                    session,
                    caller,
                    result,
                }
            })),
            Dispatch::Leave { session } => {
                self.subs.retain(|s| s.session != session);
                self.start(Box::pin(async move {
                    gw.presence_leave(&session, &caller).await;
                    Done::Ack(ack, client::left_reply(true))
                }));
            }
        }
    }

    fn start(&mut self, work: Work) {
        self.inflight
            .get_or_insert_with(FuturesUnordered::new)
            .push(work);
    }

    fn ack(&mut self, ack: Option<u64>, reply: &Value) {
        if reply["ok"] == false && reply["error"]["code"] == "rate_limited" {
            // About one token's refill, within bounds: the flood slows to the client's rate.
            let per_token = 1.0 / self.gw.limits().commands_per_s.max(1e-3);
            let pause = Duration::from_secs_f64(per_token).clamp(RATE_PAUSE_MIN, RATE_PAUSE_MAX);
            let until = pause_clock_ms().wrapping_add(pause.as_millis() as u32);
            self.read_paused_until = std::num::NonZeroU32::new(until.max(1));
        }
        if let Some(id) = ack {
            self.push_text(&client::ack_packet(id, reply));
        }
    }

    fn on_done(&mut self, done: Done) {
        match done {
            Done::Ack(ack, reply) => self.ack(ack, &reply),
            Done::Nothing => {}
            Done::Recovered {
                pid,
                caller,
                result,
            } => self.on_recovered(pid, &caller, result),
            Done::Joined {
                ack,
                session,
                caller,
                result,
            } => {
                let joined = result.as_ref().ok().map(|(_, token, _, _)| token.clone());
                let keep = self.client.join_done(&session, joined);
                match result {
                    Ok((reply, at, events, attendance)) if keep => {
                        self.ack(ack, &reply);
                        let events = self.follow(&session, events, at, &caller);
                        // Most sockets join one session: no spare capacity.
                        self.subs.reserve_exact(1);
                        self.subs.push(Sub {
                            session,
                            _events: events,
                            attendance: wait_attendance(attendance),
                        });
                    }
                    // The namespace left (or the socket closed) while the join ran: leave
                    // again, answer nothing.
                    Ok(_) => {
                        let gw = self.gw.clone();
                        self.start(Box::pin(async move {
                            gw.presence_leave(&session, &caller).await;
                            Done::Nothing
                        }));
                    }
                    Err(e) if self.client.is_connected() => self.ack(ack, &e.ack()),
                    Err(_) => {}
                }
            }
        }
    }

    fn on_attendance(&mut self, frame: Option<Arc<[u8]>>) {
        if let Some(frame) = frame {
            self.push(Out::Shared(frame));
        }
    }

    /// A fan-out left the socket something to do: frames to flush (the loop does), or a reason
    /// to end it.
    fn on_nudged(&mut self) {
        let cut = match self.outlet.trouble() {
            None => return,
            Some(Trouble::Gone) => {
                self.ending = Some(End::Gone);
                return;
            }
            Some(Trouble::OverBudget) => Cut::SlowConsumer,
            Some(Trouble::Lagged) => Cut::Lagged,
            Some(Trouble::Closed) => Cut::ShuttingDown,
        };
        let cut = self.client.cut(cut);
        self.act(cut);
    }

    fn on_timer(&mut self) {
        let due = self.client.on_timer(Instant::now());
        self.act(due);
    }

    /// Closes for `why`: a cut-off drops the frames still queued (a partly written one is
    /// finished; the client resumes from its last token); a notice, if `why` has one, is the
    /// last frame before the close frame.
    fn close(&mut self, why: Why) {
        if let Why::Cut(_) = why {
            self.outlet.cut();
        } else {
            self.outlet.close();
        }
        if let Some(code) = why.code() {
            self.gw.count_rejection(code);
        }
        if let Why::Invalid(reason) = why {
            debug!(reason, "closing a websocket on an invalid packet");
        }
        if let Some((event, payload)) = why.notice() {
            self.push_text(&sio::event_packet(event, &[&payload]));
        }
        let (status, reason) = why.ws_close();
        self.ending = Some(End::Close(status, reason));
    }

    fn shut_down(&mut self) {
        let action = self.client.shut_down();
        self.act(action);
    }

    /// Sends the last frames (bounded in time), closes, finishes running work, leaves every
    /// session's presence and releases the connection.
    async fn finish(mut self) {
        self.outlet.close();
        if let Some(End::Close(code, reason)) = self.ending {
            self.push(Out::Owned(wsframe::close(code, reason)));
            self.outlet.finish(CLOSE_FLUSH_MAX).await;
        }
        // A join that was running may already count in presence: let it finish, and leave it
        // below like the others.
        let mut late = Vec::new();
        if let Some(mut inflight) = self.inflight.take() {
            while let Some(done) = inflight.next().await {
                match done {
                    Done::Joined {
                        session,
                        caller,
                        result: Ok(_),
                        ..
                    } => late.push((session, caller)),
                    Done::Recovered {
                        caller,
                        result: Ok(rejoined),
                        ..
                    } => late.extend(rejoined.into_iter().map(|r| (r.session, caller.clone()))),
                    _ => {}
                }
            }
        }
        self.client.take_sessions();
        if let Some(conn) = self.stage.take_conn() {
            for sub in std::mem::take(&mut self.subs) {
                self.gw.presence_leave(&sub.session, &conn.caller).await;
            }
        }
        for (session, caller) in late {
            self.gw.presence_leave(&session, &caller).await;
        }
    }
}

/// The next `attendance:update` of a joined session; never, without one.
async fn next_attendance(subs: &mut [Sub]) -> Option<Arc<[u8]>> {
    match subs {
        [] => std::future::pending().await,
        [only] => only.next().await,
        many => {
            let nexts = many.iter_mut().map(|s| Box::pin(s.next()));
            futures_util::future::select_all(nexts).await.0
        }
    }
}

async fn next_done(inflight: &mut Option<FuturesUnordered<Work>>) -> Option<Done> {
    match inflight {
        Some(work) => work.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    /// Every idle socket's task holds a [`super::Socket`] (the idle memory per WebSocket in
    /// BENCHMARKS.md): growing it is a choice to make knowingly, so this test fails first.
    #[test]
    fn an_idle_socket_stays_small() {
        let socket = std::mem::size_of::<super::Socket>();
        let client = std::mem::size_of::<crate::sio::client::SioClient>();
        assert!(socket <= 416, "a Socket takes {socket} bytes");
        fn returned<A, B, F>(_: impl FnOnce(A, B) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        // The socket's task: the `Socket` once, its waits beside it.
        let task = returned(super::Socket::run);
        assert!(task <= 1088, "a socket's future takes {task} bytes");
        assert!(client <= 96, "a SioClient takes {client} bytes");
    }
}

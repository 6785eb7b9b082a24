//! The lean Socket.IO WebSocket transport: Engine.IO v4 / Socket.IO v5 for a client that opens
//! with `GET /socket.io/?EIO=4&transport=websocket` (no `sid`), served by ONE tokio task per
//! socket that owns the TCP stream, the room subscriptions, the heartbeat, the token's expiry
//! and the outbound queue.
//!
//! Why not socketioxide for these: it gives every socket three tasks (reader, writer,
//! heartbeat), a 32-slot `mpsc` block queue, per-event boxed handlers, tungstenite's buffers
//! and the upgrade request's parts — ≈ 25 KiB of heap per idle socket, none of it configurable
//! (BENCHMARKS.md §5). Here an idle socket holds its task, the socket, its subscription and a
//! few timers; no read or write buffer lives between frames. Fan-out writes the event's finished
//! frame, made once per event and audience ([`sio::event_frame`]), with one `write`.
//!
//! Everything Socket.IO means (authentication, commands and acks, joins with resume, presence,
//! cut-offs) is `sio.rs`, shared with socketioxide's path (`socket.rs`), which keeps serving
//! long-polling and clients that start on polling and upgrade (their request has a `sid`).
//!
//! Protocol: the server sends the open packet `0{sid, upgrades: [], pingInterval, pingTimeout,
//! maxPayload}`; the client connects namespace `/` with `40{auth}` and gets `40{sid}` or
//! `44{message}`; events are `42[name, …args]`, with an ack id `42<id>[…]` answered `43<id>[…]`.
//! The server pings (`2`) every `ping_interval_ms` and closes a socket whose pong (`3`) does not
//! come within `ping_timeout_ms`. A socket whose outbound queue reaches `outbound_queue_max` is
//! told `server:error {code: slow_consumer}` and closed; it resumes by token.

use std::collections::VecDeque;
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
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tracing::debug;

use crate::commands::COMMAND_EVENTS;
use crate::error::AppError;
use crate::sio::{self, ARGS_MAX, Cut, TRANSPORT_WEBSOCKET};
use crate::wsframe::{self, Message};
use crate::{Gateway, unix_now_s};

/// How long a client may take to connect namespace `/` after the open packet (socketioxide's
/// default `connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(45);

/// Commands (and joins, leaves) of one socket running at once; past this the socket's input is
/// not read until one finishes (backpressure, not an error).
const INFLIGHT_MAX: usize = 16;

/// Bytes read from the socket per wake-up (a stack buffer: nothing is kept between frames).
const READ_CHUNK_BYTES: usize = 2048;

/// How long a closing socket may take to drain its last frames (`server:error`, the close
/// frame) before it is dropped.
const CLOSE_FLUSH_MAX: Duration = Duration::from_secs(5);

/// Whether a request head is a Socket.IO WebSocket that opens directly, which the lean
/// transport serves: `/socket.io/?EIO=4&transport=websocket` without a `sid` (an upgrade of a
/// polling session has one and stays on socketioxide), asking for a version-13 WebSocket with
/// a key. The method (`GET`) is the caller's to check.
pub fn is_lean_websocket(target: &str, headers: &HeaderMap) -> bool {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/socket.io/" && path != "/socket.io" {
        return false;
    }
    let (mut eio4, mut websocket) = (false, false);
    for pair in query.split('&') {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("EIO", v) => eio4 = v == "4",
            ("transport", v) => websocket = v == "websocket",
            ("sid", _) => return false,
            _ => {}
        }
    }
    let has = |name: &str, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    eio4 && websocket
        && has("upgrade", "websocket")
        && has("connection", "upgrade")
        && has("sec-websocket-version", "13")
        && headers.contains_key("sec-websocket-key")
}

impl Gateway {
    /// Takes over a request that [`is_lean_websocket`] accepted, on its `stream`: the returned
    /// future answers the upgrade and then speaks Engine.IO and Socket.IO until the socket
    /// ends (the caller runs it; nothing else of the request is kept). `early` holds bytes
    /// the caller read past the request head. `None` when the request has no WebSocket key.
    pub fn open_websocket(
        &self,
        stream: TcpStream,
        target: &str,
        headers: &HeaderMap,
        early: Vec<u8>,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        let key = headers.get("sec-websocket-key")?;
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let query = target.split_once('?').map(|(_, q)| q);
        let limits = self.inner.limiter.limits();
        let mut handshake = format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
             sec-websocket-accept: {accept}\r\n\r\n"
        )
        .into_bytes();
        let open = json!({
            "sid": new_sid(),
            "upgrades": [],
            "pingInterval": limits.ping_interval_ms.max(1),
            "pingTimeout": limits.ping_timeout_ms.max(1),
            "maxPayload": limits.payload_max_bytes,
        });
        handshake.extend_from_slice(&wsframe::text(format!("0{open}").as_bytes()));
        let mut out = VecDeque::with_capacity(1);
        out.push_back(Out::Owned(handshake));
        let now = Instant::now();
        let socket = Socket {
            gw: self.clone(),
            stream,
            decoder: wsframe::Decoder::new(limits.payload_max_bytes),
            inbuf: early,
            out,
            out_at: 0,
            fallback_token: crate::auth::token_from_parts(headers, query),
            conn: None,
            subs: Vec::new(),
            joining: Vec::new(),
            inflight: None,
            ping_at: now + ping_interval(&self.inner.limiter),
            pong_by: None,
            connect_by: Some(now + CONNECT_TIMEOUT),
            expires: None,
            ending: None,
        };
        Some(socket.run(self.inner.shutdown.subscribe()))
    }
}

fn ping_interval(limiter: &crate::limits::Limiter) -> Duration {
    Duration::from_millis(limiter.limits().ping_interval_ms.max(1))
}

fn ping_timeout(limiter: &crate::limits::Limiter) -> Duration {
    Duration::from_millis(limiter.limits().ping_timeout_ms.max(1))
}

/// A frame waiting to be written.
enum Out {
    /// An event's frame, shared by every subscriber of the same audience.
    Shared(Arc<[u8]>),
    /// A frame for this socket only (acks, the handshake).
    Owned(Vec<u8>),
    /// A constant frame (the ping).
    Static(&'static [u8]),
}

impl Out {
    fn bytes(&self) -> &[u8] {
        match self {
            Out::Shared(b) => b,
            Out::Owned(b) => b,
            Out::Static(b) => b,
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
    events: broadcast::Receiver<Arc<Published>>,
    attendance: watch::Receiver<Option<Arc<[u8]>>>,
}

/// What a joined session has for the socket.
enum Input {
    Event(Result<Arc<Published>, RecvError>),
    Attendance,
}

impl Sub {
    async fn next(&mut self) -> Input {
        tokio::select! {
            r = self.events.recv() => Input::Event(r),
            // A closed watch (the gateway is gone) never yields: the pattern disables the branch.
            Ok(()) = self.attendance.changed() => Input::Attendance,
        }
    }
}

/// A command, join or leave that finished.
enum Done {
    /// Send this ack (if the client asked for one).
    Ack(Option<u64>, Value),
    /// A join finished.
    Joined {
        ack: Option<u64>,
        session: SessionId,
        result: Result<JoinedSession, AppError>,
    },
}

/// A join's ack, the session's events after it and the socket's `attendance:update`s.
type JoinedSession = (
    Value,
    broadcast::Receiver<Arc<Published>>,
    watch::Receiver<Option<Arc<[u8]>>>,
);

type Work = Pin<Box<dyn Future<Output = Done> + Send>>;

/// One socket: everything it holds, owned by its one task.
struct Socket {
    gw: Gateway,
    stream: TcpStream,
    decoder: wsframe::Decoder,
    /// Bytes read and not yet decoded (part of a frame); empty and unallocated between frames.
    inbuf: Vec<u8>,
    /// Frames to write, in order; empty and unallocated when the socket keeps up.
    out: VecDeque<Out>,
    /// Bytes of the front frame already written.
    out_at: usize,
    /// A token from the request (query, header, cookie), used when the connect packet has none.
    fallback_token: Option<String>,
    /// Set once namespace `/` is connected.
    conn: Option<sio::Conn>,
    subs: Vec<Sub>,
    /// Sessions whose join is running.
    joining: Vec<SessionId>,
    /// Commands, joins and leaves running; `None` (no allocation) when there are none.
    inflight: Option<FuturesUnordered<Work>>,
    ping_at: Instant,
    pong_by: Option<Instant>,
    connect_by: Option<Instant>,
    expires: Option<Instant>,
    ending: Option<End>,
}

impl Socket {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
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
            if let Err(e) = self.write_some() {
                debug!(error = %e, "websocket write failed");
                self.ending = Some(End::Gone);
                break;
            }
            let wake = self.next_wake();
            if sleep.deadline() != wake {
                sleep.as_mut().reset(wake);
            }
            let reading = self.inflight.as_ref().map_or(0, FuturesUnordered::len) < INFLIGHT_MAX;
            tokio::select! {
                r = &mut stopping, if stop_pending => {
                    // Never polled again once done. (An error would mean the gateway is gone,
                    // which this socket's own handle on it rules out.)
                    stop_pending = false;
                    if r.is_ok() {
                        self.shut_down();
                    }
                }
                r = ready(&self.stream, reading, !self.out.is_empty()) => match r {
                    Ok(readable) => {
                        if readable {
                            self.on_readable();
                        }
                    }
                    Err(_) => self.ending = Some(End::Gone),
                },
                (i, input) = next_input(&mut self.subs) => self.on_input(i, input),
                done = next_done(&mut self.inflight), if self.inflight.is_some() => match done {
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

    /// The earliest timer: the next ping, a pong's deadline, the connect deadline, the token's
    /// expiry.
    fn next_wake(&self) -> Instant {
        [self.pong_by, self.connect_by, self.expires]
            .into_iter()
            .flatten()
            .fold(self.ping_at, Instant::min)
    }

    /// Writes queued frames until the socket would block.
    fn write_some(&mut self) -> io::Result<()> {
        while let Some(front) = self.out.front() {
            let bytes = &front.bytes()[self.out_at..];
            match self.stream.try_write(bytes) {
                Ok(n) => {
                    self.out_at += n;
                    if n == bytes.len() {
                        self.out.pop_front();
                        self.out_at = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.out.is_empty() && self.out.capacity() > 0 {
            // A socket that caught up keeps no queue.
            self.out = VecDeque::new();
        }
        Ok(())
    }

    /// Sends `frame` after what is queued: written at once when nothing is (the usual case,
    /// which allocates nothing), queued when the socket would block.
    fn push(&mut self, frame: Out) {
        if self.out.is_empty() {
            let bytes = frame.bytes();
            match self.stream.try_write(bytes) {
                Ok(n) if n == bytes.len() => return,
                Ok(n) => self.out_at = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.ending = Some(End::Gone);
                    return;
                }
            }
        }
        self.out.push_back(frame);
    }

    fn push_text(&mut self, text: &str) {
        self.push(Out::Owned(wsframe::text(text.as_bytes())));
    }

    fn on_readable(&mut self) {
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        match self.stream.try_read(&mut chunk) {
            Ok(0) => self.ending = Some(End::Gone),
            Ok(n) => {
                self.inbuf.extend_from_slice(&chunk[..n]);
                self.decode_all();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => self.ending = Some(End::Gone),
        }
    }

    /// Handles every complete frame in `inbuf`; keeps the rest.
    fn decode_all(&mut self) {
        let mut at = 0;
        while self.ending.is_none() {
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
        match message {
            Message::Text(t) => self.on_engine_packet(&t),
            // Socket.IO attachments: Lectern takes none, and they are dropped.
            Message::Binary | Message::Pong => {}
            Message::Ping(payload) => self.push(Out::Owned(wsframe::pong(&payload))),
            Message::Close => self.ending = Some(End::Close(1000, "")),
        }
    }

    fn on_engine_packet(&mut self, packet: &str) {
        let mut chars = packet.chars();
        let kind = chars.next();
        let rest = chars.as_str();
        match kind {
            Some('1') => self.ending = Some(End::Close(1000, "")),
            // A client ping (a probe) is answered; a pong proves the client alive.
            Some('2') => self.push_text(&format!("3{rest}")),
            Some('3') => self.pong_by = None,
            Some('4') => self.on_socketio_packet(rest),
            // Upgrade and noop packets mean nothing on a socket that opened as WebSocket, and
            // unknown packets are dropped: neither harms anyone else.
            _ => {}
        }
    }

    fn on_socketio_packet(&mut self, packet: &str) {
        let mut chars = packet.chars();
        let kind = chars.next();
        let mut rest = chars.as_str();
        // A namespace other than `/` is written `/name,`.
        if rest.starts_with('/') {
            let (ns, after) = rest.split_once(',').unwrap_or((rest, ""));
            if ns != "/" {
                if kind == Some('0') {
                    self.push_text(&format!(
                        "44{ns},{}",
                        json!({"message": "Invalid namespace"})
                    ));
                }
                return;
            }
            rest = after;
        }
        match kind {
            Some('0') => self.on_connect(rest),
            Some('1') => self.ending = Some(End::Close(1000, "")),
            Some('2') if self.conn.is_some() => self.on_event(rest),
            // Acks from the client (the server asks for none), binary packets, events before
            // the connect, unknown types: dropped.
            _ => {}
        }
    }

    fn on_connect(&mut self, auth: &str) {
        if self.conn.is_some() {
            // A second connect of a connected namespace is ignored, as socketioxide does.
            return;
        }
        let auth: Option<Value> = serde_json::from_str(auth).ok();
        let fallback = self.fallback_token.take();
        let result = sio::authenticate(
            &self.gw,
            auth.as_ref(),
            fallback.clone(),
            TRANSPORT_WEBSOCKET,
        );
        match result {
            Ok(conn) => {
                debug!(user = %conn.caller.user, "websocket connected");
                let wait = conn.expires_at_s.saturating_sub(unix_now_s());
                self.expires = Some(Instant::now() + Duration::from_secs(wait));
                self.conn = Some(conn);
                self.connect_by = None;
                self.push_text(&format!("40{}", json!({"sid": new_sid()})));
            }
            Err(e) => {
                // The client may try again (with a fresh token) until the connect deadline.
                self.fallback_token = fallback;
                self.gw.count_rejection(e.code);
                self.push_text(&format!("44{}", json!({"message": e.to_string()})));
            }
        }
    }

    /// `42<id>[name, …args]`.
    fn on_event(&mut self, body: &str) {
        let digits = body.bytes().take_while(u8::is_ascii_digit).count();
        let (id, json) = body.split_at(digits);
        let ack: Option<u64> = id.parse().ok();
        let Ok(mut packet) = serde_json::from_str::<Vec<Value>>(json) else {
            if ack.is_some() {
                let e = AppError::bad_request("malformed event data: not a JSON array");
                let reply = sio::refused(&self.gw, &e);
                self.ack(ack, &reply);
            }
            return;
        };
        if packet.is_empty() {
            return;
        }
        let Value::String(event) = packet.remove(0) else {
            if ack.is_some() {
                let reply = sio::unknown_event(&self.gw, "(not a name)");
                self.ack(ack, &reply);
            }
            return;
        };
        let args = if packet.len() > ARGS_MAX {
            Err(AppError::bad_request(
                "malformed event data: too many arguments",
            ))
        } else {
            Ok(packet)
        };
        match event.as_str() {
            "session:join" => self.on_join(ack, args),
            "session:leave" => self.on_leave(ack, args),
            name if COMMAND_EVENTS.contains(&name) => {
                let Some(conn) = &self.conn else { return };
                let (gw, caller) = (self.gw.clone(), conn.caller.clone());
                self.start(Box::pin(async move {
                    Done::Ack(ack, sio::command(&gw, &caller, &event, args).await)
                }));
            }
            name => {
                let reply = sio::unknown_event(&self.gw, name);
                self.ack(ack, &reply);
            }
        }
    }

    fn on_join(&mut self, ack: Option<u64>, args: Result<Vec<Value>, AppError>) {
        let Some(conn) = &self.conn else { return };
        let (session, since) = match args.and_then(|a| sio::join_args(&a)) {
            Ok(x) => x,
            Err(e) => return self.ack(ack, &e.ack()),
        };
        if self.joining.contains(&session) || self.subs.iter().any(|s| s.session == session) {
            return self.ack(ack, &sio::already_joined().ack());
        }
        let (gw, caller) = (self.gw.clone(), conn.caller.clone());
        self.joining.push(session.clone());
        self.start(Box::pin(async move {
            // Subscribed before presence counts this socket, so it sees that update.
            let result = sio::join(&gw, &caller, &session, since, || {
                gw.attendance_watch(&session)
            })
            .await;
            Done::Joined {
                ack,
                session,
                result,
            }
        }));
    }

    fn on_leave(&mut self, ack: Option<u64>, args: Result<Vec<Value>, AppError>) {
        let Some(conn) = &self.conn else { return };
        let session = match args.and_then(|a| sio::leave_args(&a)) {
            Ok(s) => s,
            Err(e) => return self.ack(ack, &e.ack()),
        };
        let before = self.subs.len();
        self.subs.retain(|s| s.session != session);
        if self.subs.len() == before {
            return self.ack(ack, &json!({"ok": true, "left": false}));
        }
        let (gw, caller) = (self.gw.clone(), conn.caller.clone());
        self.start(Box::pin(async move {
            gw.presence_leave(&session, &caller).await;
            Done::Ack(ack, json!({"ok": true, "left": true}))
        }));
    }

    fn start(&mut self, work: Work) {
        self.inflight
            .get_or_insert_with(FuturesUnordered::new)
            .push(work);
    }

    fn ack(&mut self, ack: Option<u64>, reply: &Value) {
        if let Some(id) = ack {
            self.push_text(&format!("43{id}[{reply}]"));
        }
    }

    fn on_done(&mut self, done: Done) {
        match done {
            Done::Ack(ack, reply) => self.ack(ack, &reply),
            Done::Joined {
                ack,
                session,
                result,
            } => {
                self.joining.retain(|s| s != &session);
                if self.joining.is_empty() {
                    self.joining = Vec::new();
                }
                match result {
                    Ok((reply, events, attendance)) => {
                        self.ack(ack, &reply);
                        // Most sockets join one session: no spare capacity.
                        self.subs.reserve_exact(1);
                        self.subs.push(Sub {
                            session,
                            events,
                            attendance,
                        });
                    }
                    Err(e) => self.ack(ack, &e.ack()),
                }
            }
        }
    }

    fn on_input(&mut self, i: usize, input: Input) {
        match input {
            Input::Attendance => {
                let frame = self
                    .subs
                    .get_mut(i)
                    .and_then(|s| s.attendance.borrow_and_update().clone());
                if let Some(frame) = frame {
                    self.push(Out::Shared(frame));
                }
            }
            Input::Event(Ok(e)) => {
                let (Some(conn), Some(sub)) = (&self.conn, self.subs.get(i)) else {
                    return;
                };
                let caller = &conn.caller;
                let frame = sio::event_frame(
                    &e,
                    &sub.session,
                    caller.user.as_str(),
                    caller.role.is_staff(),
                );
                let Some(frame) = frame else { return };
                if self.out.len() >= self.gw.inner.limiter.limits().outbound_queue_max {
                    self.cut(Cut::SlowConsumer);
                    return;
                }
                self.gw
                    .inner
                    .metrics
                    .event_out(TRANSPORT_WEBSOCKET, e.published_at);
                self.push(Out::Shared(frame));
            }
            Input::Event(Err(RecvError::Lagged(_))) => self.cut(Cut::Lagged),
            Input::Event(Err(RecvError::Closed)) => self.cut(Cut::ShuttingDown),
        }
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if self.connect_by.is_some_and(|t| now >= t) {
            self.ending = Some(End::Close(1008, "no namespace connect"));
        } else if self.pong_by.is_some_and(|t| now >= t) {
            debug!("websocket ping timeout");
            self.ending = Some(End::Close(1001, "ping timeout"));
        } else if self.expires.is_some_and(|t| now >= t) {
            self.expires = None;
            self.cut(Cut::TokenExpired);
        } else if now >= self.ping_at {
            let limiter = &self.gw.inner.limiter;
            self.ping_at = now + ping_interval(limiter);
            self.pong_by.get_or_insert(now + ping_timeout(limiter));
            self.push(Out::Static(PING_FRAME));
        }
    }

    /// Tells the client why in `server:error`, then closes. Frames still queued are dropped
    /// (a partly written one is finished): the client resumes from its last token.
    fn cut(&mut self, cut: Cut) {
        let keep = usize::from(self.out_at > 0);
        self.out.truncate(keep);
        self.gw.count_rejection(cut.code());
        let packet = sio::event_packet("server:error", &[&cut.payload()]);
        self.push_text(&packet);
        self.ending = Some(End::Close(1000, ""));
    }

    fn shut_down(&mut self) {
        let packet = sio::event_packet("server:shutdown", &[&sio::shutdown_payload()]);
        self.push_text(&packet);
        self.ending = Some(End::Close(1001, "node shutting down"));
    }

    /// Sends the last frames (bounded in time), closes, finishes running work, leaves every
    /// session's presence and releases the connection.
    async fn finish(mut self) {
        if let Some(End::Close(code, reason)) = self.ending {
            self.push(Out::Owned(wsframe::close(code, reason)));
            let deadline = Instant::now() + CLOSE_FLUSH_MAX;
            while !self.out.is_empty() {
                if self.write_some().is_err() {
                    break;
                }
                if self.out.is_empty() {
                    break;
                }
                match tokio::time::timeout_at(deadline, self.stream.writable()).await {
                    Ok(Ok(())) => {}
                    _ => break,
                }
            }
            let _ = self.stream.shutdown().await;
        }
        drop(self.stream);
        // A join that was running may already count in presence: let it finish, so that it
        // is left below like the others.
        if let Some(mut inflight) = self.inflight.take() {
            while let Some(done) = inflight.next().await {
                if let Done::Joined {
                    session,
                    result: Ok((_, events, attendance)),
                    ..
                } = done
                {
                    self.subs.push(Sub {
                        session,
                        events,
                        attendance,
                    });
                }
            }
        }
        if let Some(conn) = self.conn.take() {
            for sub in std::mem::take(&mut self.subs) {
                self.gw.presence_leave(&sub.session, &conn.caller).await;
            }
            self.gw.inner.metrics.connection_closed(TRANSPORT_WEBSOCKET);
        }
    }
}

/// Waits until the socket is readable (when `read`) or writable (when `write`); whether it is
/// readable. Polls tokio's per-direction readiness, which keeps the waker in the socket's
/// registration: nothing is linked into a waiter list and unlinked again on every wake-up.
async fn ready(stream: &TcpStream, read: bool, write: bool) -> io::Result<bool> {
    std::future::poll_fn(|cx| {
        if read && let std::task::Poll::Ready(r) = stream.poll_read_ready(cx) {
            return std::task::Poll::Ready(r.map(|()| true));
        }
        if write && let std::task::Poll::Ready(r) = stream.poll_write_ready(cx) {
            return std::task::Poll::Ready(r.map(|()| false));
        }
        std::task::Poll::Pending
    })
    .await
}

/// The next thing a joined session has for the socket, and which session; never, without one.
async fn next_input(subs: &mut [Sub]) -> (usize, Input) {
    match subs {
        [] => std::future::pending().await,
        [only] => (0, only.next().await),
        many => {
            let nexts = many.iter_mut().map(|s| Box::pin(s.next()));
            let (input, i, _) = futures_util::future::select_all(nexts).await;
            (i, input)
        }
    }
}

async fn next_done(inflight: &mut Option<FuturesUnordered<Work>>) -> Option<Done> {
    match inflight {
        Some(work) => work.next().await,
        None => std::future::pending().await,
    }
}

/// A fresh Engine.IO / Socket.IO session id: 16 URL-safe characters (96 random bits).
fn new_sid() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits: u128 = rand::random();
    (0..16)
        .map(|_| {
            let c = ALPHABET[(bits & 63) as usize];
            bits >>= 6;
            char::from(c)
        })
        .collect()
}

//! Thin entry points into the gateway's crate-private decoders, for the fuzz targets of the
//! workspace's `fuzz/` crate: the lean WebSocket's frame decoder, the Engine.IO and Socket.IO
//! packet parsers and the Socket.IO client core that runs them, the front door's request-head
//! classification, and the REST command body. Not an API: hidden from the docs, and nothing
//! here holds logic of its own beyond turning crate-private values into plain public ones, so
//! what a target exercises is exactly what a client's bytes reach.

use std::time::Duration;

use tokio::time::Instant;

use lectern_model::{Command, CommandBody, PollKind};
use serde_json::Value;

use crate::AppError;
use crate::front::{Head, head_of};
use crate::sio::client::{Action, Dispatch, SioClient, Timing};
use crate::sio::packet;
use crate::{commands, rest, wsframe};

/// A message the WebSocket [`WsDecoder`] completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    /// A text message (valid UTF-8).
    Text(String),
    /// A binary message.
    Binary,
    /// A ping with its payload.
    Ping(Vec<u8>),
    /// A pong.
    Pong,
    /// A close.
    Close,
}

/// The lean WebSocket's frame decoder (`wsframe::Decoder`).
#[derive(Debug)]
pub struct WsDecoder(wsframe::Decoder);

impl WsDecoder {
    /// A decoder refusing messages over `message_max_bytes`.
    pub fn new(message_max_bytes: usize) -> WsDecoder {
        WsDecoder(wsframe::Decoder::new(message_max_bytes))
    }

    /// Decodes the first frame of `buf` (unmasking it in place): `Ok(None)` when more bytes are
    /// needed, `Ok(Some((used, message)))` once a frame is whole, or the close code and reason.
    #[allow(clippy::type_complexity)]
    pub fn decode(
        &mut self,
        buf: &mut [u8],
    ) -> Result<Option<(usize, Option<WsMessage>)>, (u16, &'static str)> {
        match self.0.decode(buf) {
            Ok(None) => Ok(None),
            Ok(Some((used, message))) => Ok(Some((
                used,
                message.map(|m| match m {
                    wsframe::Message::Text(t) => WsMessage::Text(t),
                    wsframe::Message::Binary => WsMessage::Binary,
                    wsframe::Message::Ping(p) => WsMessage::Ping(p),
                    wsframe::Message::Pong => WsMessage::Pong,
                    wsframe::Message::Close => WsMessage::Close,
                }),
            ))),
            Err(fault) => Err((fault.code(), fault.reason())),
        }
    }
}

/// The server's text frame carrying `text`.
pub fn ws_text_frame(text: &[u8]) -> Vec<u8> {
    wsframe::text(text)
}

/// The server's pong answering a ping with `payload`.
pub fn ws_pong_frame(payload: &[u8]) -> Vec<u8> {
    wsframe::pong(payload)
}

/// The server's close frame with `code` and `reason`.
pub fn ws_close_frame(code: u16, reason: &str) -> Vec<u8> {
    wsframe::close(code, reason)
}

/// An Engine.IO packet: its type digit and its payload, or why it is invalid.
pub fn engine_packet(text: &str) -> Result<(u8, &str), &'static str> {
    use packet::EnginePacket as P;
    Ok(match packet::engine(text).map_err(|e| e.0)? {
        P::Close => (b'1', ""),
        P::Ping(data) => (b'2', data),
        P::Pong => (b'3', ""),
        P::Message(m) => (b'4', m),
        P::Upgrade => (b'5', ""),
        P::Noop => (b'6', ""),
    })
}

/// A Socket.IO packet as parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SioPacket<'a> {
    /// Its type digit.
    pub kind: u8,
    /// Binary attachments that follow.
    pub attachments: u32,
    /// The namespace.
    pub namespace: &'a str,
    /// The ack id.
    pub ack: Option<u64>,
    /// The JSON payload, unparsed.
    pub data: &'a str,
}

/// Parses a Socket.IO packet, or says why it is invalid.
pub fn socketio_packet(text: &str) -> Result<SioPacket<'_>, &'static str> {
    use packet::SioKind as K;
    let p = packet::socketio(text).map_err(|e| e.0)?;
    Ok(SioPacket {
        kind: match p.kind {
            K::Connect => b'0',
            K::Disconnect => b'1',
            K::Event => b'2',
            K::Ack => b'3',
            K::BinaryEvent => b'5',
            K::BinaryAck => b'6',
        },
        attachments: p.attachments,
        namespace: p.namespace,
        ack: p.ack,
        data: p.data,
    })
}

/// What the Socket.IO client core answered a message with, once the transport did its part
/// (authentication succeeds, joins succeed, command events are parsed as the transports parse
/// them).
#[derive(Debug)]
pub enum SioOutcome {
    /// Nothing to do.
    Nothing,
    /// An Engine.IO text packet to send.
    Send(String),
    /// A heartbeat ping to send.
    Ping,
    /// The namespace connected (after a CONNECT): the reply packet.
    Connected(String),
    /// An event's answer, with its ack id: `Ok` with the command a command event parsed to
    /// (`None` for a join, a leave, a vote or a reply), or the refusal.
    Event(Option<u64>, Result<Option<CommandBody>, AppError>),
    /// The namespace disconnected, leaving this many sessions.
    Disconnected(usize),
    /// The connection closes: the WebSocket close code and reason.
    Close(u16, &'static str),
}

/// A lean WebSocket connection's Socket.IO state (`sio::client::SioClient`), driven by a
/// clock the caller moves.
#[derive(Debug)]
pub struct SioConnection {
    client: SioClient,
    now: Instant,
}

impl Default for SioConnection {
    fn default() -> Self {
        SioConnection::new()
    }
}

impl SioConnection {
    /// A connection that has just sent its open packet (25 s pings, 20 s ping timeout, 45 s to
    /// connect: the defaults).
    pub fn new() -> SioConnection {
        let now = Instant::now();
        let timing = Timing::new(
            Duration::from_secs(25),
            Duration::from_secs(20),
            Duration::from_secs(45),
        );
        SioConnection {
            client: SioClient::open(timing, now),
            now,
        }
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Whether namespace `/` is connected.
    pub fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    /// Moves the clock by `ms` and runs whatever timer is due.
    pub fn advance(&mut self, ms: u64) -> SioOutcome {
        self.now += Duration::from_millis(ms);
        let action = self.client.on_timer(self.now);
        self.carry_out(action)
    }

    /// A text message arrived.
    pub fn on_text(&mut self, text: &str) -> SioOutcome {
        let action = self.client.on_text(text, self.now);
        self.carry_out(action)
    }

    /// A binary message arrived.
    pub fn on_binary(&mut self) -> SioOutcome {
        let action = self.client.on_binary();
        self.carry_out(action)
    }

    fn carry_out(&mut self, action: Option<Action>) -> SioOutcome {
        let Some(action) = action else {
            return SioOutcome::Nothing;
        };
        match action {
            Action::Send(text) => SioOutcome::Send(text),
            Action::Ping => SioOutcome::Ping,
            Action::Authenticate(_) => {
                match self
                    .client
                    .connected("fuzz", "fuzz-pid", Duration::from_secs(3600), self.now)
                {
                    Action::Send(text) => SioOutcome::Connected(text),
                    other => SioOutcome::Send(format!("{other:?}")),
                }
            }
            Action::Event(ack, dispatch) => SioOutcome::Event(ack, self.dispatch(dispatch)),
            Action::Disconnected(left) => SioOutcome::Disconnected(left.len()),
            Action::Close(why) => {
                let (code, reason) = why.ws_close();
                SioOutcome::Close(code, reason)
            }
        }
    }

    fn dispatch(&mut self, dispatch: Dispatch) -> Result<Option<CommandBody>, AppError> {
        match dispatch {
            Dispatch::Reply(_) | Dispatch::Leave { .. } => Ok(None),
            Dispatch::Refuse(e) => Err(e),
            Dispatch::Join { session, .. } => {
                self.client.join_done(&session, Some("t0".into()));
                Ok(None)
            }
            Dispatch::Command { event, args } => event_command(&event, args),
        }
    }
}

/// A Socket.IO command event parsed as the transports parse it: the command, `None` for a
/// vote (whose choice is then read in the terms of every poll kind), or the refusal.
pub fn event_command(event: &str, args: Vec<Value>) -> Result<Option<CommandBody>, AppError> {
    let parsed = commands::parse(event, args)?;
    match parsed.body {
        commands::Body::Ready(body) => Ok(Some(body)),
        commands::Body::Vote(_, raw) => {
            for kind in [
                PollKind::Single,
                PollKind::Multiple,
                PollKind::Rating,
                PollKind::OpenText,
            ] {
                let _ = commands::choice(kind, &raw);
            }
            Ok(None)
        }
    }
}

/// What the front door makes of the request head at the start of `buf`.
#[derive(Debug)]
pub enum HeadRoute {
    /// A lean SSE stream: its target.
    Stream(String),
    /// A lean WebSocket: its target and the bytes after the head.
    WebSocket(String, Vec<u8>),
    /// Hyper's: the bytes to replay to it.
    Other(Vec<u8>),
}

/// Classifies the request head at the start of `buf`, or `None` while it is incomplete (as the
/// accept loop does after each read).
pub fn http_head(buf: &mut Vec<u8>) -> Option<HeadRoute> {
    head_of(buf).map(|head| match head {
        Head::Stream(target, _) => HeadRoute::Stream(target),
        Head::WebSocket(target, _, early) => HeadRoute::WebSocket(target, early),
        Head::Other(bytes) => HeadRoute::Other(bytes),
    })
}

/// A REST command body as `POST /api/sessions/{id}/commands` (`name: None`) or
/// `POST /api/sessions/{id}/{name}` reads it into a [`Command`].
pub fn rest_command(body: &[u8], name: Option<&str>) -> Result<Command, AppError> {
    rest::command_body(&axum::body::Bytes::copy_from_slice(body), name)
}

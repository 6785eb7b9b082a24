//! A minimal Socket.IO v5 client (Engine.IO v4) over WebSocket or HTTP long-polling, written
//! from the protocol documents so that a test can also send what a well-behaved client would
//! not: raw packets, oversized frames, arguments of the wrong type.
//!
//! What it speaks: the Engine.IO open packet (`0{sid, pingInterval, …}`), ping/pong (`2` → `3`,
//! answered at any time, including before the namespace connect reply), the namespace `/` connect with an `auth` object (`40{…}` → `40{sid}` or
//! `44{message}`), events (`42[…]`), events with an ack id (`42<id>[…]` → `43<id>[…]`) and
//! disconnects (`41`, engine close `1`). Polling sends each batch of packets as one POST body
//! separated by `\x1e` and reads them back from one outstanding GET at a time. Binary packets
//! are not supported (Lectern sends none).
//!
//! One task per client owns the connection; [`Client`] talks to it through channels, keeps
//! every event it received (so a test can wait for one that arrived earlier, or, from a
//! [`Cursor`], only for one that arrives after an action) and tracks the last resume token it
//! saw.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::http::Http;

/// How long [`Client::call`] waits for an ack and [`Client::wait_for`] for an event.
pub const WAIT_DEFAULT: Duration = Duration::from_secs(10);

/// The Engine.IO transport a client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// One WebSocket from the start (`transport=websocket`).
    WebSocket,
    /// HTTP long-polling only (`transport=polling`), as when WebSocket is blocked.
    Polling,
}

impl Transport {
    /// Both transports, for tests that run over each.
    pub const ALL: [Transport; 2] = [Transport::WebSocket, Transport::Polling];

    /// The Engine.IO name (`websocket`, `polling`).
    pub fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Polling => "polling",
        }
    }
}

/// An event the server emitted to this client.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerEvent {
    /// Event name.
    pub name: String,
    /// Its arguments.
    pub args: Vec<Value>,
}

impl ServerEvent {
    /// The first argument (Lectern's payload), or `null`.
    pub fn data(&self) -> &Value {
        self.args.first().unwrap_or(&Value::Null)
    }

    /// The second argument (Lectern's `{token, session}` meta), or `null`.
    pub fn meta(&self) -> &Value {
        self.args.get(1).unwrap_or(&Value::Null)
    }

    /// The resume token in the meta, if any.
    pub fn token(&self) -> Option<&str> {
        self.meta()["token"].as_str()
    }
}

/// Why a connection attempt did not yield a client.
#[derive(Debug)]
pub enum ConnectError {
    /// The server refused the namespace connect (`44{message}`); its message.
    Refused(String),
    /// Anything else: transport, protocol, timeout.
    Failed(anyhow::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused(m) => write!(f, "connect refused: {m}"),
            ConnectError::Failed(e) => write!(f, "connect failed: {e:#}"),
        }
    }
}

impl std::error::Error for ConnectError {}

type AckMap = Arc<Mutex<HashMap<u64, oneshot::Sender<Vec<Value>>>>>;

/// What the client asks the connection task to send.
enum Out {
    /// One Engine.IO packet.
    Packet(String),
    /// Close the transport after what is queued.
    Close,
}

/// What the connection task reports.
enum Incoming {
    Connected(Result<String, String>),
    Event(ServerEvent),
    Closed(String),
}

/// A position in a client's received events ([`Client::cursor`]): the events after it are the
/// ones that arrived later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(usize);

/// A connected Socket.IO client on namespace `/`.
pub struct Client {
    name: String,
    sid: String,
    transport: Transport,
    out: mpsc::UnboundedSender<Out>,
    inbox: mpsc::UnboundedReceiver<Incoming>,
    acks: AckMap,
    next_ack: u64,
    seen: Vec<ServerEvent>,
    closed: Option<String>,
    last_token: Option<String>,
    tasks: Vec<JoinHandle<()>>,
}

impl Client {
    /// Connects to the node at `addr` over `transport` with `auth` (`{token}`) as the
    /// handshake's auth object; `name` labels failures. A refusal is an error here; see
    /// [`Client::try_connect`] to inspect it.
    pub async fn connect(
        addr: SocketAddr,
        transport: Transport,
        auth: Value,
        name: &str,
    ) -> anyhow::Result<Client> {
        Self::try_connect(addr, transport, Some(auth), name)
            .await
            .map_err(|e| anyhow!("{name}: {e}"))
    }

    /// Connects, telling a refusal (`44`) apart from other failures. `auth: None` sends a
    /// connect packet without an auth object.
    pub async fn try_connect(
        addr: SocketAddr,
        transport: Transport,
        auth: Option<Value>,
        name: &str,
    ) -> Result<Client, ConnectError> {
        let connect = Self::open(addr, transport, auth, name);
        match tokio::time::timeout(WAIT_DEFAULT, connect).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Failed(anyhow!(
                "no connect reply within {WAIT_DEFAULT:?}"
            ))),
        }
    }

    async fn open(
        addr: SocketAddr,
        transport: Transport,
        auth: Option<Value>,
        name: &str,
    ) -> Result<Client, ConnectError> {
        let (out, out_rx) = mpsc::unbounded_channel::<Out>();
        let (in_tx, mut inbox) = mpsc::unbounded_channel::<Incoming>();
        let acks: AckMap = Arc::default();
        let connect_packet = match &auth {
            Some(a) => format!("40{a}"),
            None => "40".to_owned(),
        };
        let tasks = match transport {
            Transport::WebSocket => {
                ws_start(addr, connect_packet, out_rx, in_tx, acks.clone()).await
            }
            Transport::Polling => {
                polling_start(
                    addr,
                    connect_packet,
                    out_rx,
                    out.clone(),
                    in_tx,
                    acks.clone(),
                )
                .await
            }
        }
        .map_err(ConnectError::Failed)?;
        // Pings that arrive before the connect reply (socketioxide sends one early) are
        // answered by the connection task; the first report is the connect's outcome.
        let failed = match inbox.recv().await {
            Some(Incoming::Connected(Ok(sid))) => {
                return Ok(Client {
                    name: name.to_owned(),
                    sid,
                    transport,
                    out,
                    inbox,
                    acks,
                    next_ack: 0,
                    seen: Vec::new(),
                    closed: None,
                    last_token: None,
                    tasks,
                });
            }
            Some(Incoming::Connected(Err(message))) => ConnectError::Refused(message),
            Some(Incoming::Event(e)) => {
                ConnectError::Failed(anyhow!("event {} before the connect reply", e.name))
            }
            Some(Incoming::Closed(reason)) => {
                ConnectError::Failed(anyhow!("closed before the connect reply: {reason}"))
            }
            None => ConnectError::Failed(anyhow!("the connection task ended")),
        };
        tasks.iter().for_each(JoinHandle::abort);
        Err(failed)
    }

    /// The Socket.IO session id the server gave.
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// The transport in use.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Emits `event` with `args` and waits for its ack's arguments.
    pub async fn call_args(&mut self, event: &str, args: Vec<Value>) -> anyhow::Result<Vec<Value>> {
        let id = self.next_ack;
        self.next_ack += 1;
        let (tx, rx) = oneshot::channel();
        self.acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let mut packet = vec![json!(event)];
        packet.extend(args);
        self.send_raw(format!("42{id}{}", Value::Array(packet)))?;
        match tokio::time::timeout(WAIT_DEFAULT, rx).await {
            Ok(Ok(args)) => Ok(args),
            Ok(Err(_)) => {
                // The task reported why before it dropped the waiter.
                self.drain();
                bail!(
                    "{}: {event}: the connection closed before the ack ({})",
                    self.name,
                    self.closed_reason()
                )
            }
            Err(_) => bail!("{}: {event}: no ack within {WAIT_DEFAULT:?}", self.name),
        }
    }

    /// Emits `event` with `args` and returns the ack's first argument (Lectern acks with one
    /// object). Updates [`Client::last_token`] from an ack's `token`.
    pub async fn call(&mut self, event: &str, args: Vec<Value>) -> anyhow::Result<Value> {
        let ack = self.call_args(event, args).await?;
        let first = ack.into_iter().next().unwrap_or(Value::Null);
        if let Some(t) = first["token"].as_str()
            && event == "session:join"
        {
            self.last_token = Some(t.to_owned());
        }
        Ok(first)
    }

    /// Emits an event without asking for an ack.
    pub fn emit(&self, event: &str, args: Vec<Value>) -> anyhow::Result<()> {
        let mut packet = vec![json!(event)];
        packet.extend(args);
        self.send_raw(format!("42{}", Value::Array(packet)))
    }

    /// Sends one raw Engine.IO packet (`42[…]`, `4…`), unchecked.
    pub fn send_raw(&self, packet: String) -> anyhow::Result<()> {
        self.out
            .send(Out::Packet(packet))
            .map_err(|_| anyhow!("{}: the connection is closed", self.name))
    }

    /// Waits for an event matching `pred` (one already received counts) and returns it;
    /// `what` names it in the failure. To wait for an event an action causes, take a
    /// [`Client::cursor`] before the action and use [`Client::wait_after`]: an older event
    /// that happens to match would make this one pass without the action.
    pub async fn wait_for(
        &mut self,
        what: &str,
        pred: impl Fn(&ServerEvent) -> bool,
    ) -> anyhow::Result<ServerEvent> {
        self.wait_after(Cursor(0), what, pred).await
    }

    /// The position after every event received so far: [`Client::wait_after`] with it
    /// considers only events that arrive later.
    pub fn cursor(&mut self) -> Cursor {
        self.drain();
        Cursor(self.seen.len())
    }

    /// Waits for an event matching `pred` among those received after `cursor` (taken by
    /// [`Client::cursor`], typically just before the action that should cause it) and
    /// returns it; `what` names it in the failure.
    pub async fn wait_after(
        &mut self,
        cursor: Cursor,
        what: &str,
        pred: impl Fn(&ServerEvent) -> bool,
    ) -> anyhow::Result<ServerEvent> {
        self.drain();
        if let Some(e) = self.seen.iter().skip(cursor.0).find(|e| pred(e)) {
            return Ok(e.clone());
        }
        let deadline = tokio::time::Instant::now() + WAIT_DEFAULT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.pump()).await;
            match next {
                Ok(Some(e)) if pred(&e) => return Ok(e),
                Ok(Some(_)) => {}
                Ok(None) => bail!(
                    "{}: closed ({}) before {what}; saw {:?}",
                    self.name,
                    self.closed_reason(),
                    self.names()
                ),
                Err(_) => bail!(
                    "{}: no {what} within {WAIT_DEFAULT:?}; saw {:?}",
                    self.name,
                    self.names()
                ),
            }
        }
    }

    /// Waits until the server closes this connection; its reason.
    pub async fn closed(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(r) = &self.closed {
                return Ok(r.clone());
            }
            if tokio::time::timeout_at(deadline, self.pump())
                .await
                .is_err()
            {
                bail!("{}: still connected after {timeout:?}", self.name);
            }
        }
    }

    /// Waits up to `timeout` for something to arrive (an event, or the connection's end) unless
    /// it already has; what arrived is in [`Client::seen`] and [`Client::is_closed`]. For a
    /// client that follows a stream while it does other things in between.
    pub async fn settle(&mut self, timeout: Duration) {
        let before = self.seen.len();
        self.drain();
        if self.closed.is_some() || self.seen.len() > before {
            return;
        }
        // `pump` records what it receives before it returns, and its wait on the inbox
        // loses nothing when cut short.
        let _ = tokio::time::timeout(timeout, self.pump()).await;
    }

    /// Whether the connection is known to be closed (by what has arrived so far).
    pub fn is_closed(&mut self) -> bool {
        self.drain();
        self.closed.is_some()
    }

    /// Every event received so far, in order.
    pub fn seen(&mut self) -> &[ServerEvent] {
        self.drain();
        &self.seen
    }

    /// The latest resume token: from the last `session:join` ack or the last event's meta.
    pub fn last_token(&mut self) -> Option<String> {
        self.drain();
        self.last_token.clone()
    }

    /// Leaves cleanly: a namespace disconnect (`41`), then the transport closes.
    pub async fn disconnect(mut self) {
        let _ = self.send_raw("41".to_owned());
        let _ = self.out.send(Out::Close);
        // The connection task sends what is queued, then closes the transport.
        for t in std::mem::take(&mut self.tasks) {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }

    /// Takes in what already arrived, without waiting.
    fn drain(&mut self) {
        while let Ok(i) = self.inbox.try_recv() {
            self.record(i);
        }
    }

    /// Waits for the next event; `None` once the connection is closed.
    async fn pump(&mut self) -> Option<ServerEvent> {
        loop {
            if self.closed.is_some() {
                return None;
            }
            let i = self.inbox.recv().await;
            match i {
                None => {
                    self.closed
                        .get_or_insert_with(|| "connection task ended".to_owned());
                    return None;
                }
                Some(i) => {
                    if let Some(e) = self.record(i) {
                        return Some(e);
                    }
                }
            }
        }
    }

    fn record(&mut self, i: Incoming) -> Option<ServerEvent> {
        match i {
            Incoming::Event(e) => {
                if let Some(t) = e.token() {
                    self.last_token = Some(t.to_owned());
                }
                self.seen.push(e.clone());
                Some(e)
            }
            Incoming::Closed(r) => {
                self.closed.get_or_insert(r);
                None
            }
            Incoming::Connected(_) => None,
        }
    }

    fn names(&self) -> Vec<&str> {
        self.seen.iter().map(|e| e.name.as_str()).collect()
    }

    fn closed_reason(&self) -> String {
        self.closed.clone().unwrap_or_else(|| "open".to_owned())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // A dropped client vanishes like a lost network: no goodbye.
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

/// What the connection task does after a packet from the server.
enum Step {
    /// Nothing more.
    Go,
    /// Send this packet back (a pong).
    Reply(String),
    /// The server closed the connection.
    Stop,
}

/// Handles one Engine.IO packet from the server: answers pings, reports the rest.
fn on_engine_packet(packet: &str, inbox: &mpsc::UnboundedSender<Incoming>, acks: &AckMap) -> Step {
    let Some(kind) = packet.chars().next() else {
        return Step::Go;
    };
    let rest = &packet[1..];
    match kind {
        '1' => {
            let _ = inbox.send(Incoming::Closed("engine close packet".to_owned()));
            Step::Stop
        }
        '2' => Step::Reply(format!("3{rest}")),
        '4' => {
            if on_socketio_packet(rest, inbox, acks) {
                Step::Go
            } else {
                Step::Stop
            }
        }
        // '0' (open, handled at connect), '3' pong, '6' noop, and the upgrade packets.
        _ => Step::Go,
    }
}

/// Handles one Socket.IO packet (an Engine.IO message's payload).
fn on_socketio_packet(
    packet: &str,
    inbox: &mpsc::UnboundedSender<Incoming>,
    acks: &AckMap,
) -> bool {
    let Some(kind) = packet.chars().next() else {
        return true;
    };
    let mut rest = &packet[1..];
    // A namespace other than `/` is written `/name,`; this client only uses `/`.
    if rest.starts_with('/') {
        rest = rest.split_once(',').map_or("", |(_, r)| r);
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let (id, body) = rest.split_at(digits);
    let id: Option<u64> = id.parse().ok();
    match kind {
        '0' => {
            let sid = serde_json::from_str::<Value>(body)
                .ok()
                .and_then(|v| v["sid"].as_str().map(str::to_owned))
                .unwrap_or_default();
            let _ = inbox.send(Incoming::Connected(Ok(sid)));
        }
        '1' => {
            let _ = inbox.send(Incoming::Closed(
                "server disconnected the socket".to_owned(),
            ));
            return false;
        }
        '2' => {
            let Ok(Value::Array(mut args)) = serde_json::from_str::<Value>(body) else {
                let _ = inbox.send(Incoming::Closed(format!(
                    "unreadable event packet {packet:?}"
                )));
                return false;
            };
            if args.is_empty() {
                return true;
            }
            let name = match args.remove(0) {
                Value::String(s) => s,
                other => other.to_string(),
            };
            let _ = inbox.send(Incoming::Event(ServerEvent { name, args }));
        }
        '3' => {
            let args = match serde_json::from_str::<Value>(body) {
                Ok(Value::Array(a)) => a,
                _ => vec![],
            };
            let waiter =
                id.and_then(|id| acks.lock().unwrap_or_else(|e| e.into_inner()).remove(&id));
            if let Some(w) = waiter {
                let _ = w.send(args);
            }
        }
        '4' => {
            let message = serde_json::from_str::<Value>(body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| body.to_owned());
            let _ = inbox.send(Incoming::Connected(Err(message)));
        }
        // Binary events and acks (5, 6) are not used by Lectern.
        _ => {}
    }
    true
}

/// Reads the open packet `0{sid, pingInterval, pingTimeout, …}`.
fn open_packet(packet: &str) -> anyhow::Result<Value> {
    let body = packet
        .strip_prefix('0')
        .with_context(|| format!("expected an open packet, got {packet:?}"))?;
    serde_json::from_str(body).with_context(|| format!("parse the open packet {packet:?}"))
}

async fn ws_start(
    addr: SocketAddr,
    connect_packet: String,
    mut out_rx: mpsc::UnboundedReceiver<Out>,
    inbox: mpsc::UnboundedSender<Incoming>,
    acks: AckMap,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    let (mut ws, _) = tokio_tungstenite::client_async(url.as_str(), tcp)
        .await
        .with_context(|| format!("open a WebSocket to {url}"))?;
    let first = ws
        .next()
        .await
        .context("the WebSocket closed before the open packet")?
        .context("read the open packet")?;
    let Message::Text(first) = first else {
        bail!("expected a text open packet, got {first:?}");
    };
    open_packet(&first)?;
    ws.send(Message::text(connect_packet))
        .await
        .context("send the connect packet")?;
    let task = tokio::spawn(async move {
        let reason = loop {
            tokio::select! {
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(t))) => match on_engine_packet(&t, &inbox, &acks) {
                        Step::Go => {}
                        Step::Reply(p) => {
                            if let Err(e) = ws.send(Message::text(p)).await {
                                break format!("WebSocket send failed: {e}");
                            }
                        }
                        Step::Stop => {
                            let _ = ws.close(None).await;
                            acks.lock().unwrap_or_else(|e| e.into_inner()).clear();
                            return;
                        }
                    },
                    Some(Ok(Message::Close(f))) => break format!("WebSocket closed by the server: {f:?}"),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break format!("WebSocket error: {e}"),
                    None => break "WebSocket ended".to_owned(),
                },
                out = out_rx.recv() => match out {
                    Some(Out::Packet(p)) => {
                        if let Err(e) = ws.send(Message::text(p)).await {
                            break format!("WebSocket send failed: {e}");
                        }
                    }
                    Some(Out::Close) | None => {
                        let _ = ws.close(None).await;
                        break "closed by the client".to_owned();
                    }
                },
            }
        };
        report_closed(&inbox, &acks, reason);
    });
    Ok(vec![task])
}

async fn polling_start(
    addr: SocketAddr,
    connect_packet: String,
    mut out_rx: mpsc::UnboundedReceiver<Out>,
    out: mpsc::UnboundedSender<Out>,
    inbox: mpsc::UnboundedSender<Incoming>,
    acks: AckMap,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let http = Http::new(addr);
    let base = "/socket.io/?EIO=4&transport=polling";
    let opened = http
        .get(base, None)
        .await
        .context("open a polling session")?;
    if opened.status != 200 {
        bail!(
            "open a polling session: {} {}",
            opened.status,
            opened.text()
        );
    }
    let text = opened.text();
    let open = open_packet(text.split('\x1e').next().unwrap_or_default())?;
    let sid = open["sid"]
        .as_str()
        .context("the open packet has no sid")?
        .to_owned();
    let ping_ms = open["pingInterval"].as_u64().unwrap_or(25_000)
        + open["pingTimeout"].as_u64().unwrap_or(20_000);
    // A GET is held until the server has something to say: a ping at the latest.
    let get_timeout = Duration::from_millis(ping_ms) + Duration::from_secs(5);
    let url = format!("{base}&sid={sid}");
    post(&http, &url, connect_packet)
        .await
        .context("post the connect packet")?;

    let reader = {
        let url = url.clone();
        let inbox = inbox.clone();
        let acks = acks.clone();
        tokio::spawn(async move {
            let reason = loop {
                let resp = http.send("GET", &url, &[], None, get_timeout).await;
                let resp = match resp {
                    Ok(r) if r.status == 200 => r,
                    Ok(r) => break format!("poll answered {}: {}", r.status, r.text()),
                    Err(e) => break format!("poll failed: {e:#}"),
                };
                for packet in resp.text().split('\x1e') {
                    match on_engine_packet(packet, &inbox, &acks) {
                        Step::Go => {}
                        Step::Reply(p) => {
                            let _ = out.send(Out::Packet(p));
                        }
                        Step::Stop => {
                            acks.lock().unwrap_or_else(|e| e.into_inner()).clear();
                            return;
                        }
                    }
                }
            };
            report_closed(&inbox, &acks, reason);
        })
    };
    let writer = tokio::spawn(async move {
        // One POST at a time, carrying everything queued (Engine.IO allows no overlap).
        while let Some(first) = out_rx.recv().await {
            let mut batch = Vec::new();
            let mut close = false;
            let mut next = Some(first);
            while let Some(o) = next {
                match o {
                    Out::Packet(p) => batch.push(p),
                    Out::Close => {
                        // The engine close packet.
                        batch.push("1".to_owned());
                        close = true;
                        break;
                    }
                }
                next = out_rx.try_recv().ok();
            }
            if let Err(e) = post(&http, &url, batch.join("\x1e")).await {
                report_closed(&inbox, &acks, format!("post failed: {e:#}"));
                return;
            }
            if close {
                return;
            }
        }
    });
    Ok(vec![reader, writer])
}

/// Reports the connection closed and fails every call still waiting for an ack.
fn report_closed(inbox: &mpsc::UnboundedSender<Incoming>, acks: &AckMap, reason: String) {
    let _ = inbox.send(Incoming::Closed(reason));
    acks.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

async fn post(http: &Http, url: &str, body: String) -> anyhow::Result<()> {
    let resp = http
        .send(
            "POST",
            url,
            &[("content-type", "text/plain;charset=UTF-8")],
            Some(body.into_bytes()),
            crate::http::REQUEST_TIMEOUT,
        )
        .await?;
    if resp.status != 200 {
        bail!("{} {}", resp.status, resp.text());
    }
    Ok(())
}

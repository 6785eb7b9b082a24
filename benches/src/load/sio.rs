//! A minimal Socket.IO v5 client over Engine.IO v4's websocket transport, just enough to load
//! a node: connect with a token, join a session, receive events, ask questions with acks.
//!
//! The protocol, as far as it is used here: after the HTTP upgrade of
//! `/socket.io/?EIO=4&transport=websocket` the server sends the Engine.IO open packet
//! `0{"sid":…}`; the client connects to namespace `/` with `40{"token":…}` and the server
//! answers `40{"sid":…}` (socketioxide sends its first ping `2` before that reply, and a client
//! that does not answer `3` is dropped). An event is `42["name",args…]`, an event that wants an
//! ack `42{id}["name",args…]`, and the ack `43{id}[reply]`. A refused connect is `44{…}`.
//!
//! Each client is one tungstenite stream with small buffers: a default client allocates a
//! 128 KiB read buffer, which for 8,000 clients sharing two cores with the node is about a
//! gigabyte of memory the measurement does not need.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};

use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::probe::{self, Probe, Tally};
use super::{ConnectError, ConnectFailure};

/// A connected Socket.IO client.
pub struct Client {
    ws: WebSocketStream<TcpStream>,
    next_ack: u64,
}

/// An ack the server sent for an earlier `emit_with_ack`.
pub struct Ack {
    /// The ack id.
    pub id: u64,
    /// `{ok: true, …}` or `{ok: false, error: {code, message}}`.
    pub reply: Value,
}

/// The read buffer of each client: more than a `qa:new` frame, far less than tungstenite's
/// default. A larger message (a join reply carrying the session state) still arrives whole;
/// the buffer is only the unit of reading.
const READ_BUFFER_BYTES: usize = 2048;

impl Client {
    /// Connects from `source` to the node at `node`, upgrades to websocket and connects to
    /// namespace `/` with `token`.
    pub async fn connect(
        node: SocketAddr,
        source: Ipv4Addr,
        token: &str,
    ) -> Result<Client, ConnectError> {
        let stream = tcp_connect(node, source).await?;
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .write_buffer_size(0)
            .max_message_size(Some(16 << 20));
        let url = format!("ws://{node}/socket.io/?EIO=4&transport=websocket");
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
            .await
            .map_err(|e| ConnectError::new(ConnectFailure::Upgrade, e.to_string()))?;
        let mut client = Client { ws, next_ack: 1 };
        let open = client.next_text().await?;
        if !open.starts_with('0') {
            return Err(ConnectError::new(
                ConnectFailure::Protocol,
                format!("expected the Engine.IO open packet, got {}", clip(&open)),
            ));
        }
        let auth = serde_json::json!({ "token": token });
        client.send(format!("40{auth}")).await?;
        loop {
            let packet = client.next_text().await?;
            if packet.starts_with("40") {
                return Ok(client);
            }
            if let Some(refusal) = packet.strip_prefix("44") {
                return Err(ConnectError::new(
                    ConnectFailure::Refused,
                    clip(refusal).to_owned(),
                ));
            }
            // Anything else before the connect reply (pings are answered by next_text) is
            // not for this client yet.
        }
    }

    /// `session:join(session)` and its ack; an error unless the ack says `ok: true`.
    pub async fn join(&mut self, session: &str) -> Result<(), ConnectError> {
        let id = self
            .emit_with_ack(&serde_json::json!(["session:join", session]))
            .await?;
        loop {
            let packet = self.next_text().await?;
            if let Some(ack) = parse_ack(&packet)
                && ack.id == id
            {
                if ack.reply["ok"] == true {
                    return Ok(());
                }
                return Err(ConnectError::new(
                    ConnectFailure::JoinRefused,
                    ack.reply["error"].to_string(),
                ));
            }
        }
    }

    /// Emits `args` (`["event", …]`) asking for an ack; returns the ack id.
    pub async fn emit_with_ack(&mut self, args: &Value) -> Result<u64, ConnectError> {
        let id = self.next_ack;
        self.next_ack += 1;
        self.send(format!("42{id}{args}")).await?;
        Ok(id)
    }

    /// `qa:ask(session, text)` with an ack; returns the ack id.
    pub async fn ask(&mut self, session: &str, text: &str) -> Result<u64, ConnectError> {
        self.emit_with_ack(&serde_json::json!(["qa:ask", session, text]))
            .await
    }

    /// The next ack, answering pings and skipping events meanwhile.
    pub async fn next_ack(&mut self) -> Result<Ack, ConnectError> {
        loop {
            let packet = self.next_text().await?;
            if let Some(ack) = parse_ack(&packet) {
                return Ok(ack);
            }
        }
    }

    /// Reads events until an `attendance:update` says `want` users are present (answering
    /// pings); the last count seen if `limit` passes first.
    pub async fn wait_attendance(
        &mut self,
        want: u64,
        limit: Duration,
    ) -> Result<u64, ConnectError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut last = 0;
        loop {
            let packet = match tokio::time::timeout_at(deadline, self.next_text()).await {
                Ok(p) => p?,
                Err(_) => return Ok(last),
            };
            let Some(args) = packet.strip_prefix("42") else {
                continue;
            };
            let Ok(Value::Array(args)) = serde_json::from_str::<Value>(args) else {
                continue;
            };
            if args.first().and_then(Value::as_str) == Some("attendance:update")
                && let Some(present) = args.get(1).and_then(|v| v["present"].as_u64())
            {
                last = present;
                if present == want {
                    return Ok(present);
                }
            }
        }
    }

    /// Receives until `stop` turns true or the server ends the stream, recording every probe
    /// of a `qa:new` event in the returned tally.
    pub async fn listen(mut self, probe: &Probe, mut stop: watch::Receiver<bool>) -> Tally {
        let mut tally = Tally::new(probe);
        loop {
            let msg = tokio::select! {
                m = self.ws.next() => m,
                _ = stop.wait_for(|s| *s) => break,
            };
            let now_us = probe.now_us();
            let text = match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_))) | None => {
                    tally.cut_off.get_or_insert_with(|| "closed".to_owned());
                    break;
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    tally.cut_off.get_or_insert_with(|| format!("error: {e}"));
                    break;
                }
            };
            let text = text.as_str();
            if text == "2" {
                if self.send("3".to_owned()).await.is_err() {
                    tally
                        .cut_off
                        .get_or_insert_with(|| "pong failed".to_owned());
                    break;
                }
            } else if text.starts_with(r#"42["qa:new""#) {
                if tally.frame_len.is_none() && probe::count(text.as_bytes()) == 1 {
                    tally.frame_len = Some(ws_frame_len(text.len()));
                }
                probe::scan(text.as_bytes(), |seq, sent_us| {
                    tally.record(probe, seq, sent_us, now_us);
                });
            } else if text.starts_with(r#"42["server:error""#) || text.starts_with("41") {
                tally.cut_off = Some(clip(text).to_owned());
            }
        }
        tally
    }

    /// The next text packet, answering Engine.IO pings on the way.
    async fn next_text(&mut self) -> Result<String, ConnectError> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    if t.as_str() == "2" {
                        self.send("3".to_owned()).await?;
                        continue;
                    }
                    return Ok(t.as_str().to_owned());
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(ConnectError::new(
                        ConnectFailure::Closed,
                        format!("closed by the server: {frame:?}"),
                    ));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    return Err(ConnectError::new(ConnectFailure::Closed, e.to_string()));
                }
                None => {
                    return Err(ConnectError::new(
                        ConnectFailure::Closed,
                        "closed by the server",
                    ));
                }
            }
        }
    }

    async fn send(&mut self, text: String) -> Result<(), ConnectError> {
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|e| ConnectError::new(ConnectFailure::Closed, e.to_string()))
    }
}

/// A TCP connection from `source` (port chosen by the kernel) to `to`.
pub async fn tcp_connect(to: SocketAddr, source: Ipv4Addr) -> Result<TcpStream, ConnectError> {
    let tcp = |e: std::io::Error| ConnectError::new(ConnectFailure::Tcp, e.to_string());
    let socket = TcpSocket::new_v4().map_err(tcp)?;
    socket
        .bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))
        .map_err(tcp)?;
    let stream = socket.connect(to).await.map_err(tcp)?;
    stream.set_nodelay(true).map_err(tcp)?;
    Ok(stream)
}

/// `43{id}[reply]` → the ack.
fn parse_ack(packet: &str) -> Option<Ack> {
    let rest = packet.strip_prefix("43")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = rest[..digits].parse().ok()?;
    let args: Value = serde_json::from_str(&rest[digits..]).ok()?;
    let reply = args.get(0).cloned().unwrap_or(Value::Null);
    Some(Ack { id, reply })
}

/// The bytes a server-to-client websocket frame of `payload` bytes takes on the wire.
fn ws_frame_len(payload: usize) -> usize {
    payload
        + match payload {
            0..=125 => 2,
            126..=65_535 => 4,
            _ => 10,
        }
}

/// At most 200 bytes of `s`, for error messages.
fn clip(s: &str) -> &str {
    let mut end = s.len().min(200);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_acks() {
        let ack = parse_ack(r#"4312[{"ok":true,"id":"x"}]"#).expect("an ack");
        assert_eq!(ack.id, 12);
        assert_eq!(ack.reply["ok"], true);
        assert!(parse_ack(r#"42["qa:new",{}]"#).is_none());
    }

    #[test]
    fn frame_header_sizes() {
        assert_eq!(ws_frame_len(100), 102);
        assert_eq!(ws_frame_len(400), 404);
    }
}

//! The lean WebSocket transport (a client that opens with `transport=websocket`), driven by
//! real clients over real sockets: which transport serves which client, the heartbeat (the
//! same values socketioxide advertises; a silent client is closed), garbage frames (the socket
//! closes with the RFC's status, nobody else notices), a slow consumer cut off and resuming by
//! token without loss or duplicates, attendance counting the sockets of both transports, the
//! shutdown notice, and the cap of 16 commands in flight per socket. The whole class, acks,
//! bad input, the rate limit, oversized payloads and token expiry run over this transport in
//! `socketio_rust`, `socketio_js`, `bad_input` and `auth_http` (their WebSocket cases open
//! with `transport=websocket`).
//!
//! [`RawWs`] is a WebSocket client written for these tests from RFC 6455, so that a test can
//! send frames no library would (unmasked, reserved bits, lying lengths) and stop reading at
//! will.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use lectern_testkit::{Client, Transport};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::{Demo, ack_code, claims, unix_now_s, within};

/// How long a raw client waits for one frame.
const FRAME_WAIT: Duration = Duration::from_secs(10);

/// A WebSocket client from RFC 6455, over a plain socket.
struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A frame the server sent.
#[derive(Debug)]
enum Frame {
    Text(String),
    Close(Option<u16>),
    Pong(Vec<u8>),
    Other,
}

impl RawWs {
    /// Opens `/socket.io/?EIO=4&transport=websocket` (with `extra` query pairs) and reads the
    /// Engine.IO open packet; `recv_buf` sets the socket's receive buffer first.
    async fn open(
        addr: SocketAddr,
        extra: &str,
        recv_buf: Option<u32>,
    ) -> anyhow::Result<(RawWs, Value)> {
        let mut ws = Self::handshake(addr, extra, recv_buf).await?;
        let open = ws.text().await?;
        let open: Value = serde_json::from_str(open.strip_prefix('0').context("open packet")?)?;
        Ok((ws, open))
    }

    /// The WebSocket handshake only.
    async fn handshake(
        addr: SocketAddr,
        extra: &str,
        recv_buf: Option<u32>,
    ) -> anyhow::Result<RawWs> {
        let socket = TcpSocket::new_v4()?;
        if let Some(n) = recv_buf {
            socket.set_recv_buffer_size(n)?;
        }
        let stream = socket.connect(addr).await.context("connect")?;
        let mut ws = RawWs {
            stream,
            buf: Vec::new(),
        };
        // The key and accept value of RFC 6455's own example.
        let request = format!(
            "GET /socket.io/?EIO=4&transport=websocket{extra} HTTP/1.1\r\nhost: {addr}\r\n\
             upgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-version: 13\r\n\
             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        ws.stream.write_all(request.as_bytes()).await?;
        let head = loop {
            if let Some(end) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&ws.buf[..end]).into_owned();
                ws.buf.drain(..end + 4);
                break head;
            }
            ensure!(ws.fill().await? > 0, "closed during the handshake");
        };
        ensure!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
        ensure!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "wrong accept key: {head}"
        );
        Ok(ws)
    }

    async fn fill(&mut self) -> anyhow::Result<usize> {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(FRAME_WAIT, self.stream.read(&mut chunk))
            .await
            .context("nothing from the server")??;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The next frame; `None` at the end of the stream.
    async fn frame(&mut self) -> anyhow::Result<Option<Frame>> {
        loop {
            if let Some((frame, n)) = parse_server_frame(&self.buf)? {
                self.buf.drain(..n);
                return Ok(Some(frame));
            }
            match self.fill().await {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                // A reset after the server closed is the end too.
                Err(e) if is_reset(&e) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// The next text frame, answering Engine.IO pings on the way.
    async fn text(&mut self) -> anyhow::Result<String> {
        loop {
            match self.frame().await?.context("closed")? {
                Frame::Text(t) if t == "2" => self.send_text("3").await?,
                Frame::Text(t) => return Ok(t),
                Frame::Close(code) => bail!("closed by the server ({code:?})"),
                _ => {}
            }
        }
    }

    /// Connects namespace `/` with `token`; the connect reply.
    async fn connect(&mut self, token: &str) -> anyhow::Result<String> {
        self.send_text(&format!("40{}", json!({ "token": token })))
            .await?;
        loop {
            let t = self.text().await?;
            if t.starts_with("40") || t.starts_with("44") {
                return Ok(t);
            }
        }
    }

    /// Sends a masked frame.
    async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) -> anyhow::Result<()> {
        self.send_raw(&masked(fin, opcode, payload)).await
    }

    async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.send_frame(true, 1, text.as_bytes()).await
    }

    async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Reads until the server closes; the close frame's status, if it sent one.
    async fn until_closed(&mut self) -> anyhow::Result<Option<u16>> {
        loop {
            match self.frame().await? {
                None => return Ok(None),
                Some(Frame::Close(code)) => return Ok(code),
                Some(Frame::Text(t)) if t == "2" => {}
                Some(_) => {}
            }
        }
    }
}

fn is_reset(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset)
}

/// A client frame: masked with a fixed key.
fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut out = vec![u8::from(fin) << 7 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Parses one server frame (unmasked, unfragmented: the server sends no other kind).
fn parse_server_frame(buf: &[u8]) -> anyhow::Result<Option<(Frame, usize)>> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    ensure!(b1 & 0x80 == 0, "a server frame was masked");
    ensure!(b0 & 0x80 != 0, "a server frame was fragmented");
    let (len, at) = match b1 & 0x7F {
        126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&buf[2..10]);
            (usize::try_from(u64::from_be_bytes(n))?, 10)
        }
        126 | 127 => return Ok(None),
        n => (usize::from(n), 2),
    };
    let Some(payload) = buf.get(at..at + len) else {
        return Ok(None);
    };
    let frame = match b0 & 0x0F {
        1 => Frame::Text(String::from_utf8(payload.to_vec()).context("text frame not UTF-8")?),
        8 => Frame::Close(payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]))),
        0xA => Frame::Pong(payload.to_vec()),
        _ => Frame::Other,
    };
    Ok(Some((frame, at + len)))
}

/// A `/metrics` sample by its full name and labels.
async fn metric(demo: &Demo, series: &str) -> anyhow::Result<u64> {
    let m = demo.http.get("/metrics", None).await?.text();
    let prefix = format!("{series} ");
    Ok(m.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0))
}

/// Waits (yielding, up to 10 s) until `cond` holds.
async fn until(
    what: &str,
    mut cond: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond().await? {
        ensure!(
            std::time::Instant::now() < deadline,
            "{what}: not within 10 s"
        );
        tokio::task::yield_now().await;
    }
    Ok(())
}

async fn connections(demo: &Demo, transport: &str) -> anyhow::Result<u64> {
    metric(
        demo,
        &format!("lectern_connections{{transport=\"{transport}\"}}"),
    )
    .await
}

/// Sends `chat:send` with an ack and checks the reply.
async fn chat_ok(c: &mut Client, session: &str, text: &str) -> anyhow::Result<()> {
    let ack = c
        .call("chat:send", vec![json!(session), json!(text)])
        .await?;
    ensure!(ack["ok"] == true, "chat:send: {ack}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_websockets_are_lean_and_polling_and_upgrades_stay_on_socketioxide()
-> anyhow::Result<()> {
    within(async {
        let demo = Demo::start("lean-routing").await?;
        let token = demo.token("student1", "student");
        let ws = demo.sio(Transport::WebSocket, &token, "ws").await?;
        assert_eq!(connections(&demo, "websocket").await?, 1);
        assert_eq!(connections(&demo, "socketio").await?, 0);
        let polling = demo.sio(Transport::Polling, &token, "polling").await?;
        assert_eq!(connections(&demo, "socketio").await?, 1);
        assert_eq!(connections(&demo, "websocket").await?, 1);

        // An upgrade of a polling session (it carries a `sid`) is socketioxide's: it answers
        // the probe, where the lean transport would send a fresh open packet.
        let opened = demo
            .http
            .get("/socket.io/?EIO=4&transport=polling", None)
            .await?;
        let text = opened.text();
        let open: Value =
            serde_json::from_str(text.strip_prefix('0').context("polling open packet")?)?;
        let sid = open["sid"].as_str().context("sid")?;
        let mut up = RawWs::handshake(demo.node.http_addr, &format!("&sid={sid}"), None).await?;
        up.send_text("2probe").await?;
        assert_eq!(
            up.text().await?,
            "3probe",
            "the upgrade was not socketioxide's"
        );
        up.send_text("5").await?;

        ws.disconnect().await;
        polling.disconnect().await;
        demo.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_matches_socketioxide_and_a_silent_client_is_closed() -> anyhow::Result<()> {
    within(async {
        let demo = Demo::start_with("lean-heartbeat", |c| {
            // Short pings, and a pong deadline that a loaded machine's stalls (the HTTP
            // requests below, a starved task) stay well inside.
            c.limits.ping_interval_ms = 200;
            c.limits.ping_timeout_ms = 2_000;
        })
        .await?;
        let addr = demo.node.http_addr;
        let (mut ws, open) = RawWs::open(addr, "", None).await?;
        // The same values as socketioxide's open packet (polling), upgrades aside.
        let polling = demo
            .http
            .get("/socket.io/?EIO=4&transport=polling", None)
            .await?
            .text();
        let polling: Value =
            serde_json::from_str(polling.strip_prefix('0').context("polling open packet")?)?;
        for field in ["pingInterval", "pingTimeout", "maxPayload"] {
            assert_eq!(open[field], polling[field], "{field}: {open} vs {polling}");
        }
        assert_eq!(open["pingInterval"], 200);
        assert_eq!(open["pingTimeout"], 2_000);
        assert_eq!(open["upgrades"], json!([]));
        assert_eq!(open["sid"].as_str().map(str::len), Some(16), "{open}");

        let reply = ws.connect(&demo.token("student1", "student")).await?;
        assert!(connect_reply_has_sid_and_pid(&reply), "{reply}");
        ws.send_text(&format!("420{}", json!(["session:join", demo.session])))
            .await?;
        // Three pings, each answered: the socket stays.
        let mut pings = 0;
        while pings < 3 {
            match ws.frame().await?.context("closed while answering pings")? {
                Frame::Text(t) if t == "2" => {
                    pings += 1;
                    ws.send_text("3").await?;
                }
                Frame::Close(code) => bail!("closed while answering pings ({code:?})"),
                _ => {}
            }
        }
        assert_eq!(connections(&demo, "websocket").await?, 1);
        // Then silence: the next ping goes unanswered and the server closes the socket.
        let started = std::time::Instant::now();
        let code = ws.until_closed().await?;
        assert_eq!(code, Some(1001), "closed with {code:?}");
        // Well before anything else could close it (the connect deadline is 45 s, the
        // token's an hour).
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "closed only after {:?}",
            started.elapsed()
        );
        // Its presence left with it, and others are served.
        let mut c = demo
            .sio(
                Transport::WebSocket,
                &demo.token("student2", "student"),
                "after",
            )
            .await?;
        let ack = c.call("session:join", vec![json!(demo.session)]).await?;
        assert_eq!(ack["ok"], true, "{ack}");
        let e = c
            .wait_for("attendance without the silent client", |e| {
                e.name == "attendance:update" && e.data()["present"] == 1
            })
            .await?;
        assert_eq!(e.data()["session"], demo.session.as_str());
        c.disconnect().await;
        demo.stop().await
    })
    .await
}

/// What a connection does after a bad frame: closed with this status, or served on.
#[derive(Debug, Clone, Copy, PartialEq)]
enum After {
    Closed(u16),
    Served,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_close_only_their_socket_with_the_rfc_status() -> anyhow::Result<()> {
    within(async {
        let demo = Demo::start_with("lean-garbage", |c| c.limits.command_burst = 1000).await?;
        let s = demo.session.clone();
        let addr = demo.node.http_addr;
        let mut good = demo
            .sio(
                Transport::WebSocket,
                &demo.token("student2", "student"),
                "good",
            )
            .await?;
        let chat = |text: &str| format!("421{}", json!(["chat:send", s, text]));
        let mut bad_utf8 = masked(true, 1, b"42[\"x\"]");
        bad_utf8.truncate(bad_utf8.len() - 2);
        bad_utf8.extend_from_slice(&[0xC3 ^ 0x78, 0x28 ^ 0x12]);
        let mut huge_len = vec![0x81, 0x80 | 127];
        huge_len.extend_from_slice(&(1u64 << 62).to_be_bytes());
        huge_len.extend_from_slice(&[0, 0, 0, 0]);
        let mut over_limit = vec![0x81, 0x80 | 127];
        over_limit.extend_from_slice(&(20u64 * 1024).to_be_bytes());
        let cases: Vec<(&str, Vec<u8>, After)> = vec![
            (
                "unmasked",
                vec![0x81, 0x02, b'4', b'2'],
                After::Closed(1002),
            ),
            (
                "reserved bits",
                {
                    let mut f = masked(true, 1, b"3");
                    f[0] |= 0x40;
                    f
                },
                After::Closed(1002),
            ),
            ("unknown opcode", masked(true, 3, b"x"), After::Closed(1002)),
            (
                "fragmented ping",
                masked(false, 9, b"p"),
                After::Closed(1002),
            ),
            (
                "long control frame",
                masked(true, 9, &[b'p'; 126]),
                After::Closed(1002),
            ),
            (
                "continuation of nothing",
                masked(true, 0, b"x"),
                After::Closed(1002),
            ),
            ("text not UTF-8", bad_utf8, After::Closed(1007)),
            ("a 2^62-byte length", huge_len, After::Closed(1009)),
            ("over the payload limit", over_limit, After::Closed(1009)),
            // Valid WebSocket, invalid Engine.IO or Socket.IO: closed at once as a protocol
            // error (Engine.IO v4 / Socket.IO v5 close on a parse error).
            (
                "binary with no binary packet",
                masked(true, 2, b"\x00\x01"),
                After::Closed(1002),
            ),
            (
                "not JSON",
                masked(true, 1, b"42[not json"),
                After::Closed(1002),
            ),
            (
                "not an array",
                masked(true, 1, b"42{\"a\":1}"),
                After::Closed(1002),
            ),
            (
                "an empty event",
                masked(true, 1, b"42[]"),
                After::Closed(1002),
            ),
            (
                "a nameless event",
                masked(true, 1, b"42[12]"),
                After::Closed(1002),
            ),
            (
                "not an engine packet",
                masked(true, 1, b"x"),
                After::Closed(1002),
            ),
            (
                "an unknown packet type",
                masked(true, 1, b"49[\"x\"]"),
                After::Closed(1002),
            ),
            ("empty text", masked(true, 1, b""), After::Closed(1002)),
            ("a client ping", masked(true, 1, b"2probe"), After::Served),
            ("a noop", masked(true, 1, b"6"), After::Served),
        ];
        for (what, bytes, want) in cases {
            let (mut ws, _) = RawWs::open(addr, "", None).await?;
            ws.connect(&demo.token("student1", "student")).await?;
            ws.send_raw(&bytes).await.with_context(|| what.to_owned())?;
            ws.send_text(&chat(what)).await.ok();
            let got = loop {
                match ws.frame().await.with_context(|| what.to_owned())? {
                    None => bail!("{what}: the socket ended without a close frame"),
                    Some(Frame::Close(code)) => break After::Closed(code.unwrap_or(0)),
                    Some(Frame::Text(t)) if t.starts_with("431") => {
                        assert!(t.contains("\"ok\":true"), "{what}: {t}");
                        break After::Served;
                    }
                    Some(_) => {}
                }
            };
            assert_eq!(got, want, "{what}");
            chat_ok(&mut good, &s, what).await?;
        }

        // A frame split across writes, and a message in fragments, are put back together.
        let (mut ws, _) = RawWs::open(addr, "", None).await?;
        ws.connect(&demo.token("student1", "student")).await?;
        let whole = masked(true, 1, chat("in pieces").as_bytes());
        for piece in whole.chunks(3) {
            ws.send_raw(piece).await?;
            ws.stream.flush().await?;
        }
        let reply = ws.text().await?;
        assert!(
            reply.starts_with("431[") && reply.contains("\"ok\":true"),
            "{reply}"
        );
        let text = chat("fragments");
        let (a, b) = text.as_bytes().split_at(7);
        ws.send_frame(false, 1, a).await?;
        ws.send_frame(true, 9, b"ping!").await?;
        ws.send_frame(true, 0, b).await?;
        let mut pong = None;
        let reply = loop {
            match ws.frame().await?.context("closed")? {
                Frame::Pong(p) => pong = Some(p),
                Frame::Text(t) if t.starts_with("431") => break t,
                _ => {}
            }
        };
        assert!(reply.contains("\"ok\":true"), "{reply}");
        assert_eq!(
            pong.as_deref(),
            Some(&b"ping!"[..]),
            "a ping between fragments"
        );
        drop(ws);

        // Random bytes, seeded (the seed is printed to replay a failure).
        let seed: u64 = rand::random();
        println!("garbage seed: {seed}");
        let mut x = seed | 1;
        for round in 0..20 {
            let (mut ws, _) = RawWs::open(addr, "", None).await?;
            ws.connect(&demo.token("student1", "student")).await?;
            let junk: Vec<u8> = (0..64 + round * 16)
                .map(|_| {
                    // xorshift64
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            ws.send_raw(&junk).await.ok();
            drop(ws);
            chat_ok(&mut good, &s, &format!("after junk {round} (seed {seed})")).await?;
        }
        // Every junk socket's task ended cleanly (a panic would skip its accounting): only
        // `good` is left.
        until("the junk sockets closed", async || {
            Ok(connections(&demo, "websocket").await? == 1)
        })
        .await?;
        good.disconnect().await;
        demo.stop().await
    })
    .await
}

/// Waits for the server to close `ws`; its close status and how long it took.
async fn closed_within(ws: &mut RawWs, what: &str) -> anyhow::Result<(Option<u16>, Duration)> {
    let started = std::time::Instant::now();
    let code = ws.until_closed().await.with_context(|| what.to_owned())?;
    Ok((code, started.elapsed()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_rules_close_at_once_and_a_namespace_disconnect_keeps_the_connection()
-> anyhow::Result<()> {
    within(async {
        // The default heartbeat (25 s + 20 s): anything that closes within a few seconds was
        // closed by the rule under test, not by a missed pong.
        let demo = Demo::start_with("lean-rules", |c| {
            c.limits.connect_timeout_ms = 1_000;
            c.limits.command_burst = 1000;
        })
        .await?;
        let s = demo.session.clone();
        let addr = demo.node.http_addr;
        let token = demo.token("student1", "student");
        let chat = |id: u64, text: &str| format!("42{id}{}", json!(["chat:send", s, text]));
        let prompt = Duration::from_secs(5);

        // A Socket.IO event before CONNECT closes at once.
        let (mut ws, _) = RawWs::open(addr, "", None).await?;
        ws.send_text(&chat(1, "too early")).await?;
        let (code, took) = closed_within(&mut ws, "an event before CONNECT").await?;
        assert_eq!(code, Some(1002), "an event before CONNECT");
        assert!(
            took < prompt,
            "an event before CONNECT closed only after {took:?}"
        );

        // No CONNECT within connect_timeout_ms (1 s here) closes, even while pings flow.
        let (mut ws, _) = RawWs::open(addr, "", None).await?;
        let (code, took) = closed_within(&mut ws, "no CONNECT").await?;
        assert_eq!(code, Some(1008), "no CONNECT");
        assert!(took < prompt, "no CONNECT closed only after {took:?}");
        // A connected socket outlives that deadline.
        let (mut ws, _) = RawWs::open(addr, "", None).await?;
        ws.connect(&token).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1_500);
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout_at(deadline, ws.frame()).await {
                Err(_) => break,
                Ok(frame) => {
                    if let Some(Frame::Close(code)) = frame? {
                        bail!("a connected socket was closed ({code:?})");
                    }
                }
            }
        }
        ws.send_text(&chat(1, "after the connect deadline")).await?;
        let reply = ws.text().await?;
        assert!(
            reply.starts_with("431[") && reply.contains("\"ok\":true"),
            "{reply}"
        );

        // A binary event with an ack id is refused with `unsupported`; its attachment is
        // skipped and the socket served on.
        ws.send_text(&format!(
            "451-7{}",
            json!(["chat:send", s, {"_placeholder": true, "num": 0}])
        ))
        .await?;
        ws.send_frame(true, 2, b"\x01\x02").await?;
        let reply = ws.text().await?;
        let ack: Value = serde_json::from_str(reply.strip_prefix("437").context("ack 7")?)?;
        assert_eq!(ack_code(&ack[0]), "unsupported", "{reply}");
        ws.send_text(&chat(1, "after a binary event")).await?;
        let reply = ws.text().await?;
        assert!(
            reply.starts_with("431[") && reply.contains("\"ok\":true"),
            "{reply}"
        );

        // `41` leaves the namespace and its sessions, and keeps the Engine.IO connection: the
        // user leaves presence, and the same connection CONNECTs again and is served.
        let mut watcher = demo
            .sio(
                Transport::WebSocket,
                &demo.token("student2", "student"),
                "watcher",
            )
            .await?;
        let ack = watcher.call("session:join", vec![json!(s)]).await?;
        assert_eq!(ack["ok"], true, "{ack}");
        ws.send_text(&format!("422{}", json!(["session:join", s])))
            .await?;
        loop {
            let t = ws.text().await?;
            if t.starts_with("432[") {
                assert!(t.contains("\"ok\":true"), "{t}");
                break;
            }
        }
        watcher
            .wait_for("two present", |e| {
                e.name == "attendance:update" && e.data()["present"] == 2
            })
            .await?;
        ws.send_text("41").await?;
        // CONNECTs again at once (the connect deadline, 1 s here, restarts at `41`).
        let reply = ws.connect(&token).await?;
        assert!(connect_reply_has_sid_and_pid(&reply), "{reply}");
        watcher
            .wait_for("one present after 41", |e| {
                e.name == "attendance:update" && e.data()["present"] == 1
            })
            .await?;
        ws.send_text(&chat(3, "after 41 and a new CONNECT")).await?;
        loop {
            let t = ws.text().await?;
            if t.starts_with("433[") {
                assert!(t.contains("\"ok\":true"), "{t}");
                break;
            }
        }
        watcher.disconnect().await;
        demo.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_ping_comes_one_interval_after_the_handshake() -> anyhow::Result<()> {
    within(async {
        let demo = Demo::start_with("lean-first-ping", |c| {
            c.limits.ping_interval_ms = 1_500;
            c.limits.ping_timeout_ms = 5_000;
        })
        .await?;
        let started = std::time::Instant::now();
        let (mut ws, _) = RawWs::open(demo.node.http_addr, "", None).await?;
        ws.connect(&demo.token("student1", "student")).await?;
        loop {
            match ws.frame().await?.context("closed before the first ping")? {
                Frame::Text(t) if t == "2" => break,
                Frame::Close(code) => bail!("closed before the first ping ({code:?})"),
                _ => {}
            }
        }
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1_400),
            "the first ping came {took:?} after the handshake, before the 1.5 s interval"
        );
        demo.stop().await
    })
    .await
}

/// This process's resident set (the node runs in it), in bytes.
fn rss_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("VmRSS in /proc/self/status")?;
    Ok(kib * 1024)
}

/// Bytes of pings a flooding client sends at most.
const FLOOD_BYTES: usize = 64 << 20;
/// How much the process may grow while it does (the pongs it would queue without a bound take
/// ≈ 9× the pings' bytes).
const FLOOD_RSS_GROWTH_MAX: u64 = 128 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_pings_and_never_reads_is_bounded_and_closed() -> anyhow::Result<()> {
    within(async {
        let demo = Demo::start("lean-ping-flood").await?;
        let addr = demo.node.http_addr;
        // Never authenticated, never reading, with a small receive buffer.
        let (mut ws, _) = RawWs::open(addr, "", Some(4096)).await?;
        let chunk = masked(true, 1, b"2").repeat(64 * 1024 / 7);
        let before = rss_bytes()?;
        let (mut sent, mut peak) = (0, before);
        let closed = loop {
            if sent >= FLOOD_BYTES {
                break false;
            }
            match tokio::time::timeout(Duration::from_secs(20), ws.stream.write_all(&chunk)).await {
                Ok(Ok(())) => {
                    sent += chunk.len();
                    peak = peak.max(rss_bytes()?);
                }
                // The server closed the socket: the write is refused.
                Ok(Err(_)) => break true,
                Err(_) => bail!("the server stopped reading but kept the socket for 20 s"),
            }
        };
        let grew = peak.saturating_sub(before);
        println!("ping flood: {sent} bytes sent, RSS grew {grew} bytes, closed: {closed}");
        assert!(
            closed,
            "the server took {sent} bytes of pings and kept the socket"
        );
        assert!(
            grew < FLOOD_RSS_GROWTH_MAX,
            "RSS grew {grew} bytes under {sent} bytes of pings"
        );
        // Others are served, and the flooder's socket is gone from /metrics' count.
        let mut c = demo
            .sio(
                Transport::WebSocket,
                &demo.token("student2", "student"),
                "after",
            )
            .await?;
        chat_ok(&mut c, &demo.session, "after a ping flood").await?;
        c.disconnect().await;
        demo.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_valid_until_the_end_of_time_is_refused_and_the_longest_allowed_is_served()
-> anyhow::Result<()> {
    within(async {
        let demo = Demo::start("lean-endless-token").await?;
        let s = demo.session.clone();
        // Validly signed, expiring at the end of u64 time: refused as living too long.
        // Kills: no lifetime cap in `Verifier::verify`.
        let forever = demo.mint(&claims(
            "student1",
            "student",
            &[lectern_node::DEMO_COHORT],
            u64::MAX,
        ));
        let refused = demo
            .http
            .get(&format!("/api/sessions/{s}"), Some(&forever))
            .await?;
        assert_eq!(refused.status, 401, "{}", refused.text());
        assert_eq!(refused.error_code().as_deref(), Some("token_too_long"));
        // The longest lifetime allowed: its expiry deadline is served on every transport and
        // every connection is counted closed.
        let endless = demo.mint(&claims(
            "student1",
            "student",
            &[lectern_node::DEMO_COHORT],
            unix_now_s() + lectern_gateway::auth::TOKEN_LIFETIME_MAX_S,
        ));
        for transport in Transport::ALL {
            let mut c = demo.sio(transport, &endless, transport.name()).await?;
            let ack = c.call("session:join", vec![json!(s)]).await?;
            assert_eq!(ack["ok"], true, "{}: {ack}", transport.name());
            chat_ok(&mut c, &s, transport.name()).await?;
            c.disconnect().await;
        }
        let stream = demo
            .http
            .sse(
                &format!("/api/stream/sessions/{s}"),
                &[("authorization", &format!("Bearer {endless}"))],
            )
            .await?;
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(r) => bail!("SSE refused: {} {}", r.status, r.text()),
        };
        let first = stream.next_event(Duration::from_secs(10)).await?;
        assert_eq!(first.event, "state", "{first:?}");
        drop(stream);
        // Every connection was counted closed (a panicking connection task would leave its
        // count), and others are served.
        for label in ["websocket", "socketio", "sse"] {
            until(&format!("{label} connections back to 0"), async || {
                Ok(connections(&demo, label).await? == 0)
            })
            .await?;
        }
        let mut c = demo
            .sio(
                Transport::WebSocket,
                &demo.token("student2", "student"),
                "after",
            )
            .await?;
        chat_ok(&mut c, &s, "after an endless token").await?;
        c.disconnect().await;
        demo.stop().await
    })
    .await
}

/// `(token, event name)` of each event frame (`42[name, payload, {token}]`) in `frames`.
fn tokens_of(texts: &[String]) -> Vec<(String, String)> {
    texts
        .iter()
        .filter_map(|t| {
            let v: Value = serde_json::from_str(t.strip_prefix("42")?).ok()?;
            let token = v.get(2)?["token"].as_str()?.to_owned();
            Some((token, v[0].as_str()?.to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_cut_off_and_resumes_by_token_without_loss_or_duplicates()
-> anyhow::Result<()> {
    within(async {
        let demo = Demo::start_with("lean-slow", |c| {
            c.limits.outbound_queue_max = 4;
            c.limits.command_burst = 100_000;
            c.limits.commands_per_s = 100_000.0;
        })
        .await?;
        let s = demo.session.clone();
        let inst = demo.token("ada", "instructor");
        // The witness sees every event, in order.
        let mut witness = demo.sio(Transport::WebSocket, &inst, "witness").await?;
        let start = witness.call("session:join", vec![json!(s)]).await?;
        let start = start["token"].as_str().context("join token")?.to_owned();

        // The slow consumer: a small receive buffer, joined, then it stops reading.
        let student = demo.token("student1", "student");
        let (mut slow, _) = RawWs::open(demo.node.http_addr, "", Some(4096)).await?;
        slow.connect(&student).await?;
        slow.send_text(&format!("420{}", json!(["session:join", s])))
            .await?;
        let joined = loop {
            let t = slow.text().await?;
            if let Some(ack) = t.strip_prefix("430") {
                break ack.to_owned();
            }
        };
        let joined: Value = serde_json::from_str(&joined)?;
        let since = joined[0]["token"]
            .as_str()
            .context("slow join token")?
            .to_owned();

        // Chat until the node cuts it off (its kernel buffers fill first).
        let text = "x".repeat(900);
        let mut acked = Vec::new();
        while metric(&demo, "lectern_rejections_total{code=\"slow_consumer\"}").await? == 0 {
            ensure!(
                acked.len() < 5_000,
                "still not cut off after {} messages",
                acked.len()
            );
            let batch = (0..25).map(|_| demo.command(&inst, "chat.send", json!({"text": text})));
            for r in futures_util::future::join_all(batch).await {
                let r = r?;
                ensure!(r.status == 200, "chat: {} {}", r.status, r.text());
                let token = r.json()?["token"].as_str().context("ack token")?.to_owned();
                acked.push(token);
            }
        }

        // Now it reads what reached it: events, then the reason, then the close.
        let mut texts = Vec::new();
        let reason = loop {
            match slow.frame().await?.context("ended without server:error")? {
                Frame::Text(t) if t.starts_with("42[\"server:error\"") => break t,
                Frame::Text(t) => texts.push(t),
                Frame::Close(code) => bail!("closed ({code:?}) without server:error"),
                _ => {}
            }
        };
        assert!(reason.contains("\"code\":\"slow_consumer\""), "{reason}");
        assert_eq!(slow.until_closed().await?, Some(1000));
        let live = tokens_of(&texts);
        let last = live.last().map_or(since.clone(), |(t, _)| t.clone());

        // It resumes from its last token on a new connection.
        let mut again = demo.sio(Transport::WebSocket, &student, "again").await?;
        let rejoin = again
            .call("session:join", vec![json!(s), json!(last)])
            .await?;
        assert_eq!(rejoin["ok"], true, "{rejoin}");
        let replay: Vec<(String, String)> = rejoin["events"]
            .as_array()
            .with_context(|| format!("a resume replays: {rejoin}"))?
            .iter()
            .filter_map(|e| {
                Some((
                    e["token"].as_str()?.to_owned(),
                    e["event"].as_str()?.to_owned(),
                ))
            })
            .collect();

        // Live + replay = exactly what the witness saw after the slow client joined (every
        // message, all acknowledged before the cut-off was noticed): nothing lost, nothing
        // twice.
        for token in &acked {
            let t = token.clone();
            witness
                .wait_for("every acknowledged message", move |e| {
                    e.token() == Some(t.as_str())
                })
                .await?;
        }
        let seen: Vec<(String, String)> = witness
            .seen()
            .iter()
            .filter_map(|e| Some((e.token()?.to_owned(), e.name.clone())))
            .collect();
        let from = seen
            .iter()
            .position(|(t, _)| *t == since)
            .map_or(0, |p| p + 1);
        let mut got = live.clone();
        got.extend(replay);
        assert_eq!(got, seen[from..].to_vec(), "live {} + replay", live.len());
        assert_eq!(got.len(), acked.len(), "one event per message");
        assert!(!live.is_empty(), "the slow client got some events live");
        assert_ne!(since, start, "the slow client joined after the witness");
        again.disconnect().await;
        witness.disconnect().await;
        demo.stop().await
    })
    .await
}

/// Kills: `presence_leave` removing the user on any socket's leave, not only the last one
/// (`if last` → `if true` around `sp.users.remove`): the update after a's leave then never says 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attendance_counts_the_sockets_of_both_transports() -> anyhow::Result<()> {
    within(async {
        let demo = Demo::start("lean-attendance").await?;
        let s = demo.session.clone();
        let present = |n: u64| {
            move |e: &lectern_testkit::ServerEvent| {
                e.name == "attendance:update" && e.data()["present"] == n
            }
        };
        let mut inst = demo
            .sio(
                Transport::WebSocket,
                &demo.token("ada", "instructor"),
                "inst",
            )
            .await?;
        let mut a = demo
            .sio(
                Transport::WebSocket,
                &demo.token("student1", "student"),
                "a",
            )
            .await?;
        let mut b = demo
            .sio(Transport::Polling, &demo.token("student2", "student"), "b")
            .await?;
        for c in [&mut inst, &mut a, &mut b] {
            let ack = c.call("session:join", vec![json!(s)]).await?;
            assert_eq!(ack["ok"], true, "{ack}");
        }
        // Everyone, on either transport, hears that three are present.
        inst.wait_for("3 present (lean)", present(3)).await?;
        a.wait_for("3 present (lean)", present(3)).await?;
        b.wait_for("3 present (socketioxide)", present(3)).await?;
        // A second socket of a present user, on the other transport, is still one person.
        let mut a2 = demo
            .sio(Transport::Polling, &demo.token("student1", "student"), "a2")
            .await?;
        let ack = a2.call("session:join", vec![json!(s)]).await?;
        assert_eq!(ack["ok"], true, "{ack}");
        a2.wait_for("still 3 present", present(3)).await?;
        // Leaving on either transport counts (an earlier update may also have said 2, while
        // the joins came in: only one after the leave counts).
        let at = inst.cursor();
        b.disconnect().await;
        inst.wait_after(at, "2 present", present(2)).await?;
        // One of student1's two sockets leaving keeps student1 present. An update that says so
        // must come after the leave (older ones already said 2), so a third student joins once
        // the leave is through: the next update counts ada, student1 and student3.
        let before_leave = a2.cursor();
        a.disconnect().await;
        until("a's lean socket closed", async || {
            Ok(connections(&demo, "websocket").await? == 1)
        })
        .await?;
        let mut c = demo
            .sio(Transport::Polling, &demo.token("student3", "student"), "c")
            .await?;
        let ack = c.call("session:join", vec![json!(s)]).await?;
        assert_eq!(ack["ok"], true, "{ack}");
        a2.wait_after(
            before_leave,
            "3 present after a left: a2 kept student1",
            present(3),
        )
        .await?;
        let at = inst.cursor();
        c.disconnect().await;
        inst.wait_after(at, "2 present", present(2)).await?;
        let at = inst.cursor();
        let ack = a2.call("session:leave", vec![json!(s)]).await?;
        assert_eq!(ack, json!({"ok": true, "left": true}));
        inst.wait_after(at, "1 present", present(1)).await?;
        let bad = inst.call("session:leave", vec![json!(42)]).await?;
        assert_eq!(ack_code(&bad), "bad_request");
        a2.disconnect().await;
        inst.disconnect().await;
        demo.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_tells_lean_sockets_to_reconnect_elsewhere() -> anyhow::Result<()> {
    within(async {
        let demo = Demo::start("lean-shutdown").await?;
        let mut c = demo
            .sio(
                Transport::WebSocket,
                &demo.token("student1", "student"),
                "c",
            )
            .await?;
        let ack = c.call("session:join", vec![json!(demo.session)]).await?;
        assert_eq!(ack["ok"], true, "{ack}");
        let stop = tokio::spawn(demo.stop());
        let e = c
            .wait_for("server:shutdown", |e| e.name == "server:shutdown")
            .await?;
        assert_eq!(e.data()["code"], "shutting_down");
        assert_eq!(e.data()["reconnect"], true);
        c.closed(Duration::from_secs(10)).await?;
        stop.await.context("join the stop")?
    })
    .await
}

/// A commit hook that holds the next round before its fsync until the test releases it (a
/// slow disk), so every command of the node stays in flight meanwhile.
#[derive(Default)]
struct HoldCommits {
    next: std::sync::Mutex<
        Option<(
            tokio::sync::mpsc::UnboundedSender<()>,
            std::sync::mpsc::Receiver<()>,
        )>,
    >,
}

impl lectern_store::CommitHook for HoldCommits {
    fn before_fsync(&self) -> bool {
        let held = self.next.lock().ok().and_then(|mut h| h.take());
        if let Some((arrived, release)) = held {
            let _ = arrived.send(());
            // Blocks the commit thread until the test releases it (or drops the sender).
            let _ = release.recv();
        }
        true
    }
}

/// The lean socket runs at most 16 commands at once (`INFLIGHT_MAX` in `ws.rs`); past that it
/// reads and decodes nothing more until one finishes. With the store's commit held, 15 chat
/// commands and a WebSocket ping sent in one write get the pong (a 16th slot is free); a 16th
/// command, a ping and a 17th command in one write get nothing while the commit is held (the
/// 16th takes the last slot, so the ping and the 17th wait undecoded); once released, all 17
/// are acked once each, and the pong comes only after a command finished.
///
/// Kills: the cap removed (`has_slot` → `true`), off by one (`<` → `<=` in `has_slot`, or
/// `INFLIGHT_MAX` 16 → 17: the ping is answered while 16 are held; 16 → 15: the first ping is
/// not), `decode_all` not stopping at the cap (every frame of one read starts at once: the
/// ping is answered while held), and the frames left undecoded at the cap not resumed when a
/// slot frees (the pong and the 17th ack never come).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_runs_at_most_16_commands_at_once_and_acks_each_once() -> anyhow::Result<()> {
    /// How long the test looks for a pong or an ack that a correct build cannot send while the
    /// commit is held (the socket answers a ping within milliseconds when it reads it).
    const ABSENT_FOR: Duration = Duration::from_millis(1_500);
    within(async {
        let demo = Demo::start_with("lean-inflight", |c| c.limits.command_burst = 1000).await?;
        let s = demo.session.clone();
        let (mut ws, _) = RawWs::open(demo.node.http_addr, "", None).await?;
        ws.connect(&demo.token("student1", "student")).await?;
        let chat = |id: u64| {
            masked(
                true,
                1,
                format!("42{id}{}", json!(["chat:send", s, format!("held {id}")])).as_bytes(),
            )
        };

        let hold = std::sync::Arc::new(HoldCommits::default());
        let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        *hold.next.lock().map_err(|_| anyhow::anyhow!("hold lock"))? =
            Some((arrived_tx, release_rx));
        demo.node.hub.store().set_commit_hook(Some(hold.clone()));

        // 15 commands and a ping in one write: the socket still has a slot, so it reads on.
        let mut burst: Vec<u8> = (1..=15).flat_map(chat).collect();
        burst.extend(masked(true, 9, b"fifteen"));
        ws.send_raw(&burst).await?;
        tokio::time::timeout(FRAME_WAIT, arrived.recv())
            .await
            .context("no commit round reached the hold")?;
        loop {
            match ws.frame().await?.context("closed with 15 in flight")? {
                Frame::Pong(p) if p == b"fifteen" => break,
                Frame::Text(t) if t.starts_with("43") => {
                    bail!("acked while the commit is held: {t}")
                }
                Frame::Close(code) => bail!("closed with 15 in flight ({code:?})"),
                _ => {}
            }
        }

        // The 16th takes the last slot: the ping after it is not even decoded, nor is a 17th
        // command after that.
        let mut burst = chat(16);
        burst.extend(masked(true, 9, b"sixteen"));
        burst.extend(chat(17));
        ws.send_raw(&burst).await?;
        let deadline = tokio::time::Instant::now() + ABSENT_FOR;
        while let Ok(frame) = tokio::time::timeout_at(deadline, ws.frame()).await {
            match frame?.context("closed with 16 in flight")? {
                Frame::Pong(p) => bail!(
                    "a ping was answered with 16 commands in flight: {}",
                    String::from_utf8_lossy(&p)
                ),
                Frame::Text(t) if t.starts_with("43") => {
                    bail!("acked while the commit is held: {t}")
                }
                Frame::Close(code) => bail!("closed with 16 in flight ({code:?})"),
                _ => {}
            }
        }

        release.send(()).context("release the commit")?;
        let mut acks = std::collections::BTreeMap::new();
        let mut pong_after_acks = None;
        while acks.len() < 17 || pong_after_acks.is_none() {
            match ws.frame().await?.context("closed after the release")? {
                Frame::Pong(p) => {
                    ensure!(p == b"sixteen", "unexpected pong {p:?}");
                    ensure!(pong_after_acks.is_none(), "two pongs for one ping");
                    pong_after_acks = Some(acks.len());
                }
                Frame::Text(t) if t.starts_with("43") => {
                    let (id, reply) = t[2..].split_at(t[2..].find('[').context("ack args")?);
                    let id: u64 = id.parse().context("ack id")?;
                    let reply: Value = serde_json::from_str(reply)?;
                    ensure!(reply[0]["ok"] == true, "command {id}: {reply}");
                    ensure!(acks.insert(id, reply).is_none(), "command {id} acked twice");
                }
                Frame::Close(code) => bail!("closed after the release ({code:?})"),
                _ => {}
            }
        }
        assert_eq!(
            acks.keys().copied().collect::<Vec<_>>(),
            (1..=17).collect::<Vec<_>>()
        );
        assert!(
            pong_after_acks >= Some(1),
            "the ping was answered before any command finished"
        );
        demo.stop().await
    })
    .await
}

/// Whether a CONNECT reply is `40{sid, pid}` (the pid: Connection State Recovery).
fn connect_reply_has_sid_and_pid(reply: &str) -> bool {
    let Some(Ok(payload)) = reply
        .strip_prefix("40")
        .map(serde_json::from_str::<serde_json::Value>)
    else {
        return false;
    };
    payload["sid"].is_string() && payload["pid"].is_string()
}

//! Admission before authentication, against a real node over real sockets: connections that
//! have not authenticated are capped per client address and in all, a connection past a cap
//! gets its 503 (`address_busy`, `node_busy`) at once without being read, users already in
//! (and other addresses) keep being served, and a place is free again once its connection
//! authenticates or ends. A request body trickled past the body deadline gets 408
//! `body_timeout` at the deadline, however steadily it trickles.
//!
//! Client addresses: Linux routes all of 127.0.0.0/8 to loopback, so binding a client socket
//! to 127.0.0.2 … makes it a different address to the node.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context;
use lectern_testkit::Transport;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::{Demo, within};

/// A TCP connection to `node` from the loopback address `127.0.0.{from}`.
async fn connect_from(node: SocketAddr, from: u8) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::from([127, 0, 0, from]), 0))?;
    Ok(socket.connect(node).await?)
}

/// Everything the node sends on `stream` until it closes it (or `within` passes).
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> anyhow::Result<String> {
    let mut all = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut all))
        .await
        .context("the node did not answer and close in time")??;
    Ok(String::from_utf8_lossy(&all).into_owned())
}

/// Waits until the node counts `n` connections waiting to authenticate.
async fn waiting_becomes(demo: &Demo, n: usize) -> anyhow::Result<()> {
    let line = format!("lectern_preauth_connections {n}\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = demo.node.gateway.metrics_text();
        if text.contains(&line) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "waiting never became {n}:\n{}",
            text.lines()
                .filter(|l| l.starts_with("lectern_preauth"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A REST read of the session from `127.0.0.{from}` over a raw socket; its status line.
async fn rest_from(demo: &Demo, from: u8, token: &str) -> anyhow::Result<String> {
    let mut s = connect_from(demo.node.http_addr, from).await?;
    let request = format!(
        "GET /api/sessions/{} HTTP/1.1\r\nhost: lectern\r\nauthorization: Bearer {token}\r\n\
         connection: close\r\n\r\n",
        demo.session
    );
    s.write_all(request.as_bytes()).await?;
    let text = read_to_close(&mut s, Duration::from_secs(20)).await?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// Kills: no admission at all (the fourth idle socket of an address is served), a per-address
/// cap that counts every address as one (127.0.0.2 refused), a place not given up when a
/// lean WebSocket authenticates (the gauge stays at one) or when a connection ends (the
/// address stays busy), refusals not counted in `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_waiting_to_authenticate_are_capped_per_address_and_in_all()
-> anyhow::Result<()> {
    within(async {
        let demo = Demo::start_with("admission", |c| {
            c.limits.preauth_max = 5;
            c.limits.preauth_per_address_max = 3;
        })
        .await?;
        let addr = demo.node.http_addr;
        let student = demo.token("student1", "student");
        // A student already in, over the lean WebSocket: its place is given up at CONNECT.
        let mut inside = demo.sio(Transport::WebSocket, &student, "inside").await?;
        waiting_becomes(&demo, 0).await?;

        // Three idle sockets from 127.0.0.1 fill that address's share.
        let mut idle = Vec::new();
        for _ in 0..3 {
            idle.push(connect_from(addr, 1).await?);
        }
        waiting_becomes(&demo, 3).await?;
        let started = Instant::now();
        let mut fourth = connect_from(addr, 1).await?;
        let answer = read_to_close(&mut fourth, Duration::from_secs(5)).await?;
        assert!(
            answer.starts_with("HTTP/1.1 503") && answer.contains("\"address_busy\""),
            "{answer}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a refusal is immediate"
        );

        // Another address is still served, and the student inside is too.
        let status = rest_from(&demo, 2, &student).await?;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let ack = inside
            .call(
                "chat:send",
                vec![json!(demo.session), json!("still here under a flood")],
            )
            .await?;
        assert_eq!(ack["ok"], true, "{ack}");

        // Two more from other addresses reach the node's cap: a sixth address is refused.
        idle.push(connect_from(addr, 3).await?);
        idle.push(connect_from(addr, 4).await?);
        waiting_becomes(&demo, 5).await?;
        let mut sixth = connect_from(addr, 5).await?;
        let answer = read_to_close(&mut sixth, Duration::from_secs(5)).await?;
        assert!(
            answer.starts_with("HTTP/1.1 503") && answer.contains("\"node_busy\""),
            "{answer}"
        );
        let ack = inside
            .call(
                "chat:send",
                vec![json!(demo.session), json!("still here at the cap")],
            )
            .await?;
        assert_eq!(ack["ok"], true, "{ack}");
        let metrics = demo.node.gateway.metrics_text();
        assert!(
            metrics.contains("lectern_preauth_refused_total{cap=\"node\"} 1\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("lectern_preauth_refused_total{cap=\"address\"} 1\n"),
            "{metrics}"
        );

        // The idle sockets go: every place is free again, and 127.0.0.1 is served.
        drop(idle);
        waiting_becomes(&demo, 0).await?;
        let status = rest_from(&demo, 1, &student).await?;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        Ok(())
    })
    .await
}

/// Kills: a body deadline that restarts with every byte (tower-http's), or none: the trickle
/// below sends a byte every 100 ms for 10 s and must be cut at the 1 s deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_gets_408_at_the_deadline() -> anyhow::Result<()> {
    within(async {
        let demo = Demo::start_with("body-deadline", |c| {
            c.limits.body_read_timeout_ms = 1_000;
        })
        .await?;
        let student = demo.token("student1", "student");
        let mut s = connect_from(demo.node.http_addr, 1).await?;
        let head = format!(
            "POST /api/sessions/{}/commands/chat.send HTTP/1.1\r\nhost: lectern\r\n\
             authorization: Bearer {student}\r\ncontent-type: application/json\r\n\
             content-length: 100\r\n\r\n",
            demo.session
        );
        s.write_all(head.as_bytes()).await?;
        let started = Instant::now();
        let (mut read, mut write) = s.into_split();
        let trickle = tokio::spawn(async move {
            for _ in 0..100 {
                if write.write_all(b" ").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(8), read.read(&mut answer))
            .await
            .context("no answer to a trickled body")??;
        let took = started.elapsed();
        let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
        assert!(
            answer.starts_with("HTTP/1.1 408") && answer.contains("\"body_timeout\""),
            "{answer}"
        );
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "answered after {took:?}, not at the 1 s deadline"
        );
        trickle.abort();
        // The node still serves a whole body at once.
        let r = demo
            .command(&student, "chat.send", json!({"text": "whole"}))
            .await?;
        assert_eq!(r.status, 200, "{}", r.text());
        Ok(())
    })
    .await
}

/// A lean WebSocket past its rate is slowed down rather than answered a refusal per packet:
/// after each `rate_limited` refusal it reads (and decodes) nothing for one token's refill (250
/// ms at most), so forty packets past the burst, taken sixteen at a time (the commands a
/// socket runs at once), take at least two pauses to be answered, and another student is
/// served at once meanwhile. Kills: no pause (the last ack comes within milliseconds), a
/// pause that stops reading but not decoding what was read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_past_its_rate_is_read_at_its_rate() -> anyhow::Result<()> {
    within(async {
        let demo = Demo::start_with("rate-pause", |c| {
            c.limits.command_burst = 1;
            c.limits.commands_per_s = 0.01;
        })
        .await?;
        let s = demo.session.clone();
        let mut flooder = demo
            .sio(
                Transport::WebSocket,
                &demo.token("student1", "student"),
                "flooder",
            )
            .await?;
        let started = Instant::now();
        for i in 0..40 {
            flooder.send_raw(format!(
                "42{}[\"chat:send\",\"{s}\",\"flood {i}\"]",
                1000 + i
            ))?;
        }
        let mut other = demo
            .sio(
                Transport::WebSocket,
                &demo.token("student2", "student"),
                "other",
            )
            .await?;
        let other_started = Instant::now();
        let ack = other
            .call("chat:send", vec![json!(s), json!("not slowed")])
            .await?;
        assert_eq!(ack["ok"], true, "{ack}");
        assert!(
            other_started.elapsed() < Duration::from_secs(1),
            "another student waited {:?}",
            other_started.elapsed()
        );
        let ack = flooder
            .call("chat:send", vec![json!(s), json!("the last")])
            .await?;
        assert_eq!(ack["error"]["code"], "rate_limited", "{ack}");
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "forty refusals answered in {:?}: the socket was not slowed",
            started.elapsed()
        );
        Ok(())
    })
    .await
}

/// One raw HTTP/1.1 exchange from `127.0.0.{from}` (the request closes the connection): the
/// whole answer.
async fn exchange_from(demo: &Demo, from: u8, request: &str) -> anyhow::Result<String> {
    let mut s = connect_from(demo.node.http_addr, from).await?;
    s.write_all(request.as_bytes()).await?;
    read_to_close(&mut s, Duration::from_secs(20)).await
}

/// An Engine.IO polling handshake from `127.0.0.{from}`: the session id, or the answer if
/// there is none.
async fn polling_handshake(demo: &Demo, from: u8) -> anyhow::Result<Result<String, String>> {
    let answer = exchange_from(
        demo,
        from,
        "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nhost: lectern\r\n\
         connection: close\r\n\r\n",
    )
    .await?;
    let sid = answer
        .split("\"sid\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next());
    Ok(match sid {
        Some(sid) if answer.starts_with("HTTP/1.1 200") => Ok(sid.to_owned()),
        _ => Err(answer),
    })
}

/// Kills: polling sessions not counted before authentication (40,000 handshakes once cost
/// 400 MB), a place not freed when the session's CONNECT is accepted, or not when the session
/// ends without one (the address would stay busy for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_polling_sessions_hold_places_until_they_connect_or_end()
-> anyhow::Result<()> {
    within(async {
        let demo = Demo::start_with("admission-polling", |c| {
            c.limits.preauth_max = 10;
            c.limits.preauth_per_address_max = 3;
            c.limits.connect_timeout_ms = 1_500;
        })
        .await?;
        // Three sessions from 127.0.0.1, their connections closed: the sessions hold places.
        let mut sids = Vec::new();
        for _ in 0..3 {
            let sid = polling_handshake(&demo, 1).await?;
            sids.push(sid.map_err(|a| anyhow::anyhow!("handshake refused: {a}"))?);
        }
        waiting_becomes(&demo, 3).await?;
        // Refused at accept, without being read: the 503, or (the request was already sent
        // when the node closed the socket) a reset. Either way it is counted, and no session.
        match polling_handshake(&demo, 1).await {
            Ok(Ok(sid)) => anyhow::bail!("a fourth session from one address: {sid}"),
            Ok(Err(answer)) => assert!(
                answer.starts_with("HTTP/1.1 503") && answer.contains("\"address_busy\""),
                "{answer}"
            ),
            Err(_reset) => {}
        }
        let metrics = demo.node.gateway.metrics_text();
        assert!(
            metrics.contains("lectern_preauth_refused_total{cap=\"address\"} 1\n"),
            "{metrics}"
        );
        // Another address opens one.
        let other = polling_handshake(&demo, 2)
            .await?
            .map_err(|a| anyhow::anyhow!("handshake refused: {a}"))?;
        waiting_becomes(&demo, 4).await?;

        // That session authenticates (its CONNECT from its own address, which has room for
        // the request's connection): its place is freed.
        let token = demo.token("student1", "student");
        let connect = format!("40{}", json!({ "token": token }));
        let post = format!(
            "POST /socket.io/?EIO=4&transport=polling&sid={} HTTP/1.1\r\nhost: lectern\r\n\
             content-type: text/plain;charset=UTF-8\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{connect}",
            other,
            connect.len()
        );
        let answer = exchange_from(&demo, 2, &post).await?;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        waiting_becomes(&demo, 3).await?;
        // The others never CONNECT: they end at the connect timeout, and their places go.
        waiting_becomes(&demo, 0).await?;
        assert!(polling_handshake(&demo, 1).await?.is_ok());
        Ok(())
    })
    .await
}

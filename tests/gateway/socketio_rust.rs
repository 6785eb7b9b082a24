//! The same class as `tests/js/class.mjs`, run by lectern-testkit's Rust Socket.IO client over
//! WebSocket and over long-polling: two students and an instructor join, ask, upvote (twice by
//! the same student: counted once), answer, and run a poll with hidden results through vote,
//! close (a late vote is refused) and reveal. Plus resume: a student who drops out and rejoins
//! with its last token gets exactly the events it missed, in order. And the protocol rules on
//! the polling transport, with a raw polling client ([`RawPoll`]) that sends what no library
//! would.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use lectern_testkit::{Client, Http, ServerEvent, Transport};
use serde_json::{Value, json};

use super::{Demo, ack_code, within};

/// Joins the demo session; the ack.
async fn join(c: &mut Client, session: &str) -> anyhow::Result<Value> {
    let ack = c.call("session:join", vec![json!(session)]).await?;
    ensure!(ack["ok"] == true, "session:join: {ack}");
    Ok(ack)
}

/// The upvote counts `c` saw for question `qa`, in order.
fn upvote_counts(c: &mut Client, qa: &str) -> Vec<u64> {
    c.seen()
        .iter()
        .filter(|e| e.name == "qa:upvoted" && e.data()["qaId"] == qa)
        .filter_map(|e| e.data()["count"].as_u64())
        .collect()
}

async fn class(transport: Transport) -> anyhow::Result<()> {
    let demo = Demo::start("sio-rust").await?;
    let s = demo.session.clone();
    let tokens = [
        demo.token("student1", "student"),
        demo.token("student2", "student"),
        demo.token("ada", "instructor"),
    ];
    let (a, b, inst) = tokio::try_join!(
        demo.sio(transport, &tokens[0], "a"),
        demo.sio(transport, &tokens[1], "b"),
        demo.sio(transport, &tokens[2], "inst"),
    )?;
    let (mut a, mut b, mut inst) = (a, b, inst);
    assert!(!a.sid().is_empty());
    for c in [&mut a, &mut b, &mut inst] {
        let ack = join(c, &s).await?;
        assert!(
            ack["token"].is_string(),
            "join ack has a resume token: {ack}"
        );
        assert!(
            ack["state"].is_object(),
            "a fresh join gets the state: {ack}"
        );
    }

    // Ask: everyone gets qa:new with the question and a resume token.
    let ask = a
        .call("qa:ask", vec![json!(s), json!("How do I...?")])
        .await?;
    assert_eq!(ask["ok"], true, "{ask}");
    let qa = ask["id"].as_str().context("ask ack has the id")?.to_owned();
    for c in [&mut a, &mut b, &mut inst] {
        let e = c
            .wait_for("qa:new", |e| {
                e.name == "qa:new" && e.data()["id"] == qa.as_str()
            })
            .await?;
        assert_eq!(e.data()["question"], "How do I...?");
        assert!(
            e.token().is_some(),
            "qa:new carries its resume token: {e:?}"
        );
    }

    // Upvotes: b twice (acknowledged, counted once), then a.
    let up1 = b.call("qa:upvote", vec![json!(s), json!(qa)]).await?;
    let up2 = b.call("qa:upvote", vec![json!(s), json!(qa)]).await?;
    a.wait_for("qa:upvoted", |e| {
        e.name == "qa:upvoted" && e.data()["qaId"] == qa.as_str()
    })
    .await?;
    let up3 = a.call("qa:upvote", vec![json!(s), json!(qa)]).await?;
    assert_eq!([&up1["ok"], &up2["ok"], &up3["ok"]], [true, true, true]);
    inst.wait_for("count 2", |e| {
        e.name == "qa:upvoted" && e.data()["count"] == 2
    })
    .await?;
    assert_eq!(upvote_counts(&mut inst, &qa), [1, 1, 2]);

    // Answer.
    let ans = inst
        .call("qa:answer", vec![json!(s), json!(qa), json!("Like this.")])
        .await?;
    assert_eq!(ans["ok"], true, "{ans}");
    let upd = a
        .wait_for("qa:updated", |e| {
            e.name == "qa:updated" && e.data()["answer"].is_object()
        })
        .await?;
    assert_eq!(upd.data()["answer"]["text"], "Like this.");

    // A poll with hidden results.
    let spec = json!({"question": "Ready?", "kind": "single", "options": ["yes", "no"], "hideResults": true});
    let poll = inst.call("poll:create", vec![json!(s), spec]).await?;
    assert_eq!(poll["ok"], true, "{poll}");
    let pid = poll["id"]
        .as_str()
        .context("poll ack has the id")?
        .to_owned();
    let is_poll = |name: &'static str, pid: String| {
        move |e: &ServerEvent| e.name == name && e.data()["pollId"] == pid.as_str()
    };
    b.wait_for("poll:new", |e| {
        e.name == "poll:new" && e.data()["id"] == pid.as_str()
    })
    .await?;
    let v1 = a
        .call("poll:vote", vec![json!(s), json!(pid), json!(0)])
        .await?;
    let v2 = b
        .call("poll:vote", vec![json!(s), json!(pid), json!(1)])
        .await?;
    assert_eq!([&v1["ok"], &v2["ok"]], [true, true], "{v1} {v2}");
    inst.wait_for("staff results", |e| {
        e.name == "poll:results"
            && e.data()["pollId"] == pid.as_str()
            && e.data()["results"]["voters"] == 2
    })
    .await?;

    let close = inst.call("poll:close", vec![json!(s), json!(pid)]).await?;
    assert_eq!(close["ok"], true, "{close}");
    // Events reach a socket in order: once a student has poll:closed, any poll:results sent
    // before it has arrived too. None may have: the results were hidden.
    a.wait_for("poll:closed", is_poll("poll:closed", pid.clone()))
        .await?;
    let leaked: Vec<_> = a
        .seen()
        .iter()
        .filter(|e| is_poll("poll:results", pid.clone())(e))
        .cloned()
        .collect();
    assert!(
        leaked.is_empty(),
        "a student saw hidden results: {leaked:?}"
    );
    let closed = a
        .wait_for("poll:closed", is_poll("poll:closed", pid.clone()))
        .await?;
    assert!(
        closed.data()["results"].is_null(),
        "hidden results in poll:closed: {closed:?}"
    );

    let late = a
        .call("poll:vote", vec![json!(s), json!(pid), json!(1)])
        .await?;
    assert_eq!(ack_code(&late), "poll_closed");
    let reveal = inst.call("poll:reveal", vec![json!(s), json!(pid)]).await?;
    assert_eq!(reveal["ok"], true, "{reveal}");
    let revealed = b
        .wait_for("revealed results", is_poll("poll:results", pid.clone()))
        .await?;
    assert_eq!(revealed.data()["results"]["counts"], json!([1, 1]));
    assert_eq!(revealed.data()["revealed"], true);

    // Joining twice on one socket is refused; the node keeps serving.
    let again = inst.call("session:join", vec![json!(s)]).await?;
    assert_eq!(ack_code(&again), "already_joined");
    let chat = b
        .call("chat:send", vec![json!(s), json!("still here")])
        .await?;
    assert_eq!(chat["ok"], true, "{chat}");

    for c in [a, b, inst] {
        c.disconnect().await;
    }
    demo.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_runs_a_class_over_websocket() -> anyhow::Result<()> {
    within(class(Transport::WebSocket)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_runs_a_class_over_polling() -> anyhow::Result<()> {
    within(class(Transport::Polling)).await
}

/// `(name, token, payload)` of a live event.
fn key(e: &ServerEvent) -> (String, String, Value) {
    let token = e.token().unwrap_or_default().to_owned();
    (e.name.clone(), token, e.data().clone())
}

/// `(name, token, payload)` of a replayed event (`{event, token, data}`).
fn replay_key(e: &Value) -> (String, String, Value) {
    let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
    (s("event"), s("token"), e["data"].clone())
}

async fn resume(transport: Transport) -> anyhow::Result<()> {
    let demo = Demo::start("sio-resume").await?;
    let s = demo.session.clone();
    // Two witnesses stay joined throughout: the instructor sees every change (the order of
    // all tokens), and a classmate sees what a student sees (the reference stream).
    let mut inst = demo
        .sio(transport, &demo.token("ada", "instructor"), "inst")
        .await?;
    let inst_start = join(&mut inst, &s).await?["token"]
        .as_str()
        .context("join token")?
        .to_owned();
    let mut c = demo
        .sio(transport, &demo.token("student3", "student"), "c")
        .await?;
    join(&mut c, &s).await?;

    let student = demo.token("student1", "student");
    let mut a = demo.sio(transport, &student, "a").await?;
    join(&mut a, &s).await?;
    let ask = a
        .call("qa:ask", vec![json!(s), json!("before the drop")])
        .await?;
    assert_eq!(ask["ok"], true, "{ask}");
    a.wait_for("own qa:new", |e| {
        e.name == "qa:new" && e.data()["id"] == ask["id"]
    })
    .await?;
    let since = a.last_token().context("a saw a token")?;
    a.disconnect().await;

    // Meanwhile: three commands by others.
    let mut b = demo
        .sio(transport, &demo.token("student2", "student"), "b")
        .await?;
    join(&mut b, &s).await?;
    let q = b
        .call("qa:ask", vec![json!(s), json!("while a was away")])
        .await?;
    let chat = b.call("chat:send", vec![json!(s), json!("hello")]).await?;
    let qa = q["id"].as_str().context("ask id")?.to_owned();
    let answer = inst
        .call("qa:answer", vec![json!(s), json!(qa), json!("an answer")])
        .await?;
    let acks = [&q, &chat, &answer];
    for ack in acks {
        assert_eq!(ack["ok"], true, "{ack}");
    }
    let missed: Vec<&str> = acks.iter().filter_map(|a| a["token"].as_str()).collect();

    // Rejoin with the last token on a new connection.
    let mut a2 = demo.sio(transport, &student, "a2").await?;
    let rejoin = a2
        .call("session:join", vec![json!(s), json!(since)])
        .await?;
    assert_eq!(rejoin["ok"], true, "{rejoin}");
    let replay: Vec<_> = rejoin["events"]
        .as_array()
        .with_context(|| format!("a resume replays events, not a snapshot: {rejoin}"))?
        .iter()
        .map(replay_key)
        .collect();
    anyhow::ensure!(
        rejoin["token"].as_str().is_some(),
        "a resume gives a token: {rejoin}"
    );
    // The replay's last event. (Not the rejoin token: that is the document's heads, which may
    // end in a change that publishes no event, such as `a` leaving the attendance.)
    let end = replay
        .last()
        .map(|(_, token, _)| token.clone())
        .context("the replay is empty")?;

    // The reference: what the classmate saw live between `since` and the replay's end, both
    // placed by the instructor's order of every token.
    let end2 = end.clone();
    inst.wait_for("the replay's last change", move |e| {
        e.token() == Some(end2.as_str())
    })
    .await?;
    let last_missed = missed[2].to_owned();
    c.wait_for("the last missed event", move |e| {
        e.token() == Some(last_missed.as_str())
    })
    .await?;
    let order: Vec<String> = std::iter::once(inst_start)
        .chain(
            inst.seen()
                .iter()
                .filter_map(|e| e.token().map(str::to_owned)),
        )
        .collect();
    let at = |t: &str| order.iter().position(|x| x == t);
    let from = at(&since).with_context(|| format!("the instructor never saw {since}"))?;
    let to = at(&end).context("the instructor saw the replay's end")?;
    let reference: Vec<_> = c
        .seen()
        .iter()
        .filter(|e| e.token().and_then(at).is_some_and(|p| p > from && p <= to))
        .map(key)
        .collect();
    assert_eq!(replay, reference, "the replay differs from the live stream");

    // And they are exactly the three commands, in order.
    let names: Vec<(&str, &str)> = replay
        .iter()
        .map(|(name, token, _)| (name.as_str(), token.as_str()))
        .collect();
    let want: Vec<(&str, &str)> = ["qa:new", "chat:message", "qa:updated"]
        .into_iter()
        .zip(missed)
        .collect();
    assert_eq!(names, want);

    // The live stream continues after the replay, with no gap.
    let after = inst
        .call(
            "qa:answer",
            vec![json!(s), json!(qa), json!("a better answer")],
        )
        .await?;
    let t = after["token"].as_str().context("token")?.to_owned();
    let next = a2
        .wait_for("the next live event", |e| e.name == "qa:updated")
        .await?;
    assert_eq!(
        next.token(),
        Some(t.as_str()),
        "the first live event after the replay"
    );
    for c in [a2, b, c, inst] {
        c.disconnect().await;
    }
    demo.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoin_with_last_token_replays_exactly_the_missed_events_over_websocket()
-> anyhow::Result<()> {
    within(resume(Transport::WebSocket)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoin_with_last_token_replays_exactly_the_missed_events_over_polling()
-> anyhow::Result<()> {
    within(resume(Transport::Polling)).await
}

/// Regression: socketioxide sends the connect reply before it runs the connect handler (a
/// spawned task), and the gateway used to register its event handlers in that handler, so an
/// event sent right after the reply could find no handler and get no ack at all. It showed up
/// as "no ack within 10s" when the whole test suite ran at once; several nodes, each in its
/// own runtime, with clients that send their first event the moment they are connected, load
/// the machine the same way. (The race cannot be forced from outside: socketioxide refuses an
/// event sent before the connect reply.) With the bug back, this test failed in about half of
/// its runs on its own, and some test of the module failed in every run of the whole suite.
#[test]
fn first_event_right_after_connect_gets_its_ack() -> anyhow::Result<()> {
    let nodes: Vec<_> = (0..4)
        .map(|n| {
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                rt.block_on(within(connect_and_join_at_once(n)))
            })
        })
        .collect();
    for n in nodes {
        n.join()
            .map_err(|_| anyhow::anyhow!("a node thread panicked"))??;
    }
    Ok(())
}

async fn connect_and_join_at_once(n: usize) -> anyhow::Result<()> {
    let demo = Demo::start("sio-first-event").await?;
    for round in 0..3 {
        let clients = (0..30).map(|i| {
            let demo = &demo;
            let transport = Transport::ALL[i % 2];
            async move {
                let name = format!("node {n} {} client {round}.{i}", transport.name());
                let token = demo.token(&format!("student{i}"), "student");
                let mut c = demo.sio(transport, &token, &name).await?;
                let ack = c.call("session:join", vec![json!(demo.session)]).await?;
                anyhow::ensure!(ack["ok"] == true, "{name}: {ack}");
                anyhow::Ok(c)
            }
        });
        for c in futures_util::future::try_join_all(clients).await? {
            c.disconnect().await;
        }
    }
    demo.stop().await
}

/// The Engine.IO record separator of a polling payload.
const RECORD_SEPARATOR: char = '\u{1e}';

/// How long a raw polling GET may wait (past the default ping interval).
const POLL_WAIT: Duration = Duration::from_secs(40);

/// A long-polling Engine.IO client written for these tests: it sends packets as given.
struct RawPoll {
    http: Http,
    sid: String,
    /// When the handshake answered.
    opened: Instant,
    /// When the first ping arrived.
    first_ping: std::sync::Mutex<Option<Instant>>,
}

impl RawPoll {
    async fn open(http: Http) -> anyhow::Result<RawPoll> {
        let r = http
            .get("/socket.io/?EIO=4&transport=polling", None)
            .await?;
        ensure!(r.status == 200, "handshake: {} {}", r.status, r.text());
        let open: Value = serde_json::from_str(r.text().strip_prefix('0').context("open packet")?)?;
        let sid = open["sid"].as_str().context("sid")?.to_owned();
        Ok(RawPoll {
            http,
            sid,
            opened: Instant::now(),
            first_ping: std::sync::Mutex::new(None),
        })
    }

    fn path(&self) -> String {
        format!("/socket.io/?EIO=4&transport=polling&sid={}", self.sid)
    }

    /// POSTs a payload (records joined by the separator); whether the server took it.
    async fn post(&self, payload: &str) -> anyhow::Result<bool> {
        let headers = [("content-type", "text/plain;charset=UTF-8")];
        let path = self.path();
        let body = Some(payload.as_bytes().to_vec());
        let r = self
            .http
            .send("POST", &path, &headers, body, POLL_WAIT)
            .await?;
        Ok(r.status == 200)
    }

    /// The next GET's packets, or `None` once the server closed the session (a close packet
    /// or an unknown sid).
    async fn get(&self) -> anyhow::Result<Option<Vec<String>>> {
        let r = self
            .http
            .send("GET", &self.path(), &[], None, POLL_WAIT)
            .await?;
        if r.status != 200 {
            return Ok(None);
        }
        let packets: Vec<String> = r
            .text()
            .split(RECORD_SEPARATOR)
            .map(str::to_owned)
            .collect();
        if packets.iter().any(|p| p == "2") {
            let mut first = self.first_ping.lock().unwrap_or_else(|e| e.into_inner());
            first.get_or_insert_with(Instant::now);
        }
        if packets.iter().any(|p| p == "1") {
            return Ok(None);
        }
        Ok(Some(packets))
    }

    /// Reads (answering pings) until a packet matches `want`; it.
    async fn until(&self, what: &str, want: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        loop {
            let packets = self
                .get()
                .await?
                .with_context(|| format!("closed before {what}"))?;
            for p in packets {
                if p == "2" {
                    self.post("3").await?;
                } else if want(&p) {
                    return Ok(p);
                }
            }
        }
    }

    /// Reads (answering pings) until the server closes; how long that took.
    async fn until_closed(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        while let Some(packets) = self.get().await? {
            if packets.iter().any(|p| p == "2") {
                // A closed session refuses the POST: the next GET tells.
                let _ = self.post("3").await;
            }
        }
        Ok(started.elapsed())
    }

    /// CONNECTs namespace `/` with `token`; the reply.
    async fn connect(&self, token: &str) -> anyhow::Result<String> {
        ensure!(
            self.post(&format!("40{}", json!({ "token": token })))
                .await?,
            "POST 40"
        );
        self.until("the connect reply", |p| {
            p.starts_with("40") || p.starts_with("44")
        })
        .await
    }

    /// Sends an event with ack id `id`; the ack's payload.
    async fn call(&self, id: u64, args: Value) -> anyhow::Result<Value> {
        ensure!(self.post(&format!("42{id}{args}")).await?, "POST event");
        let prefix = format!("43{id}");
        let ack = self.until("the ack", |p| p.starts_with(&prefix)).await?;
        let ack: Value = serde_json::from_str(&ack[prefix.len()..])?;
        Ok(ack[0].clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_follows_the_protocol_rules() -> anyhow::Result<()> {
    within(async {
        let demo = Demo::start_with("sio-polling-rules", |c| {
            c.limits.connect_timeout_ms = 1_000;
            c.limits.ping_interval_ms = 500;
            c.limits.ping_timeout_ms = 10_000;
            c.limits.command_burst = 1000;
        })
        .await?;
        let s = demo.session.clone();
        let token = demo.token("student1", "student");
        let prompt = Duration::from_secs(5);

        // Invalid Engine.IO or Socket.IO, and an event before CONNECT: closed at once.
        for (what, connected, payload) in [
            (
                "an event before CONNECT",
                false,
                format!("42{}", json!(["chat:send", s, "x"])),
            ),
            ("not an Engine.IO packet", true, "x".to_owned()),
            ("an unknown Socket.IO type", true, "49[\"x\"]".to_owned()),
            (
                "an event that is not an array",
                true,
                "42{\"a\":1}".to_owned(),
            ),
            ("an empty event", true, "42[]".to_owned()),
            ("a nameless event", true, "42[12]".to_owned()),
        ] {
            let p = RawPoll::open(demo.http).await?;
            if connected {
                let reply = p.connect(&token).await?;
                ensure!(reply.starts_with("40{"), "{what}: connect: {reply}");
            }
            p.post(&payload).await?;
            let took = p.until_closed().await.with_context(|| what.to_owned())?;
            ensure!(took < prompt, "{what}: closed only after {took:?}");
        }

        // No CONNECT within connect_timeout_ms (1 s here): closed.
        let p = RawPoll::open(demo.http).await?;
        let took = p.until_closed().await?;
        ensure!(took < prompt, "no CONNECT: closed only after {took:?}");

        // A binary event with an ack id: `unsupported`, and the socket is served on.
        let p = RawPoll::open(demo.http).await?;
        p.connect(&token).await?;
        let binary = format!(
            "451-5{}{RECORD_SEPARATOR}bAQI=",
            json!(["chat:send", s, {"_placeholder": true, "num": 0}])
        );
        ensure!(p.post(&binary).await?, "POST a binary event");
        let ack = p
            .until("the binary event's ack", |x| x.starts_with("435"))
            .await?;
        let ack: Value = serde_json::from_str(&ack[3..])?;
        assert_eq!(ack_code(&ack[0]), "unsupported", "{ack}");
        let ack = p
            .call(6, json!(["chat:send", s, "after a binary event"]))
            .await?;
        assert_eq!(ack["ok"], true, "{ack}");

        // `41` leaves the namespace (and its sessions) and keeps the Engine.IO session: the
        // same session CONNECTs again and is served.
        let mut watcher = demo
            .sio(
                Transport::WebSocket,
                &demo.token("student2", "student"),
                "watcher",
            )
            .await?;
        join(&mut watcher, &s).await?;
        let ack = p.call(7, json!(["session:join", s])).await?;
        assert_eq!(ack["ok"], true, "{ack}");
        watcher
            .wait_for("two present", |e| {
                e.name == "attendance:update" && e.data()["present"] == 2
            })
            .await?;
        ensure!(p.post("41").await?, "POST 41");
        watcher
            .wait_for("one present after 41", |e| {
                e.name == "attendance:update" && e.data()["present"] == 1
            })
            .await?;
        // socketioxide removes the namespace's socket only once its disconnect handler is
        // done, and ignores a CONNECT that comes before: the client sends CONNECT again after
        // each poll that brought no reply (a poll returns within the 500 ms ping interval).
        let reply = loop {
            ensure!(
                p.post(&format!("40{}", json!({ "token": token }))).await?,
                "POST 40"
            );
            let packets = p.get().await?.context("closed after 41")?;
            if let Some(reply) = packets
                .iter()
                .find(|x| x.starts_with("40") || x.starts_with("44"))
            {
                break reply.clone();
            }
            if packets.iter().any(|x| x == "2") {
                p.post("3").await?;
            }
        };
        ensure!(reply.starts_with("40{"), "connect again: {reply}");
        let ack = p.call(8, json!(["chat:send", s, "after 41"])).await?;
        assert_eq!(ack["ok"], true, "{ack}");
        // Closed by the client, so the node's stop need not wait for its heartbeat to fail.
        p.post("1").await?;
        watcher.disconnect().await;
        demo.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_sends_the_first_ping_one_interval_after_the_handshake() -> anyhow::Result<()> {
    within(async {
        let demo = Demo::start_with("sio-polling-first-ping", |c| {
            c.limits.ping_interval_ms = 1_500;
            c.limits.ping_timeout_ms = 5_000;
        })
        .await?;
        let p = RawPoll::open(demo.http).await?;
        // The connect reply answers pings on the way, and notes the first.
        p.connect(&demo.token("student1", "student")).await?;
        let first = loop {
            if let Some(at) = *p.first_ping.lock().unwrap_or_else(|e| e.into_inner()) {
                break at;
            }
            let packets = p.get().await?.context("closed before the first ping")?;
            for x in packets {
                if x == "2" {
                    p.post("3").await?;
                }
            }
        };
        let took = first.duration_since(p.opened);
        if took < Duration::from_millis(1_400) {
            bail!("the first ping came {took:?} after the handshake, before the 1.5 s interval");
        }
        p.post("1").await?;
        demo.stop().await
    })
    .await
}

/// A series' value in `/metrics` (0 when absent).
async fn metric(demo: &Demo, series: &str) -> anyhow::Result<u64> {
    let m = demo.http.get("/metrics", None).await?.text();
    let prefix = format!("{series} ");
    Ok(m.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_client_that_stops_reading_is_cut_off_at_its_queue_bound() -> anyhow::Result<()> {
    within(async {
        let demo = Demo::start_with("sio-polling-bound", |c| {
            c.limits.outbound_queue_max = 16;
            c.limits.command_burst = 1000;
            // socketioxide cannot queue a disconnect into a full queue: the socket ends at its
            // next heartbeat ping, which cannot be queued either.
            c.limits.ping_interval_ms = 1_000;
            c.limits.ping_timeout_ms = 10_000;
        })
        .await?;
        let s = demo.session.clone();
        let p = RawPoll::open(demo.http).await?;
        p.connect(&demo.token("student1", "student")).await?;
        let ack = p.call(1, json!(["session:join", s])).await?;
        assert_eq!(ack["ok"], true, "{ack}");
        let open = "lectern_connections{transport=\"socketio\"}";
        assert_eq!(metric(&demo, open).await?, 1);
        // From here on `p` never polls: its socket's queue (16 packets) fills with events.
        let mut talker = demo
            .sio(
                Transport::WebSocket,
                &demo.token("student2", "student"),
                "talker",
            )
            .await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut sent = 0;
        while metric(&demo, "lectern_rejections_total{code=\"slow_consumer\"}").await? == 0 {
            ensure!(Instant::now() < deadline, "no cut-off after {sent} events");
            let ack = talker
                .call("chat:send", vec![json!(s), json!(format!("event {sent}"))])
                .await?;
            ensure!(ack["ok"] == true, "{ack}");
            sent += 1;
        }
        ensure!(sent >= 16, "cut off after only {sent} events");
        // The socket is gone (at its next heartbeat, 1 s here), its count released.
        while metric(&demo, open).await? != 0 {
            ensure!(Instant::now() < deadline, "the cut-off socket still counts");
            tokio::task::yield_now().await;
        }
        talker.disconnect().await;
        demo.stop().await
    })
    .await
}

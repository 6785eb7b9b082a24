//! `lectern drain` / `lectern undrain` against a running node: a drain tells each connected
//! client to reconnect elsewhere (`server:shutdown` with `reconnect: true`) and ends its
//! connection, waits until none is left, refuses new Socket.IO connections and streams with
//! `draining`, fails `/readyz`, and keeps answering REST and the admin API; an undrain takes
//! clients again.

use anyhow::Context;
use lectern_node::Config;
use lectern_testkit::{Client, Http, Transport};
use serde_json::json;

use super::{lectern, within};
use crate::support::TempDir;

const ADMIN_TOKEN: &str = "an-admin-token-for-the-drain-test";

/// Kills: a drain that leaves clients connected (the wait fails), a drain that does not
/// refuse new clients, `/readyz` still ready, an undrain that does not take clients again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_sends_its_clients_away_and_an_undrained_one_takes_them_again() {
    within(async {
        let dir = TempDir::new("ops-drain");
        let node = lectern_node::start(Config {
            data_dir: dir.path().to_path_buf(),
            http: "127.0.0.1:0".parse()?,
            admin_token: Some(ADMIN_TOKEN.to_owned()),
            demo: true,
            ..Config::default()
        })
        .await?;
        let http = Http::new(node.http_addr);
        let demo = node.demo.as_ref().expect("demo links");
        let token = demo
            .student
            .split("token=")
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let auth = json!({ "token": token });
        let mut lean =
            Client::connect(node.http_addr, Transport::WebSocket, auth.clone(), "lean").await?;
        let mut polling =
            Client::connect(node.http_addr, Transport::Polling, auth.clone(), "polling").await?;
        for c in [&mut lean, &mut polling] {
            let ack = c.call("session:join", vec![json!(demo.session)]).await?;
            assert_eq!(ack["ok"], true, "{ack}");
        }
        assert_eq!(http.get("/readyz", None).await?.status, 200);

        let addr = node.http_addr.to_string();
        let admin = ["--http", &addr, "--admin-token", ADMIN_TOKEN];
        let drained = lectern(&[&["--json", "drain", "--wait-s", "20"][..], &admin].concat())
            .await?
            .expect_code(0)?;
        let v: serde_json::Value = serde_json::from_str(&drained.stdout)?;
        assert_eq!(v["connections"], 0, "{}", drained.stdout);
        for c in [&mut lean, &mut polling] {
            let told = c
                .wait_for("server:shutdown", |e| e.name == "server:shutdown")
                .await?;
            assert_eq!(told.data()["reconnect"], true, "{:?}", told.data());
            c.closed(std::time::Duration::from_secs(10)).await?;
        }
        let ready = http.get("/readyz", None).await?;
        assert_eq!(ready.status, 503, "{}", ready.text());
        let refused = Client::try_connect(
            node.http_addr,
            Transport::WebSocket,
            Some(auth.clone()),
            "late",
        )
        .await;
        assert!(refused.is_err(), "a new client was taken while draining");
        // REST and the admin API still answer.
        let session = format!("/api/sessions/{}", demo.session);
        assert_eq!(http.get(&session, Some(&token)).await?.status, 200);
        let status = lectern(&[&["--json", "status"][..], &admin].concat())
            .await?
            .expect_code(0)?;
        let v: serde_json::Value = serde_json::from_str(&status.stdout)?;
        assert_eq!(v["draining"], true, "{}", status.stdout);

        lectern(&[&["undrain"][..], &admin].concat())
            .await?
            .expect_code(0)?;
        assert_eq!(http.get("/readyz", None).await?.status, 200);
        let mut back = Client::connect(node.http_addr, Transport::WebSocket, auth, "back").await?;
        let ack = back.call("session:join", vec![json!(demo.session)]).await?;
        assert_eq!(ack["ok"], true, "{ack}");
        back.disconnect().await;
        node.stop().await
    })
    .await
    .unwrap();
}

/// Clients on the drained node.
const MOVED_CLIENTS: usize = 1_000;

/// How long a client of the drained node waits to be sent away (generous: the wait ends when
/// the drain closes its connection).
const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// The longest the thousand-client drain test may take: a thousand clients join, are sent
/// away and reconnect, which on a loaded 2-core machine takes well over the usual limit.
const MOVE_TEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Connects or joins at once while the class gathers (well under the per-address cap on
/// connections that have not authenticated).
const CONNECTS_IN_FLIGHT: usize = 50;

/// The `qa:new` ids among `events`, in order.
fn asked_ids<'a>(events: impl IntoIterator<Item = &'a serde_json::Value>) -> Vec<String> {
    events
        .into_iter()
        .filter(|e| e["event"] == "qa:new")
        .filter_map(|e| e["data"]["id"].as_str().map(str::to_owned))
        .collect()
}

/// The `qa:new` ids among events a client received live, in order.
fn live_ids(events: &[lectern_testkit::ServerEvent]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.name == "qa:new")
        .filter_map(|e| e.data()["id"].as_str().map(str::to_owned))
        .collect()
}

/// A client of the drained node: told to go, it reconnects to the other node with its last
/// resume token (retrying while that node's admission says it is busy, as the browser client
/// backs off), and follows the session there until `last` arrives. Every question id it saw,
/// in order, across both nodes.
async fn move_over(
    mut client: Client,
    to: std::net::SocketAddr,
    user: String,
    last: String,
) -> anyhow::Result<Vec<String>> {
    use std::time::{Duration, Instant};

    use crate::mesh::token;
    use lectern_node::DEMO_SESSION;

    // The drain ends the connection (it starts after every client is waiting here, and on a
    // loaded machine telling 1,000 clients takes a while). Once it is closed nothing more
    // arrives: what was seen and the last token agree.
    client.closed(DRAIN_WAIT).await?;
    let told = client
        .seen()
        .iter()
        .find(|e| e.name == "server:shutdown")
        .cloned()
        .with_context(|| format!("{user} was closed without server:shutdown"))?;
    anyhow::ensure!(told.data()["reconnect"] == true, "{:?}", told.data());
    let resume = client.last_token();
    let mut seen = live_ids(client.seen());
    let auth = json!({ "token": token(&user, "student") });
    let started = Instant::now();
    let mut back = loop {
        match Client::try_connect(to, Transport::WebSocket, Some(auth.clone()), &user).await {
            Ok(c) => break c,
            Err(_) if started.elapsed() < Duration::from_secs(60) => {
                tokio::time::sleep(Duration::from_millis(20 + rand_ms(&user))).await;
            }
            Err(e) => anyhow::bail!("{user} could not reconnect: {e}"),
        }
    };
    let mut args = vec![json!(DEMO_SESSION)];
    args.extend(resume.map(|t| json!(t)));
    let ack = back.call("session:join", args).await?;
    anyhow::ensure!(ack["ok"] == true, "{user}: {ack}");
    let replayed = ack["events"]
        .as_array()
        .with_context(|| format!("{user}: a replay, not a snapshot: {ack}"))?;
    seen.extend(asked_ids(replayed));
    if !seen.contains(&last) {
        back.wait_for("the last question", |e| {
            e.name == "qa:new" && e.data()["id"] == last.as_str()
        })
        .await?;
    }
    seen.extend(live_ids(back.seen()));
    back.disconnect().await;
    Ok(seen)
}

/// A few milliseconds of spread per user, so that a thousand reconnects do not retry in step.
fn rand_ms(user: &str) -> u64 {
    user.bytes().map(u64::from).sum::<u64>() % 40
}

/// Kills: a drain that drops clients without telling them (they never get `server:shutdown`),
/// a last resume token that does not cover what the client saw (duplicates on the other node),
/// a drain that stops fan-out before its clients are gone (gaps), a replay that falls back to
/// a snapshot on the other node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_moves_a_thousand_clients_to_another_node_with_no_lost_or_duplicated_event() {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use crate::mesh::{Cluster, demo_caller, demo_session};
    use crate::support::{ask, cmd};
    use lectern_model::Role;

    tokio::task::spawn_blocking(super::lectern_bin)
        .await
        .expect("the build task")
        .expect("the lectern binary builds");
    let body = async {
        let mut cluster = Cluster::new("ops-drain-move")?;
        let a = cluster.start("a", vec![], true).await?;
        let b = cluster.start("b", vec![cluster.peer(a)], false).await?;
        cluster.connected(b, 1).await?;
        cluster
            .converged(&demo_session(), &[a, b], Duration::from_secs(30))
            .await?;
        let (addr_a, addr_b) = (cluster.node(a).http_addr, cluster.node(b).http_addr);

        // The class gathers on A.
        let started = Instant::now();
        let mut joining = tokio::task::JoinSet::new();
        let mut clients = Vec::with_capacity(MOVED_CLIENTS);
        for i in 0..MOVED_CLIENTS {
            if joining.len() >= CONNECTS_IN_FLIGHT {
                clients.push(joining.join_next().await.context("a join")???);
            }
            joining.spawn(async move {
                let user = format!("moved-{i}");
                let (client, _) = crate::mesh::joined_on(addr_a, &user, "student", None).await?;
                anyhow::Ok((user, client))
            });
        }
        while let Some(c) = joining.join_next().await {
            clients.push(c??);
        }
        println!(
            "drain: {MOVED_CLIENTS} clients joined on A in {:?}",
            started.elapsed()
        );

        // Questions keep coming on B (a student there) before, during and after the drain.
        let asked = Arc::new(Mutex::new(Vec::<String>::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let asker = {
            let (hub, asked, stop) = (cluster.node(b).hub.clone(), asked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let id = format!("moving-{n}");
                    let who = demo_caller(&format!("asker-{}", n / 90), Role::Student);
                    hub.execute(demo_session(), who, cmd(&id, ask(&id))).await?;
                    asked
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?
                        .push(id);
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                anyhow::Ok(n)
            })
        };
        let last = "moved-last".to_owned();
        let mut moving = tokio::task::JoinSet::new();
        for (user, client) in clients {
            moving.spawn(move_over(client, addr_b, user, last.clone()));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;

        let admin_addr = addr_a.to_string();
        let admin = [
            "--http",
            admin_addr.as_str(),
            "--admin-token",
            "admin-token-0123456789",
        ];
        let started = Instant::now();
        let drained = lectern(&[&["--json", "drain", "--wait-s", "60"][..], &admin].concat())
            .await?
            .expect_code(0)?;
        let v: serde_json::Value = serde_json::from_str(&drained.stdout)?;
        assert_eq!(v["connections"], 0, "{}", drained.stdout);
        println!(
            "drain: A was empty {:?} after the drain began",
            started.elapsed()
        );

        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let n = asker.await??;
        cluster
            .node(b)
            .hub
            .execute(
                demo_session(),
                demo_caller("asker-last", Role::Student),
                cmd(&last, ask("the last one")),
            )
            .await?;
        let mut asked = asked
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clone();
        asked.push(last.clone());

        let mut moved = 0;
        while let Some(seen) = moving.join_next().await {
            let seen = seen??;
            let mut sorted = seen.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(
                sorted.len(),
                seen.len(),
                "a client saw a question twice: {seen:?}"
            );
            assert_eq!(
                seen, asked,
                "a client missed a question or saw them out of order"
            );
            moved += 1;
        }
        assert_eq!(moved, MOVED_CLIENTS);
        println!(
            "drain: {moved} clients moved to B and each saw all {} questions once, in order",
            n + 1
        );
        cluster.stop_all().await
    };
    tokio::time::timeout(MOVE_TEST_TIMEOUT, body)
        .await
        .expect("the test finishes within MOVE_TEST_TIMEOUT")
        .unwrap();
}

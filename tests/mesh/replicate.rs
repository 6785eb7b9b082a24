//! Replication across three nodes: a student on A asks, a student on C receives `qa:new` over
//! Socket.IO; the admin API reports the peers; a node restricted to its cohorts keeps the
//! others' documents out; two nodes that dial each other keep one connection, also when a
//! second connection from the preferred dialer is forced.

use std::time::Duration;

use anyhow::Context;
use lectern_model::{CommandBody, DocId, Role};
use lectern_testkit::Http;
use serde_json::json;

use super::{Cluster, demo_session, eventually, eventually_ok, joined, reserved_udp_addr, within};
use crate::support::{caller, cmd};

/// How long a condition that depends on live connections may take to hold.
const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_student_on_a_asks_and_a_student_on_c_receives_qa_new() -> anyhow::Result<()> {
    within(async {
        let mut cluster = Cluster::new("mesh-3")?;
        let c = cluster.start("node-c", vec![], true).await?;
        let b = cluster
            .start("node-b", vec![cluster.peer(c)], false)
            .await?;
        let a = cluster
            .start("node-a", vec![cluster.peer(b), cluster.peer(c)], false)
            .await?;
        for i in [a, b, c] {
            cluster.connected(i, 2).await?;
        }
        // The demo class seeded on C reaches A and B by anti-entropy.
        cluster
            .converged(&demo_session(), &[a, b, c], Duration::from_secs(10))
            .await?;

        let (mut on_a, _) = joined(cluster.node(a), "student1", "student", None).await?;
        let (mut on_c, _) = joined(cluster.node(c), "student2", "student", None).await?;
        let ask = on_a
            .call(
                "qa:ask",
                vec![json!(super::DEMO_SESSION), json!("Across regions?")],
            )
            .await?;
        assert_eq!(ask["ok"], true, "{ask}");
        let id = ask["id"]
            .as_str()
            .context("the ask ack has an id")?
            .to_owned();
        let event = on_c
            .wait_for("qa:new from node A", |e| {
                e.name == "qa:new" && e.data()["id"] == id.as_str()
            })
            .await?;
        assert_eq!(event.data()["question"], "Across regions?");
        assert!(
            event.token().is_some(),
            "the replicated event carries a token"
        );
        cluster
            .converged(&demo_session(), &[a, b, c], Duration::from_secs(10))
            .await?;

        // The admin API reports both peers of B as connected, with an RTT; only with the token.
        let http = Http::new(cluster.node(b).http_addr);
        let refused = http.get("/admin/status", Some("wrong-token")).await?;
        assert_eq!(refused.status, 401);
        assert_eq!(refused.error_code().as_deref(), Some("unauthorized"));
        // "Eventually" for what depends on the connections being up at the moment of the read:
        // a node starved of CPU for longer than the idle timeout drops and redials a healthy
        // peer.
        eventually_ok(
            "the admin API reports both peers connected",
            LIMIT,
            || async {
                let status = http
                    .get("/admin/status", Some("admin-token-0123456789"))
                    .await?
                    .json()?;
                anyhow::ensure!(status["name"] == "node-b", "{status}");
                anyhow::ensure!(status["region"] == "region-node-b", "{status}");
                anyhow::ensure!(status["documents"].as_u64() >= Some(2), "{status}");
                let peers = status["peers"].as_array().context("peers")?;
                let names: Vec<&str> = peers.iter().filter_map(|p| p["name"].as_str()).collect();
                anyhow::ensure!(names == ["node-a", "node-c"], "{status}");
                for p in peers {
                    anyhow::ensure!(p["state"] == "connected", "{p}");
                    anyhow::ensure!(p["rtt_ms"].as_f64().is_some(), "{p}");
                }
                Ok(())
            },
        )
        .await?;
        // `/metrics` tells the same to a scraper.
        eventually_ok("/metrics reports both peers connected", LIMIT, || async {
            let metrics = http.get("/metrics", None).await?.text();
            for line in [
                "lectern_mesh_peers{state=\"connected\"} 2",
                "lectern_mesh_peers{state=\"connecting\"} 0",
            ] {
                anyhow::ensure!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
            }
            for peer in ["node-a", "node-c"] {
                let rtt = format!("lectern_mesh_peer_rtt_seconds{{peer=\"{peer}\"}} ");
                let lag = format!("lectern_mesh_peer_lag_documents{{peer=\"{peer}\"}} ");
                anyhow::ensure!(
                    metrics.lines().any(|l| l.starts_with(&rtt)),
                    "{rtt} in {metrics}"
                );
                anyhow::ensure!(
                    metrics.lines().any(|l| l.starts_with(&lag)),
                    "{lag} in {metrics}"
                );
            }
            Ok(())
        })
        .await?;
        on_a.disconnect().await;
        on_c.disconnect().await;
        cluster.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restricted_to_its_cohorts_keeps_other_documents_out() -> anyhow::Result<()> {
    within(async {
        let mut cluster = Cluster::new("mesh-share")?;
        // B holds two cohorts' sessions and two users' inboxes; A (a classroom) shares only
        // cohort c1, whose roster names one of the two users.
        let b = cluster.start("node-b", vec![], false).await?;
        let admin = caller("admin", Role::Admin);
        let hub_b = cluster.node(b).hub.clone();
        let mine = DocId::Session("mine".parse()?);
        let theirs = DocId::Session("theirs".parse()?);
        let cohort = DocId::Cohort("c1".parse()?);
        hub_b
            .execute(
                cohort.clone(),
                admin.clone(),
                cmd(
                    "c1-create",
                    CommandBody::CohortCreate {
                        course: "Course".into(),
                        title: "C1".into(),
                        home_region: "x".into(),
                    },
                ),
            )
            .await?;
        for (doc, c, id) in [(&mine, "c1", "s-mine"), (&theirs, "c2", "s-theirs")] {
            hub_b
                .execute(
                    doc.clone(),
                    admin.clone(),
                    cmd(
                        id,
                        CommandBody::SessionCreate {
                            cohort: c.parse()?,
                            title: id.into(),
                            moderation: false,
                        },
                    ),
                )
                .await?;
        }
        hub_b
            .execute(
                cohort.clone(),
                admin.clone(),
                cmd(
                    "link-mine",
                    CommandBody::SessionLink {
                        session: "mine".parse()?,
                        title: "mine".into(),
                    },
                ),
            )
            .await?;

        hub_b
            .execute(
                cohort.clone(),
                admin.clone(),
                cmd(
                    "roster-sam",
                    CommandBody::RosterAdd {
                        user: "sam".parse()?,
                        role: Role::Student,
                        name: "Sam".into(),
                    },
                ),
            )
            .await?;
        let (sams, outsiders) = (DocId::Inbox("sam".parse()?), DocId::Inbox("kim".parse()?));
        for (inbox, id) in [(&sams, "n-sam"), (&outsiders, "n-kim")] {
            hub_b
                .execute(inbox.clone(), admin.clone(), cmd(id, notification(id)?))
                .await?;
        }

        let dir = crate::support::TempDir::new("mesh-share-a");
        let mut config = cluster.config("node-a", dir.path(), vec![cluster.peer(b)])?;
        config.mesh.share_cohorts = Some(vec!["c1".into()]);
        let node_a = lectern_node::start(config).await?;
        cluster.dirs.push(dir);
        cluster.nodes.push(("node-a".into(), Some(node_a)));
        let a = cluster.nodes.len() - 1;
        cluster
            .converged(&cohort, &[a, b], Duration::from_secs(10))
            .await?;
        // The session the shared cohort lists follows as soon as the cohort arrives.
        cluster
            .converged(&mine, &[a, b], Duration::from_secs(10))
            .await?;
        assert_eq!(
            cluster.node(a).hub.doc_heads(&theirs),
            None,
            "a session of another cohort never reaches the classroom node"
        );
        // A member's inbox travels both ways (made on the region, then on the classroom);
        // a user outside the cohort keeps theirs off the classroom node.
        cluster
            .converged(&sams, &[a, b], Duration::from_secs(10))
            .await?;
        cluster
            .node(a)
            .hub
            .execute(
                sams.clone(),
                admin.clone(),
                cmd("n-sam-2", notification("n-sam-2")?),
            )
            .await?;
        cluster
            .converged(&sams, &[a, b], Duration::from_secs(10))
            .await?;
        assert_eq!(
            cluster.node(a).hub.doc_heads(&outsiders),
            None,
            "the inbox of a user outside the shared cohorts never reaches the classroom node"
        );
        // A stopped classroom node lets go of its store (its share policy's tasks end with
        // the mesh), so it can be opened again at once, as a restart in this process would.
        cluster.stop(a).await?;
        let reopened = lectern_store::Store::open(cluster.dirs[a].path());
        assert!(
            reopened.is_ok(),
            "the store is still held after the stop: {:?}",
            reopened.err()
        );
        drop(reopened);
        // The test's own handles keep the node's hub, and so its store, open past its stop.
        drop(hub_b);
        cluster.stop_all().await
    })
    .await
}

/// Fails when two QUIC connections stay open between the pair (counted on each endpoint, not
/// in the peer table keyed by name). Nothing forces the two dials to cross here (A's first dial
/// fails before B listens), so the duplicate resolution's mutations pass it; the crossing is
/// forced by `a_second_connection_from_the_preferred_dialer_replaces_and_closes_the_first`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_dialling_each_other_keep_one_connection_and_replicate_both_ways()
-> anyhow::Result<()> {
    within(async {
        let mut cluster = Cluster::new("mesh-mutual")?;
        // Both QUIC addresses are needed before either node starts: reserved ones, which no
        // other socket can be given in between (a probed and released ephemeral port could).
        let (quic_a, quic_b) = (reserved_udp_addr()?, reserved_udp_addr()?);
        let mut started = Vec::new();
        for (name, listen, peer, seed) in [
            ("node-a", quic_a, format!("node-b@{quic_b}"), true),
            ("node-b", quic_b, format!("node-a@{quic_a}"), false),
        ] {
            let dir = crate::support::TempDir::new(&format!("mesh-mutual-{name}"));
            let mut config = cluster.config(name, dir.path(), vec![peer])?;
            config.mesh.listen = listen;
            config.demo = seed;
            let node = lectern_node::start(config).await?;
            cluster.dirs.push(dir);
            cluster.nodes.push((name.into(), Some(node)));
            started.push(cluster.nodes.len() - 1);
        }
        let (a, b) = (started[0], started[1]);
        cluster.connected(a, 1).await?;
        cluster.connected(b, 1).await?;
        cluster
            .converged(&demo_session(), &[a, b], Duration::from_secs(10))
            .await?;
        for (i, id) in [(a, "from-a"), (b, "from-b")] {
            cluster
                .node(i)
                .hub
                .execute(
                    demo_session(),
                    super::demo_caller("student1", Role::Student),
                    cmd(id, crate::support::ask(id)),
                )
                .await?;
        }
        cluster
            .converged(&demo_session(), &[a, b], Duration::from_secs(10))
            .await?;
        // One connection per pair: each side lists the other once, connected ("eventually":
        // a node starved of CPU for longer than the idle timeout drops and redials it).
        for (i, other) in [(a, "node-b"), (b, "node-a")] {
            let mesh = cluster.node(i).mesh.clone().context("mesh")?;
            eventually(
                &format!("node {i} lists {other} once, connected"),
                LIMIT,
                || {
                    let peers = mesh.status().peers;
                    peers.len() == 1 && peers[0].name == other && peers[0].state == "connected"
                },
            )
            .await?;
            // The table is keyed by peer name and cannot show two: count the endpoint's real
            // QUIC connections (a replaced duplicate is closed, so it goes too).
            eventually(
                &format!("node {i} has one open QUIC connection"),
                LIMIT,
                || mesh.open_connections() == 1,
            )
            .await?;
        }
        cluster.stop_all().await
    })
    .await
}

/// A notification for an inbox, as the job runner pushes it.
fn notification(id: &str) -> anyhow::Result<CommandBody> {
    Ok(CommandBody::InboxPush {
        notification: id.parse()?,
        kind: lectern_model::NotifyKind::Announcement,
        title: id.into(),
        body: "Body".into(),
        link: String::new(),
        cohort: None,
    })
}

/// Forces the duplicate that two crossing dials make, deterministically: node `b` dials node
/// `a` and they are connected; then a second connection reaches `b` from `a`'s side, made with
/// `a`'s real cluster certificate and node id (as `a`'s own dial crossing `b`'s would be). `a`
/// is the preferred dialer of the pair (the smaller name), so `b` keeps the new connection and
/// must close its own: `b` is left with ONE open QUIC connection, and `a` sees `b`'s dial go.
/// Once the second connection goes away, `b` dials `a` again, one connection each, and they
/// replicate both ways.
///
/// Kills: no `close(…, "duplicate connection")` for the replaced connection in
/// `Shared::register` (`crates/lectern-mesh/src/driver.rs`): `b` then keeps two connections
/// open, and `a` the one `b` dialled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_from_the_preferred_dialer_replaces_and_closes_the_first()
-> anyhow::Result<()> {
    within(async {
        let mut cluster = Cluster::new("mesh-crossing")?;
        let a = cluster.start("a", vec![], true).await?;
        let b = cluster.start("b", vec![cluster.peer(a)], false).await?;
        cluster.connected(a, 1).await?;
        cluster.connected(b, 1).await?;
        cluster
            .converged(&demo_session(), &[a, b], Duration::from_secs(10))
            .await?;
        let mesh_a = cluster.node(a).mesh.clone().context("mesh a")?;
        let mesh_b = cluster.node(b).mesh.clone().context("mesh b")?;
        eventually("one connection each", LIMIT, || {
            mesh_a.open_connections() == 1 && mesh_b.open_connections() == 1
        })
        .await?;

        // `a`'s second connection to `b`: its certificate, its node id, its hello.
        let tls = lectern_mesh::NodeTls::load(&cluster.tls_dir("a")?)?;
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        endpoint.set_default_client_config(tls.client_config(super::PEER_IDLE_TIMEOUT_MS)?);
        let second = endpoint.connect(cluster.quic(b), "b")?.await?;
        let (mut send, _recv) = second.open_bi().await?;
        send.write_all(&lectern_wire::encode_frame(
            &lectern_wire::PeerFrame::Hello {
                node_id: cluster.node(a).hub.identity().node_id.to_string(),
                name: "a".into(),
                region: "region-a".into(),
                protocol_version: lectern_wire::PROTOCOL_VERSION,
            },
        )?)
        .await?;
        let second_addr = endpoint.local_addr()?.port();
        eventually("b lists the second connection as a", LIMIT, || {
            let peers = mesh_b.status().peers;
            peers.len() == 1
                && peers[0].state == "connected"
                && peers[0]
                    .addr
                    .as_deref()
                    .is_some_and(|addr| addr.ends_with(&format!(":{second_addr}")))
        })
        .await?;
        eventually(
            "b closes the connection it dialled: one open",
            LIMIT,
            || mesh_b.open_connections() == 1,
        )
        .await?;
        eventually("a sees b's dial closed", LIMIT, || {
            mesh_a.open_connections() == 0
        })
        .await?;

        // The second connection goes: b dials a again, one connection each, both ways.
        drop(send);
        second.close(0u32.into(), b"done");
        cluster.connected(a, 1).await?;
        cluster.connected(b, 1).await?;
        for (i, id) in [(a, "crossing-from-a"), (b, "crossing-from-b")] {
            cluster
                .node(i)
                .hub
                .execute(
                    demo_session(),
                    super::demo_caller("student1", Role::Student),
                    cmd(id, crate::support::ask(id)),
                )
                .await?;
        }
        cluster
            .converged(&demo_session(), &[a, b], Duration::from_secs(10))
            .await?;
        eventually("one connection each after the redial", LIMIT, || {
            mesh_a.open_connections() == 1 && mesh_b.open_connections() == 1
        })
        .await?;
        // The meshes hold their hubs: let go of them, or each stop waits for its store.
        drop((mesh_a, mesh_b));
        endpoint.close(0u32.into(), b"done");
        cluster.stop_all().await
    })
    .await
}

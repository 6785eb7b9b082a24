//! Several nodes of one region behind a load balancer, sharing one session: a class of
//! Socket.IO clients spread over three nodes behaves like one room. Every client receives an
//! instructor's broadcast made on one node (100 % delivery across nodes), and attendance counts
//! each user once on every node: 3,000 clients, 1,000 per node (≈ 35 s in a debug build on the
//! shared machine, since presence reports are coalesced; before, each join sent its node's
//! whole user list to every peer, and a join storm of this size overran the receivers).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lectern_testkit::{Client, Transport};
use serde_json::json;

use super::{Cluster, DEMO_SESSION, demo_session, token};

/// Clients per node.
const PER_NODE: usize = 1_000;
/// Clients connecting at once.
const CONNECTING: usize = 32;
/// The whole test's limit: the handshakes and joins on a loaded 2-core machine.
const LIMIT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_of_a_region_share_a_class_as_one_room() -> anyhow::Result<()> {
    tokio::time::timeout(LIMIT, async {
        let mut cluster = Cluster::new("mesh-region")?;
        let a = cluster.start("node-a", vec![], true).await?;
        let b = cluster
            .start("node-b", vec![cluster.peer(a)], false)
            .await?;
        let c = cluster
            .start("node-c", vec![cluster.peer(a), cluster.peer(b)], false)
            .await?;
        for i in [a, b, c] {
            cluster.connected(i, 2).await?;
        }
        cluster
            .converged(&demo_session(), &[a, b, c], Duration::from_secs(10))
            .await?;

        let started = Instant::now();
        let addrs: Vec<_> = [a, b, c]
            .iter()
            .map(|&i| cluster.node(i).http_addr)
            .collect();
        let mut joined: Vec<(usize, Client)> = futures_util::stream::iter(0..3 * PER_NODE)
            .map(|i| {
                let addr = addrs[i % 3];
                async move {
                    let user = format!("region-student{i}");
                    let mut client = Client::connect(
                        addr,
                        Transport::WebSocket,
                        json!({ "token": token(&user, "student") }),
                        &user,
                    )
                    .await?;
                    let ack = client
                        .call("session:join", vec![json!(DEMO_SESSION)])
                        .await?;
                    anyhow::ensure!(ack["ok"] == true, "{user}'s join: {ack}");
                    anyhow::Ok((i, client))
                }
            })
            .buffer_unordered(CONNECTING)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
        // In connection order: clients 0, 1 and 2 are on nodes A, B and C.
        joined.sort_by_key(|(i, _)| *i);
        let mut clients: Vec<Client> = joined.into_iter().map(|(_, c)| c).collect();
        println!(
            "region: {} clients joined over 3 nodes in {:?}",
            clients.len(),
            started.elapsed()
        );

        // Presence counted once across nodes: a client on each node sees every user.
        for (i, client) in clients.iter_mut().take(3).enumerate() {
            client
                .wait_for(&format!("attendance of all on node {i}"), |e| {
                    e.name == "attendance:update" && e.data()["present"] == 3 * PER_NODE
                })
                .await?;
        }
        // The same user on two nodes still counts once.
        let (mut twice, _) =
            super::joined(cluster.node(b), "region-student0", "student", None).await?;
        twice
            .wait_for("attendance unchanged with a user on two nodes", |e| {
                e.name == "attendance:update" && e.data()["present"] == 3 * PER_NODE
            })
            .await?;

        // One broadcast on node A reaches every client on every node.
        let (mut ada, _) = super::joined(cluster.node(a), "ada", "instructor", None).await?;
        let sent = Instant::now();
        let ack = ada
            .call(
                "broadcast:send",
                vec![json!(DEMO_SESSION), json!("pens down")],
            )
            .await?;
        anyhow::ensure!(ack["ok"] == true, "broadcast: {ack}");
        for client in &mut clients {
            client
                .wait_for("the broadcast", |e| {
                    e.name == "broadcast" && e.data()["text"] == "pens down"
                })
                .await?;
        }
        println!(
            "region: the broadcast reached all {} clients in {:?}",
            clients.len(),
            sent.elapsed()
        );
        for client in clients {
            client.disconnect().await;
        }
        twice.disconnect().await;
        ada.disconnect().await;
        cluster.stop_all().await
    })
    .await
    .map_err(|_| anyhow::anyhow!("the region test did not finish within {LIMIT:?}"))?
}

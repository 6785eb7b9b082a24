//! Presence across nodes: `attendance:update` on one node counts the students connected to
//! every node (carried by ephemeral frames), and a node that goes silent stops counting within
//! 30 s (here: the 3 s idle timeout of the test cluster).

use std::time::{Duration, Instant};

use lectern_testkit::UdpProxy;

use super::{Cluster, demo_session, joined, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attendance_counts_students_on_every_node_and_a_dead_node_expires() -> anyhow::Result<()> {
    within(async {
        let mut cluster = Cluster::new("mesh-presence")?;
        let b = cluster.start("node-b", vec![], true).await?;
        let to_b = UdpProxy::start(cluster.quic(b), 4).await?;
        let a = cluster
            .start("node-a", vec![format!("node-b@{}", to_b.addr())], false)
            .await?;
        cluster.connected(b, 1).await?;
        cluster
            .converged(&demo_session(), &[a, b], Duration::from_secs(10))
            .await?;

        let (on_a, _) = joined(cluster.node(a), "student1", "student", None).await?;
        let (mut on_b, _) = joined(cluster.node(b), "student2", "student", None).await?;
        on_b.wait_for("attendance of 2 on B", |e| {
            e.name == "attendance:update" && e.data()["present"] == 2
        })
        .await?;

        // A goes silent (its link is cut, its student still connected there).
        let cut = Instant::now();
        to_b.partition();
        // The first `present: 1` after a `present: 2` (events are checked in arrival order, so
        // an update from before both students were counted cannot match).
        let counted_both = std::cell::Cell::new(false);
        on_b.wait_for("attendance back to 1 on B", |e| {
            if e.name != "attendance:update" {
                return false;
            }
            if e.data()["present"] == 2 {
                counted_both.set(true);
            }
            counted_both.get() && e.data()["present"] == 1
        })
        .await?;
        let took = cut.elapsed();
        assert!(took <= Duration::from_secs(30), "expired after {took:?}");
        println!("presence: a silent node's students expired after {took:?}");
        drop(on_a);
        cluster.stop_all().await
    })
    .await
}

/// A partial mesh (a region hub B with A and C each peered only with B): a student on A counts
/// on C, because B relays presence reports once to its other peers. Kills: no relay in
/// `node/src/presence.rs` (C then counts only its own student).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_crosses_a_partial_mesh_through_its_hub() -> anyhow::Result<()> {
    within(async {
        let mut cluster = Cluster::new("mesh-presence-hub")?;
        let b = cluster.start("node-b", vec![], true).await?;
        let a = cluster
            .start("node-a", vec![cluster.peer(b)], false)
            .await?;
        let c = cluster
            .start("node-c", vec![cluster.peer(b)], false)
            .await?;
        cluster.connected(b, 2).await?;
        cluster.connected(a, 1).await?;
        cluster.connected(c, 1).await?;
        cluster
            .converged(&demo_session(), &[a, b, c], Duration::from_secs(10))
            .await?;

        let (_on_a, _) = joined(cluster.node(a), "student1", "student", None).await?;
        let (mut on_c, _) = joined(cluster.node(c), "student2", "student", None).await?;
        on_c.wait_for("attendance of 2 on C, one of them on A", |e| {
            e.name == "attendance:update" && e.data()["present"] == 2
        })
        .await?;
        // The same user on two nodes counts once.
        let (_again_on_a, _) = joined(cluster.node(a), "student2", "student", None).await?;
        let (mut on_b, _) = joined(cluster.node(b), "student3", "student", None).await?;
        on_b.wait_for("attendance of 3 on B", |e| {
            e.name == "attendance:update" && e.data()["present"] == 3
        })
        .await?;
        assert!(
            !on_b
                .seen()
                .iter()
                .any(|e| e.name == "attendance:update" && e.data()["present"].as_u64() > Some(3)),
            "a user on two nodes counted twice"
        );
        cluster.stop_all().await
    })
    .await
}

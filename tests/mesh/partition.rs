//! Partition and heal: node A reaches B and C only through fault-injecting UDP proxies. The
//! proxies cut A off (long enough for the QUIC connections to die) while both sides keep
//! writing: asks, upvotes (the same student upvoting the same question on both sides), poll
//! votes (the same student voting on both sides), progress. After the heal every node reaches
//! identical heads, every acknowledged command is present on every node, and no vote is
//! counted twice.
//!
//! How fast the heads converge after a heal (the 2 s) is a performance figure, measured
//! on a quiet machine by `lectern-bench mesh catch-up` (heal → reconnect, then reconnect →
//! identical heads; BENCHMARKS.md). Here the limit is generous, because on a loaded machine the
//! time is dominated by scheduling and by when A's next dial goes out (a dial whose first packet
//! the partition dropped is abandoned after the dial timeout, then retried); the test prints the
//! time it took.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use lectern_hub::Hub;
use lectern_model::{
    CommandBody, CommandId, DocId, PollChoice, PollKind, PollSpec, ProgressStatus, Role,
};
use lectern_node::DEMO_COHORT;
use lectern_testkit::UdpProxy;

use super::{Cluster, demo_caller, demo_session, eventually, within};

/// How long the nodes may take to converge after the heal (see the module doc for the 2 s).
const HEAL_LIMIT: Duration = Duration::from_secs(15);

/// How long a change may take to reach the connected nodes (a correctness wait: the latency
/// itself is measured by `lectern-bench mesh latency`).
const REPLICATE_LIMIT: Duration = Duration::from_secs(10);
use crate::support::{ask, cmd};

/// Commands acknowledged so far: (doc, command id).
type Acked = Arc<Mutex<Vec<(DocId, String)>>>;

/// Runs `body` as `user` on `hub`; records the command if acknowledged.
async fn write(
    hub: &Hub,
    acked: &Acked,
    doc: DocId,
    user: &str,
    role: Role,
    id: String,
    body: CommandBody,
) -> anyhow::Result<()> {
    match hub
        .execute(doc.clone(), demo_caller(user, role), cmd(&id, body))
        .await
    {
        Ok(_) => {
            acked.lock().expect("lock").push((doc, id));
            Ok(())
        }
        Err(e) => anyhow::bail!("{id} refused: {e}"),
    }
}

/// One side's writes while partitioned: asks, an upvote of `question` and a vote on `poll` by
/// `student1` (so both sides carry the same voter), progress of `student1`.
async fn side_writes(
    hub: Hub,
    acked: Acked,
    side: &'static str,
    question: String,
    poll: String,
    rating: u32,
) -> anyhow::Result<()> {
    let session = demo_session();
    let cohort = DocId::Cohort(DEMO_COHORT.parse()?);
    for n in 0..20 {
        let asker = if n % 2 == 0 { "student1" } else { "student2" };
        write(
            &hub,
            &acked,
            session.clone(),
            asker,
            Role::Student,
            format!("{side}-ask-{n}"),
            ask(&format!("{side} question {n}")),
        )
        .await?;
    }
    write(
        &hub,
        &acked,
        session.clone(),
        "student1",
        Role::Student,
        format!("{side}-upvote"),
        CommandBody::QaUpvote {
            question: question.parse()?,
        },
    )
    .await?;
    write(
        &hub,
        &acked,
        session.clone(),
        "student1",
        Role::Student,
        format!("{side}-vote"),
        CommandBody::PollVote {
            poll: poll.parse()?,
            choice: PollChoice::Rating(rating),
        },
    )
    .await?;
    write(
        &hub,
        &acked,
        cohort,
        "student1",
        Role::Student,
        format!("{side}-progress"),
        CommandBody::ProgressUpdate {
            student: "student1".parse()?,
            lesson: format!("lesson-{side}").parse()?,
            status: Some(ProgressStatus::InProgress),
            score: None,
            max_score: None,
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_heals_to_identical_heads_with_every_acked_command_and_no_double_vote()
-> anyhow::Result<()> {
    within(async {
        let mut cluster = Cluster::new("mesh-part")?;
        let c = cluster.start("node-c", vec![], true).await?;
        let b = cluster
            .start("node-b", vec![cluster.peer(c)], false)
            .await?;
        let to_b = UdpProxy::start(cluster.quic(b), 1).await?;
        let to_c = UdpProxy::start(cluster.quic(c), 2).await?;
        let a = cluster
            .start(
                "node-a",
                vec![
                    format!("node-b@{}", to_b.addr()),
                    format!("node-c@{}", to_c.addr()),
                ],
                false,
            )
            .await?;
        for i in [a, b, c] {
            cluster.connected(i, 2).await?;
        }
        let session = demo_session();
        let cohort = DocId::Cohort(DEMO_COHORT.parse()?);
        cluster
            .converged(&session, &[a, b, c], REPLICATE_LIMIT)
            .await?;
        cluster
            .converged(&cohort, &[a, b, c], REPLICATE_LIMIT)
            .await?;

        // A question and a poll everyone knows before the partition.
        let acked: Acked = Arc::default();
        let hub = |i: usize| cluster.node(i).hub.clone();
        write(
            &hub(c),
            &acked,
            session.clone(),
            "student2",
            Role::Student,
            "q-shared".into(),
            ask("shared question"),
        )
        .await?;
        write(
            &hub(c),
            &acked,
            session.clone(),
            "ada",
            Role::Instructor,
            "poll-shared".into(),
            CommandBody::PollCreate(PollSpec {
                question: "Rate it".into(),
                kind: PollKind::Rating,
                options: vec![],
                scale_max: Some(5),
                hide_results: false,
            }),
        )
        .await?;
        cluster
            .converged(&session, &[a, b, c], REPLICATE_LIMIT)
            .await?;

        // Partition A from B and C; write on both sides until A has noticed.
        to_b.partition();
        to_c.partition();
        let side_a = side_writes(
            hub(a),
            acked.clone(),
            "a",
            "q-shared".into(),
            "poll-shared".into(),
            4,
        );
        let side_b = side_writes(
            hub(b),
            acked.clone(),
            "b",
            "q-shared".into(),
            "poll-shared".into(),
            2,
        );
        let side_c = async {
            for n in 0..20 {
                write(
                    &hub(c),
                    &acked,
                    session.clone(),
                    "student2",
                    Role::Student,
                    format!("c-ask-{n}"),
                    ask(&format!("c question {n}")),
                )
                .await?;
            }
            anyhow::Ok(())
        };
        tokio::try_join!(side_a, side_b, side_c)?;
        let mesh_a = cluster.node(a).mesh.clone().context("mesh")?;
        eventually("A notices the partition", Duration::from_secs(20), || {
            mesh_a.connected_peers().is_empty()
        })
        .await?;
        // More writes while A is cut off and knows it.
        write(
            &hub(a),
            &acked,
            session.clone(),
            "student2",
            Role::Student,
            "a-late".into(),
            ask("late from A"),
        )
        .await?;
        assert_ne!(
            cluster.node(a).hub.doc_heads(&session),
            cluster.node(b).hub.doc_heads(&session),
            "the sides diverged"
        );
        assert!(to_b.stats().dropped > 0, "the proxy dropped traffic");

        // Heal: identical heads everywhere.
        let healed = std::time::Instant::now();
        to_b.heal();
        to_c.heal();
        let took = cluster.converged(&session, &[a, b, c], HEAL_LIMIT).await?;
        cluster.converged(&cohort, &[a, b, c], HEAL_LIMIT).await?;
        println!(
            "partition healed: session converged {took:?} after the heal, cohort too after {:?} \
             (the 2 s target is measured by `lectern-bench mesh catch-up`)",
            healed.elapsed()
        );

        // Every acknowledged command is on every node.
        let acked = acked.lock().expect("lock").clone();
        assert_eq!(acked.len(), 2 + 2 * 23 + 20 + 1);
        for i in [a, b, c] {
            for (doc, id) in &acked {
                let id: CommandId = id.parse()?;
                let present = cluster
                    .node(i)
                    .hub
                    .read(doc.clone(), move |r| r.has_applied(&id))
                    .await?;
                assert!(present, "node {i} lacks acknowledged command on {doc}");
            }
        }

        // No vote counted twice: student1 upvoted and voted on both sides.
        let ada = demo_caller("ada", Role::Instructor);
        for i in [a, b, c] {
            let ada = ada.clone();
            let view = cluster
                .node(i)
                .hub
                .read(session.clone(), move |r| {
                    r.session_view(&ada, lectern_hub::system_now())
                })
                .await??;
            let q = view["questions"]
                .as_array()
                .and_then(|qs| qs.iter().find(|q| q["id"] == "q-shared"))
                .context("the shared question")?;
            assert_eq!(q["upvotes"], 1, "student1's two upvotes count once: {q}");
            let p = view["polls"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["id"] == "poll-shared"))
                .context("the shared poll")?;
            assert_eq!(
                p["results"]["voters"], 1,
                "student1's two votes count once: {p}"
            );
        }
        // The test's own handles keep the node's hub, and so its store, open past its stop.
        drop(mesh_a);
        cluster.stop_all().await
    })
    .await
}

//! A peer held to a scope (`mesh.peer_cohorts`): a region node lets a classroom node exchange
//! the documents of the cohorts it serves and nothing else, both ways. Here the classroom node
//! is compromised (it shares everything and writes what it likes): its writes inside its
//! cohort arrive, a cohort it invents and a session it forges for another cohort are refused
//! and counted, and the region's other cohorts never reach it.

use std::time::Duration;

use lectern_model::{CommandBody, DocId, Role};

use super::{Cluster, eventually, within};
use crate::support::{caller, cmd};

fn cohort_create(title: &str) -> CommandBody {
    CommandBody::CohortCreate {
        course: "Course".into(),
        title: title.into(),
        home_region: "x".into(),
    }
}

fn session_create(cohort: &str, title: &str) -> anyhow::Result<CommandBody> {
    Ok(CommandBody::SessionCreate {
        cohort: cohort.parse()?,
        title: title.into(),
        moderation: false,
    })
}

/// Kills: scopes not passed from the configuration to the mesh, a scope applied only to what
/// the region sends (the forged documents arrive), refusals not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_peer_writes_only_inside_its_cohorts_and_sees_nothing_else() -> anyhow::Result<()>
{
    within(async {
        let mut cluster = Cluster::new("mesh-scope")?;
        let b = cluster
            .start_with("node-b", vec![], false, |c| {
                c.mesh.peer_cohorts = vec![("node-c".into(), vec!["c1".into()])];
            })
            .await?;
        let admin = caller("admin", Role::Admin);
        let hub_b = cluster.node(b).hub.clone();
        let (c1, c2) = (DocId::Cohort("c1".parse()?), DocId::Cohort("c2".parse()?));
        let mine = DocId::Session("mine".parse()?);
        let theirs = DocId::Session("theirs".parse()?);
        hub_b
            .execute(c1.clone(), admin.clone(), cmd("c1", cohort_create("C1")))
            .await?;
        hub_b
            .execute(c2.clone(), admin.clone(), cmd("c2", cohort_create("C2")))
            .await?;
        hub_b
            .execute(
                mine.clone(),
                admin.clone(),
                cmd("mine", session_create("c1", "mine")?),
            )
            .await?;
        hub_b
            .execute(
                theirs.clone(),
                admin.clone(),
                cmd("theirs", session_create("c2", "theirs")?),
            )
            .await?;
        hub_b
            .execute(
                c1.clone(),
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

        let c = cluster
            .start("node-c", vec![cluster.peer(b)], false)
            .await?;
        cluster.connected(b, 1).await?;
        cluster
            .converged(&c1, &[b, c], Duration::from_secs(10))
            .await?;
        cluster
            .converged(&mine, &[b, c], Duration::from_secs(10))
            .await?;

        // The compromised classroom node writes inside its cohort, invents a cohort, and forges
        // a session for the region's other cohort.
        let hub_c = cluster.node(c).hub.clone();
        hub_c
            .execute(
                c1.clone(),
                admin.clone(),
                cmd(
                    "roster-sam",
                    CommandBody::RosterAdd {
                        user: "sam".parse()?,
                        role: Role::Instructor,
                        name: "Sam".into(),
                    },
                ),
            )
            .await?;
        let invented = DocId::Cohort("c9".parse()?);
        let forged = DocId::Session("forged".parse()?);
        hub_c
            .execute(
                invented.clone(),
                admin.clone(),
                cmd("c9", cohort_create("C9")),
            )
            .await?;
        hub_c
            .execute(
                forged.clone(),
                admin.clone(),
                cmd("forged", session_create("c2", "forged")?),
            )
            .await?;

        cluster
            .converged(&c1, &[b, c], Duration::from_secs(10))
            .await?;
        let mesh_b = cluster.node(b).mesh.clone().expect("B runs a mesh");
        eventually(
            "B refuses the documents outside node-c's scope",
            Duration::from_secs(10),
            || mesh_b.status().frames_refused >= 2,
        )
        .await?;
        for doc in [&invented, &forged] {
            assert_eq!(
                hub_b.doc_heads(doc),
                None,
                "{doc} must not reach the region"
            );
        }
        for doc in [&c2, &theirs] {
            assert_eq!(
                hub_c.doc_heads(doc),
                None,
                "{doc} is outside node-c's scope: never sent to it"
            );
        }
        let metrics = cluster.node(b).gateway.metrics_text();
        assert!(
            metrics.lines().any(|l| l
                .strip_prefix("lectern_mesh_frames_refused_total{reason=\"scope\"} ")
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n >= 2)),
            "{metrics}"
        );
        cluster.stop_all().await
    })
    .await
}

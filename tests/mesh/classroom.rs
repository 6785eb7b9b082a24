//! The classroom profile (`[classroom] upstream, cohorts`): a node configured with nothing but
//! its upstream region node and its cohorts dials the region, pulls those cohorts' documents,
//! shows its uplink in `/admin/status` (`lectern status`), keeps serving its class when the
//! region goes away, and says since when the uplink is down.

use std::time::Duration;

use lectern_model::{CommandBody, DocId, Role};
use lectern_node::DEMO_COHORT;
use lectern_testkit::Http;

use super::{Cluster, demo_caller, demo_session, eventually_ok, within};
use crate::support::{ask, cmd};

/// The admin status of node `i`.
async fn status(cluster: &Cluster, i: usize) -> anyhow::Result<serde_json::Value> {
    let r = Http::new(cluster.node(i).http_addr)
        .get("/admin/status", Some("admin-token-0123456789"))
        .await?;
    anyhow::ensure!(r.status == 200, "status: {} {}", r.status, r.text());
    r.json()
}

/// Kills: the upstream not dialled (nothing arrives), the cohorts not made the share policy
/// (the other cohort's session arrives), the uplink not reported, or reported up once down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classroom_node_pulls_its_cohorts_and_reports_its_uplink() -> anyhow::Result<()> {
    within(async {
        let mut cluster = Cluster::new("mesh-classroom")?;
        let region = cluster.start("node-b", vec![], true).await?;
        // A session of another cohort on the region: it must not reach the classroom.
        let other = DocId::Session("other-cohort-session".parse()?);
        cluster
            .node(region)
            .hub
            .execute(
                other.clone(),
                demo_caller("admin", Role::Admin),
                cmd(
                    "other",
                    CommandBody::SessionCreate {
                        cohort: "another-cohort".parse()?,
                        title: "Elsewhere".into(),
                        moderation: false,
                    },
                ),
            )
            .await?;
        let classroom = cluster.start_classroom("node-a", region).await?;
        let cohort = DocId::Cohort(DEMO_COHORT.parse()?);
        cluster
            .converged(&cohort, &[region, classroom], Duration::from_secs(15))
            .await?;
        cluster
            .converged(
                &demo_session(),
                &[region, classroom],
                Duration::from_secs(15),
            )
            .await?;
        assert_eq!(cluster.node(classroom).hub.doc_heads(&other), None);
        let up = status(&cluster, classroom).await?;
        assert_eq!(up["classroom"]["uplink"], "up", "{up}");
        assert_eq!(up["classroom"]["cohorts"][0], DEMO_COHORT, "{up}");

        // The region goes away: the class goes on, and the uplink is reported down.
        cluster.stop(region).await?;
        eventually_ok(
            "the uplink is reported down",
            Duration::from_secs(20),
            || async {
                let s = status(&cluster, classroom).await?;
                anyhow::ensure!(s["classroom"]["uplink"] == "down", "{s}");
                anyhow::ensure!(s["classroom"]["offlineS"].is_u64(), "{s}");
                Ok(())
            },
        )
        .await?;
        cluster
            .node(classroom)
            .hub
            .execute(
                demo_session(),
                demo_caller("student1", Role::Student),
                cmd("offline-ask", ask("asked while the uplink is down")),
            )
            .await?;
        cluster.stop_all().await
    })
    .await
}

//! `lectern-node --demo --nodes 3`: three nodes in one process, each with its own store, HTTP
//! port and QUIC port, joined by real mutual TLS, each with links to the same demo session that
//! work on that node.

use std::time::Duration;

use anyhow::Context;
use lectern_node::{Config, DEMO_SESSION};
use lectern_testkit::Http;

use super::{demo_session, eventually, within};
use crate::support::TempDir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_cluster_of_three_serves_the_same_session_on_every_node() -> anyhow::Result<()> {
    within(async {
        let dir = TempDir::new("mesh-demo");
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            http: "127.0.0.1:0".parse()?,
            demo: true,
            ..Default::default()
        };
        config.mesh.listen = "127.0.0.1:0".parse()?;
        let cluster = lectern_node::start_demo_cluster(config, 3).await?;
        let names: Vec<&str> = cluster.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["sydney", "berlin", "virginia"]);
        let seeder = &cluster[0].1;
        for (name, node) in &cluster {
            let mesh = node.mesh.clone().context("each demo node runs the mesh")?;
            eventually(
                &format!("{name} connects to both others"),
                Duration::from_secs(10),
                || mesh.connected_peers().len() == 2,
            )
            .await?;
            eventually(
                &format!("{name} has the whole demo session"),
                Duration::from_secs(10),
                || {
                    let heads = node.hub.doc_heads(&demo_session());
                    heads.is_some() && heads == seeder.hub.doc_heads(&demo_session())
                },
            )
            .await?;
            let links = node.demo.as_ref().context("every node prints links")?;
            let base = format!("http://{}/", node.http_addr);
            assert!(links.student.starts_with(&base), "{}", links.student);
            assert!(links.instructor.starts_with(&base), "{}", links.instructor);
            assert!(links.student.contains(&format!("session={DEMO_SESSION}")));
            // The student link's token works on this node.
            let token = links
                .student
                .split("token=")
                .nth(1)
                .context("the link has a token")?;
            let view = Http::new(node.http_addr)
                .get(&format!("/api/sessions/{DEMO_SESSION}"), Some(token))
                .await?;
            assert_eq!(view.status, 200, "{name}: {}", view.text());
        }
        for (_, node) in cluster {
            node.stop().await?;
        }
        Ok(())
    })
    .await
}

/// `lectern-node --demo --demo-classroom`: the demo's region node and a classroom node of the
/// demo cohort. Kills: the classroom node not pulling the class from its upstream, its
/// instructor link not seeing the uplink in sync, or not making a join code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_with_a_classroom_node_shows_the_uplink_and_makes_join_codes() -> anyhow::Result<()>
{
    within(async {
        let dir = TempDir::new("mesh-demo-classroom");
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            http: "127.0.0.1:0".parse()?,
            demo: true,
            ..Default::default()
        };
        config.mesh.listen = "127.0.0.1:0".parse()?;
        let cluster = lectern_node::start_demo_cluster_with(config, 1, true).await?;
        let names: Vec<&str> = cluster.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["sydney", lectern_node::DEMO_CLASSROOM]);
        let (region, classroom) = (&cluster[0].1, &cluster[1].1);
        eventually(
            "the classroom node has the demo session",
            Duration::from_secs(15),
            || {
                let heads = classroom.hub.doc_heads(&demo_session());
                heads.is_some() && heads == region.hub.doc_heads(&demo_session())
            },
        )
        .await?;
        let links = classroom
            .demo
            .as_ref()
            .context("the classroom prints links")?;
        let token = links
            .instructor
            .split("token=")
            .nth(1)
            .context("the link has a token")?
            .to_owned();
        let http = Http::new(classroom.http_addr);
        super::eventually_ok("the uplink in sync", Duration::from_secs(15), || async {
            let r = http.get("/api/classroom", Some(&token)).await?;
            anyhow::ensure!(r.status == 200, "{} {}", r.status, r.text());
            anyhow::ensure!(r.json()?["state"] == "in_sync", "{}", r.text());
            Ok(())
        })
        .await?;
        let made = http
            .post_json(
                &format!("/api/sessions/{DEMO_SESSION}/join-codes"),
                Some(&token),
                &serde_json::json!({}),
            )
            .await?;
        assert_eq!(made.status, 200, "{}", made.text());
        for (_, node) in cluster {
            node.stop().await?;
        }
        Ok(())
    })
    .await
}

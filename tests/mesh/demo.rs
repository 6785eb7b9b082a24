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

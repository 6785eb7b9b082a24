//! One trust per cluster: `lectern cluster init` makes the token key beside the CA, `lectern
//! cluster issue-node` puts it in every node's bundle, so a token minted with one node's
//! configuration is accepted by every node started from its own bundle, and refused by a node
//! outside the cluster.

use lectern_node::Config;
use lectern_testkit::Http;

use super::lectern;
use super::within;
use crate::support::TempDir;

/// A node started from `bundle` (its `mesh.tls_dir`) with its own data directory.
async fn node_from(
    dir: &TempDir,
    name: &str,
    bundle: Option<std::path::PathBuf>,
) -> anyhow::Result<lectern_node::Node> {
    let mut config = Config {
        data_dir: dir.path().join(format!("{name}-data")),
        http: "127.0.0.1:0".parse()?,
        demo: true,
        ..Config::default()
    };
    config.mesh.name = name.to_owned();
    config.mesh.listen = "127.0.0.1:0".parse()?;
    config.mesh.tls_dir = bundle;
    lectern_node::start(config).await
}

/// Kills: `resolve_secret` not reading the bundle's `auth-secret` (each node makes its own and
/// the second node refuses the token), and `issue-node` not copying it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_minted_for_one_node_works_on_every_node_of_the_cluster() {
    within(async {
        let dir = TempDir::new("ops-trust");
        let ca = dir.path().join("ca");
        let ca_arg = ca.display().to_string();
        lectern(&["cluster", "init", "--out", &ca_arg])
            .await?
            .expect_code(0)?;
        let mut bundles = Vec::new();
        for id in ["eu-1", "us-1"] {
            let out = dir.path().join(format!("{id}-tls"));
            let out_arg = out.display().to_string();
            lectern(&[
                "cluster",
                "issue-node",
                "--id",
                id,
                "--ca",
                &ca_arg,
                "--out",
                &out_arg,
            ])
            .await?
            .expect_code(0)?;
            let secret = out.join("auth-secret");
            let mode =
                std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&secret)?.permissions());
            assert_eq!(mode & 0o777, 0o600, "the bundle's token key is private");
            bundles.push(out);
        }
        let eu = node_from(&dir, "eu-1", Some(bundles[0].clone())).await?;
        let us = node_from(&dir, "us-1", Some(bundles[1].clone())).await?;
        let outsider = node_from(&dir, "outsider", None).await?;

        // Minted with the EU node's configuration, as its operator would.
        let config = dir.path().join("eu-1.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\n[mesh]\nname = \"eu-1\"\ntls_dir = {:?}\n",
                dir.path().join("eu-1-data"),
                bundles[0]
            ),
        )?;
        let config_arg = config.display().to_string();
        let minted = lectern(&[
            "token",
            "mint",
            "--user",
            "student1",
            "--role",
            "student",
            "--cohort",
            "demo",
            "--config",
            &config_arg,
        ])
        .await?
        .expect_code(0)?;
        let token = minted.stdout.trim().to_owned();
        for (name, node, expected) in [
            ("eu", &eu, 200),
            ("us", &us, 200),
            ("outsider", &outsider, 401),
        ] {
            let got = Http::new(node.http_addr)
                .get("/api/notifications", Some(&token))
                .await?;
            assert_eq!(
                got.status,
                expected,
                "{name}: {}",
                String::from_utf8_lossy(&got.body)
            );
        }
        for node in [eu, us, outsider] {
            node.stop().await?;
        }
        Ok(())
    })
    .await
    .unwrap();
}

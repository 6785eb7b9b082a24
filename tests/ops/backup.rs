//! `lectern backup` of a running node while it takes commands, and `lectern restore` onto a
//! new data directory: a node started there holds every document of the backup with the heads
//! recorded; a damaged backup and a directory that already holds documents are refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use lectern_model::{Caller, CommandBody, DocId, Role};
use lectern_node::Config;

use super::{lectern, within};
use crate::support::{TempDir, cmd};

const ADMIN_TOKEN: &str = "an-admin-token-for-the-backup-test";

/// Kills: a backup that stops the node's writes (the asks stall), one that reads documents
/// around their writers (a torn document fails its heads check), a checksum not checked, a
/// restore that overwrites a store, a restored document that differs from the backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_node_is_backed_up_and_restored_onto_a_new_one() {
    within(async {
        let dir = TempDir::new("ops-backup");
        let node = lectern_node::start(Config {
            data_dir: dir.path().join("a"),
            http: "127.0.0.1:0".parse()?,
            admin_token: Some(ADMIN_TOKEN.to_owned()),
            demo: true,
            ..Config::default()
        })
        .await?;
        let addr = node.http_addr.to_string();
        let admin = ["--http", addr.as_str(), "--admin-token", ADMIN_TOKEN];

        // A class keeps asking while the backup runs.
        let stop = Arc::new(AtomicBool::new(false));
        let student = Caller {
            user: "student1".parse()?,
            name: "Student 1".into(),
            role: Role::Student,
            cohorts: vec![lectern_node::DEMO_COHORT.parse()?],
        };
        let session = DocId::Session(lectern_node::DEMO_SESSION.parse()?);
        let asking = {
            let (hub, stop, session) = (node.hub.clone(), stop.clone(), session.clone());
            tokio::spawn(async move {
                let mut acked = 0u32;
                while !stop.load(Ordering::Relaxed) && acked < 90 {
                    let body = CommandBody::QaAsk {
                        text: format!("asked during the backup {acked}"),
                        anonymous: false,
                    };
                    if hub
                        .execute(
                            session.clone(),
                            student.clone(),
                            cmd(&format!("b{acked}"), body),
                        )
                        .await
                        .is_ok()
                    {
                        acked += 1;
                    }
                }
                acked
            })
        };
        let out = dir.path().join("node-a.backup");
        let out_s = out.display().to_string();
        let mut args = vec!["--json", "backup", "--out", out_s.as_str()];
        args.extend(admin);
        let backed = lectern(&args).await?.expect_code(0)?;
        let backed: serde_json::Value = serde_json::from_str(&backed.stdout)?;
        stop.store(true, Ordering::Relaxed);
        let acked = asking.await?;
        assert!(acked > 0, "the node kept taking commands");
        assert!(backed["docs"].as_u64().unwrap_or(0) >= 3, "{backed}");

        let verified = lectern_node::backup::verify(&out)?;
        let restored_dir = dir.path().join("b");
        let restored_s = restored_dir.display().to_string();
        let restored = lectern(&["--json", "restore", &out_s, "--data-dir", &restored_s])
            .await?
            .expect_code(0)?;
        let restored: serde_json::Value = serde_json::from_str(&restored.stdout)?;
        assert_eq!(restored["docs"], verified.docs.len(), "{restored}");
        // Never over a store that holds documents.
        lectern(&["--json", "restore", &out_s, "--data-dir", &restored_s])
            .await?
            .expect_code(1)?;
        // A damaged backup is refused before anything is written.
        let mut damaged = std::fs::read(&out)?;
        let at = damaged.len() / 2;
        damaged[at] = if damaged[at] == b'A' { b'B' } else { b'A' };
        let damaged_path = dir.path().join("damaged.backup");
        std::fs::write(&damaged_path, damaged)?;
        let refused = lectern(&[
            "--json",
            "restore",
            &damaged_path.display().to_string(),
            "--data-dir",
            &dir.path().join("c").display().to_string(),
        ])
        .await?
        .expect_code(1)?;
        assert!(refused.stdout.contains("damaged"), "{}", refused.stdout);
        node.stop().await?;

        // A node on the restored directory holds every document with the recorded heads.
        let b = lectern_node::start(Config {
            data_dir: restored_dir.clone(),
            http: "127.0.0.1:0".parse()?,
            ..Config::default()
        })
        .await?;
        for (doc, heads, _) in &verified.docs {
            let now = b.hub.read(doc.clone(), |r| r.token().to_string()).await?;
            assert_eq!(&now, heads, "{doc}");
        }
        b.stop().await
    })
    .await
    .unwrap();
}

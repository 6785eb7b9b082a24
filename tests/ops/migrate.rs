//! `lectern store migrate` on a stopped node's store: down to schema version 1 (refused while
//! the feature-flags document is there, unless it is discarded), idempotent, a store of
//! version 1 as its builds expect it (nothing of version 2 left), a node of this build that
//! refuses it naming the command, then up again, and a node that opens it with every document
//! as it was.

use lectern_model::{CommandBody, DocId, Feature, Role};
use lectern_node::Config;

use super::{lectern, within};
use crate::support::{TempDir, cmd};

/// Every document and its stored bytes, in id order.
fn stored(dir: &std::path::Path) -> anyhow::Result<Vec<(String, lectern_store::StoredDoc)>> {
    let store = lectern_store::Store::open(dir)?;
    let mut out = Vec::new();
    for id in store.doc_ids()? {
        let doc = store
            .load_doc(&id)?
            .ok_or_else(|| anyhow::anyhow!("{id} is listed but not stored"))?;
        out.push((id, doc));
    }
    Ok(out)
}

/// Kills: a down migration that drops the flags document silently (or keeps it in a version-1
/// store), one that touches any other document, a second run that writes again, a node that
/// opens an older store without a word or without naming the command, an up migration that
/// loses anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_migrated_down_and_up_again_keeps_every_document() {
    within(async {
        let tmp = TempDir::new("ops-migrate");
        let data = tmp.path().join("node");
        let config = || Config {
            data_dir: data.clone(),
            http: "127.0.0.1:0".parse().expect("an address"),
            demo: true,
            ..Config::default()
        };
        let node = lectern_node::start(config()).await?;
        let operator = lectern_model::Caller {
            user: "operator".parse()?,
            name: "Operator".into(),
            role: Role::Admin,
            cohorts: Vec::new(),
        };
        node.hub
            .execute(
                DocId::Flags,
                operator,
                cmd(
                    "flag-1",
                    CommandBody::FlagSet {
                        feature: Feature::Polls,
                        cohort: None,
                        enabled: false,
                    },
                ),
            )
            .await?;
        node.stop().await?;
        let before = stored(&data)?;
        assert!(before.iter().any(|(id, _)| id == "flags/cluster"));
        assert!(
            before.len() > 2,
            "the demo class is stored: {}",
            before.len()
        );
        let dir = data.to_str().expect("a UTF-8 path");

        // Down: refused while the flags document is there, naming it; nothing written.
        let blocked = lectern(&["--json", "store", "migrate", "--data-dir", dir, "--to", "1"])
            .await?
            .expect_code(8)?;
        let v = blocked.json()?;
        assert_eq!(v["error"]["code"], "migration_blocked", "{v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("flags/cluster") && message.contains("--discard-flags"),
            "{message}"
        );
        assert_eq!(lectern_store::migrate::schema_version(&data)?, 2);

        let down = lectern(&[
            "--json",
            "store",
            "migrate",
            "--data-dir",
            dir,
            "--to",
            "1",
            "--discard-flags",
        ])
        .await?
        .expect_code(0)?
        .json()?;
        assert_eq!(
            (down["from"].as_u64(), down["to"].as_u64()),
            (Some(2), Some(1)),
            "{down}"
        );
        assert!(down["keysChanged"].as_u64() >= Some(2), "{down}");
        // Again: nothing to do.
        let again = lectern(&["--json", "store", "migrate", "--data-dir", dir, "--to", "1"])
            .await?
            .expect_code(0)?
            .json()?;
        assert_eq!(
            (again["from"].as_u64(), again["keysChanged"].as_u64()),
            (Some(1), Some(0))
        );

        // What a version-1 build expects: version 1, and nothing of version 2 left.
        assert_eq!(lectern_store::migrate::schema_version(&data)?, 1);
        let refused = lectern_node::start(config())
            .await
            .err()
            .map(|e| format!("{e:#}"));
        let refused = refused.unwrap_or_default();
        assert!(
            refused.contains(&format!("lectern store migrate --data-dir {dir} --to 2")),
            "a node of this build refuses a version-1 store naming the command: {refused:?}"
        );
        // (Opening it to look would make it version 2's; migrate up first, then look.)
        lectern(&["store", "migrate", "--data-dir", dir, "--to", "2"])
            .await?
            .expect_code(0)?;
        let after = stored(&data)?;
        let without_flags: Vec<_> = before
            .into_iter()
            .filter(|(id, _)| id != "flags/cluster")
            .collect();
        assert_eq!(
            after.len(),
            without_flags.len(),
            "only the flags document is gone"
        );
        for ((id_a, a), (id_b, b)) in after.iter().zip(&without_flags) {
            assert_eq!(id_a, id_b);
            assert!(a == b, "{id_a} changed across the migrations");
        }

        // A node opens it and serves the demo class again.
        let node = lectern_node::start(config()).await?;
        let session = DocId::Session(lectern_node::DEMO_SESSION.parse()?);
        assert!(node.hub.doc_heads(&session).is_some());
        assert!(
            node.hub.flags().enabled(Feature::Polls, None),
            "the flags were discarded"
        );
        node.stop().await?;

        // Unknown versions and a directory without a store are refused.
        lectern(&["store", "migrate", "--data-dir", dir, "--to", "3"])
            .await?
            .expect_code(1)?;
        let empty = tmp.path().join("empty");
        std::fs::create_dir_all(&empty)?;
        let empty = empty.to_str().expect("a UTF-8 path");
        lectern(&["store", "migrate", "--data-dir", empty, "--to", "1"])
            .await?
            .expect_code(5)?;
        Ok(())
    })
    .await
    .unwrap();
}

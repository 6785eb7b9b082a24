//! `lectern docs list|show|compact` against a running demo node: the stored documents with
//! their sizes and heads, a page at a time, one document's history length, a document rewritten
//! as one snapshot with nothing lost, and exit code 5 for a document the node does not store.

use lectern_node::Config;

use super::{lectern, within};
use crate::support::TempDir;

const ADMIN_TOKEN: &str = "an-admin-token-for-the-docs-test";

/// Kills: a listing without the demo's documents or their sizes, a page that ignores its
/// limit or `after`, a prefix ignored, a show without the history length, a missing document
/// answered as the admin API being off (exit 4 instead of 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lectern_docs_lists_pages_and_shows_the_stored_documents() {
    within(async {
        let dir = TempDir::new("ops-docs");
        let node = lectern_node::start(Config {
            data_dir: dir.path().to_path_buf(),
            http: "127.0.0.1:0".parse()?,
            admin_token: Some(ADMIN_TOKEN.to_owned()),
            demo: true,
            ..Config::default()
        })
        .await?;
        let addr = node.http_addr.to_string();
        let admin = ["--http", &addr, "--admin-token", ADMIN_TOKEN];
        let run = |args: &[&str]| {
            let all: Vec<String> = ["--json"]
                .iter()
                .chain(args)
                .chain(admin.iter())
                .map(|s| (*s).to_owned())
                .collect();
            async move {
                let refs: Vec<&str> = all.iter().map(String::as_str).collect();
                lectern(&refs).await
            }
        };
        let all = run(&["docs", "list", "--limit", "1000"])
            .await?
            .expect_code(0)?;
        let v: serde_json::Value = serde_json::from_str(&all.stdout)?;
        let docs = v["docs"].as_array().cloned().unwrap_or_default();
        let session = format!("session/{}", lectern_node::DEMO_SESSION);
        let demo_session = docs
            .iter()
            .find(|d| d["doc"] == session.as_str())
            .unwrap_or_else(|| panic!("{session} not listed: {}", all.stdout));
        assert!(
            demo_session["bytes"].as_u64().unwrap_or(0) > 0,
            "{demo_session}"
        );
        assert!(demo_session["heads"].is_string(), "{demo_session}");
        assert_eq!(
            v["total"].as_u64(),
            Some(docs.len() as u64),
            "{}",
            all.stdout
        );
        assert!(docs.len() >= 3, "{}", all.stdout);

        // A page of one, then the next one after it.
        let first = run(&["docs", "list", "--limit", "1"])
            .await?
            .expect_code(0)?;
        let first: serde_json::Value = serde_json::from_str(&first.stdout)?;
        assert_eq!(first["docs"].as_array().map(Vec::len), Some(1));
        assert_eq!(first["more"], true);
        let after = first["docs"][0]["doc"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let next = run(&["docs", "list", "--limit", "1", "--after", &after])
            .await?
            .expect_code(0)?;
        let next: serde_json::Value = serde_json::from_str(&next.stdout)?;
        assert_eq!(next["docs"][0]["doc"], docs[1]["doc"]);
        let sessions = run(&["docs", "list", "--prefix", "session/"])
            .await?
            .expect_code(0)?;
        let sessions: serde_json::Value = serde_json::from_str(&sessions.stdout)?;
        let listed = sessions["docs"].as_array().cloned().unwrap_or_default();
        assert!(!listed.is_empty());
        assert!(
            listed
                .iter()
                .all(|d| d["doc"].as_str().is_some_and(|d| d.starts_with("session/")))
        );

        let shown = run(&["docs", "show", &session]).await?.expect_code(0)?;
        let shown: serde_json::Value = serde_json::from_str(&shown.stdout)?;
        assert!(
            shown["doc"]["changes"].as_u64().unwrap_or(0) >= 1,
            "{shown}"
        );
        run(&["docs", "show", "session/never-created"])
            .await?
            .expect_code(5)?;

        // Compacted: one snapshot with the same heads, and shown so afterwards.
        let compacted = run(&["docs", "compact", &session]).await?.expect_code(0)?;
        let compacted: serde_json::Value = serde_json::from_str(&compacted.stdout)?;
        assert!(
            compacted["bytesAfter"].as_u64().unwrap_or(0) > 0,
            "{compacted}"
        );
        let after = run(&["docs", "show", &session]).await?.expect_code(0)?;
        let after: serde_json::Value = serde_json::from_str(&after.stdout)?;
        assert_eq!(after["doc"]["heads"], shown["doc"]["heads"], "{after}");
        assert_eq!(after["doc"]["changes"], shown["doc"]["changes"], "{after}");
        assert_eq!(
            after["doc"]["snapshotBytes"], compacted["bytesAfter"],
            "{after} vs {compacted}"
        );
        assert_eq!(after["doc"]["chunkBytes"], 0, "{after}");
        run(&["docs", "compact", "session/never-created"])
            .await?
            .expect_code(5)?;
        node.stop().await
    })
    .await
    .unwrap();
}

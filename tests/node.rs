//! A whole node in-process on `127.0.0.1:0`: it opens its store, serves `/healthz` with its
//! node id, seeds the demo idempotently, and releases its store when stopped.

use std::io::{Read, Write};

use lectern_node::{Config, start};
use lectern_store::Store;

use crate::support::TempDir;

fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("http response");
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_serves_healthz_and_restarts_with_a_new_epoch() {
    let dir = TempDir::new("node");
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        http: "127.0.0.1:0".parse().unwrap(),
        demo: true,
        ..Default::default()
    };
    let node = start(config.clone()).await.expect("start");
    let addr = node.http_addr;
    let expected_id = node.hub.identity().node_id.to_string();
    let (status, body) = tokio::task::spawn_blocking(move || get(addr, "/healthz"))
        .await
        .unwrap();
    assert!(status.contains("200"), "{status}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["node"], expected_id.as_str());
    assert_eq!(health["bootEpoch"], 1);
    let (status, _) = tokio::task::spawn_blocking(move || get(addr, "/nope"))
        .await
        .unwrap();
    assert!(status.contains("404"), "{status}");
    node.stop().await.expect("stop");

    // Restart: same node id, next epoch (a fresh automerge actor), demo seeding is idempotent.
    let node = start(config).await.expect("restart");
    assert_eq!(node.hub.identity().node_id.to_string(), expected_id);
    assert_eq!(node.hub.identity().boot_epoch, 2);
    let applied = node.hub.stats().commands_applied;
    assert_eq!(applied, 0, "the demo was applied again on restart");
    node.stop().await.expect("stop");
    let store = Store::open(dir.path()).expect("the store is released after stop");
    assert_eq!(
        store.doc_ids().unwrap(),
        vec![
            "cohort/demo-cohort",
            "course/demo-course",
            "session/demo-session"
        ]
    );
}

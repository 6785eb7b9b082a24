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

/// Where a test's log subscriber writes: a shared buffer.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `log_format = "json"`: a node's log lines, through a start, requests carrying a token (in a
/// query and a header), a refused one and a stop, are each one JSON object with a timestamp, a
/// level, a target and a message, and none carries the token. Kills: the JSON format not
/// chosen (text lines do not parse), a token logged.
#[test]
fn json_logs_are_one_object_a_line_and_carry_no_token() {
    let captured = Captured::default();
    let writer = captured.clone();
    let logs = lectern_node::log_subscriber(
        lectern_node::config::LogFormat::Json,
        tracing_subscriber::EnvFilter::new("debug"),
        move || writer.clone(),
    );
    let dir = TempDir::new("json-logs");
    let secret = "a-token-that-must-never-be-logged";
    tracing::subscriber::with_default(logs, || {
        // One thread: every task of the node logs through this subscriber.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let node = start(Config {
                data_dir: dir.path().to_path_buf(),
                http: "127.0.0.1:0".parse().unwrap(),
                demo: true,
                ..Default::default()
            })
            .await
            .expect("start");
            let http = lectern_testkit::Http::new(node.http_addr);
            let session = format!(
                "/api/sessions/{}?access_token={secret}",
                lectern_node::DEMO_SESSION
            );
            let r = http.get(&session, Some(secret)).await.expect("a response");
            assert_eq!(r.status, 401, "{}", r.text());
            node.stop().await.expect("stop");
        });
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).expect("utf-8 logs");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "too few log lines:\n{text}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for field in ["timestamp", "level", "target", "message"] {
            assert!(v.get(field).is_some(), "no {field}: {line}");
        }
    }
    assert!(!text.contains(secret), "a token reached the logs:\n{text}");
}

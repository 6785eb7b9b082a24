//! Error tracking against a local HTTP endpoint that records what it receives: a real
//! `lectern-node` process with `error_tracking.dsn` pointing there sends an event for a forced
//! error and for a panic in one of its tasks (and keeps serving), and no envelope holds a
//! token, the admin token or the token key.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lectern_testkit::Http;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{node_bin, within};
use crate::mesh::eventually_ok;
use crate::support::{KillOnDrop, TempDir};

const ADMIN_TOKEN: &str = "an-admin-token-for-error-tracking";
const AUTH_SECRET: &str = "the-token-key-of-the-error-tracking-test";
/// A JWT-shaped string, as a token would look in an error message.
const A_TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzdHVkZW50MSJ9.c2lnbmF0dXJlLW9mLWEtdG9rZW4";

/// The largest request the recording endpoint reads, in bytes.
const REQUEST_MAX_BYTES: usize = 4 * 1024 * 1024;

/// Accepts HTTP/1.1 requests on `listener`, answers each `200 {}`, and keeps their bodies.
async fn record(listener: TcpListener, bodies: Arc<Mutex<Vec<String>>>) {
    while let Ok((mut socket, _)) = listener.accept().await {
        let bodies = bodies.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                let Ok(n) = socket.read(&mut chunk).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    if buf.len() > REQUEST_MAX_BYTES {
                        return;
                    }
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if length > REQUEST_MAX_BYTES {
                    return;
                }
                if buf.len() < end + 4 + length {
                    continue;
                }
                let body = buf[end + 4..end + 4 + length].to_vec();
                buf.drain(..end + 4 + length);
                if let Ok(mut b) = bodies.lock() {
                    b.push(String::from_utf8_lossy(&body).into_owned());
                }
                let reply = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                if socket.write_all(reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Kills: no error tracking at all (nothing arrives), a layer that misses error events, no
/// panic hook, a scrubber that lets a token or a configured secret through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_error_and_a_task_panic_reach_the_dsn_without_tokens_or_secrets() {
    tokio::task::spawn_blocking(node_bin)
        .await
        .expect("the build task ran")
        .expect("lectern-node builds");
    within(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let dsn = format!(
            "http://0123456789abcdef0123456789abcdef@{}/1",
            listener.local_addr()?
        );
        let bodies = Arc::new(Mutex::new(Vec::<String>::new()));
        tokio::spawn(record(listener, bodies.clone()));

        let dir = TempDir::new("ops-error-tracking");
        let mut child = KillOnDrop(
            Command::new(node_bin()?)
                .args(["--data-dir"])
                .arg(dir.path())
                .args(["--http", "127.0.0.1:0"])
                .env_clear()
                .env("LECTERN_ERROR_TRACKING_DSN", &dsn)
                .env("LECTERN_ADMIN_TOKEN", ADMIN_TOKEN)
                .env("LECTERN_AUTH_SECRET", AUTH_SECRET)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()?,
        );
        let stdout = child.stdout.take().expect("piped stdout");
        let first = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await??;
        let addr = first
            .trim()
            .strip_prefix("node: http://")
            .ok_or_else(|| anyhow::anyhow!("the node printed {first:?}"))?
            .parse()?;
        let http = Http::new(addr);

        let errored = http
            .post_raw(
                &format!("/admin/error-tracking/test?kind=error&note=token%20{A_TOKEN}%20admin%20{ADMIN_TOKEN}"),
                Some(ADMIN_TOKEN),
                Vec::new(),
            )
            .await?;
        assert_eq!(errored.status, 200, "{}", errored.text());
        assert_eq!(errored.json()?["enabled"], true);
        let find = |marker: &'static str| {
            let bodies = bodies.clone();
            move || {
                let bodies = bodies.clone();
                async move {
                    let b = bodies.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                    anyhow::ensure!(
                        b.iter().any(|e| e.contains(marker)),
                        "no envelope with {marker:?} among {}",
                        b.len()
                    );
                    Ok(())
                }
            }
        };
        eventually_ok("the error event arrives", Duration::from_secs(20), find("an operator asked for this event")).await?;

        let panicked = http
            .post_raw("/admin/error-tracking/test?kind=panic&note=p1", Some(ADMIN_TOKEN), Vec::new())
            .await?;
        assert_eq!(panicked.status, 200, "{}", panicked.text());
        eventually_ok("the panic arrives", Duration::from_secs(20), find("panicked on purpose")).await?;
        // The node goes on serving after its task's panic.
        assert_eq!(http.get("/healthz", None).await?.status, 200);

        let all = bodies.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
        for envelope in &all {
            for secret in [A_TOKEN, ADMIN_TOKEN, AUTH_SECRET, "eyJ"] {
                assert!(!envelope.contains(secret), "an envelope holds {secret:?}: {envelope}");
            }
        }
        assert!(
            all.iter().any(|e| e.contains("[redacted]")),
            "the token in the forced error was replaced: {all:?}"
        );
        // A refused admin call makes no event.
        let before = all.len();
        let refused = http
            .post_raw("/admin/error-tracking/test", Some("not-the-admin-token"), Vec::new())
            .await?;
        assert_eq!(refused.status, 401);
        assert_eq!(bodies.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.len(), before);
        drop(child);
        Ok(())
    })
    .await
    .unwrap();
}

//! SIGKILL and restart: node B runs in a child process (this test binary, re-executed) and
//! writes while node A (in this process) writes too; B is SIGKILLed mid-stream and A keeps
//! writing; B restarts on the same store and QUIC port, catches up, and nothing B acknowledged
//! before the kill is lost (every acknowledged command reaches A).

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use lectern_model::{CommandId, Role};
use lectern_node::DEMO_SESSION;
use lectern_testkit::Http;
use tokio::sync::mpsc::UnboundedReceiver;

use super::{Cluster, demo_caller, demo_session, reserved_udp_addr, token, within};
use crate::support::{KillOnDrop, TempDir, ask, cmd};

const CHILD_ENV: &str = "LECTERN_TEST_MESH_CHILD";
const ADMIN_TOKEN: &str = "admin-token-0123456789";

/// Not a test of its own: the entry point of the mesh node child process below. Without the
/// environment variable it returns at once.
#[test]
fn mesh_child_entrypoint() {
    let Ok(role) = std::env::var(CHILD_ENV) else {
        return;
    };
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is set"));
    let rt = crate::support::child_runtime();
    rt.block_on(async move {
        let mut config = lectern_node::Config {
            data_dir: var("MESH_CHILD_DIR").into(),
            http: "127.0.0.1:0".parse().expect("addr"),
            ..Default::default()
        };
        config.auth.hs256_secret = Some(super::SECRET.into());
        config.mesh.name = "node-b".into();
        config.mesh.listen = var("MESH_CHILD_QUIC").parse().expect("quic addr");
        config.mesh.tls_dir = Some(var("MESH_CHILD_TLS").into());
        config.mesh.accept_from = super::MEMBERS.iter().map(|m| (*m).to_owned()).collect();
        config.mesh.peer_idle_timeout_ms = super::PEER_IDLE_TIMEOUT_MS;
        config.mesh.connect_timeout_ms = super::CONNECT_TIMEOUT_MS;
        config.mesh.reconnect_max_ms = super::RECONNECT_MAX_MS;
        config.admin_token = Some(ADMIN_TOKEN.into());
        let node = lectern_node::start(config).await.expect("start node B");
        println!("HTTP {}", node.http_addr);
        if role != "writer" {
            std::future::pending::<()>().await;
        }
        // Write once the demo session has arrived from A.
        let doc = demo_session();
        while node.hub.doc_heads(&doc).is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let epoch = node.hub.identity().boot_epoch;
        let mut tasks = Vec::new();
        for lane in 0..4u64 {
            let hub = node.hub.clone();
            let doc = doc.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0.. {
                    let id = format!("b{epoch}-l{lane}-n{n}");
                    // Spread over a hundred students: one person's asks are capped per session.
                    let student =
                        demo_caller(&format!("student-l{lane}-{}", n % 100), Role::Student);
                    let r = hub.execute(doc.clone(), student, cmd(&id, ask(&id))).await;
                    if r.is_ok() {
                        use std::io::Write;
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "ACK {id}");
                        let _ = out.flush();
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

/// Starts node B as a child (killed if dropped while running); its stdout lines go to the
/// returned receiver, read by a thread of their own, which closes the channel once the child's
/// stdout ends (the child exited: every line it printed has been delivered).
fn spawn_b(
    role: &str,
    dir: &std::path::Path,
    tls: &std::path::Path,
    quic: std::net::SocketAddr,
) -> anyhow::Result<(KillOnDrop, UnboundedReceiver<String>)> {
    let exe = std::env::current_exe()?;
    let child = std::process::Command::new(exe)
        .args([
            "--exact",
            "mesh::restart::mesh_child_entrypoint",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, role)
        .env("MESH_CHILD_DIR", dir)
        .env("MESH_CHILD_TLS", tls)
        .env("MESH_CHILD_QUIC", quic.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut child = KillOnDrop(child);
    let stdout = child.stdout.take().context("piped stdout")?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    Ok((child, rx))
}

/// Reads lines until the `HTTP addr` one (awaiting: the runtime's workers stay free).
async fn http_addr(rx: &mut UnboundedReceiver<String>) -> anyhow::Result<std::net::SocketAddr> {
    let limit = Duration::from_secs(30);
    loop {
        let line = tokio::time::timeout(limit, rx.recv())
            .await
            .with_context(|| format!("node B prints its HTTP address within {limit:?}"))?
            .context("node B exited before printing its HTTP address")?;
        // The test harness prints `test … ... ` in front of the child's first line.
        if let Some((_, addr)) = line.split_once("HTTP ") {
            return Ok(addr.trim().parse()?);
        }
    }
}

/// Reaps `child` (already signalled) off the runtime's workers.
async fn reap(mut child: KillOnDrop) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || child.wait())
        .await
        .context("join the reaping task")?
        .context("wait for node B")?;
    Ok(())
}

fn kill(child: &std::process::Child, signal: i32) {
    // The child's pid fits a pid_t; the signal is SIGKILL or SIGTERM.
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
}

/// B's heads digest of the demo session, through its admin API.
async fn heads_on(http: &Http) -> anyhow::Result<Option<String>> {
    let resp = http
        .get(
            &format!("/admin/heads?doc=session/{DEMO_SESSION}"),
            Some(ADMIN_TOKEN),
        )
        .await?;
    Ok(resp.json()?["heads"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_during_writes_restarts_and_catches_up_losing_nothing() -> anyhow::Result<()>
{
    within(async {
        let mut cluster = Cluster::new("mesh-kill")?;
        // B's QUIC address is in A's peer list and B restarts on it: a reserved one, which no
        // other socket can be given before B binds it or while B is down.
        let quic_b = reserved_udp_addr()?;
        let a = cluster
            .start("node-a", vec![format!("node-b@{quic_b}")], true)
            .await?;
        let dir_b = TempDir::new("mesh-kill-b");
        let tls_b = cluster.tls_dir("node-b")?;

        // B writes; A writes at the same time.
        let (child, mut lines) = spawn_b("writer", dir_b.path(), &tls_b, quic_b)?;
        http_addr(&mut lines).await?;
        let a_acked: Arc<Mutex<Vec<String>>> = Arc::default();
        let hub_a = cluster.node(a).hub.clone();
        let writer_a = {
            let acked = a_acked.clone();
            let hub = hub_a.clone();
            tokio::spawn(async move {
                for n in 0..200 {
                    let id = format!("a-n{n}");
                    if hub
                        .execute(
                            demo_session(),
                            demo_caller(&format!("student-a{}", n % 10), Role::Student),
                            cmd(&id, ask(&id)),
                        )
                        .await
                        .is_ok()
                    {
                        acked.lock().expect("lock").push(id);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        // Kill B mid-stream once it has acknowledged 100 asks and A has written alongside.
        let mut b_acked: Vec<String> = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while b_acked.len() < 100 || a_acked.lock().expect("lock").is_empty() {
            let line = tokio::time::timeout_at(deadline, lines.recv())
                .await
                .with_context(|| {
                    format!(
                        "B acknowledged only {} and A {} within 60 s",
                        b_acked.len(),
                        a_acked.lock().map(|a| a.len()).unwrap_or(0)
                    )
                })?
                .context("node B exited before it was killed")?;
            if let Some(id) = line.strip_prefix("ACK ") {
                b_acked.push(id.to_owned());
            }
        }
        let a_before_kill = a_acked.lock().expect("lock").len();
        kill(&child, libc::SIGKILL);
        reap(child).await?;
        // Every ACK printed before the kill counts: read until B's stdout has ended.
        let drained = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.recv().await {
                if let Some(id) = line.strip_prefix("ACK ") {
                    b_acked.push(id.to_owned());
                }
            }
        })
        .await;
        anyhow::ensure!(drained.is_ok(), "B's output did not end after the kill");
        writer_a.await?;
        println!(
            "restart: B acknowledged {} asks before the kill, A {a_before_kill} by then",
            b_acked.len()
        );

        // A keeps going while B is down.
        for n in 0..30 {
            let id = format!("a-while-down-{n}");
            hub_a
                .execute(
                    demo_session(),
                    demo_caller(&format!("student-a{}", n % 10), Role::Student),
                    cmd(&id, ask(&id)),
                )
                .await?;
            a_acked.lock().expect("lock").push(id);
        }

        // B restarts on the same store and port and catches up.
        let (child, mut lines) = spawn_b("quiet", dir_b.path(), &tls_b, quic_b)?;
        let http_b = Http::new(http_addr(&mut lines).await?);
        let start = Instant::now();
        loop {
            let on_b = heads_on(&http_b).await?;
            let on_a = hub_a
                .doc_heads(&demo_session())
                .map(|h| h.iter().map(|b| format!("{b:02x}")).collect::<String>());
            if on_b.is_some() && on_b == on_a {
                break;
            }
            // Generous: A notices the old connection is dead after the idle timeout, then
            // redials; the wait ends as soon as the heads agree.
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(30),
                "B did not catch up: {on_b:?} vs {on_a:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        println!(
            "restart: caught up {:?} after start; B had acknowledged {} asks",
            start.elapsed(),
            b_acked.len()
        );

        // Nothing B acknowledged is lost: all of it reached A.
        for id in &b_acked {
            let cid: CommandId = id.parse()?;
            let present = hub_a
                .read(demo_session(), move |r| r.has_applied(&cid))
                .await?;
            assert!(present, "B acknowledged {id} before the kill, A lacks it");
        }
        // And B has everything A acknowledged (its view lists every question).
        let view = http_b
            .get(
                &format!("/api/sessions/{DEMO_SESSION}"),
                Some(&token("ada", "instructor")),
            )
            .await?
            .json()?;
        let ids: HashSet<&str> = view["questions"]
            .as_array()
            .context("questions")?
            .iter()
            .filter_map(|q| q["id"].as_str())
            .collect();
        for id in a_acked.lock().expect("lock").iter() {
            assert!(ids.contains(id.as_str()), "B lacks {id} from A");
        }
        kill(&child, libc::SIGTERM);
        reap(child).await?;
        // The test's own handles keep the node's hub, and so its store, open past its stop.
        drop(hub_a);
        cluster.stop_all().await
    })
    .await
}

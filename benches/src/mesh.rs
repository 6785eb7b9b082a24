//! `lectern-bench mesh`: the regional mesh between two real nodes in this process (each its
//! own sled store, HTTP port and QUIC endpoint, mutual TLS with a fresh cluster CA), on
//! loopback. Three measurements, each with a baseline from the same run:
//!
//! - latency: commands executed on node A at a fixed rate; for each, the time until node B's
//!   room publishes its event (what B's Socket.IO/SSE subscribers are sent). Baseline: the
//!   same delay on A's own room (the local fan-out).
//! - catch-up: A and B cut apart (the link goes through a UDP relay that drops everything);
//!   each side writes N changes spread over D documents; the link heals. Time from the heal to
//!   the reconnect, from the reconnect to identical heads on every document, and the frame
//!   bytes exchanged meanwhile.
//! - anti-entropy: D documents replicated to both nodes, the link cut, K of them changed, the
//!   link healed: reconnect-to-converged time and bytes. Baseline: the same with K = 0
//!   (the summary exchange alone).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use lectern_hub::Hub;
use lectern_mesh::ClusterCa;
use lectern_model::{Caller, CohortId, Command, CommandBody, CommandId, DocId, Role};
use lectern_node::{Config, Node};
use serde_json::json;
use tokio::net::UdpSocket;

/// Which measurement, and its size.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// latency, catch-up or anti-entropy.
    #[arg(value_parser = ["latency", "catch-up", "anti-entropy"])]
    what: String,
    /// latency: commands per second.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// latency: seconds of load.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// catch-up: changes written on each side while apart; anti-entropy: documents that differ.
    #[arg(long)]
    changes: Option<usize>,
    /// catch-up / anti-entropy: documents.
    #[arg(long)]
    docs: Option<usize>,
}

/// Runs the chosen measurement.
pub fn run(args: &Args, json_out: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("build the runtime")?;
    rt.block_on(async {
        match args.what.as_str() {
            "latency" => latency(args, json_out).await,
            "catch-up" => {
                catch_up(
                    args.docs.unwrap_or(100),
                    args.changes.unwrap_or(5_000),
                    json_out,
                )
                .await
            }
            _ => {
                anti_entropy(
                    args.docs.unwrap_or(10_000),
                    args.changes.unwrap_or(10),
                    json_out,
                )
                .await
            }
        }
    })
}

/// Two nodes: B, and A dialling B through a relay that can cut the link.
struct Pair {
    a: Node,
    b: Node,
    link: Relay,
    _dir: crate::util::TempDir,
}

impl Pair {
    async fn start() -> anyhow::Result<Pair> {
        let dir = crate::util::TempDir::new("mesh")?;
        let ca = ClusterCa::generate()?;
        let config = |name: &str, peers: Vec<String>| -> anyhow::Result<Config> {
            let tls = dir.path().join(format!("{name}-tls"));
            ca.issue_node(name)?.write(&tls)?;
            let mut c = Config {
                data_dir: dir.path().join(name),
                http: "127.0.0.1:0".parse()?,
                ..Default::default()
            };
            c.auth.hs256_secret = Some("bench-secret-0123456789abcdef".into());
            c.mesh.name = name.into();
            c.mesh.listen = "127.0.0.1:0".parse()?;
            c.mesh.tls_dir = Some(tls);
            c.mesh.peers = peers;
            // Inbound peers must be named: B admits A, which dials it.
            c.mesh.accept_from = vec!["node-a".into(), "node-b".into()];
            c.mesh.reconnect_max_ms = 200;
            c.mesh.peer_idle_timeout_ms = 1_000;
            c.mesh.connect_timeout_ms = 500;
            Ok(c)
        };
        let b = lectern_node::start(config("node-b", vec![])?).await?;
        let b_quic = b.mesh.as_ref().context("mesh")?.local_addr()?;
        let link = Relay::start(b_quic).await?;
        let a =
            lectern_node::start(config("node-a", vec![format!("node-b@{}", link.addr)])?).await?;
        let pair = Pair {
            a,
            b,
            link,
            _dir: dir,
        };
        pair.wait_connected(Duration::from_secs(10)).await?;
        Ok(pair)
    }

    fn connected(&self) -> bool {
        self.a
            .mesh
            .as_ref()
            .is_some_and(|m| !m.connected_peers().is_empty())
            && self
                .b
                .mesh
                .as_ref()
                .is_some_and(|m| !m.connected_peers().is_empty())
    }

    async fn wait_connected(&self, limit: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        while !self.connected() {
            anyhow::ensure!(start.elapsed() < limit, "the nodes did not connect");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(start.elapsed())
    }

    async fn wait_disconnected(&self) -> anyhow::Result<()> {
        let start = Instant::now();
        while self
            .a
            .mesh
            .as_ref()
            .is_some_and(|m| !m.connected_peers().is_empty())
        {
            anyhow::ensure!(start.elapsed() < Duration::from_secs(10), "still connected");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Waits until both nodes hold every document with identical heads.
    async fn wait_converged(&self, docs: usize, limit: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            let a = self.a.hub.heads_summary();
            if a.len() >= docs && a == self.b.hub.heads_summary() {
                return Ok(start.elapsed());
            }
            anyhow::ensure!(start.elapsed() < limit, "not converged within {limit:?}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn bytes(&self) -> u64 {
        [&self.a, &self.b]
            .iter()
            .filter_map(|n| n.mesh.as_ref())
            .map(|m| m.status().bytes_sent)
            .sum()
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.a.stop().await?;
        self.b.stop().await
    }
}

/// A UDP relay in front of one target that forwards or drops everything.
struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: SocketAddr) -> anyhow::Result<Relay> {
        let listen = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = listen.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        let task = tokio::spawn(async move {
            let mut ups: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = listen.recv_from(&mut buf).await {
                let up = match ups.get(&from) {
                    Some(u) => u.clone(),
                    None => {
                        let Ok(u) = UdpSocket::bind("127.0.0.1:0").await else {
                            continue;
                        };
                        if u.connect(target).await.is_err() {
                            continue;
                        }
                        let u = Arc::new(u);
                        let (back, listen, flag) = (u.clone(), listen.clone(), flag.clone());
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 65_536];
                            while let Ok(n) = back.recv(&mut buf).await {
                                if !flag.load(Ordering::Relaxed) {
                                    let _ = listen.send_to(&buf[..n], from).await;
                                }
                            }
                        });
                        ups.insert(from, u.clone());
                        u
                    }
                };
                if !flag.load(Ordering::Relaxed) {
                    let _ = up.send(&buf[..n]).await;
                }
            }
        });
        Ok(Relay { addr, cut, task })
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn caller(user: &str, role: Role) -> anyhow::Result<Caller> {
    Ok(Caller {
        user: user.parse()?,
        name: user.into(),
        role,
        cohorts: vec!["bench".parse::<CohortId>()?],
    })
}

fn command(id: &str, body: CommandBody) -> anyhow::Result<Command> {
    Ok(Command {
        id: id.parse::<CommandId>()?,
        body,
    })
}

async fn create_sessions(hub: &Hub, prefix: &str, n: usize) -> anyhow::Result<Vec<DocId>> {
    let admin = caller("admin", Role::Admin)?;
    let mut docs = Vec::with_capacity(n);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let doc = DocId::Session(format!("{prefix}{i}").parse()?);
        docs.push(doc.clone());
        let hub = hub.clone();
        let admin = admin.clone();
        let cmd = command(
            &format!("create-{prefix}{i}"),
            CommandBody::SessionCreate {
                cohort: "bench".parse()?,
                title: format!("session {i}"),
                moderation: false,
            },
        )?;
        tasks.spawn(async move { hub.execute(doc, admin, cmd).await.map(|_| ()) });
        // Bounded concurrency: at most 256 creates in flight.
        while tasks.len() >= 256 {
            if let Some(r) = tasks.join_next().await {
                r??;
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(docs)
}

/// `n` asks spread round-robin over `docs`, 256 in flight.
async fn write_asks(hub: &Hub, docs: &[DocId], tag: &str, n: usize) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let doc = docs[i % docs.len()].clone();
        let hub = hub.clone();
        let student = caller(&format!("s{}", i % 50), Role::Student)?;
        let cmd = command(
            &format!("{tag}-{i}"),
            CommandBody::QaAsk {
                text: format!("question {i} from {tag}"),
                anonymous: false,
            },
        )?;
        tasks.spawn(async move { hub.execute(doc, student, cmd).await.map(|_| ()) });
        while tasks.len() >= 256 {
            if let Some(r) = tasks.join_next().await {
                r??;
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn latency(args: &Args, json_out: bool) -> anyhow::Result<()> {
    let pair = Pair::start().await?;
    let docs = create_sessions(&pair.a.hub, "lat", 1).await?;
    let doc = docs[0].clone();
    pair.wait_converged(1, Duration::from_secs(10)).await?;
    let watcher = caller("watcher", Role::Instructor)?;
    let on_b = pair.b.hub.join(doc.clone(), watcher.clone(), None).await?;
    let on_a = pair.a.hub.join(doc.clone(), watcher, None).await?;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let total = (args.rate * args.seconds) as usize;
    let collect = |mut rx: tokio::sync::broadcast::Receiver<Arc<lectern_hub::Published>>,
                   sent: Arc<Mutex<HashMap<String, Instant>>>| {
        tokio::spawn(async move {
            let mut lat = Vec::with_capacity(total);
            while lat.len() < total {
                match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                    Ok(Ok(e)) => {
                        let at = sent.lock().ok().and_then(|s| s.get(&e.command).copied());
                        if let Some(at) = at {
                            lat.push(at.elapsed().as_secs_f64() * 1000.0);
                        }
                    }
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                    _ => break,
                }
            }
            lat
        })
    };
    let remote = collect(on_b.events, sent.clone());
    let local = collect(on_a.events, sent.clone());
    let failures = Arc::new(AtomicU64::new(0));
    let interval = Duration::from_nanos(1_000_000_000 / args.rate.max(1));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let id = format!("lat-{i}");
        let cmd = command(
            &id,
            CommandBody::QaAsk {
                text: format!("q{i}"),
                anonymous: false,
            },
        )?;
        let student = caller(&format!("s{}", i % 200), Role::Student)?;
        if let Ok(mut s) = sent.lock() {
            s.insert(id, Instant::now());
        }
        let (hub, doc, failures) = (pair.a.hub.clone(), doc.clone(), failures.clone());
        tasks.spawn(async move {
            if hub.execute(doc, student, cmd).await.is_err() {
                failures.fetch_add(1, Ordering::Relaxed);
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let achieved = total as f64 / start.elapsed().as_secs_f64();
    let mut remote = remote.await?;
    let mut local = local.await?;
    remote.sort_by(f64::total_cmp);
    local.sort_by(f64::total_cmp);
    let row = |v: &[f64]| (percentile(v, 0.5), percentile(v, 0.95), percentile(v, 0.99));
    let (r50, r95, r99) = row(&remote);
    let (l50, l95, l99) = row(&local);
    println!(
        "mesh latency: {total} asks on A at {} cmds/s (achieved {achieved:.0}), failures {}",
        args.rate,
        failures.load(Ordering::Relaxed)
    );
    println!(
        "  A → B room   n={:>6}  p50 {r50:.2} ms  p95 {r95:.2} ms  p99 {r99:.2} ms",
        remote.len()
    );
    println!(
        "  A → A room   n={:>6}  p50 {l50:.2} ms  p95 {l95:.2} ms  p99 {l99:.2} ms  (baseline: local fan-out)",
        local.len()
    );
    if json_out {
        println!(
            "{}",
            json!({"bench": "mesh-latency", "rate": args.rate, "achieved": achieved,
                "remote": {"n": remote.len(), "p50_ms": r50, "p95_ms": r95, "p99_ms": r99},
                "local": {"n": local.len(), "p50_ms": l50, "p95_ms": l95, "p99_ms": l99},
                "failures": failures.load(Ordering::Relaxed)})
        );
    }
    pair.stop().await
}

async fn catch_up(docs: usize, changes: usize, json_out: bool) -> anyhow::Result<()> {
    let pair = Pair::start().await?;
    let list = create_sessions(&pair.a.hub, "cu", docs).await?;
    pair.wait_converged(docs, Duration::from_secs(60)).await?;
    pair.link.set_cut(true);
    pair.wait_disconnected().await?;
    let (ra, rb) = tokio::join!(
        write_asks(&pair.a.hub, &list, "a", changes),
        write_asks(&pair.b.hub, &list, "b", changes)
    );
    ra?;
    rb?;
    let bytes_before = pair.bytes();
    let healed = Instant::now();
    pair.link.set_cut(false);
    let reconnect = pair.wait_connected(Duration::from_secs(10)).await?;
    let converge = pair.wait_converged(docs, Duration::from_secs(60)).await?;
    let bytes = pair.bytes() - bytes_before;
    println!(
        "mesh catch-up: {changes} changes per side over {docs} documents written apart; heal → reconnect {:.1} ms; reconnect → identical heads {:.1} ms; {:.2} MB of frames (both ways); total {:.1} ms",
        reconnect.as_secs_f64() * 1000.0,
        converge.as_secs_f64() * 1000.0,
        bytes as f64 / 1e6,
        healed.elapsed().as_secs_f64() * 1000.0
    );
    if json_out {
        println!(
            "{}",
            json!({"bench": "mesh-catch-up", "docs": docs, "changes_per_side": changes,
                "reconnect_ms": reconnect.as_secs_f64() * 1000.0,
                "converge_ms": converge.as_secs_f64() * 1000.0, "bytes": bytes})
        );
    }
    pair.stop().await
}

async fn anti_entropy(docs: usize, differing: usize, json_out: bool) -> anyhow::Result<()> {
    let pair = Pair::start().await?;
    let setup = Instant::now();
    let list = create_sessions(&pair.a.hub, "ae", docs).await?;
    let created = setup.elapsed();
    let initial = pair.wait_converged(docs, Duration::from_secs(600)).await?;
    println!(
        "mesh anti-entropy: {docs} documents created on A in {:.1} s, replicated to B in {:.1} s",
        created.as_secs_f64(),
        initial.as_secs_f64()
    );
    let mut rows = Vec::new();
    // Baseline first (nothing differs), then `differing` documents changed while apart.
    for (label, k) in [("baseline, 0 differ", 0), ("differing", differing)] {
        pair.link.set_cut(true);
        pair.wait_disconnected().await?;
        if let Some(step) = docs.checked_div(k) {
            let step = step.max(1);
            let chosen: Vec<DocId> = list.iter().step_by(step).take(k).cloned().collect();
            write_asks(&pair.a.hub, &chosen, "ae-change", k).await?;
        }
        let bytes_before = pair.bytes();
        pair.link.set_cut(false);
        let reconnect = pair.wait_connected(Duration::from_secs(10)).await?;
        let converge = pair.wait_converged(docs, Duration::from_secs(60)).await?;
        // Let the summary exchange finish even when nothing differs, so its bytes count.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let bytes = pair.bytes() - bytes_before;
        println!(
            "  {label:>18} (k={k}): heal → reconnect {:.1} ms; reconnect → identical heads {:.1} ms; {:.1} KB of frames (both ways, incl. summaries)",
            reconnect.as_secs_f64() * 1000.0,
            converge.as_secs_f64() * 1000.0,
            bytes as f64 / 1e3
        );
        rows.push(
            json!({"differing": k, "reconnect_ms": reconnect.as_secs_f64() * 1000.0,
            "converge_ms": converge.as_secs_f64() * 1000.0, "bytes": bytes}),
        );
    }
    if json_out {
        println!(
            "{}",
            json!({"bench": "mesh-anti-entropy", "docs": docs, "rows": rows})
        );
    }
    pair.stop().await
}

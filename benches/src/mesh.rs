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
//! - offline-class: the classroom's day apart. A 40-student class runs N commands (a
//!   plausible mix, [`crate::workload::Class`]; 20,000 is about an hour) on node A while the
//!   link is cut, and the region (node B) writes meanwhile: the class's TA and instructor from
//!   the region in the same session (a fork of the class, N / 20 commands) and N / 10 questions
//!   in 20 other sessions. The link heals: heal → reconnect, reconnect → identical heads on
//!   every document, and the frame bytes. The 5,000-change `catch-up` is its baseline.
//! - anti-entropy: D documents replicated to both nodes, the link cut, K of them changed, the
//!   link healed: reconnect-to-converged time and bytes. Baseline: the same with K = 0
//!   (the digest exchange alone).
//! - tree: the anti-entropy exchange alone at a scale no test store reaches (a million
//!   documents): two real sans-IO `Session`s, their frames through the real encoder, no
//!   sockets and no documents; D digests each, K different. Time from the handshake to the
//!   last digest node (both trees built from scratch included), the digest frames' bytes each
//!   way, and the documents found to sync (must be exactly K). Baseline: K = 0.

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
    /// latency, catch-up, offline-class, anti-entropy or tree.
    #[arg(value_parser = ["latency", "catch-up", "offline-class", "anti-entropy", "tree"])]
    what: String,
    /// latency: commands per second.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// latency: seconds of load.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// catch-up: changes written on each side while apart; offline-class: the class's
    /// commands; anti-entropy: documents that differ.
    #[arg(long)]
    changes: Option<usize>,
    /// catch-up / anti-entropy: documents.
    #[arg(long)]
    docs: Option<usize>,
}

/// Runs the chosen measurement.
pub fn run(args: &Args, json_out: bool) -> anyhow::Result<()> {
    if args.what == "tree" {
        return tree(
            args.docs.unwrap_or(1_000_000),
            args.changes.unwrap_or(10),
            json_out,
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("build the runtime")?;
    rt.block_on(async {
        match args.what.as_str() {
            "latency" => latency(args, json_out).await,
            "offline-class" => offline_class(args.changes.unwrap_or(20_000), json_out).await,
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
            ca.issue_node(name, lectern_mesh::tls::NODE_CERT_VALIDITY_DEFAULT)?
                .write(&tls)?;
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
            if start.elapsed() >= limit {
                let b = self.b.hub.heads_summary();
                let differ: Vec<String> = a
                    .iter()
                    .filter(|x| !b.contains(x))
                    .map(|(d, _)| format!("{d} (A)"))
                    .chain(
                        b.iter()
                            .filter(|x| !a.contains(x))
                            .map(|(d, _)| format!("{d} (B)")),
                    )
                    .collect();
                let mut counts = Vec::new();
                for (d, _) in a.iter().filter(|x| !b.contains(x)).take(2) {
                    let ca = self.a.hub.read(d.clone(), |r| r.change_count()).await?;
                    let cb = self.b.hub.read(d.clone(), |r| r.change_count()).await?;
                    counts.push(format!("{d}: {ca} changes on A, {cb} on B"));
                }
                anyhow::bail!(
                    "not converged within {limit:?}: A holds {} documents, B {}; differing: \
                     {differ:?}; {counts:?}",
                    a.len(),
                    b.len()
                );
            }
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

async fn offline_class(commands: usize, json_out: bool) -> anyhow::Result<()> {
    use crate::workload::{Class, Mix};

    /// Students in the classroom.
    const STUDENTS: usize = 40;
    /// The region's other sessions, written to while the classroom is apart.
    const REGION_SESSIONS: usize = 20;

    let pair = Pair::start().await?;
    let class_doc = DocId::Session("offline-class".parse()?);
    let mut class = Class::new(7, STUDENTS, Mix::CLASS, "k");
    let (who, create) = class.create_session();
    pair.a.hub.execute(class_doc.clone(), who, create).await?;
    for (who, cmd) in class.setup_items(5, 1) {
        pair.a.hub.execute(class_doc.clone(), who, cmd).await?;
    }
    let region_docs = create_sessions(&pair.b.hub, "region", REGION_SESSIONS).await?;
    pair.wait_converged(1 + REGION_SESSIONS, Duration::from_secs(60))
        .await?;
    let mut region_class = class.fork(8, "r");
    pair.link.set_cut(true);
    pair.wait_disconnected().await?;
    let apart = Instant::now();
    let classroom = async {
        for _ in 0..commands {
            let (who, cmd) = class.next_command();
            let id = cmd.id.clone();
            pair.a
                .hub
                .execute(class_doc.clone(), who, cmd)
                .await
                .with_context(|| format!("classroom command {id}"))?;
        }
        anyhow::Ok(())
    };
    let region = async {
        for _ in 0..commands / 20 {
            let (who, cmd) = region_class.next_command();
            let id = cmd.id.clone();
            pair.b
                .hub
                .execute(class_doc.clone(), who, cmd)
                .await
                .with_context(|| format!("region command {id}"))?;
        }
        write_asks(&pair.b.hub, &region_docs, "region", commands / 10).await
    };
    let (ra, rb) = tokio::join!(classroom, region);
    ra?;
    rb?;
    let written = apart.elapsed();
    let changes_a = pair
        .a
        .hub
        .read(class_doc.clone(), |r| r.change_count())
        .await?;
    let bytes_before = pair.bytes();
    pair.link.set_cut(false);
    let reconnect = pair.wait_connected(Duration::from_secs(10)).await?;
    let converge = pair
        .wait_converged(1 + REGION_SESSIONS, Duration::from_secs(120))
        .await?;
    let bytes = pair.bytes() - bytes_before;
    let changes_b = pair.b.hub.read(class_doc, |r| r.change_count()).await?;
    println!(
        "mesh offline-class: {commands} classroom commands ({STUDENTS} students) and {} region \
         commands written apart in {:.1} s; the class session holds {changes_a} changes on A \
         before, {changes_b} on both after; heal → reconnect {:.1} ms; reconnect → identical \
         heads {:.1} ms; {:.2} MB of frames (both ways)",
        commands / 20 + commands / 10,
        written.as_secs_f64(),
        reconnect.as_secs_f64() * 1000.0,
        converge.as_secs_f64() * 1000.0,
        bytes as f64 / 1e6,
    );
    if json_out {
        println!(
            "{}",
            json!({"bench": "mesh-offline-class", "commands": commands,
                "changes": changes_b, "reconnect_ms": reconnect.as_secs_f64() * 1000.0,
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

/// A digest that depends on `i` and `salt` only (splitmix64), standing in for a document's
/// heads digest.
fn fake_digest(i: u64, salt: u64) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt;
    for chunk in out.chunks_mut(8) {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_be_bytes());
    }
    out
}

/// One exchange between two sessions holding `docs` digests, `differing` of them different.
/// Returns (time, digest bytes A → B, digest bytes B → A, documents A and B asked to sync).
fn tree_exchange(docs: usize, differing: usize) -> anyhow::Result<(Duration, u64, u64, usize)> {
    use lectern_mesh::{Output, Session, SessionConfig, share_all};
    let list_a: Vec<(String, [u8; 32])> = (0..docs as u64)
        .map(|i| (format!("session/bench-{i:07}"), fake_digest(i, 0)))
        .collect();
    let step = docs.checked_div(differing).unwrap_or(docs).max(1);
    let mut list_b = list_a.clone();
    for (i, entry) in list_b.iter_mut().enumerate() {
        if differing > 0 && i % step == 0 && i / step < differing {
            entry.1 = fake_digest(i as u64, 1);
        }
    }
    let now = Instant::now();
    let mut sides = [
        (
            Session::new(SessionConfig::new("aaaa", "a", "r"), share_all(), now),
            Some(list_a),
        ),
        (
            Session::new(SessionConfig::new("bbbb", "b", "r"), share_all(), now),
            Some(list_b),
        ),
    ];
    let mut bytes = [0u64; 2];
    let mut to_sync = std::collections::BTreeSet::new();
    let started = Instant::now();
    let mut inboxes: [Vec<lectern_wire::PeerFrame>; 2] = [Vec::new(), Vec::new()];
    loop {
        let mut moved = false;
        for side in 0..2 {
            let (session, list) = &mut sides[side];
            for frame in std::mem::take(&mut inboxes[side]) {
                session.handle_frame(frame, now);
            }
            while let Some(output) = session.poll_output() {
                match output {
                    Output::Send(frame) => {
                        if matches!(frame, lectern_wire::PeerFrame::DigestNode { .. }) {
                            bytes[side] += lectern_wire::encode_frame(&frame)?.len() as u64;
                        }
                        inboxes[1 - side].push(frame);
                        moved = true;
                    }
                    Output::Established(_) => {
                        session.send_summary(list.take().unwrap_or_default());
                    }
                    Output::GenerateSync(doc) => {
                        to_sync.insert(doc);
                    }
                    Output::Close { reason } => anyhow::bail!("the session closed: {reason}"),
                    Output::ReceiveSync { .. }
                    | Output::Ephemeral { .. }
                    | Output::Revocations(_) => {}
                }
            }
        }
        if !moved && inboxes.iter().all(Vec::is_empty) {
            break;
        }
    }
    Ok((started.elapsed(), bytes[0], bytes[1], to_sync.len()))
}

/// `mesh tree`: see the module's doc.
fn tree(docs: usize, differing: usize, json_out: bool) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for (label, k) in [("baseline, 0 differ", 0), ("differing", differing)] {
        let (took, a_to_b, b_to_a, found) = tree_exchange(docs, k)?;
        anyhow::ensure!(found == k, "{found} documents to sync, {k} differ");
        println!(
            "mesh tree: {docs} documents, {label:>18} (k={k}): {:.0} ms from hello to the last digest node (both trees built); digest frames {:.1} KB A → B, {:.1} KB B → A ({:.1} KB both ways); {found} documents to sync",
            took.as_secs_f64() * 1000.0,
            a_to_b as f64 / 1e3,
            b_to_a as f64 / 1e3,
            (a_to_b + b_to_a) as f64 / 1e3
        );
        rows.push(json!({"differing": k, "ms": took.as_secs_f64() * 1000.0,
            "bytes_a_to_b": a_to_b, "bytes_b_to_a": b_to_a, "to_sync": found}));
    }
    if json_out {
        println!(
            "{}",
            json!({"bench": "mesh-tree", "docs": docs, "rows": rows})
        );
    }
    Ok(())
}

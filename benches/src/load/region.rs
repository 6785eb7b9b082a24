//! `region`: one session spread over the three nodes of a region, the way a load balancer
//! spreads a big class, against the same class on one node, in one invocation.
//!
//! Three node processes (this binary's `serve`) form a mesh over QUIC with mutual TLS (a
//! fresh cluster CA, one token secret); node A seeds the demo class and the others get it
//! through the mesh. `--per-node` Socket.IO websocket clients join the demo session on each
//! node; one more client asks questions on node A at `--rate`; every client records when
//! each question reaches it. Reported per node: delivery and latency percentiles, so node A's
//! figures (its own fan-out) stand beside B's and C's (a mesh hop, then their fan-out). Then
//! the baseline: one node, the same number of clients (3 × `--per-node`), the same questions.
//! Before asking, an observer joins on each node and waits for the session's
//! `attendance:update` to count every user exactly once, wherever they are connected.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use lectern_mesh::ClusterCa;
use tokio::sync::watch;

use super::node::ChildServer;
use super::probe::Probe;
use super::{
    Asked, Conn, Figures, Pace, Phase, Sources, ask, drain, medians, progress, sio, tally_figures,
    token,
};
use crate::util::TempDir;

/// Options of `region`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Websocket clients on each of the three nodes (the baseline puts all of them on one).
    #[arg(long, default_value_t = 2_000)]
    pub per_node: usize,
    /// Questions asked per second, on node A.
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
    /// Seconds of asking.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Whole runs (three nodes, then one); the summary shows each figure's median.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Seconds one client may take to connect and join.
    #[arg(long, default_value_t = 120)]
    pub connect_timeout_s: u64,
    /// Seconds to wait for deliveries after the last ack.
    #[arg(long, default_value_t = 15)]
    pub drain_s: u64,
}

const NAMES: [&str; 3] = ["a", "b", "c"];

/// Runs the measurement and prints its summary (and a JSON line with `--json`).
pub fn run(args: &Args, json_out: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("build the runtime")?;
    let mut runs = Vec::new();
    let mut sources = Sources { next: 0 };
    for i in 0..args.runs.max(1) {
        progress(format_args!("run {} of {}", i + 1, args.runs.max(1)));
        let mut f = Figures::default();
        rt.block_on(class(args, 3, &mut sources, &mut f))?;
        rt.block_on(class(args, 1, &mut sources, &mut f))?;
        runs.push(f);
    }
    let f = medians(&runs);
    println!(
        "region: {} clients on 3 nodes ({} each) vs {} on 1 node; {} questions/s for {} s on node a (medians of {} runs)",
        3 * args.per_node,
        args.per_node,
        3 * args.per_node,
        args.rate,
        args.seconds,
        runs.len()
    );
    for (label, prefix) in [
        ("3 nodes, on a (asker's node)", "n3_a"),
        ("3 nodes, on b (one mesh hop)", "n3_b"),
        ("3 nodes, on c (one mesh hop)", "n3_c"),
        ("3 nodes, all clients", "n3_all"),
        ("1 node, all clients (baseline)", "n1_all"),
    ] {
        println!(
            "  {label:<32} delivered {:>6.2} %  p50 {:>7.1} ms  p95 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
            f.get(&format!("{prefix}_delivery_pct")),
            f.get(&format!("{prefix}_p50_ms")),
            f.get(&format!("{prefix}_p95_ms")),
            f.get(&format!("{prefix}_p99_ms")),
            f.get(&format!("{prefix}_max_ms")),
        );
    }
    println!(
        "  connected: 3 nodes {} of {}, 1 node {} of {}; attendance counted each user once on every node: {}",
        f.get("n3_connected"),
        3 * args.per_node,
        f.get("n1_connected"),
        3 * args.per_node,
        if f.get("n3_attendance_exact") == 1.0 && f.get("n1_attendance_exact") == 1.0 {
            "yes"
        } else {
            "NO"
        }
    );
    if json_out {
        println!("{}", f.to_json());
    }
    Ok(())
}

/// A free UDP port on loopback (bound and released: good enough for a benchmark).
fn free_udp_port() -> anyhow::Result<u16> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").context("find a free UDP port")?;
    Ok(s.local_addr()?.port())
}

/// Starts `nodes` node processes (1, or 3 in a mesh) sharing `secret`; node 0 seeds the demo.
fn start_nodes(
    nodes: usize,
    secret: &str,
    conns: usize,
    rate: f64,
    dir: &Path,
) -> anyhow::Result<Vec<ChildServer>> {
    let me = PathBuf::from("/proc/self/exe");
    let ca = ClusterCa::generate()?;
    let ports: Vec<u16> = (0..nodes)
        .map(|_| free_udp_port())
        .collect::<anyhow::Result<_>>()?;
    let mut out = Vec::new();
    for i in 0..nodes {
        let name = NAMES[i];
        let mut argv = vec![
            "serve".to_owned(),
            "--data-dir".to_owned(),
            dir.join(format!("node-{name}")).display().to_string(),
            "--http".to_owned(),
            "127.0.0.1:0".to_owned(),
        ];
        if i > 0 {
            argv.push("--no-demo".to_owned());
        }
        let mut env = vec![
            ("LECTERN_AUTH_SECRET".to_owned(), secret.to_owned()),
            ("LECTERN_CONNS_MAX".to_owned(), conns.to_string()),
            ("LECTERN_PREAUTH_MAX".to_owned(), conns.to_string()),
            (
                "LECTERN_PREAUTH_PER_ADDRESS_MAX".to_owned(),
                conns.to_string(),
            ),
            (
                "LECTERN_RATE_COMMANDS_PER_S".to_owned(),
                (rate * 2.0).max(10.0).to_string(),
            ),
            ("LECTERN_RATE_COMMAND_BURST".to_owned(), "40".to_owned()),
            ("LECTERN_LOG".to_owned(), "warn".to_owned()),
        ];
        if nodes > 1 {
            let tls = dir.join(format!("tls-{name}"));
            ca.issue_node(name, lectern_mesh::tls::NODE_CERT_VALIDITY_DEFAULT)?
                .write(&tls)?;
            // Each node dials the ones started before it: a full mesh of three.
            let peers: Vec<String> = (0..i)
                .map(|j| format!("{}@127.0.0.1:{}", NAMES[j], ports[j]))
                .collect();
            env.extend([
                ("LECTERN_MESH_NAME".to_owned(), name.to_owned()),
                ("LECTERN_REGION".to_owned(), "bench".to_owned()),
                ("LECTERN_MESH_TLS_DIR".to_owned(), tls.display().to_string()),
                (
                    "LECTERN_MESH_LISTEN".to_owned(),
                    format!("127.0.0.1:{}", ports[i]),
                ),
                ("LECTERN_MESH_PEERS".to_owned(), peers.join(",")),
                ("LECTERN_MESH_ACCEPT_FROM".to_owned(), NAMES.join(",")),
            ]);
        }
        out.push(ChildServer::spawn(
            &me,
            &argv,
            &env,
            dir,
            "node: http://",
            Duration::from_secs(60),
        )?);
    }
    Ok(out)
}

/// Waits until a client can join the demo session on `addr` (the mesh has brought it).
async fn wait_for_session(addr: SocketAddr, secret: &[u8], cohort: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let attempt = async {
            let mut c = sio::Client::connect(
                addr,
                Ipv4Addr::LOCALHOST,
                &token(secret, "rg-probe", cohort)?,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{:?} {}", e.kind, e.detail))?;
            c.join(lectern_node::DEMO_SESSION)
                .await
                .map_err(|e| anyhow::anyhow!("{:?} {}", e.kind, e.detail))
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) if started.elapsed() > Duration::from_secs(60) => {
                return Err(e.context(format!("the demo session never reached {addr}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// One class of `3 × per_node` clients over `nodes` nodes (1 or 3): its figures, prefixed
/// `n{nodes}_`, into `f`.
async fn class(
    args: &Args,
    nodes: usize,
    sources: &mut Sources,
    f: &mut Figures,
) -> anyhow::Result<()> {
    let epoch = Instant::now();
    let scratch = TempDir::new("region")?;
    let secret_text = format!("{:032x}", rand::random::<u128>());
    let total = 3 * args.per_node;
    let children = start_nodes(nodes, &secret_text, total + 100, args.rate, scratch.path())?;
    let secret = secret_text.into_bytes();
    let cohort = lectern_node::DEMO_COHORT;
    let addrs: Vec<SocketAddr> = children.iter().map(|c| c.addr).collect();
    for addr in &addrs {
        wait_for_session(*addr, &secret, cohort).await?;
    }
    progress(format_args!("{nodes} node(s) up at {addrs:?}"));

    let count = ((args.rate * args.seconds as f64).round() as u32).max(1);
    let phase = Phase {
        rate: args.rate,
        first: 0,
        count,
    };
    let pace = Pace {
        concurrency: args.connect_concurrency,
        timeout: Duration::from_secs(args.connect_timeout_s),
    };
    let session: Arc<str> = Arc::from(lectern_node::DEMO_SESSION);
    let (stop, _) = watch::channel(false);
    let per_node = total / nodes;
    let mut groups = Vec::new();
    for (n, addr) in addrs.iter().enumerate() {
        let probe = Probe::new(epoch, count);
        let tokens: Arc<Vec<String>> = Arc::new(
            (0..per_node)
                .map(|i| token(&secret, &format!("rg-{n}-{i}"), cohort))
                .collect::<anyhow::Result<_>>()?,
        );
        progress(format_args!(
            "connecting {per_node} clients to node {}",
            NAMES[n]
        ));
        let addr = *addr;
        let session = session.clone();
        let clients = super::open(
            per_node,
            &sources.block(per_node),
            pace,
            probe.clone(),
            &stop,
            move |i, source| {
                let token = tokens[i].clone();
                let session = session.clone();
                async move {
                    let mut c = sio::Client::connect(addr, source, &token).await?;
                    c.join(&session).await?;
                    Ok(Conn::Sio(Box::new(c)))
                }
            },
        )
        .await;
        if clients.failed() > 0 {
            progress(format_args!(
                "node {}: {}",
                NAMES[n],
                clients.failures_note()
            ));
        }
        groups.push((probe, clients));
    }
    let connected: usize = groups.iter().map(|(_, c)| c.connected).sum();
    f.set(&format!("n{nodes}_connected"), connected as f64);
    // Attendance as each node counts it: every user once, wherever they are connected (one
    // observer per node joins too).
    let mut observers = Vec::new();
    for (n, addr) in addrs.iter().enumerate() {
        let mut o = sio::Client::connect(
            *addr,
            Ipv4Addr::LOCALHOST,
            &token(&secret, &format!("rg-observer-{n}"), cohort)?,
        )
        .await
        .map_err(|e| anyhow::anyhow!("connect an observer: {:?} {}", e.kind, e.detail))?;
        o.join(&session)
            .await
            .map_err(|e| anyhow::anyhow!("join an observer: {:?} {}", e.kind, e.detail))?;
        observers.push(o);
    }
    let want = (connected + nodes) as u64;
    let mut counted_once = true;
    for (n, o) in observers.iter_mut().enumerate() {
        let seen = o
            .wait_attendance(want, Duration::from_secs(30))
            .await
            .map_err(|e| anyhow::anyhow!("an observer: {:?} {}", e.kind, e.detail))?;
        if seen != want {
            counted_once = false;
            progress(format_args!(
                "node {} counts {seen} present, not {want}",
                NAMES[n]
            ));
        }
    }
    f.set(
        &format!("n{nodes}_attendance_exact"),
        if counted_once { 1.0 } else { 0.0 },
    );

    let mut sender = sio::Client::connect(
        addrs[0],
        Ipv4Addr::LOCALHOST,
        &token(&secret, "rg-sender", cohort)?,
    )
    .await
    .map_err(|e| anyhow::anyhow!("connect the sender: {:?} {}", e.kind, e.detail))?;
    sender
        .join(&session)
        .await
        .map_err(|e| anyhow::anyhow!("join the sender: {:?} {}", e.kind, e.detail))?;
    progress(format_args!(
        "asking {count} questions at {} /s on node a",
        args.rate
    ));
    let mut asked = Asked {
        ok: vec![false; count as usize],
        refused: Default::default(),
        ack_us: Vec::new(),
    };
    ask(&mut sender, &session, phase, 100, &groups[0].0, &mut asked).await?;
    let ok = asked.ok_in(phase.seqs()) as u64;
    let expected: Vec<(&Probe, u64)> = groups
        .iter()
        .map(|(p, c)| (p.as_ref(), ok * c.connected as u64))
        .collect();
    drain(&expected, Duration::from_secs(args.drain_s)).await;

    let mut all = Vec::new();
    for (n, (_, clients)) in groups.into_iter().enumerate() {
        let connected = clients.connected;
        let tallies = clients.finish(&stop).await;
        if nodes > 1 {
            let mut g = Figures::default();
            tally_figures(&mut g, "x", &tallies, &asked.ok, phase, connected);
            copy(&g, f, &format!("n{nodes}_{}", NAMES[n]), &phase.tag());
        }
        all.push((tallies, connected));
    }
    let connected_all: usize = all.iter().map(|(_, c)| c).sum();
    let tallies: Vec<_> = all.into_iter().flat_map(|(t, _)| t).collect();
    let mut g = Figures::default();
    tally_figures(&mut g, "x", &tallies, &asked.ok, phase, connected_all);
    copy(&g, f, &format!("n{nodes}_all"), &phase.tag());
    drop(children);
    Ok(())
}

/// Copies `x_{name}{tag}` figures of `from` into `to` as `{prefix}_{name}`.
fn copy(from: &Figures, to: &mut Figures, prefix: &str, tag: &str) {
    for name in [
        "delivered",
        "expected",
        "delivery_pct",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "max_ms",
    ] {
        to.set(
            &format!("{prefix}_{name}"),
            from.get(&format!("x_{name}{tag}")),
        );
    }
}

//! `lectern-bench hostile`: a class of well-behaved students on one node while strangers and
//! one hostile student attack it, one attack at a time, each bounded in time.
//!
//! A node (`lectern-bench serve`, the demo class, default limits) gets `--students` students
//! connected over the lean WebSocket from 127.0.0.2, joined to the demo session. In each phase
//! the instructor (from 127.0.0.3) asks `--questions` questions at `--rate` per second, each
//! carrying a probe (its sequence number and send time), and every student's receipt is timed.
//! Phases:
//!
//! - `baseline`: no attack.
//! - `documents`: `--flooders` student sockets (from 127.0.0.1) vote in and join random
//!   sessions as fast as their acks come back (the document flood).
//! - `pings`: `--flooders` sockets that never authenticate send Engine.IO pings as fast as the
//!   node takes them and never read (the ping flood).
//! - `preauth`: `--preauth` idle TCP connections from 40 addresses (127.0.1.x), held open.
//! - `slow-bodies`: `--slow-bodies` authenticated POSTs (from 127.0.2.x) whose bodies trickle
//!   a byte a second.
//!
//! Each attack starts a second before the questions and stops after the last delivery (or a
//! 10 s wait). Reported per phase: the p95 delivery latency and its ratio to the baseline,
//! the share of deliveries received, the acked questions, and the node's peak RSS. Afterwards
//! every acked question must be in the session view. Medians of `--runs` runs (a fresh node
//! each).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lectern_gateway::auth::{Claims, mint};
use lectern_node::{DEMO_COHORT, DEMO_SESSION};
use lectern_testkit::Http;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::load::node::{ChildServer, memory};
use crate::load::probe::{self, Probe, Tally};
use crate::load::sio;
use crate::util::{TempDir, median, quantile};

/// Options of the `hostile` benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Well-behaved students connected over the lean WebSocket.
    #[arg(long, default_value_t = 200)]
    pub students: usize,
    /// Questions the instructor asks in each phase.
    #[arg(long, default_value_t = 30)]
    pub questions: u32,
    /// Questions per second.
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
    /// Sockets of the document flood and of the ping flood.
    #[arg(long, default_value_t = 4)]
    pub flooders: usize,
    /// Idle connections of the pre-authentication flood.
    #[arg(long, default_value_t = 10_000)]
    pub preauth: usize,
    /// Requests of the slow-body flood.
    #[arg(long, default_value_t = 500)]
    pub slow_bodies: usize,
    /// Runs, each on a fresh node; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

const SECRET: &str = "lectern-bench-hostile-secret-0123456789";

/// The phases, in order.
const PHASES: [&str; 5] = ["baseline", "documents", "pings", "preauth", "slow-bodies"];

/// Students come from here; attackers never do.
const STUDENTS_FROM: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// The instructor's address.
const SENDER_FROM: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// The hostile student's and the ping flood's address.
const ATTACKER_FROM: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
/// Connections per attacking address (under the node's default per-address cap of 256, so the
/// flood meets the node's global cap).
const PER_ADDRESS: usize = 250;

/// One phase's figures.
#[derive(Debug, Clone, Default)]
struct PhaseFigures {
    p95_ms: f64,
    delivered: f64,
    acked: u32,
    rss_peak_mb: f64,
    attack: String,
}

fn token(user: &str, role: &str) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = Claims {
        sub: user.into(),
        name: user.into(),
        role: role.into(),
        cohorts: vec![DEMO_COHORT.into()],
        exp: now + 24 * 3600,
        iat: now,
        nbf: None,
    };
    mint(SECRET.as_bytes(), &claims).context("mint a token")
}

/// Runs the benchmark.
pub fn run(args: &Args, json_out: bool) -> anyhow::Result<()> {
    if args.students == 0 || args.questions == 0 || args.runs == 0 || args.rate <= 0.0 {
        bail!("--students, --questions, --runs and --rate must be positive");
    }
    crate::load::node::check_open_files(
        (args.preauth + args.students + args.slow_bodies) as u64 + 500,
    )?;
    let rt = tokio::runtime::Runtime::new().context("start the async runtime")?;
    let mut runs = Vec::new();
    for r in 0..args.runs {
        let figures = rt.block_on(one_run(args))?;
        eprintln!("run {}: {}", r + 1, summary(&figures));
        runs.push(figures);
    }
    let medians: Vec<PhaseFigures> = (0..PHASES.len())
        .map(|p| {
            let col = |f: &dyn Fn(&PhaseFigures) -> f64| {
                median(&runs.iter().map(|run| f(&run[p])).collect::<Vec<_>>())
            };
            PhaseFigures {
                p95_ms: col(&|x| x.p95_ms),
                delivered: col(&|x| x.delivered),
                acked: col(&|x| f64::from(x.acked)) as u32,
                rss_peak_mb: col(&|x| x.rss_peak_mb),
                attack: runs[runs.len() - 1][p].attack.clone(),
            }
        })
        .collect();
    println!(
        "hostile: {} students, {} questions per phase at {}/s, median of {} runs",
        args.students, args.questions, args.rate, args.runs
    );
    println!("| phase | attack | p95 delivery | vs baseline | delivered | acked | node RSS peak |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let base = medians[0].p95_ms.max(0.001);
    for (name, f) in PHASES.iter().zip(&medians) {
        println!(
            "| {name} | {} | {:.1} ms | {:.2}x | {:.2} % | {}/{} | {:.0} MB |",
            f.attack,
            f.p95_ms,
            f.p95_ms / base,
            f.delivered * 100.0,
            f.acked,
            args.questions,
            f.rss_peak_mb
        );
    }
    if json_out {
        let phases: Vec<_> = PHASES
            .iter()
            .zip(&medians)
            .map(|(name, f)| {
                json!({"phase": name, "attack": f.attack, "p95_ms": f.p95_ms,
                    "vs_baseline": f.p95_ms / base, "delivered": f.delivered,
                    "acked": f.acked, "rss_peak_mb": f.rss_peak_mb})
            })
            .collect();
        println!("{}", json!({"bench": "hostile", "phases": phases}));
    }
    Ok(())
}

fn summary(run: &[PhaseFigures]) -> String {
    PHASES
        .iter()
        .zip(run)
        .map(|(n, f)| format!("{n} p95 {:.1} ms ({:.2} delivered)", f.p95_ms, f.delivered))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn one_run(args: &Args) -> anyhow::Result<Vec<PhaseFigures>> {
    let dir = TempDir::new("hostile")?;
    let exe = std::env::current_exe().context("find lectern-bench")?;
    let env: Vec<(String, String)> = [
        ("LECTERN_AUTH_SECRET", SECRET.to_owned()),
        ("LECTERN_LOG", "error".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let node = ChildServer::spawn(
        &exe,
        &[
            "serve".into(),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
        ],
        &env,
        dir.path(),
        "node: http://",
        Duration::from_secs(60),
    )?;
    let addr = node.addr;
    let seq_max = args.questions * PHASES.len() as u32;
    let probe = Probe::new(Instant::now(), seq_max);
    let (stop_listening, listening) = watch::channel(false);

    // The class: connected and joined before anything else happens (64 at a time, within
    // the node's per-address cap of connections waiting to authenticate).
    let mut listeners = Vec::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut joins = Vec::new();
    for i in 0..args.students {
        let permit = gate.clone().acquire_owned().await?;
        let t = token(&format!("hs{i:04}"), "student")?;
        joins.push(tokio::spawn(async move {
            let _permit = permit;
            let mut c = sio::Client::connect(addr, STUDENTS_FROM, &t)
                .await
                .map_err(|e| anyhow::anyhow!("student {i}: {e:?}"))?;
            c.join(DEMO_SESSION)
                .await
                .map_err(|e| anyhow::anyhow!("student {i} join: {e:?}"))?;
            anyhow::Ok(c)
        }));
    }
    for j in joins {
        let client = j.await??;
        let (probe, stop) = (probe.clone(), listening.clone());
        listeners.push(tokio::spawn(
            async move { client.listen(&probe, stop).await },
        ));
    }
    let mut sender = sio::Client::connect(addr, SENDER_FROM, &token("hostile-ada", "instructor")?)
        .await
        .map_err(|e| anyhow::anyhow!("the instructor: {e:?}"))?;

    let mut figures = Vec::new();
    let mut acked_all = Vec::new();
    for (p, name) in PHASES.iter().enumerate() {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let attack = start_attack(name, args, addr, stop.clone(), count.clone()).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = Arc::new(AtomicU64::new(0));
        let sampling = {
            let (rss, stop, pid) = (rss.clone(), stop.clone(), node.pid);
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(m) = memory(pid) {
                        rss.fetch_max(m.rss, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        let first = p as u32 * args.questions;
        let delivered_before = probe.delivered.load(Ordering::Relaxed);
        let mut acked = Vec::new();
        let period = Duration::from_secs_f64(1.0 / args.rate);
        let mut next = tokio::time::Instant::now();
        for seq in first..first + args.questions {
            tokio::time::sleep_until(next).await;
            next += period;
            let text = probe::text(seq, probe.now_us(), 80);
            sender
                .ask(DEMO_SESSION, &text)
                .await
                .map_err(|e| anyhow::anyhow!("ask: {e:?}"))?;
            let ack = sender
                .next_ack()
                .await
                .map_err(|e| anyhow::anyhow!("ack: {e:?}"))?;
            if ack.reply["ok"] == true {
                acked.push((seq, text));
            }
        }
        let expected = acked.len() as u64 * args.students as u64;
        let waited = Instant::now();
        while probe.delivered.load(Ordering::Relaxed) - delivered_before < expected
            && waited.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.store(true, Ordering::Relaxed);
        let attack_note = attack.await??;
        let _ = sampling.await;
        figures.push(PhaseFigures {
            p95_ms: 0.0,
            delivered: 0.0,
            acked: acked.len() as u32,
            rss_peak_mb: rss.load(Ordering::Relaxed) as f64 / 1e6,
            attack: format!("{attack_note} ({} sent)", count.load(Ordering::Relaxed)),
        });
        acked_all.extend(acked);
    }
    let _ = stop_listening.send(true);
    let mut tallies: Vec<Tally> = Vec::new();
    for l in listeners {
        tallies.push(l.await?);
    }
    for (p, f) in figures.iter_mut().enumerate() {
        let first = p as u32 * args.questions;
        let mut latencies: Vec<u64> = Vec::new();
        for t in &tallies {
            for seq in first..first + args.questions {
                if let Some(us) = t.latency_us(seq) {
                    latencies.push(u64::from(us));
                }
            }
        }
        latencies.sort_unstable();
        f.p95_ms = quantile(&latencies, 0.95) as f64 / 1e3;
        let expected = f64::from(f.acked) * args.students as f64;
        f.delivered = if expected > 0.0 {
            latencies.len() as f64 / expected
        } else {
            0.0
        };
    }

    // Every acked question is in the session.
    let http = Http::new(addr);
    let view = http
        .get(
            &format!("/api/sessions/{DEMO_SESSION}"),
            Some(&token("hostile-ada", "instructor")?),
        )
        .await?
        .json()?;
    let texts: std::collections::HashSet<&str> = view["questions"]
        .as_array()
        .context("the view lists questions")?
        .iter()
        .filter_map(|q| q["question"].as_str())
        .collect();
    let missing = acked_all
        .iter()
        .filter(|(_, t)| !texts.contains(t.as_str()))
        .count();
    if missing > 0 {
        bail!("{missing} acked questions are missing from the session");
    }
    eprintln!(
        "every one of the {} acked questions is in the session",
        acked_all.len()
    );
    drop(node);
    Ok(figures)
}

/// Starts phase `name`'s attack; it runs until `stop`, counting what it sent in `count`, and
/// its task answers a note on what it held.
async fn start_attack(
    name: &str,
    args: &Args,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<String>>> {
    Ok(match name {
        "documents" => {
            let mut tasks = Vec::new();
            for k in 0..args.flooders {
                let t = token(&format!("hostile-student{k}"), "student")?;
                let (stop, count) = (stop.clone(), count.clone());
                tasks.push(tokio::spawn(async move {
                    let mut c = sio::Client::connect(addr, ATTACKER_FROM, &t)
                        .await
                        .map_err(|e| anyhow::anyhow!("flooder: {e:?}"))?;
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let session = format!("ghost-{k}-{n}");
                        let event = if n.is_multiple_of(2) {
                            json!(["poll:vote", session, "p1", 0])
                        } else {
                            json!(["session:join", session])
                        };
                        if c.emit_with_ack(&event).await.is_err() || c.next_ack().await.is_err() {
                            break;
                        }
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    anyhow::Ok(())
                }));
            }
            tokio::spawn(async move {
                for t in tasks {
                    t.await??;
                }
                Ok("random-session votes and joins".to_owned())
            })
        }
        "pings" => {
            let mut tasks = Vec::new();
            for _ in 0..args.flooders {
                let (stop, count) = (stop.clone(), count.clone());
                tasks.push(tokio::spawn(ping_flood(addr, stop, count)));
            }
            tokio::spawn(async move {
                let mut cut = 0;
                for t in tasks {
                    if t.await?? {
                        cut += 1;
                    }
                }
                Ok(format!("unread pings, {cut} sockets cut off"))
            })
        }
        "preauth" => {
            // Connected before the questions start, many at once.
            let held = connect_many(addr, args.preauth, 1).await;
            count.fetch_add(held.len() as u64, Ordering::Relaxed);
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                // The node answered the ones past its cap at once and closed them.
                let mut refused = 0;
                let mut buf = [0u8; 64];
                for s in &held {
                    if let Ok(k) = s.try_read(&mut buf)
                        && (k == 0 || buf.starts_with(b"HTTP/1.1 503"))
                    {
                        refused += 1;
                    }
                }
                Ok(format!("idle connections, {refused} refused at once"))
            })
        }
        "slow-bodies" => {
            let n = args.slow_bodies;
            let t = token("hostile-slow", "student")?;
            tokio::spawn(async move {
                let head = format!(
                    "POST /api/sessions/{DEMO_SESSION}/commands/qa.ask HTTP/1.1\r\nhost: x\r\n\
                     authorization: Bearer {t}\r\ncontent-type: application/json\r\n\
                     content-length: 10000\r\n\r\n"
                );
                let mut held = Vec::with_capacity(n);
                for mut s in connect_many(addr, n, 2).await {
                    if s.write_all(head.as_bytes()).await.is_ok() {
                        held.push(s);
                    }
                }
                while !stop.load(Ordering::Relaxed) {
                    for s in &mut held {
                        if s.try_write(b" ").is_ok() {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Ok(format!("{} bodies trickling a byte a second", held.len()))
            })
        }
        _ => tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok("none".to_owned())
        }),
    })
}

/// A socket that opens a lean WebSocket, never authenticates and never reads, and writes
/// Engine.IO pings as fast as the node takes them; whether the node cut it off.
async fn ping_flood(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> anyhow::Result<bool> {
    let mut s = connect_from(addr, ATTACKER_FROM).await?;
    s.write_all(
        b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\n\
          connection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          sec-websocket-version: 13\r\n\r\n",
    )
    .await?;
    // A masked text frame "2" (mask 0): 7 bytes; 64 KiB of them per write.
    let frame = [0x81u8, 0x81, 0, 0, 0, 0, b'2'];
    let chunk: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 9362)
        .collect();
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(200), s.write_all(&chunk)).await {
            Ok(Ok(())) => {
                count.fetch_add(9362, Ordering::Relaxed);
            }
            Ok(Err(_)) => return Ok(true),
            // The node stopped reading (its output is over budget): keep the socket.
            Err(_) => {}
        }
    }
    Ok(false)
}

/// `n` TCP connections to `addr`, [`PER_ADDRESS`] from each of 127.0.`octet`.1, .2, …, 256
/// at a time; the ones that connected.
async fn connect_many(addr: SocketAddr, n: usize, octet: u8) -> Vec<TcpStream> {
    let mut set = tokio::task::JoinSet::new();
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let from = Ipv4Addr::new(127, 0, octet, 1 + (i / PER_ADDRESS) as u8);
        set.spawn(connect_from(addr, from));
        while set.len() >= 256 {
            if let Some(Ok(Ok(s))) = set.join_next().await {
                held.push(s);
            }
        }
    }
    while let Some(r) = set.join_next().await {
        if let Ok(Ok(s)) = r {
            held.push(s);
        }
    }
    held
}

/// A TCP connection to `addr` from `from`.
async fn connect_from(addr: SocketAddr, from: Ipv4Addr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0))?;
    socket.connect(addr).await
}

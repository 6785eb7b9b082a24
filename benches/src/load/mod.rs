//! `load`: the load generator. N Socket.IO websocket clients and M SSE clients, each its own
//! user, join one session of a node running as a separate process; one more client asks
//! questions at a fixed rate; every client records when each question reaches it. The node's
//! memory is read from `/proc` before, after the websocket clients and after the SSE clients.
//! Then the floor runs in the same invocation: a bare tokio server process writing frames of
//! the same sizes to the same numbers of plain sockets, measured by the same kind of client.
//!
//! Phases of one run:
//! 1. start the node (`lectern-bench serve`, or `--node-bin`), connect the sender, wait for the
//!    node to go idle, read its memory;
//! 2. connect and join the websocket clients (a bounded number at once), wait for idle, read;
//! 3. connect the SSE clients (each gets `event: state` first), wait for idle, read;
//! 4. ask `rate × seconds` questions, each text starting with a probe (sequence number and
//!    send time); wait for every ack, then for the deliveries (at most `--drain-s`); with
//!    several rates (`--rate 1,2,5`), one such phase per rate on the same clients, each
//!    reported on its own (connecting 16,000 clients takes long enough to be worth sharing);
//! 5. stop the clients, stop the node; the same for the floor with its own clients.
//!
//! Clients spread over several 127.0.0.x source addresses (a fresh block per phase), so neither
//! the ephemeral port range nor the previous phase's TIME_WAIT sockets limit the count.

pub mod floor;
pub mod node;
pub(crate) mod probe;
pub mod region;
pub(crate) mod sio;
mod stream;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use crate::util::{TempDir, median, quantile};
use node::{ChildServer, Memory};
use probe::{Probe, Tally};

/// Options of `load`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Socket.IO websocket clients (each its own user).
    #[arg(long, default_value_t = 500)]
    pub ws: usize,
    /// SSE clients (each its own user).
    #[arg(long, default_value_t = 500)]
    pub sse: usize,
    /// Questions asked per second. A list (`1,2,5`) runs one asking phase per rate, in turn,
    /// on the same connected clients, each reported on its own.
    #[arg(long, value_delimiter = ',', default_value = "10")]
    pub rate: Vec<f64>,
    /// Seconds of asking, per rate.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Characters per question (the probe plus padding; at most 500).
    #[arg(long, default_value_t = 100)]
    pub text_len: usize,
    /// Whole runs (node and floor); the summary shows each figure's median.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Program to start as the node instead of this binary's `serve`; it must print
    /// `node: http://ADDR` and take `--demo --data-dir DIR --http ADDR` (`lectern-node` does).
    #[arg(long)]
    pub node_bin: Option<PathBuf>,
    /// Load a running node at this address instead of starting one (needs --secret; memory
    /// figures need --node-pid).
    #[arg(long)]
    pub node: Option<SocketAddr>,
    /// Process id of the node given by --node.
    #[arg(long)]
    pub node_pid: Option<u32>,
    /// HS256 secret of the node given by --node (the contents of its `auth-secret`).
    #[arg(long)]
    pub secret: Option<String>,
    /// The session every client joins (it must exist; a started node has the demo's).
    #[arg(long, default_value = lectern_node::DEMO_SESSION)]
    pub session: String,
    /// The cohort claim of every token.
    #[arg(long, default_value = lectern_node::DEMO_COHORT)]
    pub cohort: String,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Seconds one client may take to connect and join.
    #[arg(long, default_value_t = 120)]
    pub connect_timeout_s: u64,
    /// Most seconds to wait for a server to go idle before reading its memory.
    #[arg(long, default_value_t = 600)]
    pub settle_max_s: u64,
    /// Seconds to wait for deliveries after the last ack.
    #[arg(long, default_value_t = 15)]
    pub drain_s: u64,
    /// Skip the floor.
    #[arg(long)]
    pub no_floor: bool,
    /// How the floor server writes: one task per socket fed by a broadcast channel (the
    /// node's design), or one task writing to every socket in turn.
    #[arg(long, value_enum, default_value_t = floor::Mode::Loop)]
    pub floor_mode: floor::Mode,
    /// Count the heap bytes of the node and the floor (a counting allocator in their
    /// processes: two atomic operations per allocation) and report them beside RSS. Only with
    /// the default node (`serve`).
    #[arg(long)]
    pub count_heap: bool,
    /// A command to run the node under, e.g. `heaptrack -o /tmp/node`; split at spaces.
    #[arg(long)]
    pub node_wrapper: Option<String>,
    /// Run only the floor, with frames of --ws-frame-bytes and --sse-frame-bytes.
    #[arg(long)]
    pub floor_only: bool,
    /// With --floor-only: the websocket-sized frame (a 100-character question's `qa:new`
    /// frame is 438 bytes).
    #[arg(long, default_value_t = 438)]
    pub ws_frame_bytes: usize,
    /// With --floor-only: the SSE-sized frame (417 bytes for a 100-character question).
    #[arg(long, default_value_t = 417)]
    pub sse_frame_bytes: usize,
}

/// Runs the load generator and prints its summary (and JSON line).
pub fn run(args: &Args, json_out: bool) -> anyhow::Result<()> {
    validate(args)?;
    node::check_open_files((args.ws + args.sse + 16) as u64)?;
    let questions: u32 = phases(args).iter().map(|p| p.count).sum();
    println!(
        "load: {} websocket + {} SSE clients, {:?} questions/s for {} s each ({questions} \
         questions of {} chars), {} run(s)",
        args.ws, args.sse, args.rate, args.seconds, args.text_len, args.runs
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let mut runs = Vec::new();
    let mut sources = Sources::default();
    for i in 0..args.runs {
        let figures = rt.block_on(run_once(args, &mut sources))?;
        println!("run {}/{}:", i + 1, args.runs);
        print_run(&figures, &args.rate);
        runs.push(figures);
    }
    let med = medians(&runs);
    if args.runs > 1 {
        println!("median of {} runs:", args.runs);
        print_run(&med, &args.rate);
    }
    print_verdict(&med, &args.rate);
    if json_out {
        let out = json!({
            "bench": "load",
            "ws": args.ws,
            "sse": args.sse,
            "rate": args.rate,
            "seconds": args.seconds,
            "text_len": args.text_len,
            "runs": runs.iter().map(Figures::to_json).collect::<Vec<_>>(),
            "median": med.to_json(),
        });
        println!("{out}");
    }
    Ok(())
}

fn validate(args: &Args) -> anyhow::Result<()> {
    if args.rate.is_empty() || args.rate.iter().any(|r| !(*r > 0.0 && *r <= 1_000.0)) {
        bail!("every --rate must be in (0, 1000]");
    }
    if args.seconds == 0 || args.runs == 0 || args.connect_concurrency == 0 {
        bail!("--seconds, --runs and --connect-concurrency must be at least 1");
    }
    if !(40..=500).contains(&args.text_len) {
        bail!("--text-len must be between 40 and 500 (the model's question limit)");
    }
    let questions: u32 = phases(args).iter().map(|p| p.count).sum();
    if questions > 4_000 {
        bail!("rate × seconds is {questions} questions; a session holds at most 5,000");
    }
    if args.node.is_some() && args.secret.is_none() {
        bail!("--node needs --secret (the node's HS256 secret)");
    }
    Ok(())
}

/// One asking phase: questions `first..first + count` at `rate` per second.
#[derive(Debug, Clone, Copy)]
struct Phase {
    rate: f64,
    first: u32,
    count: u32,
}

impl Phase {
    fn seqs(&self) -> std::ops::Range<u32> {
        self.first..self.first + self.count
    }

    /// The suffix of this phase's figures: `@{rate}`.
    fn tag(&self) -> String {
        format!("@{}", self.rate)
    }
}

/// The asking phases of a run, one per `--rate`.
fn phases(args: &Args) -> Vec<Phase> {
    let mut first = 0;
    args.rate
        .iter()
        .map(|&rate| {
            let count = ((rate * args.seconds as f64).round() as u32).max(1);
            let p = Phase { rate, first, count };
            first += count;
            p
        })
        .collect()
}

/// Named figures of one run, in insertion order.
#[derive(Debug, Clone, Default)]
struct Figures {
    values: Vec<(String, f64)>,
    notes: BTreeMap<String, String>,
}

impl Figures {
    fn set(&mut self, name: &str, value: f64) {
        self.values.push((name.to_owned(), value));
    }

    fn get(&self, name: &str) -> f64 {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .map_or(f64::NAN, |(_, v)| *v)
    }

    fn note(&mut self, name: &str, text: String) {
        self.notes.insert(name.to_owned(), text);
    }

    fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        for (n, v) in &self.values {
            let v = if v.is_finite() { json!(v) } else { Value::Null };
            m.insert(n.clone(), v);
        }
        for (n, t) in &self.notes {
            m.insert(n.clone(), json!(t));
        }
        Value::Object(m)
    }
}

/// Each figure's median over the runs (notes from the first run that has them).
fn medians(runs: &[Figures]) -> Figures {
    let mut out = Figures::default();
    if let Some(first) = runs.first() {
        for (name, _) in &first.values {
            let xs: Vec<f64> = runs
                .iter()
                .map(|r| r.get(name))
                .filter(|v| v.is_finite())
                .collect();
            out.set(name, if xs.is_empty() { f64::NAN } else { median(&xs) });
        }
    }
    for r in runs {
        for (n, t) in &r.notes {
            out.notes.entry(n.clone()).or_insert_with(|| t.clone());
        }
    }
    out
}

/// Source addresses for clients: a fresh block of 127.0.0.x per phase, at most
/// `PER_SOURCE` clients on each.
#[derive(Default)]
struct Sources {
    next: u8,
}

/// Clients per source address: well inside the 28,232 ephemeral ports per address pair.
const PER_SOURCE: usize = 10_000;

impl Sources {
    fn block(&mut self, clients: usize) -> Vec<Ipv4Addr> {
        let n = clients.div_ceil(PER_SOURCE).max(1);
        (0..n)
            .map(|_| {
                // 127.0.0.2 ..= 127.0.0.250, round and round.
                let host = 2 + self.next % 249;
                self.next = self.next.wrapping_add(1) % 249;
                Ipv4Addr::new(127, 0, 0, host)
            })
            .collect()
    }
}

/// Why a client did not get connected and joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ConnectFailure {
    /// TCP connect (or bind) failed.
    Tcp,
    /// The HTTP upgrade to websocket failed.
    Upgrade,
    /// An unexpected packet or response.
    Protocol,
    /// The server refused: Socket.IO `44`, or an HTTP status other than 200.
    Refused,
    /// `session:join` acked with `ok: false`.
    JoinRefused,
    /// The server closed the connection.
    Closed,
    /// Connecting and joining took longer than `--connect-timeout-s`.
    Timeout,
}

/// A failure to connect, with the server's words.
#[derive(Debug)]
pub(crate) struct ConnectError {
    kind: ConnectFailure,
    detail: String,
}

impl ConnectError {
    fn new(kind: ConnectFailure, detail: impl Into<String>) -> ConnectError {
        ConnectError {
            kind,
            detail: detail.into(),
        }
    }
}

/// A connected client of any kind.
enum Conn {
    Sio(Box<sio::Client>),
    Stream(stream::StreamClient),
}

impl Conn {
    async fn listen(self, probe: &Probe, stop: watch::Receiver<bool>) -> Tally {
        match self {
            Conn::Sio(c) => (*c).listen(probe, stop).await,
            Conn::Stream(c) => c.listen(probe, stop).await,
        }
    }
}

/// One phase's clients: connected ones listening, failures counted.
struct Clients {
    probe: Arc<Probe>,
    tasks: Vec<JoinHandle<Option<Tally>>>,
    connected: usize,
    failures: BTreeMap<ConnectFailure, (usize, String)>,
    took: Duration,
}

impl Clients {
    fn failed(&self) -> usize {
        self.failures.values().map(|(n, _)| n).sum()
    }

    fn failures_note(&self) -> String {
        self.failures
            .iter()
            .map(|(k, (n, example))| format!("{k:?} ×{n} (e.g. {example})"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Stops every client and collects what each received.
    async fn finish(self, stop: &watch::Sender<bool>) -> Vec<Tally> {
        let _ = stop.send(true);
        let mut out = Vec::with_capacity(self.tasks.len());
        for t in self.tasks {
            if let Ok(Some(tally)) = t.await {
                out.push(tally);
            }
        }
        out
    }
}

/// How clients are opened: at most `concurrency` at once, each within `timeout`.
#[derive(Debug, Clone, Copy)]
struct Pace {
    concurrency: usize,
    timeout: Duration,
}

impl Pace {
    fn of(args: &Args) -> Pace {
        Pace {
            concurrency: args.connect_concurrency,
            timeout: Duration::from_secs(args.connect_timeout_s),
        }
    }
}

/// Opens `count` clients with `connect(i, source)`, at most `concurrency` at once; each one
/// listens (recording into `probe`) from the moment it is connected until `stop`.
async fn open<F, Fut>(
    count: usize,
    sources: &[Ipv4Addr],
    pace: Pace,
    probe: Arc<Probe>,
    stop: &watch::Sender<bool>,
    connect: F,
) -> Clients
where
    F: Fn(usize, Ipv4Addr) -> Fut,
    Fut: Future<Output = Result<Conn, ConnectError>> + Send + 'static,
{
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(pace.concurrency));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let timeout = pace.timeout;
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let source = sources[i % sources.len()];
        let connecting = connect(i, source);
        let gate = gate.clone();
        let done = done_tx.clone();
        let probe = probe.clone();
        let stop = stop.subscribe();
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let result = tokio::time::timeout(timeout, connecting).await;
            drop(permit);
            let conn = match result {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    let _ = done.send(Err(e));
                    return None;
                }
                Err(_) => {
                    let _ = done.send(Err(ConnectError::new(
                        ConnectFailure::Timeout,
                        format!("not joined after {} s", timeout.as_secs()),
                    )));
                    return None;
                }
            };
            let _ = done.send(Ok(()));
            Some(conn.listen(&probe, stop).await)
        }));
    }
    drop(done_tx);
    let mut connected = 0;
    let mut failures: BTreeMap<ConnectFailure, (usize, String)> = BTreeMap::new();
    for _ in 0..count {
        // Every task sends exactly one result before it listens.
        let Some(r) = done_rx.recv().await else { break };
        match r {
            Ok(()) => connected += 1,
            Err(e) => {
                let entry = failures.entry(e.kind).or_insert((0, e.detail));
                entry.0 += 1;
            }
        }
    }
    Clients {
        probe,
        tasks,
        connected,
        failures,
        took: started.elapsed(),
    }
}

/// What the sender's questions came to.
struct Asked {
    /// Sequence numbers that were acked `ok: true`.
    ok: Vec<bool>,
    /// Refusals by error code.
    refused: BTreeMap<String, usize>,
    /// Ack latencies of each phase, microseconds.
    ack_us: Vec<u64>,
}

impl Asked {
    fn ok_in(&self, seqs: std::ops::Range<u32>) -> usize {
        seqs.filter(|&s| self.ok[s as usize]).count()
    }
}

/// Asks the questions of `phase` through `sender`, each carrying its probe, at the phase's
/// rate; returns once every ack is in (or 60 s after the last question).
async fn ask(
    sender: &mut sio::Client,
    session: &str,
    phase: Phase,
    text_len: usize,
    probe: &Probe,
    asked: &mut Asked,
) -> anyhow::Result<()> {
    asked.ack_us.clear();
    // Ack id → (sequence number, send time).
    let mut pending: BTreeMap<u64, (u32, u64)> = BTreeMap::new();
    let start = tokio::time::Instant::now();
    let mut seq = phase.first;
    let end = phase.first + phase.count;
    let mut last_sent = start;
    loop {
        if seq >= end && pending.is_empty() {
            break;
        }
        if seq >= end && last_sent.elapsed() > Duration::from_secs(60) {
            *asked.refused.entry("no_ack".to_owned()).or_insert(0) += pending.len();
            break;
        }
        let due = start + Duration::from_secs_f64(f64::from(seq - phase.first) / phase.rate);
        tokio::select! {
            () = tokio::time::sleep_until(due), if seq < end => {
                let sent_us = probe.now_us();
                let text = probe::text(seq, sent_us, text_len);
                let id = sender.ask(session, &text).await.map_err(|e| {
                    anyhow::anyhow!("the sender lost its connection: {:?} {}", e.kind, e.detail)
                })?;
                pending.insert(id, (seq, sent_us));
                seq += 1;
                last_sent = tokio::time::Instant::now();
            }
            ack = sender.next_ack() => {
                let ack = ack.map_err(|e| {
                    anyhow::anyhow!("the sender lost its connection: {:?} {}", e.kind, e.detail)
                })?;
                let now = probe.now_us();
                if let Some((s, sent_us)) = pending.remove(&ack.id) {
                    asked.ack_us.push(now.saturating_sub(sent_us));
                    if ack.reply["ok"] == true {
                        asked.ok[s as usize] = true;
                    } else {
                        let code = ack.reply["error"]["code"]
                            .as_str()
                            .unwrap_or("unknown")
                            .to_owned();
                        *asked.refused.entry(code).or_insert(0) += 1;
                    }
                }
            }
            () = tokio::time::sleep(Duration::from_secs(1)), if seq >= end => {}
        }
    }
    Ok(())
}

/// Waits until `probes` have counted `expected` first receipts between them, or `max` passes.
async fn drain(probes: &[(&Probe, u64)], max: Duration) -> Duration {
    let started = Instant::now();
    while started.elapsed() < max {
        let done = probes.iter().all(|(p, expected)| {
            p.delivered.load(std::sync::atomic::Ordering::Relaxed) >= *expected
        });
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// Latency and delivery figures of one transport in one phase, as `{prefix}_…{tag}`;
/// returns the median size of a `qa:new` frame.
fn tally_figures(
    f: &mut Figures,
    prefix: &str,
    tallies: &[Tally],
    ok: &[bool],
    phase: Phase,
    connected: usize,
) -> Option<usize> {
    let tag = phase.tag();
    let ok_count = phase.seqs().filter(|&s| ok[s as usize]).count();
    let mut lat: Vec<u64> = Vec::new();
    for t in tallies {
        lat.extend(
            phase
                .seqs()
                .filter(|&s| ok[s as usize])
                .filter_map(|s| t.latency_us(s))
                .map(u64::from),
        );
    }
    let delivered = lat.len();
    lat.sort_unstable();
    let expected = ok_count * connected;
    f.set(&format!("{prefix}_delivered{tag}"), delivered as f64);
    f.set(&format!("{prefix}_expected{tag}"), expected as f64);
    f.set(
        &format!("{prefix}_delivery_pct{tag}"),
        if expected == 0 {
            f64::NAN
        } else {
            100.0 * delivered as f64 / expected as f64
        },
    );
    for (name, q) in [("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0)] {
        let v = if lat.is_empty() {
            f64::NAN
        } else {
            quantile(&lat, q) as f64 / 1e3
        };
        f.set(&format!("{prefix}_{name}_ms{tag}"), v);
    }
    let frames: Vec<f64> = tallies
        .iter()
        .filter_map(|t| t.frame_len)
        .map(|l| l as f64)
        .collect();
    let frame = median(&frames);
    (frame > 0.0).then_some(frame as usize)
}

/// What every client of a transport saw over the whole run: duplicates and cut-offs.
fn stream_figures(f: &mut Figures, prefix: &str, tallies: &[Tally]) {
    let duplicates: u64 = tallies
        .iter()
        .map(|t| u64::from(t.duplicates) + u64::from(t.out_of_range))
        .sum();
    let cut: Vec<&String> = tallies.iter().filter_map(|t| t.cut_off.as_ref()).collect();
    f.set(&format!("{prefix}_duplicates"), duplicates as f64);
    f.set(&format!("{prefix}_cut_off"), cut.len() as f64);
    if let Some(r) = cut.first() {
        f.note(
            &format!("{prefix}_cut_off_reason"),
            r.chars().take(200).collect(),
        );
    }
    let frames: Vec<f64> = tallies
        .iter()
        .filter_map(|t| t.frame_len)
        .map(|l| l as f64)
        .collect();
    f.set(&format!("{prefix}_frame_bytes"), median(&frames));
}

/// Memory figures of a server: its RSS at each step and the cost per connection.
fn memory_figures(
    f: &mut Figures,
    prefix: &str,
    before: Memory,
    after_ws: Memory,
    after_sse: Memory,
    ws: usize,
    sse: usize,
) {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let per = |a: u64, b: u64, n: usize| {
        if n == 0 {
            f64::NAN
        } else {
            (b as f64 - a as f64) / n as f64 / 1024.0
        }
    };
    f.set(&format!("{prefix}_rss_before_mib"), mib(before.rss));
    f.set(&format!("{prefix}_rss_ws_mib"), mib(after_ws.rss));
    f.set(&format!("{prefix}_rss_sse_mib"), mib(after_sse.rss));
    f.set(
        &format!("{prefix}_ws_kib_per_conn"),
        per(before.rss, after_ws.rss, ws),
    );
    f.set(
        &format!("{prefix}_sse_kib_per_conn"),
        per(after_ws.rss, after_sse.rss, sse),
    );
    f.set(
        &format!("{prefix}_ws_anon_kib_per_conn"),
        per(before.anon, after_ws.anon, ws),
    );
    f.set(
        &format!("{prefix}_sse_anon_kib_per_conn"),
        per(after_ws.anon, after_sse.anon, sse),
    );
    if let (Some(b), Some(w), Some(s)) = (before.heap, after_ws.heap, after_sse.heap) {
        f.set(&format!("{prefix}_heap_before_mib"), mib(b));
        f.set(&format!("{prefix}_ws_heap_kib_per_conn"), per(b, w, ws));
        f.set(&format!("{prefix}_sse_heap_kib_per_conn"), per(w, s, sse));
    }
}

/// A progress line on stderr (a large run takes minutes between summary lines).
fn progress(what: std::fmt::Arguments<'_>) {
    eprintln!("lectern-bench load: {what}");
}

/// A token for `user`, valid for a day.
fn token(secret: &[u8], user: &str, cohort: &str) -> anyhow::Result<String> {
    crate::util::token(secret, user, "student", cohort)
}

/// Memory of `pid` if known, with its live heap if `child` counts it.
fn mem(pid: Option<u32>, child: Option<&mut ChildServer>) -> anyhow::Result<Memory> {
    let mut m = pid.map_or(Ok(Memory::default()), node::memory)?;
    if let Some(child) = child {
        let reply = child.ask("heap", "heap: ")?;
        m.heap = reply
            .split_whitespace()
            .next()
            .and_then(|live| live.parse().ok());
    }
    Ok(m)
}

/// Waits for `pid` (if known) to go idle: under 5 % of a core over a second.
async fn settle(pid: Option<u32>, args: &Args) -> anyhow::Result<Duration> {
    match pid {
        None => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(Duration::from_secs(2))
        }
        Some(pid) => {
            node::wait_idle(
                pid,
                0.05,
                Duration::from_secs(1),
                Duration::from_secs(args.settle_max_s),
            )
            .await
        }
    }
}

/// CPU seconds `pid` used since `before`.
fn cpu_since(pid: Option<u32>, before: Duration) -> f64 {
    pid.and_then(|p| node::cpu(p).ok())
        .map_or(f64::NAN, |c| c.saturating_sub(before).as_secs_f64())
}

fn cpu_now(pid: Option<u32>) -> Duration {
    pid.and_then(|p| node::cpu(p).ok()).unwrap_or_default()
}

/// One whole run: the node, then the floor.
async fn run_once(args: &Args, sources: &mut Sources) -> anyhow::Result<Figures> {
    let epoch = Instant::now();
    let phases = phases(args);
    let questions: u32 = phases.iter().map(|p| p.count).sum();
    let mut f = Figures::default();
    let scratch = TempDir::new("load")?;
    // This very binary, even if a rebuild has replaced the file since it started.
    let me = PathBuf::from("/proc/self/exe");
    if args.floor_only {
        progress(format_args!("the floor"));
        floor_run(
            args,
            sources,
            &mut f,
            &me,
            scratch.path(),
            &phases,
            args.ws_frame_bytes,
            args.sse_frame_bytes,
        )
        .await?;
        return Ok(f);
    }

    // The node.
    let secret = match &args.secret {
        Some(s) => s.clone(),
        None => format!("{:032x}", rand::random::<u128>()),
    };
    let (mut child, addr, pid) = match args.node {
        Some(addr) => (None, addr, args.node_pid),
        None => {
            let data_dir = scratch.path().join("node");
            let (program, mut argv) = match &args.node_bin {
                Some(bin) => (bin.clone(), vec!["--demo".to_owned()]),
                None => (me.clone(), vec!["serve".to_owned()]),
            };
            argv.extend([
                "--data-dir".to_owned(),
                data_dir.display().to_string(),
                "--http".to_owned(),
                "127.0.0.1:0".to_owned(),
            ]);
            let conns = (args.ws + args.sse + 100).max(20_000);
            let fastest = args.rate.iter().copied().fold(0.0, f64::max);
            let rate = (fastest * 2.0).max(10.0);
            let env = vec![
                ("LECTERN_AUTH_SECRET".to_owned(), secret.clone()),
                ("LECTERN_CONNS_MAX".to_owned(), conns.to_string()),
                // Every simulated client comes from 127.0.0.1, thousands at once: the
                // pre-authentication caps are for strangers, not for this ramp.
                ("LECTERN_PREAUTH_MAX".to_owned(), conns.to_string()),
                (
                    "LECTERN_PREAUTH_PER_ADDRESS_MAX".to_owned(),
                    conns.to_string(),
                ),
                ("LECTERN_RATE_COMMANDS_PER_S".to_owned(), rate.to_string()),
                (
                    "LECTERN_RATE_COMMAND_BURST".to_owned(),
                    (rate.ceil() as u64).max(20).to_string(),
                ),
                ("LECTERN_LOG".to_owned(), "warn".to_owned()),
                (
                    node::COUNT_HEAP_ENV.to_owned(),
                    if args.count_heap { "1" } else { "0" }.to_owned(),
                ),
            ];
            let (program, argv) = match &args.node_wrapper {
                None => (program, argv),
                Some(w) => {
                    // The wrapper runs the node, so it needs this binary's real path.
                    let program = if program == me {
                        std::env::current_exe().context("find this executable")?
                    } else {
                        program
                    };
                    let mut words = w.split_whitespace().map(str::to_owned);
                    let first = words.next().context("--node-wrapper is empty")?;
                    let mut all: Vec<String> = words.collect();
                    all.push(program.display().to_string());
                    all.extend(argv);
                    (PathBuf::from(first), all)
                }
            };
            let child = ChildServer::spawn(
                &program,
                &argv,
                &env,
                scratch.path(),
                "node: http://",
                Duration::from_secs(60),
            )?;
            let (addr, pid) = (child.addr, Some(child.pid));
            (Some(child), addr, pid)
        }
    };
    let secret = secret.into_bytes();
    // One connection before the baseline, so that what the first socket sets up once is not
    // counted per connection. It listens (answering pings) until the end of the run.
    let (warm_stop, _) = watch::channel(false);
    let warm = sio::Client::connect(
        addr,
        Ipv4Addr::LOCALHOST,
        &token(&secret, "lb-warm-up", &args.cohort)?,
    )
    .await
    .map_err(|e| anyhow::anyhow!("connect to the node: {:?} {}", e.kind, e.detail))?;
    let warm = {
        let probe = Probe::new(epoch, 1);
        let stop = warm_stop.subscribe();
        tokio::spawn(async move { warm.listen(&probe, stop).await })
    };
    progress(format_args!("node at {addr}; waiting for it to go idle"));
    let settle_before = settle(pid, args).await?;
    let before = mem(pid, child.as_mut())?;
    f.set("node_settle_before_s", settle_before.as_secs_f64());

    // Websocket clients.
    let ws_probe = Probe::new(epoch, questions);
    let (ws_stop, _) = watch::channel(false);
    let tokens: Vec<String> = (0..args.ws)
        .map(|i| token(&secret, &format!("lb-ws-{i}"), &args.cohort))
        .collect::<anyhow::Result<_>>()?;
    let tokens = Arc::new(tokens);
    let session: Arc<str> = Arc::from(args.session.as_str());
    progress(format_args!("connecting {} websocket clients", args.ws));
    let cpu0 = cpu_now(pid);
    let ws = {
        let tokens = tokens.clone();
        let session = session.clone();
        open(
            args.ws,
            &sources.block(args.ws),
            Pace::of(args),
            ws_probe.clone(),
            &ws_stop,
            move |i, source| {
                let tokens = tokens.clone();
                let session = session.clone();
                async move {
                    let mut c = sio::Client::connect(addr, source, &tokens[i]).await?;
                    c.join(&session).await?;
                    Ok(Conn::Sio(Box::new(c)))
                }
            },
        )
        .await
    };
    f.set("ws_connected", ws.connected as f64);
    f.set("ws_connect_failures", ws.failed() as f64);
    f.set("ws_connect_s", ws.took.as_secs_f64());
    f.set("node_cpu_ws_connect_s", cpu_since(pid, cpu0));
    if ws.failed() > 0 {
        f.note("ws_connect_failures_detail", ws.failures_note());
    }
    progress(format_args!(
        "{} websocket clients joined in {:.1} s; waiting for the node to go idle",
        ws.connected,
        ws.took.as_secs_f64()
    ));
    let settle_ws = settle(pid, args).await?;
    let after_ws = mem(pid, child.as_mut())?;
    f.set("node_settle_ws_s", settle_ws.as_secs_f64());

    // SSE clients.
    let sse_probe = Probe::new(epoch, questions);
    let (sse_stop, _) = watch::channel(false);
    let tokens: Vec<String> = (0..args.sse)
        .map(|i| token(&secret, &format!("lb-sse-{i}"), &args.cohort))
        .collect::<anyhow::Result<_>>()?;
    let tokens = Arc::new(tokens);
    progress(format_args!("connecting {} SSE clients", args.sse));
    let cpu0 = cpu_now(pid);
    let sse = {
        let session = session.clone();
        open(
            args.sse,
            &sources.block(args.sse),
            Pace::of(args),
            sse_probe.clone(),
            &sse_stop,
            move |i, source| {
                let tokens = tokens.clone();
                let session = session.clone();
                async move {
                    let c = stream::StreamClient::sse(addr, source, &session, &tokens[i]).await?;
                    Ok(Conn::Stream(c))
                }
            },
        )
        .await
    };
    f.set("sse_connected", sse.connected as f64);
    f.set("sse_connect_failures", sse.failed() as f64);
    f.set("sse_connect_s", sse.took.as_secs_f64());
    f.set("node_cpu_sse_connect_s", cpu_since(pid, cpu0));
    if sse.failed() > 0 {
        f.note("sse_connect_failures_detail", sse.failures_note());
    }
    progress(format_args!(
        "{} SSE clients joined in {:.1} s; waiting for the node to go idle",
        sse.connected,
        sse.took.as_secs_f64()
    ));
    let settle_sse = settle(pid, args).await?;
    let after_sse = mem(pid, child.as_mut())?;
    f.set("node_settle_sse_s", settle_sse.as_secs_f64());
    memory_figures(
        &mut f,
        "node",
        before,
        after_ws,
        after_sse,
        ws.connected,
        sse.connected,
    );

    // Questions, from a client connected just now (an idle one would have to answer pings).
    let mut sender = sio::Client::connect(
        addr,
        Ipv4Addr::LOCALHOST,
        &token(&secret, "lb-sender", &args.cohort)?,
    )
    .await
    .map_err(|e| anyhow::anyhow!("connect the sender: {:?} {}", e.kind, e.detail))?;
    let mut asked = Asked {
        ok: vec![false; questions as usize],
        refused: BTreeMap::new(),
        ack_us: Vec::new(),
    };
    let mut ok_so_far = 0u64;
    for phase in &phases {
        progress(format_args!(
            "asking {} questions at {} per second",
            phase.count, phase.rate
        ));
        let tag = phase.tag();
        let cpu0 = cpu_now(pid);
        let me_cpu0 = node::cpu(std::process::id()).unwrap_or_default();
        ask(
            &mut sender,
            &args.session,
            *phase,
            args.text_len,
            &ws_probe,
            &mut asked,
        )
        .await?;
        let ok = asked.ok_in(phase.seqs()) as u64;
        ok_so_far += ok;
        let drained = drain(
            &[
                (&ws.probe, ok_so_far * ws.connected as u64),
                (&sse.probe, ok_so_far * sse.connected as u64),
            ],
            Duration::from_secs(args.drain_s),
        )
        .await;
        f.set(&format!("node_cpu_asking_s{tag}"), cpu_since(pid, cpu0));
        f.set(
            &format!("loadgen_cpu_asking_s{tag}"),
            cpu_since(Some(std::process::id()), me_cpu0),
        );
        f.set(&format!("drain_s{tag}"), drained.as_secs_f64());
        f.set(&format!("asked{tag}"), f64::from(phase.count));
        f.set(&format!("asked_ok{tag}"), ok as f64);
        let mut ack_us = asked.ack_us.clone();
        ack_us.sort_unstable();
        f.set(
            &format!("ack_p50_ms{tag}"),
            quantile(&ack_us, 0.5) as f64 / 1e3,
        );
        f.set(
            &format!("ack_p99_ms{tag}"),
            quantile(&ack_us, 0.99) as f64 / 1e3,
        );
        // A quiet second between phases, so one phase's backlog does not start the next.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if !asked.refused.is_empty() {
        f.note("asks_refused", format!("{:?}", asked.refused));
    }
    let after_load = mem(pid, child.as_mut())?;
    f.set(
        "node_rss_after_load_mib",
        after_load.rss as f64 / (1024.0 * 1024.0),
    );
    let (ws_connected, sse_connected) = (ws.connected, sse.connected);
    let ws_tallies = ws.finish(&ws_stop).await;
    let sse_tallies = sse.finish(&sse_stop).await;
    let (mut ws_frame, mut sse_frame) = (None, None);
    for phase in &phases {
        ws_frame = tally_figures(&mut f, "ws", &ws_tallies, &asked.ok, *phase, ws_connected);
        sse_frame = tally_figures(
            &mut f,
            "sse",
            &sse_tallies,
            &asked.ok,
            *phase,
            sse_connected,
        );
    }
    stream_figures(&mut f, "ws", &ws_tallies);
    stream_figures(&mut f, "sse", &sse_tallies);
    let _ = warm_stop.send(true);
    let _ = warm.await;
    drop((ws_tallies, sse_tallies, sender, child));

    if !args.no_floor {
        progress(format_args!("the floor"));
        floor_run(
            args,
            sources,
            &mut f,
            &me,
            scratch.path(),
            &phases,
            ws_frame.unwrap_or(400),
            sse_frame.unwrap_or(500),
        )
        .await?;
        for phase in &phases {
            let tag = phase.tag();
            for t in ["ws", "sse"] {
                let ratio =
                    f.get(&format!("{t}_p95_ms{tag}")) / f.get(&format!("floor_{t}_p95_ms{tag}"));
                f.set(&format!("{t}_p95_ratio_to_floor{tag}"), ratio);
            }
        }
    }
    Ok(f)
}

/// The floor: the same numbers of sockets, frames of the same sizes, the same rate.
#[allow(clippy::too_many_arguments)]
async fn floor_run(
    args: &Args,
    sources: &mut Sources,
    f: &mut Figures,
    me: &std::path::Path,
    dir: &std::path::Path,
    phases: &[Phase],
    ws_frame: usize,
    sse_frame: usize,
) -> anyhow::Result<()> {
    let questions: u32 = phases.iter().map(|p| p.count).sum();
    let epoch = Instant::now();
    let mut child = ChildServer::spawn(
        me,
        &[
            "floor-serve".to_owned(),
            "--mode".to_owned(),
            args.floor_mode.as_str().to_owned(),
        ],
        &[(
            node::COUNT_HEAP_ENV.to_owned(),
            if args.count_heap { "1" } else { "0" }.to_owned(),
        )],
        dir,
        "floor: ",
        Duration::from_secs(30),
    )?;
    let (addr, pid) = (child.addr, Some(child.pid));
    let mut control = floor::Control::connect(addr).await?;
    settle(pid, args).await?;
    let before = mem(pid, Some(&mut child))?;

    let ws_probe = Probe::new(epoch, questions);
    let (ws_stop, _) = watch::channel(false);
    let ws = open(
        args.ws,
        &sources.block(args.ws),
        Pace::of(args),
        ws_probe,
        &ws_stop,
        move |_, source| async move {
            Ok(Conn::Stream(
                stream::StreamClient::floor(addr, source, b'W').await?,
            ))
        },
    )
    .await;
    settle(pid, args).await?;
    let after_ws = mem(pid, Some(&mut child))?;
    let sse_probe = Probe::new(epoch, questions);
    let (sse_stop, _) = watch::channel(false);
    let sse = open(
        args.sse,
        &sources.block(args.sse),
        Pace::of(args),
        sse_probe,
        &sse_stop,
        move |_, source| async move {
            Ok(Conn::Stream(
                stream::StreamClient::floor(addr, source, b'S').await?,
            ))
        },
    )
    .await;
    settle(pid, args).await?;
    let after_sse = mem(pid, Some(&mut child))?;
    memory_figures(
        f,
        "floor",
        before,
        after_ws,
        after_sse,
        ws.connected,
        sse.connected,
    );
    f.set(
        "floor_connect_failures",
        (ws.failed() + sse.failed()) as f64,
    );

    let mut sent = 0u64;
    for phase in phases {
        progress(format_args!(
            "the floor: {} frames at {} per second",
            phase.count, phase.rate
        ));
        let cpu0 = cpu_now(pid);
        let start = tokio::time::Instant::now();
        for seq in phase.seqs() {
            let due = start + Duration::from_secs_f64(f64::from(seq - phase.first) / phase.rate);
            tokio::time::sleep_until(due).await;
            let marker = probe::marker(seq, ws.probe.now_us());
            control
                .send(
                    &floor::frame(&marker, ws_frame),
                    &floor::frame(&marker, sse_frame),
                )
                .await?;
        }
        sent += u64::from(phase.count);
        drain(
            &[
                (&ws.probe, sent * ws.connected as u64),
                (&sse.probe, sent * sse.connected as u64),
            ],
            Duration::from_secs(args.drain_s),
        )
        .await;
        f.set(
            &format!("floor_cpu_asking_s{}", phase.tag()),
            cpu_since(pid, cpu0),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let all = vec![true; questions as usize];
    let (ws_connected, sse_connected) = (ws.connected, sse.connected);
    let ws_tallies = ws.finish(&ws_stop).await;
    let sse_tallies = sse.finish(&sse_stop).await;
    for phase in phases {
        tally_figures(f, "floor_ws", &ws_tallies, &all, *phase, ws_connected);
        tally_figures(f, "floor_sse", &sse_tallies, &all, *phase, sse_connected);
    }
    stream_figures(f, "floor_ws", &ws_tallies);
    stream_figures(f, "floor_sse", &sse_tallies);
    drop(child);
    Ok(())
}

fn print_run(f: &Figures, rates: &[f64]) {
    let g = |n: &str| f.get(n);
    println!(
        "  connect   ws {:.0}/{:.0} in {:.1} s (node CPU {:.1} s), sse {:.0}/{:.0} in {:.1} s \
         (node CPU {:.1} s); idle after {:.0} s / {:.0} s",
        g("ws_connected"),
        g("ws_connected") + g("ws_connect_failures"),
        g("ws_connect_s"),
        g("node_cpu_ws_connect_s"),
        g("sse_connected"),
        g("sse_connected") + g("sse_connect_failures"),
        g("sse_connect_s"),
        g("node_cpu_sse_connect_s"),
        g("node_settle_ws_s"),
        g("node_settle_sse_s"),
    );
    for (k, v) in &f.notes {
        println!("  {k}: {v}");
    }
    println!(
        "  node RSS  {:.1} MiB before, {:.1} after ws, {:.1} after sse, {:.1} after load; \
         per connection: ws {:.2} KiB (anon {:.2}), sse {:.2} KiB (anon {:.2})",
        g("node_rss_before_mib"),
        g("node_rss_ws_mib"),
        g("node_rss_sse_mib"),
        g("node_rss_after_load_mib"),
        g("node_ws_kib_per_conn"),
        g("node_ws_anon_kib_per_conn"),
        g("node_sse_kib_per_conn"),
        g("node_sse_anon_kib_per_conn"),
    );
    if g("node_ws_heap_kib_per_conn").is_finite() {
        println!(
            "  node heap (live bytes, counted) per connection: ws {:.2} KiB, sse {:.2} KiB",
            g("node_ws_heap_kib_per_conn"),
            g("node_sse_heap_kib_per_conn"),
        );
    }
    println!(
        "            = {:.1} MiB per 1,000 ws, {:.1} MiB per 1,000 sse",
        g("node_ws_kib_per_conn") * 1000.0 / 1024.0,
        g("node_sse_kib_per_conn") * 1000.0 / 1024.0,
    );
    if g("floor_rss_before_mib").is_finite() {
        println!(
            "  floor RSS per connection: ws-group {:.2} KiB, sse-group {:.2} KiB",
            g("floor_ws_kib_per_conn"),
            g("floor_sse_kib_per_conn"),
        );
    }
    for rate in rates {
        let t = format!("@{rate}");
        let g = |n: &str| f.get(&format!("{n}{t}"));
        if g("asked").is_nan() {
            println!("  at {rate}/s: floor CPU {:.1} s", g("floor_cpu_asking_s"));
        } else {
            println!(
                "  at {rate}/s: asked {:.0} ok of {:.0}; ack p50 {:.1} ms, p99 {:.1} ms; drain {:.1} s; \
             CPU while asking: node {:.1} s, load generator {:.1} s, floor {:.1} s",
                g("asked_ok"),
                g("asked"),
                g("ack_p50_ms"),
                g("ack_p99_ms"),
                g("drain_s"),
                g("node_cpu_asking_s"),
                g("loadgen_cpu_asking_s"),
                g("floor_cpu_asking_s"),
            );
        }
        println!(
            "  {:<16} {:>13} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency", "delivered", "%", "p50 ms", "p95 ms", "p99 ms", "max ms"
        );
        for (label, p) in [
            ("node ws", "ws"),
            ("node sse", "sse"),
            ("floor ws-sized", "floor_ws"),
            ("floor sse-sized", "floor_sse"),
        ] {
            if !g(&format!("{p}_expected")).is_finite() {
                continue;
            }
            println!(
                "  {:<16} {:>13} {:>9.3} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                label,
                format!(
                    "{:.0}/{:.0}",
                    g(&format!("{p}_delivered")),
                    g(&format!("{p}_expected"))
                ),
                g(&format!("{p}_delivery_pct")),
                g(&format!("{p}_p50_ms")),
                g(&format!("{p}_p95_ms")),
                g(&format!("{p}_p99_ms")),
                g(&format!("{p}_max_ms")),
            );
        }
        if g("ws_p95_ratio_to_floor").is_finite() {
            println!(
                "  p95 node / floor: ws {:.2}×, sse {:.2}×",
                g("ws_p95_ratio_to_floor"),
                g("sse_p95_ratio_to_floor"),
            );
        }
    }
    println!(
        "  frames: ws {:.0} B, sse {:.0} B; duplicates ws {:.0}, sse {:.0}; cut off ws {:.0}, sse {:.0}",
        g("ws_frame_bytes"),
        g("sse_frame_bytes"),
        g("ws_duplicates"),
        g("sse_duplicates"),
        g("ws_cut_off"),
        g("sse_cut_off"),
    );
}

fn print_verdict(f: &Figures, rates: &[f64]) {
    let g = |n: &str| f.get(n);
    let mark = |ok: bool| if ok { "met" } else { "MISSED" };
    // A transport without clients (NaN) has nothing to miss.
    let full = |pct: f64| pct.is_nan() || pct >= 100.0;
    if g("ws_connected").is_nan() {
        // Only the floor ran: there is no node to judge.
        return;
    }
    println!("targets (issue 3):");
    for rate in rates {
        let t = format!("@{rate}");
        let delivered = full(g(&format!("ws_delivery_pct{t}")))
            && full(g(&format!("sse_delivery_pct{t}")))
            && g("ws_connect_failures") == 0.0
            && g("sse_connect_failures") == 0.0
            && g("ws_cut_off") == 0.0
            && g("sse_cut_off") == 0.0;
        println!(
            "  at {rate}/s: delivery 100 %, no connect failures or cut-offs: {} (ws {:.3} %, sse \
             {:.3} %, failures {:.0} + {:.0})",
            mark(delivered),
            g(&format!("ws_delivery_pct{t}")),
            g(&format!("sse_delivery_pct{t}")),
            g("ws_connect_failures"),
            g("sse_connect_failures"),
        );
        for tr in ["ws", "sse"] {
            let r = g(&format!("{tr}_p95_ratio_to_floor{t}"));
            if r.is_finite() {
                println!(
                    "  at {rate}/s: {tr} p95 ≤ 1.5 × floor: {} ({r:.2}×)",
                    mark(r <= 1.5)
                );
            }
        }
    }
    // The KB are read as KiB (the stricter reading would be 1,000 bytes).
    for (t, target) in [("ws", 8.0), ("sse", 6.0)] {
        let v = g(&format!("node_{t}_kib_per_conn"));
        if v.is_finite() {
            println!(
                "  ≤ {target} KB RSS per idle {t} connection: {} ({v:.2} KiB)",
                mark(v <= target)
            );
        }
    }
}

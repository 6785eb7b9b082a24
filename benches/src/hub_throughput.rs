//! `hub-throughput`: acknowledged (fsynced) `qa.ask` / `qa.upvote` commands per second on one hot
//! session document, through the real hub and store, with ack latencies.
//!
//! Closed loop: C client tasks each send their next command when the previous one is acked, so
//! the writer task always finds up to C commands queued and group commit can share one fsync
//! among them. Two baselines come from the same invocation: the store's raw fsync rate
//! (sequential one-chunk commits, the ceiling without group commit), and a replay of the
//! writer's loop without tokio that times each part of a batch (apply, chunk, compaction,
//! commit), which is what shows where the time goes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use automerge::{Automerge, ROOT, ReadDoc};
use lectern_hub::{Hub, HubConfig, Published};
use lectern_model::{Caller, CommandBody, DocId, QuestionId, Replica, SessionId, limits};
use lectern_store::{Batch, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::util::{TempDir, median, ms, quantile};
use crate::workload::{admin, command, session_create, student};

/// Options of `hub-throughput`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Measured runs, each on a fresh store and hub.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Commands per run. At 30 % asks, 20,000 would ask 6,000 questions, past the model's
    /// limit of 5,000 per session; 15,000 keeps the mix and stays safely under it.
    #[arg(long, default_value_t = 15_000)]
    pub commands: usize,
    /// Concurrent closed-loop clients.
    #[arg(long, default_value_t = 256)]
    pub clients: usize,
    /// Distinct students issuing the commands.
    #[arg(long, default_value_t = 2_000)]
    pub users: usize,
    /// Share of `qa.ask` (the rest upvote existing questions).
    #[arg(long, default_value_t = 0.3)]
    pub ask_ratio: f64,
    /// Questions asked before the clock starts, so that the first upvotes have targets.
    #[arg(long, default_value_t = 20)]
    pub seed_questions: usize,
    /// Share of upvotes that go to the seed questions (popular questions gather many voters);
    /// the rest pick uniformly among all questions.
    #[arg(long, default_value_t = 0.0)]
    pub popular_share: f64,
    /// Seconds of sequential fsynced commits for the baseline, per run.
    #[arg(long, default_value_t = 2.0)]
    pub baseline_secs: f64,
    /// tokio worker threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Seed of the clients' choices.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Runs the benchmark and prints its summary (and JSON line).
pub fn run(args: &Args, json_out: bool) -> anyhow::Result<()> {
    // Asks are random: allow four standard deviations of the binomial count.
    let n = args.commands as f64;
    let spread = 4.0 * (n * args.ask_ratio * (1.0 - args.ask_ratio)).sqrt();
    let expected_asks = (n * args.ask_ratio + spread).ceil() as usize + args.seed_questions;
    if expected_asks >= limits::QUESTIONS_PER_SESSION_MAX {
        bail!(
            "{} commands at {:.0} % asks would ask about {expected_asks} questions; one session \
             holds at most {}: lower --commands or --ask-ratio",
            args.commands,
            args.ask_ratio * 100.0,
            limits::QUESTIONS_PER_SESSION_MAX
        );
    }
    if args.runs == 0 || args.clients == 0 || args.users == 0 || args.seed_questions == 0 {
        bail!("--runs, --clients, --users and --seed-questions must be at least 1");
    }
    if !(0.0..=1.0).contains(&args.popular_share) || !(0.0..=1.0).contains(&args.ask_ratio) {
        bail!("--popular-share and --ask-ratio are shares from 0 to 1");
    }
    let scratch = TempDir::new("hub-throughput")?;
    println!(
        "hub-throughput: {} runs x {} commands ({:.0} % qa.ask, rest qa.upvote, {:.0} % of \
         upvotes on {} popular questions), {} clients, {} users, {} tokio workers",
        args.runs,
        args.commands,
        args.ask_ratio * 100.0,
        args.popular_share * 100.0,
        args.seed_questions,
        args.clients,
        args.users,
        args.workers
    );
    let mut runs = Vec::new();
    let mut baselines = Vec::new();
    for r in 0..args.runs {
        let b = fsync_baseline(
            &scratch.path().join(format!("fsync-{r}")),
            args.baseline_secs,
        )?;
        println!(
            "  run {r}: baseline {:>6.0} fsynced commits/s (p50 {:.2} ms)",
            b.per_s,
            b.p50_us as f64 / 1e3
        );
        let h = hub_run(args, r, &scratch.path().join(format!("hub-{r}")))?;
        println!(
            "  run {r}: hub      {:>6.0} acked cmds/s, ack p50 {:.1} ms p99 {:.1} ms, \
             {:.1} cmds/batch, {} fsyncs, {} compactions, {} failures",
            h.per_s,
            h.p50_us as f64 / 1e3,
            h.p99_us as f64 / 1e3,
            h.cmds_per_batch,
            h.fsyncs,
            h.compactions,
            h.failures.values().sum::<u64>()
        );
        baselines.push(b);
        runs.push(h);
    }
    let batch_size = median(&runs.iter().map(|h| h.cmds_per_batch).collect::<Vec<_>>())
        .round()
        .max(1.0) as usize;
    let parts = writer_replay(args, batch_size, &scratch.path().join("replay"))?;

    let med = |f: &dyn Fn(&HubRun) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let per_s = med(&|h| h.per_s);
    let p50 = med(&|h| h.p50_us as f64);
    let p99 = med(&|h| h.p99_us as f64);
    let per_batch = med(&|h| h.cmds_per_batch);
    let base = median(&baselines.iter().map(|b| b.per_s).collect::<Vec<_>>());
    let base_p50 = median(
        &baselines
            .iter()
            .map(|b| b.p50_us as f64)
            .collect::<Vec<_>>(),
    );
    let failures: u64 = runs.iter().map(|h| h.failures.values().sum::<u64>()).sum();
    println!("median of {} runs:", args.runs);
    println!(
        "  hub:      {per_s:.0} acked cmds/s (target >= 5,000: {}), ack p50 {:.1} ms, p99 {:.1} ms, \
         {per_batch:.1} cmds per batch",
        if per_s >= 5000.0 { "met" } else { "MISSED" },
        p50 / 1e3,
        p99 / 1e3
    );
    let fsyncs = med(&|h| h.fsyncs as f64);
    let wall_s = med(&|h| h.wall.as_secs_f64());
    println!(
        "  baseline: {base:.0} fsynced commits/s sequentially (p50 {:.2} ms): the ceiling of one \
         command per fsync; the hub reached {:.2}x of it with {:.0} fsyncs per run, which at the \
         baseline's p50 is {:.1} % of the run's wall time",
        base_p50 / 1e3,
        per_s / base.max(1e-9),
        fsyncs,
        100.0 * fsyncs * base_p50 / 1e6 / wall_s.max(1e-9)
    );
    println!(
        "writer replay without tokio ({} commands in batches of {batch_size}, same mix): \
         {:.0} cmds/s",
        parts.commands, parts.per_s
    );
    for (name, d) in parts.phases() {
        println!(
            "  {name:<22} {:>8.1} ms total  {:>6.1} µs/cmd  {:>5.1} %",
            ms(d),
            d.as_secs_f64() * 1e6 / parts.commands as f64,
            100.0 * d.as_secs_f64() / parts.total().as_secs_f64()
        );
    }
    println!(
        "  apply by command: qa.ask {:.1} µs, qa.upvote {:.1} µs (median); apply µs/cmd by \
         fifth of the run: {}",
        parts.ask_us_p50,
        parts.upvote_us_p50,
        parts
            .apply_us_by_fifth
            .iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    println!(
        "  at the end: one automerge map get {:.1} µs, length(questions) {:.0} µs",
        parts.get_us, parts.length_us
    );
    if failures > 0 {
        println!("FAILURES: {failures} commands were not acked Ok (a bug): see the runs above");
    }
    if json_out {
        let out = json!({
            "bench": "hub-throughput",
            "commands": args.commands,
            "clients": args.clients,
            "users": args.users,
            "ask_ratio": args.ask_ratio,
            "popular_share": args.popular_share,
            "workers": args.workers,
            "median_cmds_per_s": per_s,
            "median_p50_us": p50,
            "median_p99_us": p99,
            "median_cmds_per_batch": per_batch,
            "target_cmds_per_s": 5000,
            "target_met": per_s >= 5000.0,
            "failures": failures,
            "baseline_fsync_commits_per_s": base,
            "baseline_fsync_p50_us": base_p50,
            "runs": runs.iter().map(HubRun::to_json).collect::<Vec<_>>(),
            "baselines": baselines.iter().map(|b| json!({"commits_per_s": b.per_s, "p50_us": b.p50_us, "p99_us": b.p99_us})).collect::<Vec<_>>(),
            "writer_replay": parts.to_json(),
        });
        println!("{out}");
    }
    Ok(())
}

struct FsyncBaseline {
    per_s: f64,
    p50_us: u64,
    p99_us: u64,
}

/// Sequential `Store::commit` of one ~200-byte chunk each: one fsync per commit.
fn fsync_baseline(dir: &Path, secs: f64) -> anyhow::Result<FsyncBaseline> {
    let store = Store::open(dir).with_context(|| format!("open store at {}", dir.display()))?;
    let chunk: Vec<u8> = (0..200u32).map(|i| (i * 37 % 251) as u8).collect();
    let mut lat = Vec::new();
    let start = Instant::now();
    let budget = Duration::from_secs_f64(secs);
    let mut seq = 0u64;
    while start.elapsed() < budget {
        let mut batch = Batch::new();
        batch.append_chunk("session/fsync-baseline", seq, chunk.clone());
        seq += 1;
        let t = Instant::now();
        store.commit(batch).context("commit a baseline chunk")?;
        lat.push(t.elapsed().as_micros() as u64);
    }
    let elapsed = start.elapsed();
    lat.sort_unstable();
    Ok(FsyncBaseline {
        per_s: lat.len() as f64 / elapsed.as_secs_f64(),
        p50_us: quantile(&lat, 0.5),
        p99_us: quantile(&lat, 0.99),
    })
}

struct HubRun {
    commands: usize,
    wall: Duration,
    per_s: f64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    failures: BTreeMap<String, u64>,
    batches: u64,
    cmds_per_batch: f64,
    fsyncs: u64,
    compactions: u64,
}

impl HubRun {
    fn to_json(&self) -> serde_json::Value {
        json!({
            "commands": self.commands,
            "wall_ms": ms(self.wall),
            "cmds_per_s": self.per_s,
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "max_us": self.max_us,
            "failures": self.failures,
            "batches": self.batches,
            "cmds_per_batch": self.cmds_per_batch,
            "fsyncs": self.fsyncs,
            "compactions": self.compactions,
        })
    }
}

/// What one client task saw.
#[derive(Default)]
struct ClientLog {
    latencies_us: Vec<u64>,
    failures: BTreeMap<String, u64>,
}

/// One measured run: fresh store, fresh hub, its own runtime.
fn hub_run(args: &Args, run: usize, dir: &Path) -> anyhow::Result<HubRun> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    rt.block_on(async {
        let store = Store::open(dir).with_context(|| format!("open store at {}", dir.display()))?;
        let hub = Hub::new(store.clone(), HubConfig::default());
        let doc = DocId::Session(SessionId::new(format!("hot-{run}"))?);
        let admin = admin();
        hub.execute(doc.clone(), admin.clone(), session_create("create"))
            .await
            .context("create the session")?;
        let users: Arc<Vec<Caller>> = Arc::new((0..args.users).map(student).collect());
        let mut seeded = Vec::new();
        for i in 0..args.seed_questions {
            let id = format!("seed-{i}");
            let ask = command(&id, ask_body(i));
            hub.execute(doc.clone(), users[i % users.len()].clone(), ask)
                .await
                .context("ask a seed question")?;
            seeded.push(QuestionId::new(id)?);
        }
        let questions = Arc::new(Mutex::new(seeded));
        let next = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(tokio::sync::Barrier::new(args.clients + 1));
        let hub_before = hub.stats();
        let store_before = store.stats();

        let mut tasks = Vec::new();
        for c in 0..args.clients {
            let (hub, doc, users, questions, next, barrier) = (
                hub.clone(),
                doc.clone(),
                users.clone(),
                questions.clone(),
                next.clone(),
                barrier.clone(),
            );
            let (n, ask_ratio) = (args.commands, args.ask_ratio);
            let (seeds, popular) = (args.seed_questions, args.popular_share);
            let mut rng = StdRng::seed_from_u64(args.seed ^ ((run as u64) << 32) ^ c as u64);
            tasks.push(tokio::spawn(async move {
                let mut log = ClientLog::default();
                barrier.wait().await;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let caller = users[rng.random_range(0..users.len())].clone();
                    let id = format!("c{i}");
                    let asking = rng.random_bool(ask_ratio);
                    let body = if asking {
                        ask_body(i)
                    } else {
                        let question = {
                            // Invariant: nobody panics while holding this lock.
                            let qs = questions.lock().expect("questions lock");
                            qs[pick_question(&mut rng, qs.len(), seeds, popular)].clone()
                        };
                        CommandBody::QaUpvote { question }
                    };
                    let cmd = command(&id, body);
                    let t = Instant::now();
                    let result = hub.execute(doc.clone(), caller, cmd).await;
                    log.latencies_us.push(t.elapsed().as_micros() as u64);
                    match result {
                        Ok(_) if asking => {
                            // Invariant: a command id is a valid question id.
                            let q = QuestionId::new(id).expect("command ids are question ids");
                            questions.lock().expect("questions lock").push(q);
                        }
                        Ok(_) => {}
                        Err(e) => *log.failures.entry(e.code().to_owned()).or_default() += 1,
                    }
                }
                log
            }));
        }
        barrier.wait().await;
        let start = Instant::now();
        let mut latencies = Vec::with_capacity(args.commands);
        let mut failures: BTreeMap<String, u64> = BTreeMap::new();
        for t in tasks {
            let log = t.await.context("a client task panicked")?;
            latencies.extend(log.latencies_us);
            for (code, n) in log.failures {
                *failures.entry(code).or_default() += n;
            }
        }
        let wall = start.elapsed();
        let hub_after = hub.stats();
        let store_after = store.stats();
        hub.shutdown().await.context("shut the hub down")?;

        latencies.sort_unstable();
        let batches = hub_after.batches - hub_before.batches;
        let applied = hub_after.commands_applied - hub_before.commands_applied;
        let acked = args.commands as u64 - failures.values().sum::<u64>();
        Ok(HubRun {
            commands: args.commands,
            wall,
            per_s: acked as f64 / wall.as_secs_f64(),
            p50_us: quantile(&latencies, 0.5),
            p99_us: quantile(&latencies, 0.99),
            max_us: latencies.last().copied().unwrap_or(0),
            failures,
            batches,
            cmds_per_batch: applied as f64 / batches.max(1) as f64,
            fsyncs: store_after.fsyncs - store_before.fsyncs,
            compactions: hub_after.compactions - hub_before.compactions,
        })
    })
}

/// The index of the question to upvote among `len`: one of the first `seeds` with probability
/// `popular`, otherwise any.
fn pick_question(rng: &mut StdRng, len: usize, seeds: usize, popular: f64) -> usize {
    if seeds > 0 && rng.random_bool(popular) {
        rng.random_range(0..seeds.min(len))
    } else {
        rng.random_range(0..len)
    }
}

fn ask_body(i: usize) -> CommandBody {
    CommandBody::QaAsk {
        text: format!(
            "Question {i}: if the leader fsyncs once per batch, what bounds the latency of \
             one acknowledged vote?"
        ),
        anonymous: i.is_multiple_of(5),
    }
}

/// Where the writer's time goes, from a replay of its loop.
struct WriterParts {
    commands: usize,
    per_s: f64,
    apply: Duration,
    publish: Duration,
    heads_and_chunk: Duration,
    compaction: Duration,
    commit: Duration,
    ask_us_p50: f64,
    upvote_us_p50: f64,
    apply_us_by_fifth: Vec<f64>,
    /// One automerge map `get` (a question's text) at the end of the run.
    get_us: f64,
    /// `length` of the questions map (what `qa.ask` checks against the limit).
    length_us: f64,
}

impl WriterParts {
    fn phases(&self) -> [(&'static str, Duration); 5] {
        [
            ("apply (model)", self.apply),
            ("serialize event", self.publish),
            ("heads + save_after", self.heads_and_chunk),
            ("compaction (save)", self.compaction),
            ("store commit + fsync", self.commit),
        ]
    }

    fn total(&self) -> Duration {
        self.phases().iter().map(|(_, d)| *d).sum()
    }

    fn to_json(&self) -> serde_json::Value {
        let phases: serde_json::Map<String, serde_json::Value> = self
            .phases()
            .iter()
            .map(|(k, d)| ((*k).to_owned(), json!(ms(*d))))
            .collect();
        json!({
            "commands": self.commands,
            "cmds_per_s": self.per_s,
            "phases_ms": phases,
            "ask_apply_p50_us": self.ask_us_p50,
            "upvote_apply_p50_us": self.upvote_us_p50,
            "apply_us_per_cmd_by_fifth": self.apply_us_by_fifth,
            "automerge_get_us": self.get_us,
            "automerge_length_us": self.length_us,
        })
    }
}

/// Times single reads on the finished document: a question's `text` (two map lookups: the
/// question in `questions`, then its field) and the `length` of `questions`.
fn probe_reads(
    doc: &Automerge,
    questions: &[QuestionId],
    rng: &mut StdRng,
) -> anyhow::Result<(f64, f64)> {
    let (_, qs) = doc
        .get(ROOT, "questions")?
        .context("the document has no questions map")?;
    let reps = 2_000;
    let t = Instant::now();
    for _ in 0..reps {
        let q = &questions[rng.random_range(0..questions.len())];
        let (_, obj) = doc.get(&qs, q.as_str())?.context("a question is missing")?;
        std::hint::black_box(doc.get(&obj, "text")?);
    }
    let get_us = t.elapsed().as_secs_f64() * 1e6 / (2 * reps) as f64;
    let t = Instant::now();
    for _ in 0..200 {
        std::hint::black_box(doc.length(&qs));
    }
    let length_us = t.elapsed().as_secs_f64() * 1e6 / 200.0;
    Ok((get_us, length_us))
}

/// The writer task's batch loop (lectern-hub `doc.rs`: apply each command, serialize its event,
/// read heads, `save_after`, compact when chunks outweigh the snapshot, commit) run on one
/// thread with `Store::commit`, timing each part. Same command mix as the hub runs.
fn writer_replay(args: &Args, batch_size: usize, dir: &Path) -> anyhow::Result<WriterParts> {
    let store = Store::open(dir).with_context(|| format!("open store at {}", dir.display()))?;
    let doc = DocId::Session(SessionId::new("replay")?);
    let key = doc.to_string();
    let mut replica = Replica::new(doc.clone(), &store.identity().actor_bytes());
    let compact_min = HubConfig::default().compact_min_bytes;
    let now = lectern_hub::system_now();
    let users: Vec<Caller> = (0..args.users).map(student).collect();
    let mut rng = StdRng::seed_from_u64(args.seed);
    replica
        .apply(&admin(), &session_create("create"), now)
        .map_err(|r| anyhow::anyhow!("create: {r}"))?;
    let mut questions = Vec::new();
    for i in 0..args.seed_questions {
        let id = format!("seed-{i}");
        replica
            .apply(&users[i % users.len()], &command(&id, ask_body(i)), now)
            .map_err(|r| anyhow::anyhow!("seed: {r}"))?;
        questions.push(QuestionId::new(id)?);
    }
    let mut saved = replica.doc().get_heads();
    let (mut snapshot_bytes, mut chunk_bytes, mut seq) = (0u64, 0u64, 0u64);
    let mut parts = WriterParts {
        commands: args.commands,
        per_s: 0.0,
        apply: Duration::ZERO,
        publish: Duration::ZERO,
        heads_and_chunk: Duration::ZERO,
        compaction: Duration::ZERO,
        commit: Duration::ZERO,
        ask_us_p50: 0.0,
        upvote_us_p50: 0.0,
        apply_us_by_fifth: Vec::new(),
        get_us: 0.0,
        length_us: 0.0,
    };
    let (mut ask_us, mut upvote_us) = (Vec::new(), Vec::new());
    let mut fifths = [Duration::ZERO; 5];
    let mut i = 0;
    while i < args.commands {
        let end = (i + batch_size).min(args.commands);
        for j in i..end {
            let caller = &users[rng.random_range(0..users.len())];
            let id = format!("c{j}");
            let asking = rng.random_bool(args.ask_ratio);
            let body = if asking {
                ask_body(j)
            } else {
                let q = pick_question(
                    &mut rng,
                    questions.len(),
                    args.seed_questions,
                    args.popular_share,
                );
                CommandBody::QaUpvote {
                    question: questions[q].clone(),
                }
            };
            let cmd = command(&id, body);
            let t = Instant::now();
            let applied = replica
                .apply(caller, &cmd, now)
                .map_err(|r| anyhow::anyhow!("replay command {id}: {r}"))?;
            let took = t.elapsed();
            parts.apply += took;
            fifths[j * 5 / args.commands] += took;
            if asking {
                ask_us.push(took.as_micros() as u64);
                questions.push(QuestionId::new(id)?);
            } else {
                upvote_us.push(took.as_micros() as u64);
            }
            let t = Instant::now();
            let published = applied
                .event
                .as_ref()
                .map(|e| Published::from_event(&doc, e));
            std::hint::black_box(published);
            parts.publish += t.elapsed();
        }
        i = end;

        let t = Instant::now();
        let heads = replica.doc().get_heads();
        let chunk = replica.save_after(&saved);
        parts.heads_and_chunk += t.elapsed();
        let chunk_len = chunk.len() as u64;
        let mut batch = Batch::new();
        if chunk_bytes + chunk_len > snapshot_bytes.max(compact_min) {
            let t = Instant::now();
            let snapshot = replica.save();
            parts.compaction += t.elapsed();
            snapshot_bytes = snapshot.len() as u64;
            chunk_bytes = 0;
            batch.put_snapshot(&key, snapshot, seq);
        } else {
            batch.append_chunk(&key, seq, chunk);
            seq += 1;
            chunk_bytes += chunk_len;
        }
        let t = Instant::now();
        store.commit(batch).context("commit a replay batch")?;
        parts.commit += t.elapsed();
        saved = heads;
    }
    parts.per_s = args.commands as f64 / parts.total().as_secs_f64();
    ask_us.sort_unstable();
    upvote_us.sort_unstable();
    parts.ask_us_p50 = quantile(&ask_us, 0.5) as f64;
    parts.upvote_us_p50 = quantile(&upvote_us, 0.5) as f64;
    let per_fifth = (args.commands as f64 / 5.0).max(1.0);
    parts.apply_us_by_fifth = fifths
        .iter()
        .map(|d| d.as_secs_f64() * 1e6 / per_fifth)
        .collect();
    (parts.get_us, parts.length_us) = probe_reads(replica.doc(), &questions, &mut rng)?;
    Ok(parts)
}

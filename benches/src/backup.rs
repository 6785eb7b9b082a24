//! `backup`: `GET /admin/backup` (what `lectern backup` calls) of a node that stores N
//! documents while a class keeps sending commands at a fixed rate: how long the backup takes,
//! its size, and the command ack latency while it runs, against the same load in the same run
//! with no backup (the baseline).
//!
//! The node runs in this process (`lectern_node::start`, a real sled store and HTTP listener),
//! started afresh on the same store for each run, so the backup loads the documents the class
//! is not using from disk, as on a node that has served for a while; the backup is read over
//! HTTP by the testkit's client, as the CLI reads it. The load is
//! open-loop: command `i` is due at `i / rate` seconds and its latency runs from when it was
//! due to its acknowledgement (after the fsync), so a stall shows up in full even though the
//! load does not wait for it. Commands are chat messages spread over the first
//! [`HOT_SESSIONS`] sessions, from [`STUDENTS`] students (well inside the per-person quotas).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lectern_model::{Caller, Command, CommandBody, DocId, Role};
use serde_json::json;

use crate::util::{TempDir, bytes, median, quantile};

/// Sessions the class writes to (a realistic number of live classes on one node); the other
/// documents only wait to be backed up.
const HOT_SESSIONS: usize = 100;

/// Students the load writes as.
const STUDENTS: usize = 1_000;

/// Sessions created at once while seeding.
const SEED_IN_FLIGHT: usize = 64;

/// The admin token of the benchmark's node.
const ADMIN_TOKEN: &str = "backup-bench-admin-token";

/// The longest a backup may take before the benchmark gives up.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(600);

/// Options of `backup`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Documents the node stores (sessions of the demo cohort, each with a question).
    #[arg(long, default_value_t = 10_000)]
    pub docs: usize,
    /// Commands per second the class sends, during the baseline and during the backup.
    #[arg(long, default_value_t = 1_000)]
    pub rate: u64,
    /// Length of the baseline phase, in seconds.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Baseline-and-backup pairs; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

/// One run's figures.
struct Run {
    backup: Duration,
    backup_bytes: usize,
    backed_docs: usize,
    baseline: Latencies,
    during: Latencies,
}

/// Ack latencies of one phase, sorted, in microseconds; and the rate achieved.
struct Latencies {
    sorted_us: Vec<u64>,
    rate: f64,
}

impl Latencies {
    fn p(&self, q: f64) -> f64 {
        quantile(&self.sorted_us, q) as f64 / 1e3
    }
}

/// Runs the benchmark and prints its summary (and JSON line).
pub fn run(args: &Args, json_out: bool) -> anyhow::Result<()> {
    if args.runs == 0 || args.rate == 0 || args.docs < HOT_SESSIONS {
        bail!("--runs and --rate must be at least 1, --docs at least {HOT_SESSIONS}");
    }
    println!(
        "backup: {} documents, {} commands/s, {} s baseline, {} runs",
        args.docs, args.rate, args.seconds, args.runs
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start a runtime")?;
    let scratch = TempDir::new("backup")?;
    let runs = rt.block_on(measure(args, &scratch))?;
    let med = |f: &dyn Fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let each = |f: &dyn Fn(&Run) -> f64| {
        runs.iter()
            .map(|r| format!("{:.1}", f(r)))
            .collect::<Vec<_>>()
            .join(" · ")
    };
    let dur = |r: &Run| r.backup.as_secs_f64();
    let base95 = |r: &Run| r.baseline.p(0.95);
    let dur95 = |r: &Run| r.during.p(0.95);
    println!(
        "backup   {:.2} s median ({}) for {} documents, {} each",
        med(&dur),
        runs.iter()
            .map(|r| format!("{:.2}", dur(r)))
            .collect::<Vec<_>>()
            .join(" · "),
        runs[0].backed_docs,
        bytes(med(&|r: &Run| r.backup_bytes as f64)),
    );
    println!(
        "acks during the backup   p50 {:.1} ms, p95 {:.1} ms ({}), p99 {:.1} ms, {:.0} cmds/s",
        med(&|r: &Run| r.during.p(0.5)),
        med(&dur95),
        each(&dur95),
        med(&|r: &Run| r.during.p(0.99)),
        med(&|r: &Run| r.during.rate),
    );
    println!(
        "baseline (no backup)     p50 {:.1} ms, p95 {:.1} ms ({}), p99 {:.1} ms, {:.0} cmds/s",
        med(&|r: &Run| r.baseline.p(0.5)),
        med(&base95),
        each(&base95),
        med(&|r: &Run| r.baseline.p(0.99)),
        med(&|r: &Run| r.baseline.rate),
    );
    println!(
        "p95 during the backup / baseline: {:.2}x",
        med(&dur95) / med(&base95).max(1e-3)
    );
    if json_out {
        let out = json!({
            "bench": "backup",
            "docs": args.docs,
            "rate": args.rate,
            "runs": runs.iter().map(|r| json!({
                "backup_s": dur(r),
                "backup_bytes": r.backup_bytes,
                "backed_docs": r.backed_docs,
                "during_p95_ms": r.during.p(0.95),
                "during_rate": r.during.rate,
                "baseline_p95_ms": r.baseline.p(0.95),
                "baseline_rate": r.baseline.rate,
            })).collect::<Vec<_>>(),
        });
        println!("{out}");
    }
    Ok(())
}

async fn measure(args: &Args, scratch: &TempDir) -> anyhow::Result<Vec<Run>> {
    let config = || -> anyhow::Result<lectern_node::Config> {
        Ok(lectern_node::Config {
            data_dir: scratch.path().join("node"),
            http: "127.0.0.1:0".parse()?,
            admin_token: Some(ADMIN_TOKEN.into()),
            demo: true,
            ..Default::default()
        })
    };
    let node = lectern_node::start(config()?).await?;
    let docs = seed(&node.hub, args.docs).await?;
    node.stop().await?;
    let hot: Arc<[DocId]> = docs[..HOT_SESSIONS].into();
    let mut runs = Vec::new();
    for run in 0..args.runs {
        // A node started afresh on the store for each run, as a node that has served for a
        // while: the class's sessions are loaded (by the baseline), the other documents are
        // only on disk until the backup reads them.
        let node = lectern_node::start(config()?).await?;
        let http = lectern_testkit::Http::new(node.http_addr);
        for doc in hot.iter() {
            node.hub.read(doc.clone(), |_| ()).await?;
        }
        let baseline = load(&node.hub, &hot, args.rate, &format!("b{run}"), async {
            tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        })
        .await?;
        let mut backup = None;
        let during = load(&node.hub, &hot, args.rate, &format!("d{run}"), async {
            let started = Instant::now();
            let auth = format!("Bearer {ADMIN_TOKEN}");
            let got = http
                .send(
                    "GET",
                    "/admin/backup",
                    &[("authorization", auth.as_str())],
                    None,
                    BACKUP_TIMEOUT,
                )
                .await;
            backup = Some((started.elapsed(), got));
        })
        .await?;
        let (took, got) = backup.context("the backup ran")?;
        let got = got?;
        if got.status != 200 {
            bail!("GET /admin/backup answered {}: {}", got.status, got.text());
        }
        let file = scratch.path().join(format!("run{run}.backup"));
        std::fs::write(&file, &got.body)?;
        let verified = lectern_node::backup::verify(&file)?;
        std::fs::remove_file(&file)?;
        if verified.docs.len() < args.docs {
            bail!(
                "the backup holds {} documents of {}",
                verified.docs.len(),
                args.docs
            );
        }
        println!(
            "  run {}: backup {:.2} s, {}; ack p95 {:.1} ms during, {:.1} ms baseline",
            run + 1,
            took.as_secs_f64(),
            bytes(got.body.len() as f64),
            during.p(0.95),
            baseline.p(0.95),
        );
        runs.push(Run {
            backup: took,
            backup_bytes: got.body.len(),
            backed_docs: verified.docs.len(),
            baseline,
            during,
        });
        node.stop().await?;
    }
    Ok(runs)
}

/// Creates `n` sessions in the demo cohort, each with one question; their ids.
async fn seed(hub: &lectern_hub::Hub, n: usize) -> anyhow::Result<Vec<DocId>> {
    let started = Instant::now();
    let instructor = caller("ada", Role::Instructor)?;
    let student = caller("student1", Role::Student)?;
    let docs: Vec<DocId> = (0..n)
        .map(|i| Ok(DocId::Session(format!("bk-{i}").parse()?)))
        .collect::<anyhow::Result<_>>()?;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, doc) in docs.iter().cloned().enumerate() {
        if tasks.len() >= SEED_IN_FLIGHT {
            tasks.join_next().await.context("a seeding task")???;
        }
        let (hub, instructor, student) = (hub.clone(), instructor.clone(), student.clone());
        tasks.spawn(async move {
            let create = CommandBody::SessionCreate {
                cohort: lectern_node::DEMO_COHORT.parse()?,
                title: format!("Backed-up session {i}"),
                moderation: false,
            };
            hub.execute(doc.clone(), instructor, command(&format!("mk{i}"), create)?)
                .await?;
            let ask = CommandBody::QaAsk {
                text: format!("A question kept in session {i}"),
                anonymous: false,
            };
            hub.execute(doc, student, command(&format!("q{i}"), ask)?)
                .await?;
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    println!(
        "seeded {n} sessions in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(docs)
}

/// Sends chat messages at `rate` per second to `hot` until `during` ends; the ack latencies.
async fn load(
    hub: &lectern_hub::Hub,
    hot: &Arc<[DocId]>,
    rate: u64,
    tag: &str,
    during: impl Future<Output = ()>,
) -> anyhow::Result<Latencies> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (hub, hot, stop, tag) = (hub.clone(), hot.clone(), stop.clone(), tag.to_owned());
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                tokio::time::sleep_until(due).await;
                let doc = hot[i as usize % hot.len()].clone();
                let who = caller(
                    &format!("bk-student-{}", i as usize % STUDENTS),
                    Role::Student,
                )?;
                let cmd = command(
                    &format!("{tag}-{i}"),
                    CommandBody::ChatSend {
                        text: format!("message {i}"),
                    },
                )?;
                let hub = hub.clone();
                tasks.spawn(async move {
                    hub.execute(doc, who, cmd).await?;
                    anyhow::Ok(due.elapsed())
                });
                i += 1;
            }
            let sent_for = start.elapsed();
            let mut us = Vec::with_capacity(i as usize);
            while let Some(done) = tasks.join_next().await {
                us.push(done??.as_micros() as u64);
            }
            us.sort_unstable();
            anyhow::Ok(Latencies {
                rate: us.len() as f64 / sent_for.as_secs_f64().max(1e-3),
                sorted_us: us,
            })
        })
    };
    during.await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.await?
}

fn caller(user: &str, role: Role) -> anyhow::Result<Caller> {
    Ok(Caller {
        user: user.parse()?,
        name: user.into(),
        role,
        cohorts: vec![lectern_node::DEMO_COHORT.parse()?],
    })
}

fn command(id: &str, body: CommandBody) -> anyhow::Result<Command> {
    Ok(Command {
        id: id.parse()?,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kills: quantiles read from the wrong end, or in the wrong unit.
    #[test]
    fn latencies_are_read_in_milliseconds_from_the_sorted_sample() {
        let l = Latencies {
            sorted_us: (1..=100).map(|i| i * 1_000).collect(),
            rate: 0.0,
        };
        assert_eq!(l.p(0.95), 95.0);
        assert_eq!(l.p(0.5), 50.0);
        assert!(crate::util::ms(Duration::from_millis(3)) == 3.0);
    }
}

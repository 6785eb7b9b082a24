//! `class-size`: what a 40-student, 60-minute class (about 20,000 changes) costs: its saved
//! size, its size in the store, the heap a loaded replica holds, and how long loading takes;
//! against the same figures for an empty, just-created session.
//!
//! The class runs through the real hub and store (one command at a time on a simulated clock),
//! so the store holds the chunks and snapshots that the node's compaction rule leaves, exactly
//! as a node would. Heap bytes come from the counting allocator ([`crate::alloc`]): the bytes
//! `Replica::load` allocated and had not freed while the replica is still alive, measured after
//! the hub, runtime and store are gone so that no other thread allocates meanwhile.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use automerge::Automerge;
use lectern_hub::{Hub, HubConfig};
use lectern_model::{DocId, Millis, Replica, SessionId};
use lectern_store::Store;
use serde_json::json;

use crate::alloc;
use crate::util::{TempDir, bytes, median, ms};
use crate::workload::{Class, Mix};

/// Options of `class-size`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Students in the class.
    #[arg(long, default_value_t = 40)]
    pub students: usize,
    /// Length of the class in (simulated) minutes.
    #[arg(long, default_value_t = 60)]
    pub minutes: u64,
    /// Commands in the class.
    #[arg(long, default_value_t = 20_000)]
    pub commands: usize,
    /// Loads timed; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub loads: usize,
    /// Seed of the class.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Runs the benchmark and prints its summary (and JSON line).
pub fn run(args: &Args, json_out: bool) -> anyhow::Result<()> {
    if args.loads == 0 || args.students == 0 {
        bail!("--loads and --students must be at least 1");
    }
    println!(
        "class-size: {} students, {} minutes, {} commands (seed {}), {} loads",
        args.students, args.minutes, args.commands, args.seed, args.loads
    );
    let scratch = TempDir::new("class-size")?;
    let class = measure(args, args.commands, &scratch.path().join("class"))?;
    class.print("class   ");
    let empty = measure(args, 0, &scratch.path().join("empty"))?;
    empty.print("baseline");
    if json_out {
        let out = json!({
            "bench": "class-size",
            "students": args.students,
            "minutes": args.minutes,
            "seed": args.seed,
            "class": class.to_json(),
            "baseline_empty_session": empty.to_json(),
        });
        println!("{out}");
    }
    Ok(())
}

struct Measured {
    commands: usize,
    changes: usize,
    by_command: Vec<(String, usize)>,
    simulate: Duration,
    batches: u64,
    compactions: u64,
    saved_bytes: usize,
    stored_snapshot_bytes: u64,
    stored_chunk_bytes: u64,
    stored_chunks: usize,
    size_on_disk: u64,
    dir_bytes: u64,
    reopened_size_on_disk: u64,
    heap_bytes: isize,
    heap_peak_bytes: isize,
    load_ms: f64,
    load_stored_ms: f64,
    bare_heap_bytes: isize,
    bare_load_ms: f64,
}

impl Measured {
    fn print(&self, label: &str) {
        println!(
            "  {label}: {} changes (session.create + {} commands through the hub in {:.1} s, {} \
             batches, {} compactions)",
            self.changes,
            self.commands,
            self.simulate.as_secs_f64(),
            self.batches,
            self.compactions
        );
        if !self.by_command.is_empty() {
            println!(
                "            mix: {}",
                self.by_command
                    .iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        println!(
            "            save() {} | in store: snapshot {} + {} chunks {} | sled size_on_disk {} \
             (files {}; {} after a reopen)",
            bytes(self.saved_bytes as f64),
            bytes(self.stored_snapshot_bytes as f64),
            self.stored_chunks,
            bytes(self.stored_chunk_bytes as f64),
            bytes(self.size_on_disk as f64),
            bytes(self.dir_bytes as f64),
            bytes(self.reopened_size_on_disk as f64)
        );
        println!(
            "            heap of a loaded replica {} (peak during load {}) | load median {:.2} ms \
             from save(), {:.2} ms from the store's snapshot + chunks",
            bytes(self.heap_bytes as f64),
            bytes(self.heap_peak_bytes as f64),
            self.load_ms,
            self.load_stored_ms
        );
        println!(
            "            of which a bare automerge::Automerge::load: heap {}, load {:.2} ms",
            bytes(self.bare_heap_bytes as f64),
            self.bare_load_ms
        );
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "commands": self.commands,
            "changes": self.changes,
            "simulate_ms": ms(self.simulate),
            "batches": self.batches,
            "compactions": self.compactions,
            "saved_bytes": self.saved_bytes,
            "stored_snapshot_bytes": self.stored_snapshot_bytes,
            "stored_chunk_bytes": self.stored_chunk_bytes,
            "stored_chunks": self.stored_chunks,
            "size_on_disk_bytes": self.size_on_disk,
            "dir_bytes": self.dir_bytes,
            "size_on_disk_after_reopen_bytes": self.reopened_size_on_disk,
            "heap_bytes": self.heap_bytes,
            "heap_peak_bytes": self.heap_peak_bytes,
            "load_ms_p50": self.load_ms,
            "load_from_store_ms_p50": self.load_stored_ms,
            "bare_automerge_heap_bytes": self.bare_heap_bytes,
            "bare_automerge_load_ms_p50": self.bare_load_ms,
        })
    }
}

fn doc_id() -> DocId {
    // Invariant: a literal that satisfies the id rules.
    DocId::Session(SessionId::new("class").expect("valid session id"))
}

/// Runs a class of `commands` (0: just the session's creation) through a hub in `dir`, then
/// measures the saved document.
fn measure(args: &Args, commands: usize, dir: &Path) -> anyhow::Result<Measured> {
    let sim = simulate(args, commands, dir)?;
    let actor = [0xc1, 0xa5, 0x50];

    // Heap: counted while no other thread runs (the hub, runtime and store are gone).
    let mut heap = Vec::new();
    let mut peak = Vec::new();
    for _ in 0..3 {
        alloc::start();
        let replica = Replica::load(doc_id(), &sim.saved, &actor).context("load the class")?;
        let w = alloc::stop();
        drop(replica);
        heap.push(w.retained_bytes as f64);
        peak.push(w.peak_bytes as f64);
    }
    let time_load = |bytes: &[u8]| -> anyhow::Result<f64> {
        let mut t_ms = Vec::new();
        for _ in 0..args.loads {
            let t = Instant::now();
            let replica = Replica::load(doc_id(), bytes, &actor).context("load the class")?;
            t_ms.push(ms(t.elapsed()));
            drop(replica);
        }
        Ok(median(&t_ms))
    };
    let load_ms = time_load(&sim.saved)?;
    let load_stored_ms = time_load(&sim.stored)?;

    // The same for a bare automerge document: what the model adds on top (the genesis merge and
    // the index of applied command ids read from every change's envelope) is the difference.
    let mut bare_heap = Vec::new();
    for _ in 0..3 {
        alloc::start();
        let doc = Automerge::load(&sim.saved).context("load the bare document")?;
        let w = alloc::stop();
        drop(doc);
        bare_heap.push(w.retained_bytes as f64);
    }
    let mut bare_ms = Vec::new();
    for _ in 0..args.loads {
        let t = Instant::now();
        let doc = Automerge::load(&sim.saved).context("load the bare document")?;
        bare_ms.push(ms(t.elapsed()));
        drop(doc);
    }
    Ok(Measured {
        commands,
        changes: sim.changes,
        by_command: sim.by_command,
        simulate: sim.wall,
        batches: sim.batches,
        compactions: sim.compactions,
        saved_bytes: sim.saved.len(),
        stored_snapshot_bytes: sim.snapshot_bytes,
        stored_chunk_bytes: sim.chunk_bytes,
        stored_chunks: sim.chunks,
        size_on_disk: sim.size_on_disk,
        dir_bytes: sim.dir_bytes,
        reopened_size_on_disk: sim.reopened_size_on_disk,
        heap_bytes: median(&heap) as isize,
        heap_peak_bytes: median(&peak) as isize,
        load_ms,
        load_stored_ms,
        bare_heap_bytes: median(&bare_heap) as isize,
        bare_load_ms: median(&bare_ms),
    })
}

struct Simulated {
    changes: usize,
    by_command: Vec<(String, usize)>,
    wall: Duration,
    batches: u64,
    compactions: u64,
    saved: Vec<u8>,
    stored: Vec<u8>,
    snapshot_bytes: u64,
    chunk_bytes: u64,
    chunks: usize,
    size_on_disk: u64,
    dir_bytes: u64,
    reopened_size_on_disk: u64,
}

fn simulate(args: &Args, commands: usize, dir: &Path) -> anyhow::Result<Simulated> {
    // 2026-03-02 09:00 UTC; each command moves the clock on by an equal share of the class.
    let start_ms = 1_772_442_000_000u64;
    let step_ms = (args.minutes * 60_000 / commands.max(1) as u64).max(1);
    let clock = Arc::new(AtomicU64::new(start_ms));
    let config = HubConfig {
        clock: {
            let clock = clock.clone();
            Arc::new(move || Millis(clock.load(Ordering::Relaxed)))
        },
        ..HubConfig::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    let store = Store::open(dir).with_context(|| format!("open store at {}", dir.display()))?;
    let doc = doc_id();
    let mut class = Class::new(args.seed, args.students, Mix::CLASS, "k");
    let mut counts: std::collections::BTreeMap<&'static str, usize> = Default::default();
    let (wall, stats, changes, saved) = rt.block_on(async {
        let hub = Hub::new(store.clone(), config);
        let t = Instant::now();
        let (caller, cmd) = class.create_session();
        hub.execute(doc.clone(), caller, cmd)
            .await
            .context("create the session")?;
        for _ in 0..commands {
            clock.fetch_add(step_ms, Ordering::Relaxed);
            let (caller, cmd) = class.next_command();
            *counts.entry(cmd.body.name()).or_default() += 1;
            let (id, name) = (cmd.id.clone(), cmd.body.name());
            hub.execute(doc.clone(), caller, cmd)
                .await
                .with_context(|| format!("{id} ({name}) was not acked"))?;
        }
        let wall = t.elapsed();
        let (changes, saved) = hub
            .read(doc.clone(), |r| (r.change_count(), r.save()))
            .await?;
        let stats = hub.stats();
        hub.shutdown().await.context("shut the hub down")?;
        anyhow::Ok((wall, stats, changes, saved))
    })?;
    drop(rt);
    let stored = store
        .load_doc(&doc.to_string())?
        .context("the class is not in the store")?;
    let size_on_disk = store.size_on_disk()?;
    drop(store);
    let dir_bytes = dir_size(dir)?;
    // sled reclaims log segments lazily; a reopen shows what a restarted node starts from.
    let reopened_size_on_disk = Store::open(dir)
        .with_context(|| format!("reopen store at {}", dir.display()))?
        .size_on_disk()?;
    Ok(Simulated {
        changes,
        by_command: counts.into_iter().map(|(k, n)| (k.to_owned(), n)).collect(),
        wall,
        batches: stats.batches,
        compactions: stats.compactions,
        saved,
        stored: stored.concat(),
        snapshot_bytes: stored.snapshot_bytes,
        chunk_bytes: stored.chunk_bytes,
        chunks: stored.chunks.len(),
        size_on_disk,
        dir_bytes,
        reopened_size_on_disk,
    })
}

/// Total size of the files under `dir` (what `du --apparent-size` reports).
fn dir_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

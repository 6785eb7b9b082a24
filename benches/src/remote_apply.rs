//! `remote-apply`: the time for a replica to take in a batch of 100 changes made elsewhere,
//! through the sync protocol, when the document already holds 20,000 changes, against the same
//! batch into a 1,000-change document.
//!
//! Both documents start with the same setup (session, questions, never-closing polls), then a
//! class's worth of traffic up to their size. The batch comes from a fork of the generator taken
//! right after the setup, so it is byte-for-byte the same commands for both documents and
//! touches objects that have a history in each. Per repetition: A and B load the same saved
//! bytes (different actors), one full sync round warms their sync states, A applies the batch,
//! and the clock runs while A and B exchange messages until neither has anything to say. B's
//! `receive_sync_message` includes deriving the batch's events, as the hub does.
//!
//! To tell automerge's share from the model's, a third replica C is a bare `Automerge` loaded
//! from the same bytes that receives the same messages without deriving events; and the last
//! tenth of the build records how long each kind of command takes to apply locally.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use automerge::sync::{self, SyncDoc};
use automerge::{ActorId, Automerge};
use lectern_model::{Caller, Command, DocId, Millis, Replica, SessionId};
use serde_json::json;

use crate::util::{bytes, median, ms};
use crate::workload::{Class, Mix};

/// Options of `remote-apply`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Changes in the measured document.
    #[arg(long, default_value_t = 20_000)]
    pub history: usize,
    /// Changes in the baseline document.
    #[arg(long, default_value_t = 1_000)]
    pub baseline_history: usize,
    /// Changes in the batch.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Repetitions (B rebuilt from bytes each time); the median is reported.
    #[arg(long, default_value_t = 9)]
    pub reps: usize,
    /// Students in the class.
    #[arg(long, default_value_t = 40)]
    pub students: usize,
    /// Seed of the class.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Questions and polls in the shared setup.
const SETUP_QUESTIONS: usize = 10;
const SETUP_POLLS: usize = 3;

/// Runs the benchmark and prints its summary (and JSON line).
pub fn run(args: &Args, json_out: bool) -> anyhow::Result<()> {
    if args.reps == 0 || args.batch == 0 {
        bail!("--reps and --batch must be at least 1");
    }
    println!(
        "remote-apply: {} changes into a {}-change document vs a {}-change one, {} reps, \
         {} students",
        args.batch, args.history, args.baseline_history, args.reps, args.students
    );
    let big = measure(args, args.history)?;
    big.print("measured");
    let small = measure(args, args.baseline_history)?;
    small.print("baseline");
    let ratio = big.exchange_ms_p50 / small.exchange_ms_p50.max(1e-9);
    println!(
        "median exchange: {:.2} ms at {} changes vs {:.2} ms at {} ({ratio:.1}x); \
         {:.1} µs per change at {}",
        big.exchange_ms_p50,
        big.changes,
        small.exchange_ms_p50,
        small.changes,
        big.exchange_ms_p50 * 1e3 / args.batch as f64,
        big.changes
    );
    if json_out {
        let out = json!({
            "bench": "remote-apply",
            "batch": args.batch,
            "reps": args.reps,
            "measured": big.to_json(),
            "baseline": small.to_json(),
            "ratio": ratio,
        });
        println!("{out}");
    }
    Ok(())
}

struct Measured {
    changes: usize,
    saved_bytes: usize,
    build: Duration,
    exchange_ms: Vec<f64>,
    exchange_ms_p50: f64,
    receive_ms_p50: f64,
    raw_exchange_ms_p50: f64,
    local_apply_ms_p50: f64,
    apply_us_by_kind: BTreeMap<&'static str, (usize, f64)>,
    batch_kinds: BTreeMap<&'static str, usize>,
    messages: usize,
    message_bytes: usize,
    events: usize,
}

impl Measured {
    fn print(&self, label: &str) {
        println!(
            "  {label}: doc {} changes ({} saved, built in {:.1} s); exchange median {:.2} ms \
             (B's receive {:.2} ms), {} messages / {} B, {} events; A's local apply of the \
             batch {:.2} ms; all reps ms: {}",
            self.changes,
            bytes(self.saved_bytes as f64),
            self.build.as_secs_f64(),
            self.exchange_ms_p50,
            self.receive_ms_p50,
            self.messages,
            self.message_bytes,
            self.events,
            self.local_apply_ms_p50,
            self.exchange_ms
                .iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        println!(
            "            same messages into a bare automerge doc (no events): {:.2} ms; batch: {}",
            self.raw_exchange_ms_p50,
            kinds(&self.batch_kinds)
        );
        println!(
            "            local apply, median µs by command over the last tenth of the build: {}",
            self.apply_us_by_kind
                .iter()
                .map(|(k, (n, us))| format!("{k} {us:.0} (n={n})"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "changes": self.changes,
            "saved_bytes": self.saved_bytes,
            "exchange_ms_p50": self.exchange_ms_p50,
            "exchange_ms": self.exchange_ms,
            "receive_ms_p50": self.receive_ms_p50,
            "raw_automerge_exchange_ms_p50": self.raw_exchange_ms_p50,
            "local_apply_ms_p50": self.local_apply_ms_p50,
            "local_apply_us_p50_by_command": self.apply_us_by_kind.iter().map(|(k, (_, us))| (k.to_string(), *us)).collect::<BTreeMap<_, _>>(),
            "batch_commands": self.batch_kinds,
            "messages": self.messages,
            "message_bytes": self.message_bytes,
            "events": self.events,
        })
    }
}

fn doc_id() -> DocId {
    // Invariant: a literal that satisfies the id rules.
    DocId::Session(SessionId::new("remote-apply").expect("valid session id"))
}

/// Actor bytes for replica `side` (0 = A, 1 = B) of repetition `rep`.
fn actor(side: u8, rep: usize) -> Vec<u8> {
    let mut a = vec![0xbe, 0x0c, side];
    a.extend_from_slice(&(rep as u64).to_be_bytes());
    a
}

/// Builds a document of `history` changes, then times the batch into it `reps` times.
fn measure(args: &Args, history: usize) -> anyhow::Result<Measured> {
    let t = Instant::now();
    let mut class = Class::new(args.seed, args.students, Mix::CLASS, "h");
    let mut clock = Clock::new(history + args.batch);
    let mut origin = Replica::new(doc_id(), &actor(9, 0));
    let create = class.create_session();
    apply(&mut origin, &create, clock.tick())?;
    for c in class.setup_items(SETUP_QUESTIONS, SETUP_POLLS) {
        apply(&mut origin, &c, clock.tick())?;
    }
    let mut batch_gen = class.fork(args.seed.wrapping_add(1), "b");
    // One change per applied command; `change_count` walks the whole history, so count here.
    let mut count = origin.change_count();
    let timed_from = history - history / 10;
    let mut by_kind: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    while count < history {
        let c = class.next_command();
        let t = Instant::now();
        apply(&mut origin, &c, clock.tick())?;
        if count >= timed_from {
            by_kind
                .entry(c.1.body.name())
                .or_default()
                .push(t.elapsed().as_secs_f64() * 1e6);
        }
        count += 1;
    }
    let batch: Vec<(Caller, Command)> = (0..args.batch).map(|_| batch_gen.next_command()).collect();
    let mut batch_kinds: BTreeMap<&'static str, usize> = BTreeMap::new();
    for (_, cmd) in &batch {
        *batch_kinds.entry(cmd.body.name()).or_default() += 1;
    }
    let saved = origin.save();
    let changes = origin.change_count();
    if changes != count {
        bail!("expected {count} changes, the document has {changes}");
    }
    let build = t.elapsed();
    drop(origin);

    let mut exchange_ms = Vec::new();
    let mut receive_ms = Vec::new();
    let mut raw_ms = Vec::new();
    let mut local_ms = Vec::new();
    let (mut messages, mut message_bytes, mut events) = (0, 0, 0);
    for rep in 0..args.reps {
        let mut a = Replica::load(doc_id(), &saved, &actor(0, rep)).context("load A")?;
        let mut b = Replica::load(doc_id(), &saved, &actor(1, rep)).context("load B")?;
        let mut c = Automerge::load(&saved).context("load C")?;
        c.set_actor(ActorId::from(actor(2, rep)));
        let (mut sa, mut sb) = (sync::State::new(), sync::State::new());
        let (mut sa_c, mut sc) = (sync::State::new(), sync::State::new());
        let warm = exchange(&mut a, &mut sa, &mut b, &mut sb)?;
        if warm.events != 0 {
            bail!(
                "the warm-up sync moved {} events; A and B differ",
                warm.events
            );
        }
        exchange_raw(&mut a, &mut sa_c, &mut c, &mut sc)?;
        let now = clock.now();
        let t = Instant::now();
        for c in &batch {
            apply(&mut a, c, now)?;
        }
        local_ms.push(ms(t.elapsed()));
        let t = Instant::now();
        let x = exchange(&mut a, &mut sa, &mut b, &mut sb)?;
        exchange_ms.push(ms(t.elapsed()));
        receive_ms.push(ms(x.receive_b));
        if a.doc().get_heads() != b.doc().get_heads() {
            bail!("A and B did not converge after the exchange");
        }
        if x.events != args.batch {
            bail!("B derived {} events for {} changes", x.events, args.batch);
        }
        let t = Instant::now();
        exchange_raw(&mut a, &mut sa_c, &mut c, &mut sc)?;
        raw_ms.push(ms(t.elapsed()));
        if c.get_heads() != a.doc().get_heads() {
            bail!("A and C did not converge after the exchange");
        }
        (messages, message_bytes, events) = (x.messages, x.bytes, x.events);
    }
    Ok(Measured {
        changes,
        saved_bytes: saved.len(),
        build,
        exchange_ms_p50: median(&exchange_ms),
        exchange_ms,
        receive_ms_p50: median(&receive_ms),
        raw_exchange_ms_p50: median(&raw_ms),
        local_apply_ms_p50: median(&local_ms),
        apply_us_by_kind: by_kind
            .into_iter()
            .map(|(k, v)| (k, (v.len(), median(&v))))
            .collect(),
        batch_kinds,
        messages,
        message_bytes,
        events,
    })
}

fn apply(r: &mut Replica, (caller, cmd): &(Caller, Command), now: Millis) -> anyhow::Result<()> {
    r.apply(caller, cmd, now)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{} ({}) was refused: {e}", cmd.id, cmd.body.name()))
}

/// What one exchange moved.
struct Exchange {
    messages: usize,
    bytes: usize,
    events: usize,
    receive_b: Duration,
}

/// Alternates A → B and B → A until neither side has a message.
fn exchange(
    a: &mut Replica,
    sa: &mut sync::State,
    b: &mut Replica,
    sb: &mut sync::State,
) -> anyhow::Result<Exchange> {
    let mut x = Exchange {
        messages: 0,
        bytes: 0,
        events: 0,
        receive_b: Duration::ZERO,
    };
    for _ in 0..100 {
        let mut quiet = true;
        if let Some(m) = a.generate_sync_message(sa) {
            quiet = false;
            x.messages += 1;
            x.bytes += m.len();
            let t = Instant::now();
            x.events += b.receive_sync_message(sb, &m).context("B receives")?.len();
            x.receive_b += t.elapsed();
        }
        if let Some(m) = b.generate_sync_message(sb) {
            quiet = false;
            x.messages += 1;
            x.bytes += m.len();
            a.receive_sync_message(sa, &m).context("A receives")?;
        }
        if quiet {
            return Ok(x);
        }
    }
    bail!("the sync exchange did not settle in 100 rounds")
}

/// The same exchange with a bare automerge document on the other side (no events derived).
fn exchange_raw(
    a: &mut Replica,
    sa: &mut sync::State,
    c: &mut Automerge,
    sc: &mut sync::State,
) -> anyhow::Result<()> {
    for _ in 0..100 {
        let mut quiet = true;
        if let Some(m) = a.generate_sync_message(sa) {
            quiet = false;
            let m = sync::Message::decode(&m).context("decode A's message")?;
            c.receive_sync_message(sc, m).context("C receives")?;
        }
        if let Some(m) = c.generate_sync_message(sc) {
            quiet = false;
            a.receive_sync_message(sa, &m.encode())
                .context("A receives")?;
        }
        if quiet {
            return Ok(());
        }
    }
    bail!("the sync exchange with C did not settle in 100 rounds")
}

fn kinds(k: &BTreeMap<&'static str, usize>) -> String {
    k.iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A simulated class clock: one hour spread over the commands.
struct Clock {
    now: u64,
    step: u64,
}

impl Clock {
    fn new(commands: usize) -> Clock {
        Clock {
            // 2026-03-02 09:00 UTC.
            now: 1_772_442_000_000,
            step: (3_600_000 / commands.max(1) as u64).max(1),
        }
    }

    fn tick(&mut self) -> Millis {
        self.now += self.step;
        Millis(self.now)
    }

    fn now(&self) -> Millis {
        Millis(self.now)
    }
}

//! The job runner: one task that owns the in-memory queue (a map of records and a heap by due
//! time) and up to `workers` job tasks. Each job task commits its own outcome (so concurrent
//! jobs share the store's group-commit fsyncs) and reports it back.
//!
//! The runner never runs one job id twice at once (a job is either pending or running), and a
//! job task first checks that its job is still queued in the store, so a copy that reached the
//! runner twice (the start-up scan and the hook's message for the same job) runs once.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use lectern_hub::{Hub, HubError};
use lectern_model::{
    Caller, Channel, Command, CommandBody, DocId, Feature, InboxPrefs, Notification, RejectCode,
    Role,
};
use lectern_store::{Batch, Committer};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::control::{Control, JobControl, JobState, JobView, JobsError, queued_state};
use crate::mail::{self, Mailer};
use crate::record::{Job, JobRecord, deliver_id, email_id};
use crate::{JobsConfig, PRUNE_EVERY_MAX_MS, PRUNE_EVERY_MIN_MS, QueueReceiver};

/// Operator requests waiting for the runner's task at most; more wait for room (an operator's
/// command is rare, and the admin API answers each in turn).
const CONTROL_QUEUE_MAX: usize = 16;

/// Counters and gauges of the runner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobStats {
    /// Jobs queued and not running.
    pub pending: usize,
    /// Jobs running now.
    pub running: usize,
    /// Email jobs parked (among `pending`): due, but waiting for an unreachable mail server.
    pub parked: usize,
    /// Dead letters in the store now (they stay until an operator retries or drops them).
    pub dead_letters: usize,
    /// The due time (ms since the Unix epoch) of the earliest queued job that is neither
    /// running nor parked; `now - this`, when positive, is how late the queue runs.
    pub next_due_ms: Option<u64>,
    /// Email attempts the mail server refused with a reply (4xx, 5xx) since start.
    pub emails_refused: u64,
    /// Email attempts that found the mail server unreachable since start.
    pub emails_unreachable: u64,
    /// Email jobs dead-lettered since start.
    pub emails_dead: u64,
    /// Jobs finished since start.
    pub completed: u64,
    /// Failed attempts that will be retried.
    pub retried: u64,
    /// Jobs dead-lettered since start.
    pub dead: u64,
    /// Notifications put into inboxes.
    pub inapp_delivered: u64,
    /// Emails handed to SMTP or the outbox (a digest counts once).
    pub emails_sent: u64,
}

/// A running job runner.
pub struct JobRunner {
    control: JobControl,
    stop: watch::Sender<bool>,
    stats: watch::Receiver<JobStats>,
    task: tokio::task::JoinHandle<()>,
    pruner: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for JobRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobRunner")
            .field("stats", &*self.stats.borrow())
            .finish_non_exhaustive()
    }
}

impl JobRunner {
    /// Loads the queued jobs from the hub's store and starts running them.
    pub async fn start(
        hub: Hub,
        queue: QueueReceiver,
        mailer: Mailer,
        config: JobsConfig,
    ) -> Result<JobRunner, String> {
        let QueueReceiver(mut rx) = queue;
        // Everything the hook announced so far is on disk: the scan below includes it.
        while rx.try_recv().is_ok() {}
        let store = hub.store().clone();
        let (stored, dead_letters) = tokio::task::spawn_blocking(move || {
            Ok::<_, lectern_store::StoreError>((store.pending_jobs()?, store.dead_jobs()?.len()))
        })
        .await
        .map_err(|e| format!("the job scan task failed: {e}"))?
        .map_err(|e| format!("read the job queue: {e}"))?;
        let ctx = Arc::new(Ctx {
            committer: hub.store().committer(),
            hub,
            mailer,
            config,
        });
        let mut queue = Queue::default();
        let mut corrupt = Batch::new();
        let next_digest = ctx.config.next_digest_ms(ctx.now_ms());
        for (id, bytes) in stored {
            match JobRecord::decode(&bytes) {
                Ok(mut record) if record.id == id => {
                    // A digest waits for the next digest time as configured NOW, so a changed
                    // digest hour applies to what is already queued.
                    if let Job::Email { digest: true, .. } = record.job {
                        record.run_at_ms = record.run_at_ms.min(next_digest);
                    }
                    queue.insert(record);
                }
                Ok(_) | Err(_) => {
                    error!(job = %id, "a queued job record does not read; dead-lettering it");
                    corrupt.dead_letter_job(&id, bytes);
                }
            }
        }
        let corrupt_count = corrupt.len();
        if !corrupt.is_empty() {
            commit(&ctx.committer, corrupt).await?;
        }
        info!(jobs = queue.records.len(), "job runner started");
        let (stop, stop_rx) = watch::channel(false);
        let dead_letters = dead_letters + corrupt_count;
        let (stats_tx, stats) = watch::channel(JobStats {
            pending: queue.records.len(),
            dead_letters,
            ..JobStats::default()
        });
        let (control_tx, control_rx) = tokio::sync::mpsc::channel(CONTROL_QUEUE_MAX);
        let control = JobControl {
            tx: control_tx,
            store: ctx.hub.store().clone(),
        };
        let pruner = tokio::spawn(prune_markers(ctx.clone(), stop_rx.clone()));
        let task = tokio::spawn(run(ctx, queue, rx, control_rx, stop_rx, stats_tx));
        Ok(JobRunner {
            control,
            stop,
            stats,
            task,
            pruner,
        })
    }

    /// The counters now.
    pub fn stats(&self) -> JobStats {
        *self.stats.borrow()
    }

    /// The operator's handle on the queue (the admin API's `/admin/jobs`).
    pub fn control(&self) -> JobControl {
        self.control.clone()
    }

    /// A receiver that sees every change of the counters (tests wait on it).
    pub fn watch(&self) -> watch::Receiver<JobStats> {
        self.stats.clone()
    }

    /// Stops taking jobs, lets running ones finish (up to `drain_timeout_ms`) and returns.
    /// Whatever did not finish stays queued in the store for the next start.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            error!(error = %e, "the job runner task failed");
        }
        if let Err(e) = self.pruner.await {
            error!(error = %e, "the job marker sweep failed");
        }
    }
}

/// Forgets finished-job markers past `finished_kept_ms`: once at start, then every quarter of
/// the retention (clamped), until the runner stops.
async fn prune_markers(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let kept = ctx.config.finished_kept_ms;
    let every = Duration::from_millis((kept / 4).clamp(PRUNE_EVERY_MIN_MS, PRUNE_EVERY_MAX_MS));
    loop {
        let cutoff = ctx.now_ms().saturating_sub(kept);
        let store = ctx.hub.store().clone();
        match tokio::task::spawn_blocking(move || store.prune_job_markers(cutoff)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => debug!(markers = n, "forgot finished jobs past their retention"),
            Ok(Err(e)) => warn!(error = %e, "could not prune finished-job markers"),
            Err(e) => warn!(error = %e, "the marker sweep task failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// What every job task shares.
struct Ctx {
    hub: Hub,
    committer: Committer,
    mailer: Mailer,
    config: JobsConfig,
}

impl Ctx {
    fn now_ms(&self) -> u64 {
        (self.config.clock)().0
    }
}

/// The in-memory queue.
#[derive(Default)]
struct Queue {
    records: HashMap<String, JobRecord>,
    due: BinaryHeap<Reverse<(u64, String)>>,
    running: HashSet<String>,
    /// Email jobs (in `records`, not in `due`) waiting for the mail server, oldest first. An id
    /// here whose record is gone (dropped, or retried by an operator and run) is skipped.
    parked: VecDeque<String>,
    /// What the email jobs found of the mail server.
    gate: MailGate,
}

/// Whether the mail server can be reached, as the last email attempt found it. While it cannot,
/// due email jobs are parked instead of run, and one of them probes the server at
/// `next_probe_ms`; an answer of any kind (sent, or a 4xx/5xx refusal) opens the gate again.
#[derive(Default)]
struct MailGate {
    /// Since when the server has been unreachable; `None`: it is reachable (or not tried).
    down_since_ms: Option<u64>,
    /// When a parked job next probes the server.
    next_probe_ms: u64,
    /// The task of the probe running now.
    probe: Option<tokio::task::Id>,
}

impl Queue {
    /// Adds a record unless the same job is already pending or running.
    fn insert(&mut self, record: JobRecord) {
        if self.running.contains(&record.id) || self.records.contains_key(&record.id) {
            return;
        }
        self.due
            .push(Reverse((record.run_at_ms, record.id.clone())));
        self.records.insert(record.id.clone(), record);
    }

    /// Puts back a record that ran (a retry), replacing the stale heap entry by due time.
    fn requeue(&mut self, record: JobRecord) {
        self.running.remove(&record.id);
        self.insert(record);
    }

    /// Parks a due email bundle while the mail server is unreachable (kept in `records`, so
    /// it counts as pending and an operator can see, retry or drop it). Returns the records
    /// parked for the first time (their parking time is to be stored).
    fn park(&mut self, bundle: Vec<JobRecord>, now_ms: u64) -> Vec<JobRecord> {
        let mut first = Vec::new();
        for mut r in bundle {
            self.running.remove(&r.id);
            if self.records.contains_key(&r.id) {
                continue;
            }
            if r.parked_since_ms.is_none() {
                r.parked_since_ms = Some(now_ms);
                first.push(r.clone());
            }
            self.parked.push_back(r.id.clone());
            self.records.insert(r.id.clone(), r);
        }
        first
    }

    /// The parked jobs still queued (the list can hold ids dropped or run since).
    fn parked_ids(&self) -> impl Iterator<Item = &String> {
        self.parked
            .iter()
            .filter(|id| self.records.contains_key(*id) && !self.running.contains(*id))
    }

    /// The oldest parked job that is still parked (with its digest mates), marked running.
    fn take_probe(&mut self) -> Option<Vec<JobRecord>> {
        while let Some(id) = self.parked.pop_front() {
            if self.running.contains(&id) {
                continue;
            }
            if let Some(record) = self.records.remove(&id) {
                return Some(self.bundle(record));
            }
        }
        None
    }

    /// The mail server answered: every parked job is due now.
    fn unpark_all(&mut self, now_ms: u64) {
        self.gate = MailGate::default();
        for id in std::mem::take(&mut self.parked) {
            if let Some(r) = self.records.get_mut(&id) {
                r.run_at_ms = now_ms;
                r.parked_since_ms = None;
                self.due.push(Reverse((now_ms, id)));
            }
        }
    }

    fn next_due_ms(&mut self) -> Option<u64> {
        // Drop stale heap entries (retried with a new time, or taken into a digest).
        while let Some(Reverse((at, id))) = self.due.peek() {
            match self.records.get(id) {
                Some(r) if r.run_at_ms == *at => return Some(*at),
                _ => {
                    self.due.pop();
                }
            }
        }
        None
    }

    /// The next due job (with the rest of its user's digest), marked running.
    fn take_due(&mut self, now_ms: u64) -> Option<Vec<JobRecord>> {
        let at = self.next_due_ms()?;
        if at > now_ms {
            return None;
        }
        let Reverse((_, id)) = self.due.pop()?;
        let record = self.records.remove(&id)?;
        Some(self.bundle(record))
    }

    /// `record` with the rest of its user's digest (taken out of the queue), marked running.
    fn bundle(&mut self, record: JobRecord) -> Vec<JobRecord> {
        let mut bundle = vec![record];
        if let Job::Email {
            digest: true, user, ..
        } = &bundle[0].job
        {
            let user = user.clone();
            let mates: Vec<String> = self
                .records
                .values()
                .filter(
                    |r| matches!(&r.job, Job::Email { digest: true, user: u, .. } if *u == user),
                )
                .map(|r| r.id.clone())
                .collect();
            for mate in mates {
                if let Some(r) = self.records.remove(&mate) {
                    bundle.push(r);
                }
            }
        }
        for r in &bundle {
            self.running.insert(r.id.clone());
        }
        bundle
    }
}

/// What an email attempt found of the mail server (`None` for other jobs).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// The server answered (it took the message, or refused it with a reply).
    Answered,
    /// No reply at all: refused connection, reset, timeout.
    Unreachable,
}

/// What a job task did (its batch is already committed).
enum Outcome {
    /// Finished; these follow-up jobs were enqueued with it.
    Done {
        followups: Vec<JobRecord>,
        inapp: u64,
        emails: u64,
    },
    /// Failed; these records (with new attempt counts and times) wait for a retry.
    Retry(Vec<JobRecord>),
    /// Failed for good; dead-lettered.
    Dead,
    /// No longer queued in the store (it ran already): nothing done.
    Skipped,
    /// The outcome could not be committed: run the jobs again later.
    StoreFailed(Vec<JobRecord>),
}

async fn run(
    ctx: Arc<Ctx>,
    mut queue: Queue,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Vec<(String, Vec<u8>)>>,
    mut control: tokio::sync::mpsc::Receiver<Control>,
    mut stop: watch::Receiver<bool>,
    stats_tx: watch::Sender<JobStats>,
) {
    let workers_max = ctx.config.workers.max(1);
    let mut tasks: JoinSet<(Outcome, Option<Reach>)> = JoinSet::new();
    let mut task_ids: HashMap<tokio::task::Id, Vec<String>> = HashMap::new();
    let mut stats = *stats_tx.borrow();
    let mut stopping = false;
    let mut drain_deadline = None;
    loop {
        if !stopping {
            let now = ctx.now_ms();
            // While the mail server is unreachable, the oldest parked email probes it when its
            // time comes; the rest wait for the answer.
            if queue.gate.down_since_ms.is_some()
                && queue.gate.probe.is_none()
                && now >= queue.gate.next_probe_ms
                && tasks.len() < workers_max
                && let Some(bundle) = queue.take_probe()
            {
                let ids = bundle.iter().map(|r| r.id.clone()).collect();
                let handle = tasks.spawn(run_job(ctx.clone(), bundle));
                queue.gate.probe = Some(handle.id());
                task_ids.insert(handle.id(), ids);
            }
            let mut newly_parked = Vec::new();
            while tasks.len() < workers_max {
                let Some(bundle) = queue.take_due(now) else {
                    break;
                };
                if queue.gate.down_since_ms.is_some() && matches!(bundle[0].job, Job::Email { .. })
                {
                    newly_parked.extend(queue.park(bundle, now));
                    continue;
                }
                let ids = bundle.iter().map(|r| r.id.clone()).collect();
                let handle = tasks.spawn(run_job(ctx.clone(), bundle));
                task_ids.insert(handle.id(), ids);
            }
            if !newly_parked.is_empty() {
                // Stored, so the parking period survives a restart.
                let mut batch = Batch::new();
                for r in &newly_parked {
                    batch.update_job(&r.id, r.encode());
                }
                if let Err(e) = commit(&ctx.committer, batch).await {
                    warn!(error = %e, "could not store when jobs were parked");
                }
            }
        }
        stats.pending = queue.records.len();
        stats.running = queue.running.len();
        stats.parked = queue.parked_ids().count();
        stats.next_due_ms = queue.next_due_ms();
        stats_tx.send_if_modified(|s| {
            let changed = *s != stats;
            *s = stats;
            changed
        });
        if stopping && tasks.is_empty() {
            break;
        }
        let wake = if stopping || tasks.len() >= workers_max {
            None
        } else {
            let probe = (queue.gate.down_since_ms.is_some()
                && queue.gate.probe.is_none()
                && queue.parked_ids().next().is_some())
            .then_some(queue.gate.next_probe_ms);
            match (queue.next_due_ms(), probe) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
            .map(|at| Duration::from_millis(at.saturating_sub(ctx.now_ms())))
        };
        tokio::select! {
            received = rx.recv(), if !stopping => match received {
                Some(jobs) => {
                    for (id, bytes) in jobs {
                        match JobRecord::decode(&bytes) {
                            Ok(record) => queue.insert(record),
                            Err(e) => error!(job = %id, error = %e, "an enqueued job does not read"),
                        }
                    }
                }
                // The hub is gone: nothing new will come; keep running what is queued.
                None => {
                    if queue.records.is_empty() && tasks.is_empty() {
                        stopping = true;
                    }
                }
            },
            joined = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let Some(joined) = joined else { continue };
                match joined {
                    Ok((task, (outcome, reach))) => {
                        let ids = task_ids.remove(&task).unwrap_or_default();
                        for id in &ids {
                            queue.running.remove(id);
                        }
                        if queue.gate.probe == Some(task) {
                            queue.gate.probe = None;
                        }
                        match reach {
                            Some(Reach::Answered) if matches!(outcome, Outcome::Retry(_) | Outcome::Dead) => {
                                stats.emails_refused += 1;
                                if queue.gate.down_since_ms.is_some() {
                                    info!("the mail server answers again; parked emails go out");
                                    queue.unpark_all(ctx.now_ms());
                                }
                            }
                            Some(Reach::Answered) if queue.gate.down_since_ms.is_some() => {
                                info!("the mail server answers again; parked emails go out");
                                queue.unpark_all(ctx.now_ms());
                            }
                            Some(Reach::Unreachable) if ctx.config.park_unreachable_ms == 0 => {
                                stats.emails_unreachable += 1;
                            }
                            Some(Reach::Unreachable) => {
                                stats.emails_unreachable += 1;
                                let now = ctx.now_ms();
                                if queue.gate.down_since_ms.is_none() {
                                    warn!("the mail server cannot be reached; emails are parked until it answers");
                                }
                                let since = *queue.gate.down_since_ms.get_or_insert(now);
                                let delay = now
                                    .saturating_sub(since)
                                    .clamp(ctx.config.backoff_base_ms, ctx.config.park_probe_max_ms.max(1));
                                queue.gate.next_probe_ms =
                                    now + delay + rand::random_range(0..=delay / 4);
                                let expired = expire_parked(&ctx, &mut queue, now).await;
                                stats.dead += expired;
                                stats.emails_dead += expired;
                                stats.dead_letters += expired as usize;
                            }
                            _ => {}
                        }
                        match outcome {
                            Outcome::Done { followups, inapp, emails } => {
                                stats.completed += ids.len() as u64;
                                stats.inapp_delivered += inapp;
                                stats.emails_sent += emails;
                                for f in followups {
                                    queue.insert(f);
                                }
                            }
                            Outcome::Retry(records) => {
                                let dead = (ids.len() - records.len()) as u64;
                                stats.retried += records.len() as u64;
                                stats.dead += dead;
                                stats.dead_letters += dead as usize;
                                if reach.is_some() {
                                    stats.emails_dead += dead;
                                }
                                for r in records {
                                    queue.requeue(r);
                                }
                            }
                            Outcome::Dead => {
                                stats.dead += ids.len() as u64;
                                stats.dead_letters += ids.len();
                                if reach.is_some() {
                                    stats.emails_dead += ids.len() as u64;
                                }
                            }
                            Outcome::Skipped => {}
                            Outcome::StoreFailed(records) => {
                                let later = ctx.now_ms() + 1_000;
                                for mut r in records {
                                    r.run_at_ms = later;
                                    queue.requeue(r);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        if queue.gate.probe == Some(e.id()) {
                            queue.gate.probe = None;
                        }
                        let ids = task_ids.remove(&e.id()).unwrap_or_default();
                        for id in &ids {
                            queue.running.remove(id);
                        }
                        if !e.is_cancelled() {
                            error!(jobs = ?ids, error = %e, "a job task panicked; its jobs run again after a restart");
                        }
                    }
                }
            },
            request = control.recv(), if !stopping => {
                if let Some(request) = request
                    && operate(&ctx, &mut queue, request).await
                {
                    stats.dead_letters = stats.dead_letters.saturating_sub(1);
                }
            },
            () = sleep_for(wake) => {},
            changed = stop.changed(), if !stopping => {
                let _ = changed;
                stopping = true;
                drain_deadline = Some(tokio::time::Instant::now()
                    + Duration::from_millis(ctx.config.drain_timeout_ms));
            },
            () = sleep_until(drain_deadline) => {
                warn!(running = tasks.len(), "jobs still running at the stop deadline; they run again after a restart");
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                break;
            },
        }
    }
    debug!("job runner stopped");
}

/// Dead-letters the parked emails whose parking period is over (each is checked when a probe
/// fails, however long the list: a probe reaches only one of them). Returns how many.
async fn expire_parked(ctx: &Ctx, queue: &mut Queue, now_ms: u64) -> u64 {
    let park_ms = ctx.config.park_unreachable_ms;
    if park_ms == 0 {
        return 0;
    }
    let expired: Vec<String> = queue
        .parked_ids()
        .filter(|id| {
            queue.records.get(*id).is_some_and(|r| {
                r.parked_since_ms
                    .is_some_and(|since| now_ms.saturating_sub(since) >= park_ms)
            })
        })
        .cloned()
        .collect();
    if expired.is_empty() {
        return 0;
    }
    let mut batch = Batch::new();
    let mut records = Vec::new();
    for id in &expired {
        if let Some(mut r) = queue.records.get(id).cloned() {
            r.last_error = Some(format!(
                "the mail server was unreachable for {} h: {}",
                park_ms / 3_600_000,
                r.last_error.as_deref().unwrap_or("no answer")
            ));
            batch.dead_letter_job(id, r.encode());
            records.push(r);
        }
    }
    match commit(&ctx.committer, batch).await {
        Ok(()) => {
            for r in &records {
                queue.records.remove(&r.id);
            }
            warn!(
                jobs = records.len(),
                "parked emails dead-lettered after their parking period"
            );
            records.len() as u64
        }
        Err(e) => {
            warn!(error = %e, "could not dead-letter expired parked emails; tried again on the next probe");
            0
        }
    }
}

/// Does what an operator asked, on the runner's task (so never to a running job). Returns
/// whether a dead letter left the store (requeued or dropped), for the dead-letter gauge.
async fn operate(ctx: &Ctx, queue: &mut Queue, request: Control) -> bool {
    match request {
        Control::States(reply) => {
            let parked = queue.parked_ids().cloned().collect();
            let _ = reply.send((queue.running.iter().cloned().collect(), parked));
            false
        }
        Control::Retry { id, reply } => {
            let queued = queue.records.contains_key(&id);
            let result = retry(ctx, queue, &id).await;
            let dead_left = result.is_ok() && !queued;
            let _ = reply.send(result);
            dead_left
        }
        Control::Drop { id, reply } => {
            let result = drop_job(ctx, queue, &id).await;
            let dead_left = matches!(&result, Ok(v) if v.state == JobState::Dead);
            let _ = reply.send(result);
            dead_left
        }
    }
}

/// A queued job runs now (attempts kept); a dead letter goes back into the queue, due now,
/// with its attempts reset (its last error kept until the next attempt replaces it).
async fn retry(ctx: &Ctx, queue: &mut Queue, id: &str) -> Result<JobView, JobsError> {
    if queue.running.contains(id) {
        return Err(JobsError::Running(id.to_owned()));
    }
    let now = ctx.now_ms();
    if let Some(record) = queue.records.get(id) {
        let mut record = record.clone();
        record.run_at_ms = now;
        let mut batch = Batch::new();
        batch.update_job(id, record.encode());
        commit(&ctx.committer, batch)
            .await
            .map_err(JobsError::Store)?;
        queue.records.remove(id);
        let was_parked = queue.parked.iter().position(|p| p == id);
        if let Some(at) = was_parked {
            // The operator says the mail server may be back: probe it now (with this job, the
            // oldest parked one or another, as the probe order has it).
            queue.parked.remove(at);
            queue.gate.next_probe_ms = now;
        }
        let state = queued_state(Some(&record), false, was_parked.is_some());
        queue.insert(record.clone());
        info!(job = %id, "an operator runs a queued job now");
        return Ok(JobView {
            id: id.to_owned(),
            state,
            record: Ok(record),
        });
    }
    let store = ctx.hub.store().clone();
    let key = id.to_owned();
    let dead = tokio::task::spawn_blocking(move || store.dead_job(&key))
        .await
        .map_err(|e| JobsError::Store(e.to_string()))?
        .map_err(|e| JobsError::Store(e.to_string()))?;
    let Some(bytes) = dead else {
        return Err(JobsError::NotFound(id.to_owned()));
    };
    let mut record = JobRecord::decode(&bytes).map_err(|e| {
        JobsError::Store(format!(
            "the dead letter does not read ({e}); drop it instead"
        ))
    })?;
    if record.id != id {
        return Err(JobsError::Store(format!(
            "the dead letter under {id:?} is job {:?}; drop it instead",
            record.id
        )));
    }
    record.attempts = 0;
    record.run_at_ms = now;
    record.parked_since_ms = None;
    let mut batch = Batch::new();
    batch.requeue_dead_job(id, record.encode());
    commit(&ctx.committer, batch)
        .await
        .map_err(JobsError::Store)?;
    queue.insert(record.clone());
    info!(job = %id, "an operator re-drives a dead letter");
    Ok(JobView {
        id: id.to_owned(),
        state: JobState::Queued,
        record: Ok(record),
    })
}

/// Forgets a queued or dead job for good (marked finished).
async fn drop_job(ctx: &Ctx, queue: &mut Queue, id: &str) -> Result<JobView, JobsError> {
    if queue.running.contains(id) {
        return Err(JobsError::Running(id.to_owned()));
    }
    let view = match queue.records.get(id) {
        Some(record) => JobView {
            id: id.to_owned(),
            state: queued_state(Some(record), false, queue.parked.contains(&id.to_owned())),
            record: Ok(record.clone()),
        },
        None => {
            let store = ctx.hub.store().clone();
            let key = id.to_owned();
            let dead = tokio::task::spawn_blocking(move || store.dead_job(&key))
                .await
                .map_err(|e| JobsError::Store(e.to_string()))?
                .map_err(|e| JobsError::Store(e.to_string()))?;
            match dead {
                Some(bytes) => JobView {
                    id: id.to_owned(),
                    state: JobState::Dead,
                    record: JobRecord::decode(&bytes),
                },
                None => return Err(JobsError::NotFound(id.to_owned())),
            }
        }
    };
    let mut batch = Batch::new();
    batch.drop_job(id, ctx.now_ms());
    commit(&ctx.committer, batch)
        .await
        .map_err(JobsError::Store)?;
    queue.records.remove(id);
    warn!(job = %id, state = view.state.as_str(), "an operator dropped a job");
    Ok(view)
}

async fn sleep_for(wake: Option<Duration>) {
    match wake {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Commits `batch` through the group-commit thread.
async fn commit(committer: &Committer, batch: Batch) -> Result<(), String> {
    let (tx, rx) = oneshot::channel();
    committer.submit(batch, move |r| {
        let _ = tx.send(r);
    });
    match rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("commit the job outcome: {e}")),
        Err(_) => Err("the store's commit thread stopped".to_owned()),
    }
}

/// The caller the runner writes inboxes as.
fn system_caller() -> Caller {
    Caller {
        // Invariant: a fixed, valid id.
        user: "lectern-jobs".parse().expect("a valid user id"),
        name: "Lectern".to_owned(),
        role: Role::Admin,
        cohorts: Vec::new(),
    }
}

/// A failure of a step: transient ones retry, permanent ones dead-letter at once.
struct Failure {
    permanent: bool,
    /// The mail server could not be reached: the job parks instead of spending an attempt.
    unreachable: bool,
    reason: String,
}

impl Failure {
    fn transient(reason: impl Into<String>) -> Failure {
        Failure {
            permanent: false,
            unreachable: false,
            reason: reason.into(),
        }
    }

    fn permanent(reason: impl Into<String>) -> Failure {
        Failure {
            permanent: true,
            unreachable: false,
            reason: reason.into(),
        }
    }
}

async fn run_job(ctx: Arc<Ctx>, bundle: Vec<JobRecord>) -> (Outcome, Option<Reach>) {
    // A copy of a job that already ran (or was dead-lettered) is not queued any more.
    let store = ctx.hub.store().clone();
    let ids: Vec<String> = bundle.iter().map(|r| r.id.clone()).collect();
    let queued = tokio::task::spawn_blocking(move || {
        ids.iter()
            .map(|id| store.job_pending(id).unwrap_or(false))
            .collect::<Vec<bool>>()
    })
    .await
    .unwrap_or_default();
    let bundle: Vec<JobRecord> = bundle
        .into_iter()
        .zip(queued)
        .filter_map(|(r, q)| q.then_some(r))
        .collect();
    if bundle.is_empty() {
        return (Outcome::Skipped, None);
    }
    let is_email = matches!(bundle[0].job, Job::Email { .. });
    let result = match &bundle[0].job {
        Job::Fanout {
            notification,
            recipients,
        } => Ok(fanout(&ctx, notification, recipients).await),
        Job::Deliver { notification, user } => deliver(&ctx, notification, user).await,
        Job::Email { .. } => email(&ctx, &bundle).await,
    };
    let reach = is_email.then_some(match &result {
        Err(f) if f.unreachable => Reach::Unreachable,
        _ => Reach::Answered,
    });
    let outcome = match result {
        Ok(step) => {
            let mut batch = Batch::new();
            for r in &bundle {
                batch.complete_job(&r.id, ctx.now_ms());
            }
            for f in &step.followups {
                batch.enqueue_job(&f.id, f.encode());
            }
            match commit(&ctx.committer, batch).await {
                Ok(()) => Outcome::Done {
                    followups: step.followups,
                    inapp: step.inapp,
                    emails: step.emails,
                },
                Err(e) => {
                    error!(error = %e, "a job's completion was not committed; it runs again");
                    Outcome::StoreFailed(bundle)
                }
            }
        }
        Err(failure) => fail(&ctx, bundle, failure).await,
    };
    (outcome, reach)
}

/// What a successful step leaves to commit and count.
struct Step {
    followups: Vec<JobRecord>,
    inapp: u64,
    emails: u64,
}

/// Retries with backoff (jittered up to +25%, so a recovering mail server is not hit by every
/// job at once), or dead-letters with the reason.
async fn fail(ctx: &Ctx, bundle: Vec<JobRecord>, failure: Failure) -> Outcome {
    let now = ctx.now_ms();
    let mut batch = Batch::new();
    let mut retry = Vec::new();
    let park_ms = ctx.config.park_unreachable_ms;
    for mut r in bundle.iter().cloned() {
        r.last_error = Some(failure.reason.clone());
        if failure.unreachable && park_ms > 0 {
            // Parked: no attempt spent; due again at once, and the runner holds it until the
            // mail server answers a probe.
            let since = *r.parked_since_ms.get_or_insert(now);
            if now.saturating_sub(since) >= park_ms {
                r.last_error = Some(format!(
                    "the mail server was unreachable for {} h: {}",
                    park_ms / 3_600_000,
                    failure.reason
                ));
                warn!(job = %r.id, reason = %failure.reason, "email dead-lettered after its parking period");
                batch.dead_letter_job(&r.id, r.encode());
            } else {
                r.run_at_ms = now;
                batch.update_job(&r.id, r.encode());
                retry.push(r);
            }
            continue;
        }
        r.parked_since_ms = None;
        r.attempts += 1;
        if failure.permanent || r.attempts >= ctx.config.attempts_max {
            warn!(job = %r.id, attempts = r.attempts, reason = %failure.reason, "job dead-lettered");
            batch.dead_letter_job(&r.id, r.encode());
        } else {
            let delay = ctx.config.backoff_ms(r.attempts);
            let jitter = rand::random_range(0..=delay / 4);
            r.run_at_ms = now + delay + jitter;
            debug!(job = %r.id, attempts = r.attempts, delay_ms = delay + jitter, reason = %failure.reason, "job will be retried");
            batch.update_job(&r.id, r.encode());
            retry.push(r);
        }
    }
    match commit(&ctx.committer, batch).await {
        Ok(()) if retry.is_empty() => Outcome::Dead,
        Ok(()) => Outcome::Retry(retry),
        Err(e) => {
            error!(error = %e, "a job's failure was not committed; it runs again");
            Outcome::StoreFailed(bundle)
        }
    }
}

/// Recipients a fan-out delivers to at once.
const FANOUT_CHUNK: usize = 128;

/// Delivers a notification to many users: in-app for a chunk of recipients at a time, all at
/// once (each inbox has its own writer; their commits share fsyncs), with no job record per
/// recipient. What a recipient needs next comes back as follow-ups: their email job, or, if
/// their in-app delivery failed, a delivery job of their own that retries alone.
///
/// A fan-out that a crash interrupts runs again from the start; that is safe because an inbox
/// refuses a notification it holds (`duplicate_command`) and the store refuses to enqueue an
/// email job that already finished.
async fn fanout(ctx: &Arc<Ctx>, n: &Notification, recipients: &[lectern_model::UserId]) -> Step {
    let mut step = Step {
        followups: Vec::new(),
        inapp: 0,
        emails: 0,
    };
    for chunk in recipients.chunks(FANOUT_CHUNK) {
        let mut tasks = JoinSet::new();
        for user in chunk {
            let (ctx, n, user) = (ctx.clone(), n.clone(), user.clone());
            tasks.spawn(async move {
                let result = deliver_inapp(&ctx, &n, &user).await;
                (user, result)
            });
        }
        while let Some(done) = tasks.join_next().await {
            let Ok((user, result)) = done else {
                continue;
            };
            match result {
                Ok((pushed, email)) => {
                    step.inapp += u64::from(pushed);
                    step.followups.extend(email);
                }
                Err(failure) => {
                    debug!(%user, reason = %failure.reason, "fan-out delivery failed; it retries alone");
                    step.followups.push(JobRecord::new(
                        deliver_id(n, &user),
                        ctx.now_ms(),
                        Job::Deliver {
                            notification: n.clone(),
                            user,
                        },
                    ));
                }
            }
        }
    }
    step
}

fn hub_failure(e: HubError) -> Failure {
    match e {
        HubError::Rejected(r) => Failure::permanent(format!("{}: {}", r.code.as_str(), r.message)),
        other => Failure::transient(other.to_string()),
    }
}

async fn deliver(
    ctx: &Ctx,
    n: &Notification,
    user: &lectern_model::UserId,
) -> Result<Step, Failure> {
    let (pushed, email) = deliver_inapp(ctx, n, user).await?;
    Ok(Step {
        followups: email.into_iter().collect(),
        inapp: u64::from(pushed),
        emails: 0,
    })
}

/// Puts `n` into `user`'s inbox (unless they turned its kind off); returns whether it was
/// pushed now and the email job to enqueue, if they want email.
async fn deliver_inapp(
    ctx: &Ctx,
    n: &Notification,
    user: &lectern_model::UserId,
) -> Result<(bool, Option<JobRecord>), Failure> {
    let inbox = DocId::Inbox(user.clone());
    let prefs: InboxPrefs = ctx
        .hub
        .read(inbox.clone(), |r| r.inbox_prefs())
        .await
        .map_err(hub_failure)?;
    let channel = prefs.channel(n.kind);
    let mut pushed = false;
    if channel != Channel::Off {
        let cmd = Command {
            id: n.id.clone(),
            body: CommandBody::InboxPush {
                notification: n.id.clone(),
                kind: n.kind,
                title: n.title.clone(),
                body: n.body.clone(),
                link: n.link.clone(),
                cohort: n.cohort.clone(),
            },
        };
        match ctx.hub.execute(inbox, system_caller(), cmd).await {
            Ok(_) => pushed = true,
            // Pushed before a crash took the completion: it is in the inbox once, as it should.
            Err(HubError::Rejected(r))
                if matches!(
                    r.code,
                    RejectCode::DuplicateCommand | RejectCode::AlreadyExists
                ) => {}
            Err(e) => return Err(hub_failure(e)),
        }
    }
    let mut email = None;
    if channel == Channel::Email {
        let to = prefs.email.clone().or_else(|| {
            ctx.config
                .email_domain
                .as_ref()
                .map(|domain| format!("{user}@{domain}"))
        });
        match to {
            Some(to) => {
                let now = ctx.now_ms();
                let run_at = if prefs.digest {
                    ctx.config.next_digest_ms(now)
                } else {
                    now
                };
                email = Some(JobRecord::new(
                    email_id(n, user),
                    run_at,
                    Job::Email {
                        notification: n.clone(),
                        user: user.clone(),
                        to,
                        digest: prefs.digest,
                    },
                ));
            }
            None => debug!(%user, "no email address; in-app only"),
        }
    }
    Ok((pushed, email))
}

async fn email(ctx: &Ctx, bundle: &[JobRecord]) -> Result<Step, Failure> {
    let Job::Email {
        notification,
        user,
        to,
        digest,
    } = &bundle[0].job
    else {
        return Err(Failure::permanent("not an email job"));
    };
    // A notification whose cohort has email switched off (feature flag `email`) is skipped,
    // not held: its job finishes without sending, and the in-app notification, delivered
    // before this job was queued, is still there. Holding would mail a backlog of stale
    // notifications the moment an operator switches email back on, which is the storm the
    // flag is there to stop.
    let flags = ctx.hub.flags();
    let wanted = |n: &Notification| flags.enabled(Feature::Email, n.cohort.as_ref());
    let skipped = Step {
        followups: Vec::new(),
        inapp: 0,
        emails: 0,
    };
    let identity = &ctx.config.mail;
    let outgoing = if *digest {
        let notifications: Vec<&Notification> = bundle
            .iter()
            .filter_map(|r| match &r.job {
                Job::Email { notification, .. } => Some(notification),
                _ => None,
            })
            .filter(|n| wanted(n))
            .collect();
        if notifications.is_empty() {
            info!(job = %bundle[0].id, "email is switched off: the digest is skipped");
            return Ok(skipped);
        }
        mail::digest(
            identity,
            &format!("{}/digest", bundle[0].id),
            &notifications,
            user,
            to,
        )
    } else {
        if !wanted(notification) {
            info!(job = %bundle[0].id, "email is switched off: the email is skipped");
            return Ok(skipped);
        }
        mail::single(identity, &bundle[0].id, notification, user, to)
    }
    .map_err(|e| Failure {
        permanent: e.permanent,
        unreachable: e.unreachable,
        reason: e.reason,
    })?;
    ctx.mailer.send(&outgoing).await.map_err(|e| Failure {
        permanent: e.permanent,
        unreachable: e.unreachable,
        reason: e.reason,
    })?;
    Ok(Step {
        followups: Vec::new(),
        inapp: 0,
        emails: 1,
    })
}

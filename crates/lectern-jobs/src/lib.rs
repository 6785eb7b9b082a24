//! Durable jobs: the notifications a command triggers, delivered in-app and by email, each once,
//! surviving restarts and a mail server that is down.
//!
//! The path of a notification:
//!
//! 1. The hub applies a command accepted on THIS node and asks the model for its trigger; the
//!    [`JobQueue`] (the hub's [`lectern_hub::JobHook`]) encodes it as job records that the hub
//!    commits in the same atomic store batch as the command. No command without its jobs, no
//!    jobs without their command; changes from peers never trigger.
//! 2. The [`JobRunner`] holds the queue in memory (loaded from the store at start, fed by the
//!    hook after each fsync) and runs due jobs on up to `workers` tasks:
//!    * fan-out: one notification to many users is pushed into their inboxes a chunk at a time
//!      (no job per recipient); a recipient whose push fails gets a delivery job of their own;
//!    * delivery: the user's preferences decide; the notification goes into their
//!      `inbox/{user}` document (idempotent: the notification id is the command id) and, if
//!      they want email, an email job is enqueued (now, or at their next daily digest);
//!    * email: the message goes to SMTP (lettre) or, without SMTP, to an `.eml` file in the
//!      outbox folder; a digest job takes every pending digest email of its user into one.
//! 3. A job that fails is retried with exponential backoff (with jitter) until `attempts_max`,
//!    then dead-lettered with its last error. An email job whose mail server cannot be reached
//!    (no SMTP reply at all: refused, reset, timed out) is instead parked, spending no attempts:
//!    while the server is unreachable, due emails wait and one of them probes it at growing
//!    intervals (up to `park_probe_max_ms`); the first answer releases them all. An email
//!    parked longer than `park_unreachable_ms` (72 h) is dead-lettered. Each step's outcome (completion plus follow-up
//!    jobs, or the retry state, or the dead letter) is one atomic batch, and a finished job id
//!    is never enqueued again, so a step is never redone after it completed.
//!
//! Delivered once: in-app pushes are idempotent by notification id, so a delivery replayed after
//! a crash does not show twice. An email handed to SMTP just before a crash (before its
//! completion reached disk) is sent again after the restart with the same Message-ID; a graceful
//! stop lets running jobs finish, so a planned restart sends nothing twice.

mod control;
mod mail;
mod record;
mod runner;
pub mod unsubscribe;

use std::sync::Arc;

use lectern_hub::JobHook;
use lectern_model::{Millis, Trigger};
use tokio::sync::mpsc;

pub use control::{JOBS_LIST_MAX, JobControl, JobFilter, JobListing, JobState, JobView, JobsError};
pub use mail::{MailError, MailIdentity, Mailer, Outgoing, SmtpConfig, TlsMode};
pub use record::{Job, JobRecord, deliver_id, email_id, fanout_id};
pub use runner::{JobRunner, JobStats};

/// The shortest time between two sweeps of finished-job markers, in ms.
pub const PRUNE_EVERY_MIN_MS: u64 = 100;
/// The longest time between two sweeps of finished-job markers, in ms (an hour).
pub const PRUNE_EVERY_MAX_MS: u64 = 3_600_000;

/// Job settings; every default is safe for a production node.
#[derive(Clone)]
pub struct JobsConfig {
    /// Jobs running at once. Default 32.
    pub workers: usize,
    /// Attempts before a job is dead-lettered. Default 8.
    pub attempts_max: u32,
    /// Delay before the first retry; doubled on each further failure. Default 2 s.
    pub backoff_base_ms: u64,
    /// Longest delay between retries. Default 1 h.
    pub backoff_max_ms: u64,
    /// A trigger with at most this many recipients enqueues one delivery job each; above it,
    /// one fan-out job (keeps the command's batch small for a 5,000-student announcement, and
    /// spares a job record per recipient).
    /// Default 16.
    pub fanout_inline_max: usize,
    /// The From address, links and the unsubscribe key of emails.
    pub mail: MailIdentity,
    /// Users without an address in their preferences get `{user}@{email_domain}`; `None`: they
    /// get no email. Default `None`.
    pub email_domain: Option<String>,
    /// Digests go out once per period. Default 24 h.
    pub digest_period_ms: u64,
    /// Offset of the digest time into the period (UTC). Default 7 h (07:00 UTC).
    pub digest_offset_ms: u64,
    /// On stop, how long running jobs may take to finish before they are abandoned (they run
    /// again after the restart). Default 10 s.
    pub drain_timeout_ms: u64,
    /// How long a finished job's marker is kept, in ms: while it is, the job id is never
    /// queued again. Markers past it are forgotten by a sweep at start and then every quarter
    /// of this (between [`PRUNE_EVERY_MIN_MS`] and [`PRUNE_EVERY_MAX_MS`]). Default 30 days.
    pub finished_kept_ms: u64,
    /// How long an email job waits (parked) for a mail server that cannot be reached before it
    /// is dead-lettered, in ms; its failures meanwhile spend no attempts. 0: never park (an
    /// unreachable server counts as any transient failure). Default 72 h.
    pub park_unreachable_ms: u64,
    /// While the mail server is unreachable, one parked email probes it after a delay that
    /// grows with the outage (from `backoff_base_ms`) up to this, in ms; the others wait for
    /// the probe's answer. So an email goes out at most this long after the server is back.
    /// Default 60 s.
    pub park_probe_max_ms: u64,
    /// The clock; tests pass a fake one. Default: system time.
    pub clock: Arc<dyn Fn() -> Millis + Send + Sync>,
}

impl JobsConfig {
    /// Defaults around the mail identity.
    pub fn new(mail: MailIdentity) -> JobsConfig {
        JobsConfig {
            workers: 32,
            attempts_max: 8,
            backoff_base_ms: 2_000,
            backoff_max_ms: 3_600_000,
            fanout_inline_max: 16,
            mail,
            email_domain: None,
            digest_period_ms: 86_400_000,
            digest_offset_ms: 7 * 3_600_000,
            drain_timeout_ms: 10_000,
            finished_kept_ms: 30 * 86_400_000,
            park_unreachable_ms: 72 * 3_600_000,
            park_probe_max_ms: 60_000,
            clock: Arc::new(lectern_hub::system_now),
        }
    }

    /// The delay before retry number `attempts` (1 = the first retry), without jitter.
    pub fn backoff_ms(&self, attempts: u32) -> u64 {
        let doublings = attempts.saturating_sub(1).min(40);
        self.backoff_base_ms
            .saturating_mul(1u64 << doublings)
            .min(self.backoff_max_ms)
    }

    /// When the next digest goes out, after `now_ms`.
    pub fn next_digest_ms(&self, now_ms: u64) -> u64 {
        let period = self.digest_period_ms.max(1);
        let offset = self.digest_offset_ms % period;
        let since = now_ms.saturating_sub(offset);
        (since / period + 1) * period + offset
    }
}

/// The hub's side of the queue: encodes triggers as jobs and, once they are durable, hands them
/// to the runner. Cheap to clone.
#[derive(Clone)]
pub struct JobQueue {
    tx: mpsc::UnboundedSender<Vec<(String, Vec<u8>)>>,
    clock: Arc<dyn Fn() -> Millis + Send + Sync>,
    fanout_inline_max: usize,
}

/// The runner's side of the queue (give it to [`JobRunner::start`]).
pub struct QueueReceiver(mpsc::UnboundedReceiver<Vec<(String, Vec<u8>)>>);

impl std::fmt::Debug for QueueReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueReceiver")
    }
}

/// A queue for a hub (put the [`JobQueue`] in `HubConfig::jobs`) and its receiver.
///
/// The channel is unbounded so that the hub's writer never waits on the runner: what it holds
/// is bounded by what the hub commits, and every record in it is already on disk.
pub fn queue(config: &JobsConfig) -> (JobQueue, QueueReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        JobQueue {
            tx,
            clock: config.clock.clone(),
            fanout_inline_max: config.fanout_inline_max,
        },
        QueueReceiver(rx),
    )
}

impl JobHook for JobQueue {
    fn jobs_for(&self, trigger: &Trigger) -> Vec<(String, Vec<u8>)> {
        let now = (self.clock)().0;
        let n = &trigger.notification;
        let records: Vec<JobRecord> = if trigger.recipients.len() <= self.fanout_inline_max {
            trigger
                .recipients
                .iter()
                .map(|user| {
                    JobRecord::new(
                        deliver_id(n, user),
                        now,
                        Job::Deliver {
                            notification: n.clone(),
                            user: user.clone(),
                        },
                    )
                })
                .collect()
        } else {
            vec![JobRecord::new(
                fanout_id(n),
                now,
                Job::Fanout {
                    notification: n.clone(),
                    recipients: trigger.recipients.clone(),
                },
            )]
        };
        records.iter().map(|r| (r.id.clone(), r.encode())).collect()
    }

    fn enqueued(&self, jobs: Vec<(String, Vec<u8>)>) {
        // A closed channel means the runner stopped: the jobs are on disk and run after the
        // next start.
        let _ = self.tx.send(jobs);
    }
}

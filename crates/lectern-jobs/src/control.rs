//! What an operator can do with the job queue while the node runs (`lectern jobs
//! list|show|retry|drop` through the admin API): read queued and dead-lettered jobs, run a
//! queued job now or re-drive a dead letter, and drop a job for good.
//!
//! Reads go to the store (the queue's truth; a record is rewritten after every attempt). Changes
//! go through the runner's own task, which owns the in-memory queue: a job is changed only
//! while it is not running, so an operator's retry can never run a job twice at once, and a
//! re-driven dead letter is queued in the store and in memory in one step.

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::record::JobRecord;

/// Jobs an admin listing returns at most (the newest dead letters of a long outage can be
/// many; the counts are always complete).
pub const JOBS_LIST_MAX: usize = 1_000;

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its time (first run or a retry).
    Queued,
    /// An email job waiting for its mail server to be reachable again.
    Parked,
    /// Running now.
    Running,
    /// Dead-lettered: it will not run unless an operator retries it.
    Dead,
}

impl JobState {
    /// The state's name as the admin API says it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Parked => "parked",
            JobState::Running => "running",
            JobState::Dead => "dead",
        }
    }
}

/// A job and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobView {
    /// Its id.
    pub id: String,
    /// Where it is.
    pub state: JobState,
    /// Its record as stored, or why it does not read (a corrupt record must still be listed,
    /// so that it can be dropped).
    pub record: Result<JobRecord, String>,
}

/// Why an operator's request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobsError {
    /// No queued or dead-lettered job has this id (it finished, was dropped, or never was).
    #[error("no queued or dead-lettered job {0:?} (it finished, was dropped, or never existed)")]
    NotFound(String),
    /// The job is running; it can be changed once this attempt ends.
    #[error("job {0:?} is running now; try again when this attempt has ended")]
    Running(String),
    /// The id cannot be a job id.
    #[error("{0:?} is not a job id")]
    BadId(String),
    /// The store failed.
    #[error("the job store failed: {0}")]
    Store(String),
    /// The job runner has stopped (the node is stopping).
    #[error("the job runner has stopped")]
    Stopped,
}

impl JobsError {
    /// A stable code for the admin API's error body.
    pub fn code(&self) -> &'static str {
        match self {
            JobsError::NotFound(_) => "job_not_found",
            JobsError::Running(_) => "job_running",
            JobsError::BadId(_) => "invalid_job_id",
            JobsError::Store(_) => "store_failed",
            JobsError::Stopped => "shutting_down",
        }
    }
}

/// A request to the runner's task.
pub(crate) enum Control {
    /// The ids of the jobs running now, and of those parked.
    States(oneshot::Sender<(Vec<String>, Vec<String>)>),
    /// Run a queued job now, or requeue a dead letter.
    Retry {
        id: String,
        reply: oneshot::Sender<Result<JobView, JobsError>>,
    },
    /// Forget a queued or dead job for good.
    Drop {
        id: String,
        reply: oneshot::Sender<Result<JobView, JobsError>>,
    },
}

/// A handle on a running job runner for operators. Cheap to clone.
#[derive(Clone)]
pub struct JobControl {
    pub(crate) tx: mpsc::Sender<Control>,
    pub(crate) store: lectern_store::Store,
}

impl std::fmt::Debug for JobControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobControl")
    }
}

/// Queued and dead jobs: counts of all, and up to a limit of records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobListing {
    /// Jobs queued (waiting or running), parked ones included.
    pub queued: usize,
    /// Email jobs parked for an unreachable mail server.
    pub parked: usize,
    /// Jobs running now.
    pub running: usize,
    /// Dead letters.
    pub dead: usize,
    /// The jobs asked for, queued ones first, each group in id order.
    pub jobs: Vec<JobView>,
}

/// Which jobs a listing returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobFilter {
    /// Queued, parked and running ones.
    Queued,
    /// Dead letters.
    Dead,
    /// Both.
    All,
}

impl JobControl {
    /// Queued and dead-lettered jobs (`filter`), at most `limit` records.
    pub async fn list(&self, filter: JobFilter, limit: usize) -> Result<JobListing, JobsError> {
        let (running, parked) = self.states().await?;
        let store = self.store.clone();
        let (queued, dead) = tokio::task::spawn_blocking(move || {
            Ok::<_, lectern_store::StoreError>((store.pending_jobs()?, store.dead_jobs()?))
        })
        .await
        .map_err(|e| JobsError::Store(e.to_string()))?
        .map_err(|e| JobsError::Store(e.to_string()))?;
        let mut listing = JobListing {
            queued: queued.len(),
            dead: dead.len(),
            running: running.len(),
            ..JobListing::default()
        };
        for (id, bytes) in queued {
            let record = JobRecord::decode(&bytes);
            let state = queued_state(
                record.as_ref().ok(),
                running.contains(&id),
                parked.contains(&id),
            );
            if state == JobState::Parked {
                listing.parked += 1;
            }
            if filter != JobFilter::Dead && listing.jobs.len() < limit {
                listing.jobs.push(JobView { id, state, record });
            }
        }
        if filter != JobFilter::Queued {
            for (id, bytes) in dead {
                if listing.jobs.len() >= limit {
                    break;
                }
                listing.jobs.push(JobView {
                    id,
                    state: JobState::Dead,
                    record: JobRecord::decode(&bytes),
                });
            }
        }
        Ok(listing)
    }

    /// One queued or dead-lettered job.
    pub async fn show(&self, id: &str) -> Result<JobView, JobsError> {
        check_id(id)?;
        let (running, parked) = self.states().await?;
        let store = self.store.clone();
        let key = id.to_owned();
        let (queued, dead) = tokio::task::spawn_blocking(move || {
            Ok::<_, lectern_store::StoreError>((store.queued_job(&key)?, store.dead_job(&key)?))
        })
        .await
        .map_err(|e| JobsError::Store(e.to_string()))?
        .map_err(|e| JobsError::Store(e.to_string()))?;
        if let Some(bytes) = queued {
            let record = JobRecord::decode(&bytes);
            let state = queued_state(
                record.as_ref().ok(),
                running.iter().any(|r| r == id),
                parked.iter().any(|r| r == id),
            );
            return Ok(JobView {
                id: id.to_owned(),
                state,
                record,
            });
        }
        if let Some(bytes) = dead {
            return Ok(JobView {
                id: id.to_owned(),
                state: JobState::Dead,
                record: JobRecord::decode(&bytes),
            });
        }
        Err(JobsError::NotFound(id.to_owned()))
    }

    /// Runs a queued job now (its attempts kept), or puts a dead letter back in the queue with
    /// its attempts reset, due now. Returns the job as queued.
    pub async fn retry(&self, id: &str) -> Result<JobView, JobsError> {
        check_id(id)?;
        self.ask(|reply| Control::Retry {
            id: id.to_owned(),
            reply,
        })
        .await
    }

    /// Forgets a queued or dead-lettered job for good (it is marked finished, so it is never
    /// queued again). Returns the job as it was.
    pub async fn drop_job(&self, id: &str) -> Result<JobView, JobsError> {
        check_id(id)?;
        self.ask(|reply| Control::Drop {
            id: id.to_owned(),
            reply,
        })
        .await
    }

    async fn states(&self) -> Result<(Vec<String>, Vec<String>), JobsError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Control::States(reply))
            .await
            .map_err(|_| JobsError::Stopped)?;
        rx.await.map_err(|_| JobsError::Stopped)
    }

    async fn ask(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<JobView, JobsError>>) -> Control,
    ) -> Result<JobView, JobsError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| JobsError::Stopped)?;
        rx.await.map_err(|_| JobsError::Stopped)?
    }
}

/// The state of a job found in the queue.
pub(crate) fn queued_state(record: Option<&JobRecord>, running: bool, parked: bool) -> JobState {
    if running {
        JobState::Running
    } else if parked || record.is_some_and(|r| r.parked_since_ms.is_some()) {
        JobState::Parked
    } else {
        JobState::Queued
    }
}

/// Job ids are what the store takes as a key part: short, no control characters.
fn check_id(id: &str) -> Result<(), JobsError> {
    let ok = !id.is_empty()
        && id.len() <= lectern_store::ID_LEN_MAX_BYTES
        && !id.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(JobsError::BadId(id.chars().take(64).collect()))
    }
}

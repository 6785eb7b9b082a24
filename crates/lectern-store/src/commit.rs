//! Group commit: many writers, one fsync per round.
//!
//! An fsync costs milliseconds while applying a batch costs microseconds, so committing every
//! batch with its own fsync caps a node at a few hundred durable writes per second. Instead,
//! [`Committer::submit`] queues the batch for one dedicated thread per store
//! (`lectern-store-commit`), which blocks for a request, drains everything else already queued,
//! applies each batch on its own (each gets its own result), issues ONE `db.flush()` for the
//! round, and then calls every callback. A flush failure fails the whole round.
//!
//! The queue is an unbounded `std::sync::mpsc` channel so that `submit` never blocks; the bound
//! is the callers' job (each writer has at most a few batches in flight because it waits for
//! `done`). A round is capped at [`ROUND_REQUESTS_MAX`] requests so that callbacks are not
//! delayed indefinitely under constant load.
//!
//! A [`CommitHook`] installed with [`Store::set_commit_hook`] is the fault seam of this path:
//! it can fail a batch before it is applied, fail a round before its fsync (as a failing disk
//! would), or delay or block there, so that tests can observe what a node does while a write is
//! not yet durable. Production stores have no hook.

use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, PoisonError};
use std::thread::{self, JoinHandle};

use crate::StoreError;
use crate::batch::{self, Batch};
use crate::store::{Inner, Shared, Store};

/// The most requests one round applies before it fsyncs.
pub const ROUND_REQUESTS_MAX: usize = 1024;

/// [`StoreError::Injected`]'s stage for a fault from [`CommitHook::before_apply`].
pub(crate) const STAGE_BEFORE_APPLY: &str = "before apply";

/// [`StoreError::Injected`]'s stage for a fault from [`CommitHook::before_fsync`].
pub(crate) const STAGE_BEFORE_FSYNC: &str = "before fsync";

/// The name of the group-commit thread.
const THREAD_NAME: &str = "lectern-store-commit";

/// Fault injection on the commit path (see the module docs). Both methods run on the
/// committing thread and may block or sleep there; returning `false` fails the batch
/// (`before_apply`: it is not applied) or the whole round (`before_fsync`: no fsync) exactly
/// like a failing write or fsync, and the caller gets [`StoreError::Injected`].
pub trait CommitHook: Send + Sync {
    /// Called before each batch is applied; `false` fails it. Default: let it through.
    fn before_apply(&self) -> bool {
        true
    }

    /// Called once per round after its batches are applied and before the fsync; no callback
    /// of the round runs before it returns. `false` fails the round. Default: let it through.
    fn before_fsync(&self) -> bool {
        true
    }
}

/// A handle for submitting batches to a store's group-commit thread. Cloning is cheap.
///
/// Holds the store open: the thread ends after the [`Store`] and every `Committer` are dropped.
#[derive(Clone)]
pub struct Committer {
    tx: Sender<Request>,
    /// Keeps the store, and with it the thread's channel, alive.
    _store: Arc<Inner>,
}

impl Committer {
    /// Non-blocking: hands the batch to the store's commit thread; `done` is called (on that
    /// thread) after the batch is applied and fsynced, or with the error.
    ///
    /// `done` should be quick (send on a channel, wake a task): the next round waits for it.
    pub fn submit(&self, batch: Batch, done: impl FnOnce(Result<(), StoreError>) + Send + 'static) {
        let request = Request {
            batch,
            done: Box::new(done),
        };
        if let Err(mpsc::SendError(request)) = self.tx.send(request) {
            (request.done)(Err(StoreError::CommitterStopped));
        }
    }

    pub(crate) fn new(store: &Store) -> Committer {
        let inner = &store.inner;
        let mut thread = inner
            .commit_thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let tx = match &*thread {
            Some(running) => running.tx.clone(),
            None => match CommitThread::spawn(Arc::clone(&inner.shared)) {
                Ok(started) => {
                    let tx = started.tx.clone();
                    *thread = Some(started);
                    tx
                }
                Err(error) => {
                    // Every submit on this handle will fail with CommitterStopped; the next
                    // `committer()` call tries again.
                    tracing::error!(%error, "could not start the store commit thread");
                    mpsc::channel().0
                }
            },
        };
        Committer {
            tx,
            _store: Arc::clone(inner),
        }
    }
}

impl fmt::Debug for Committer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Committer").finish_non_exhaustive()
    }
}

/// The running commit thread, owned by the store's `Inner`.
pub(crate) struct CommitThread {
    tx: Sender<Request>,
    handle: JoinHandle<()>,
}

impl CommitThread {
    fn spawn(shared: Arc<Shared>) -> std::io::Result<CommitThread> {
        let (tx, rx) = mpsc::channel();
        let handle = thread::Builder::new()
            .name(THREAD_NAME.to_owned())
            .spawn(move || run(&shared, &rx))?;
        Ok(CommitThread { tx, handle })
    }

    /// Closes the channel and waits for the thread to finish its queue.
    ///
    /// Called from `Inner::drop`, which can run on the commit thread itself when a `done`
    /// callback drops the last handle; the thread then exits on its own once that callback
    /// returns, and must not be joined from inside.
    pub(crate) fn stop(self) {
        drop(self.tx);
        if self.handle.thread().id() == thread::current().id() {
            return;
        }
        if self.handle.join().is_err() {
            tracing::error!("the store commit thread panicked");
        }
    }
}

struct Request {
    batch: Batch,
    done: Box<dyn FnOnce(Result<(), StoreError>) + Send>,
}

/// The thread body: rounds of apply-each, fsync-once, acknowledge-all, until the channel closes.
fn run(shared: &Shared, rx: &Receiver<Request>) {
    let mut round: Vec<Request> = Vec::new();
    let mut results: Vec<Result<(), StoreError>> = Vec::new();
    while let Ok(first) = rx.recv() {
        round.push(first);
        while round.len() < ROUND_REQUESTS_MAX {
            match rx.try_recv() {
                Ok(request) => round.push(request),
                Err(_) => break,
            }
        }

        let mut dones = Vec::with_capacity(round.len());
        for request in round.drain(..) {
            results.push(
                shared
                    .hook_before_apply()
                    .and_then(|()| batch::apply(shared, request.batch)),
            );
            dones.push(request.done);
        }
        // `None`: the hook failed the round; `Some`: sled's fsync did.
        let flushed: Result<(), Option<sled::Error>> = match shared.hook_before_fsync() {
            Ok(()) => shared.fsync().map_err(Some),
            Err(_) => Err(None),
        };

        for (done, applied) in dones.into_iter().zip(results.drain(..)) {
            let result = match (applied, &flushed) {
                (Err(error), _) => Err(error),
                (Ok(()), Err(Some(error))) => Err(StoreError::Sled(error.clone())),
                (Ok(()), Err(None)) => Err(StoreError::Injected {
                    stage: STAGE_BEFORE_FSYNC,
                }),
                (Ok(()), Ok(())) => Ok(()),
            };
            // A panicking callback must not take the thread, and every later writer, with it.
            if panic::catch_unwind(AssertUnwindSafe(|| done(result))).is_err() {
                tracing::error!("a store commit callback panicked");
            }
        }
    }
}

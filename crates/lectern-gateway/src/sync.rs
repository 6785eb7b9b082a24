//! Locking that survives a panicked holder: the tables behind the gateway's mutexes are
//! always left consistent between statements, so a poisoned lock's data is still good, and
//! one panicked task must not take every later request down with it. And [`Gated`], a wait on
//! a channel every connection shares that a connection's task polls only when it changed.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::watch;

/// Locks `m`, recovering the data if a holder panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A wait on a watch channel (the node's stop signal, a session's attendance) that is polled
/// again only once the channel has changed, or from another task.
///
/// Why: a pending watch wait takes the lock of the channel's list of waiters on every poll,
/// and every connection of the node (or of a session) waits on the same channel. A connection
/// task polls all its waits each time it wakes, that is for every event it writes, so each
/// delivery paid a lock every connection shares. Between changes the wait stays in that list
/// with the waker of its last poll, so skipping the poll loses nothing: a change wakes the
/// task, and the version check (one atomic load) then lets the poll through. The wait runs
/// outside tokio's cooperative budget, so a poll that is let through always reaches the
/// channel (a poll refused for budget would register nothing while this gate believed it had).
pub(crate) struct Gated<T, O> {
    /// A receiver of the same channel, only to read its version.
    probe: watch::Receiver<T>,
    wait: Pin<Box<dyn Future<Output = O> + Send>>,
    /// The waker of the last poll; `None` before the first.
    waker: Option<Waker>,
}

impl<T, O> Gated<T, O> {
    /// Gates `wait`, a wait on the channel `probe` receives from (a clone of its receiver, at
    /// the same version).
    pub(crate) fn new(
        probe: watch::Receiver<T>,
        wait: impl Future<Output = O> + Send + 'static,
    ) -> Self {
        Gated {
            probe,
            wait: Box::pin(tokio::task::unconstrained(wait)),
            waker: None,
        }
    }
}

impl<T, O> Future for Gated<T, O> {
    type Output = O;

    /// Not to be polled again once ready (like the wait itself).
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<O> {
        let this = &mut *self;
        let same_task = this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        // A closed channel counts as changed: the wait itself says what that means.
        if same_task && !this.probe.has_changed().unwrap_or(true) {
            return Poll::Pending;
        }
        // Before the poll: a change after this line is seen by the poll or wakes the task.
        this.probe.mark_unchanged();
        if !same_task {
            this.waker = Some(cx.waker().clone());
        }
        this.wait.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::Gated;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Wake, Waker};
    use tokio::sync::watch;

    /// Counts its wake-ups.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A gated wait is polled once, skipped while its channel is unchanged, woken by the
    /// change and then completes; polls the wait counts tell the gate held.
    #[test]
    fn a_gated_wait_is_polled_only_after_a_change() {
        let (tx, rx) = watch::channel(0u32);
        let polls = Arc::new(AtomicUsize::new(0));
        let counted = polls.clone();
        let mut waiting = rx.clone();
        let mut inner = Box::pin(async move {
            let _ = waiting.changed().await;
            *waiting.borrow_and_update()
        });
        let wait = std::future::poll_fn(move |cx| {
            counted.fetch_add(1, Ordering::SeqCst);
            inner.as_mut().poll(cx)
        });
        let mut gated = Gated::new(rx, wait);
        let wakes = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        for _ in 0..5 {
            assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1, "polled past the gate");
        tx.send_replace(7);
        assert!(
            wakes.0.load(Ordering::SeqCst) >= 1,
            "the change woke no one"
        );
        assert_eq!(Pin::new(&mut gated).poll(&mut cx), Poll::Ready(7));
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    /// Polled from another task (another waker), the gate lets the poll through, so the wait
    /// holds the new waker.
    #[test]
    fn a_new_waker_passes_the_gate() {
        let (_tx, rx) = watch::channel(0u32);
        let polls = Arc::new(AtomicUsize::new(0));
        let counted = polls.clone();
        let wait = std::future::poll_fn(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            Poll::<()>::Pending
        });
        let mut gated = Gated::new(rx, wait);
        for _ in 0..2 {
            let waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
            let mut cx = Context::from_waker(&waker);
            assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }
}

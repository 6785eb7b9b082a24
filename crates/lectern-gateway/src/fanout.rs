//! Write-through fan-out: each event is written to every lean connection that follows its
//! channel by ONE task per channel, instead of by a wake-up of every connection's own task.
//!
//! Why: waking 16,000 tasks per event costs each one a trip through the scheduler, the
//! broadcast channel's list of waiters and a poll of every wait the task holds (its timer, its
//! socket's readiness, the node's stop), which is most of what the node spends per delivery
//! beyond the kernel's `send` (BENCHMARKS.md, "Fan-out CPU against the floor"). Here a
//! channel's [`Fanout`] task wakes once per batch of events and, for each connection, takes the
//! events from the connection's OWN receiver, frames them (once per event and audience, shared)
//! and writes them with `try_write` when nothing is queued before them. The receiver is the
//! connection's position in the stream exactly as before (a join or a resume starts it), so
//! what a connection gets, and when it falls behind, does not change.
//!
//! A connection's task is woken only when it must act: bytes did not all go out (its queue then
//! waits for the socket to be writable, which that task watches), or the connection must end
//! (its queue went past its budget, it fell behind the channel, the channel closed, a write
//! failed). See [`Trouble`].
//!
//! Order: every byte a connection sends (events, and its own task's acks, pings, keep-alives)
//! goes through its [`Outlet`] under one lock, so frames never interleave and events leave in
//! the channel's order. A connection that starts to follow a channel is added to the channel's
//! fan-out first and then takes what its receiver already holds (the fan-out may have passed
//! over it just before), so no event waits for the next one ([`Fanouts::follow`]).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use lectern_hub::Published;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

use crate::sync::lock;

/// A channel of published events (a session's room, an inbox, a board).
pub(crate) type Channel = broadcast::Receiver<Arc<Published>>;

/// A frame waiting to be written.
pub(crate) enum Out {
    /// An event's frame, shared by every subscriber of the same audience.
    Shared(Arc<[u8]>),
    /// A frame for this connection only (acks, the handshake).
    Owned(Vec<u8>),
    /// A constant frame (the ping, a keep-alive).
    Static(&'static [u8]),
}

impl Out {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Out::Shared(b) => b,
            Out::Owned(b) => b,
            Out::Static(b) => b,
        }
    }
}

/// Why a connection's task must end it, noticed by a fan-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trouble {
    /// Its queue went past its budget: a slow consumer.
    OverBudget,
    /// It fell behind a channel it follows.
    Lagged,
    /// A channel it follows closed (the node is stopping).
    Closed,
    /// A write failed: the connection is gone.
    Gone,
}

/// How one connection frames the events of one channel it follows.
pub(crate) trait Framer: Send + 'static {
    /// The frame of `e` for this connection, or `None` when it does not get it. `positions`
    /// are the last events the connection was sent of each channel it follows (`e`'s
    /// channel's is `e`'s token already), for a Socket.IO connection's offset. An event that
    /// gets a frame is counted as delivered by the framer.
    fn frame(&self, e: &Published, positions: &Positions<'_>) -> Option<Arc<[u8]>>;
}

/// The positions of a connection in the channels it follows: each channel's key and the token
/// of the last event the connection was sent from it (if any yet).
pub(crate) struct Positions<'a>(&'a [Tapped]);

impl Positions<'_> {
    /// How many channels the connection follows.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Each channel's key and last token, in the order the connection started to follow them.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, Option<&Arc<str>>)> {
        self.0.iter().map(|t| (&*t.key, t.at.as_ref()))
    }
}

/// One channel a connection follows, inside its outlet.
struct Tapped {
    id: u64,
    key: Arc<str>,
    events: Channel,
    at: Option<Arc<str>>,
    framer: Box<dyn Framer>,
}

/// The bytes a connection has to send, and the channels it follows.
struct Queue {
    out: VecDeque<Out>,
    /// Bytes of the front frame already written.
    at: usize,
    /// Bytes of the queued frames (whole frames, the front one included).
    bytes: usize,
    trouble: Option<Trouble>,
    /// Whether an event went out since the connection's task last asked (an SSE stream's
    /// keep-alive is due only after a quiet interval).
    sent_event: bool,
    /// Set once the connection is ending: fan-outs no longer write to it.
    closed: bool,
    taps: Vec<Tapped>,
}

/// The outbound side of one lean connection (a WebSocket or an SSE stream), shared by its own
/// task and the fan-outs of the channels it follows.
pub(crate) struct Outlet {
    stream: TcpStream,
    queue: Mutex<Queue>,
    /// The connection's task, woken when a fan-out left it something to do.
    task: AtomicWaker,
    nudged: AtomicBool,
    frames_max: usize,
    bytes_max: usize,
}

/// What [`Outlet::push`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Written whole, or queued within the budget.
    Ok,
    /// Queued, and the queue is now past its budget.
    OverBudget,
    /// The write failed: the connection is gone.
    Gone,
}

impl Outlet {
    /// An outlet for `stream` whose queue may hold `frames_max` frames and `bytes_max` bytes.
    pub(crate) fn new(stream: TcpStream, frames_max: usize, bytes_max: usize) -> Arc<Outlet> {
        Arc::new(Outlet {
            stream,
            queue: Mutex::new(Queue {
                out: VecDeque::new(),
                at: 0,
                bytes: 0,
                trouble: None,
                sent_event: false,
                closed: false,
                taps: Vec::new(),
            }),
            task: AtomicWaker::new(),
            nudged: AtomicBool::new(false),
            frames_max,
            bytes_max,
        })
    }

    /// The socket, for reading and for waiting on its readiness.
    pub(crate) fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Ends the sending direction (the peer reads the end once what is sent is read).
    pub(crate) fn shutdown(&self) {
        let _ = socket2::SockRef::from(&self.stream).shutdown(std::net::Shutdown::Write);
    }

    /// Sends what is queued, for at most `within`, then ends the sending direction.
    pub(crate) async fn finish(&self, within: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.is_queued() {
            if self.flush().is_err() || !self.is_queued() {
                break;
            }
            match tokio::time::timeout_at(deadline, self.stream.writable()).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
        self.shutdown();
    }

    /// Sends `frame` after what is queued: written at once when nothing is (the usual case,
    /// which allocates nothing), queued when the socket would block.
    pub(crate) fn push(&self, frame: Out) -> Pushed {
        let mut q = lock(&self.queue);
        self.push_locked(&mut q, frame)
    }

    fn push_locked(&self, q: &mut Queue, frame: Out) -> Pushed {
        if q.out.is_empty() {
            let bytes = frame.bytes();
            match self.stream.try_write(bytes) {
                Ok(n) if n == bytes.len() => return Pushed::Ok,
                Ok(n) => q.at = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Pushed::Gone,
            }
        }
        q.bytes += frame.bytes().len();
        q.out.push_back(frame);
        let over = q.out.len() > 1 && (q.out.len() > self.frames_max || q.bytes > self.bytes_max);
        if over { Pushed::OverBudget } else { Pushed::Ok }
    }

    /// Writes queued frames until the socket would block.
    pub(crate) fn flush(&self) -> io::Result<()> {
        let mut q = lock(&self.queue);
        let q = &mut *q;
        while let Some(front) = q.out.front() {
            let bytes = &front.bytes()[q.at..];
            match self.stream.try_write(bytes) {
                Ok(n) => {
                    q.at += n;
                    if n == bytes.len() {
                        if let Some(done) = q.out.pop_front() {
                            q.bytes -= done.bytes().len();
                        }
                        q.at = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if q.out.is_empty() && q.out.capacity() > 0 {
            // A connection that caught up keeps no queue.
            q.out = VecDeque::new();
        }
        Ok(())
    }

    /// Whether frames wait to be written.
    pub(crate) fn is_queued(&self) -> bool {
        !lock(&self.queue).out.is_empty()
    }

    /// Whether the queue holds its budget of frames or bytes (the connection's input then waits).
    pub(crate) fn at_budget(&self) -> bool {
        let q = lock(&self.queue);
        q.out.len() >= self.frames_max || q.bytes >= self.bytes_max
    }

    /// Drops the queued frames but a partly written one (a connection cut off resumes from its
    /// last token), and stops the fan-outs writing to it: what it sends now is its last words.
    pub(crate) fn cut(&self) {
        let mut q = lock(&self.queue);
        self.close_locked(&mut q);
        let keep = usize::from(q.at > 0);
        q.out.truncate(keep);
        q.bytes = q.out.iter().map(|o| o.bytes().len()).sum();
    }

    /// Stops the fan-outs writing to the connection (it is ending); what is queued stays.
    pub(crate) fn close(&self) {
        let mut q = lock(&self.queue);
        self.close_locked(&mut q);
    }

    fn close_locked(&self, q: &mut Queue) {
        q.closed = true;
        q.taps.clear();
    }

    /// Why the connection must end, if a fan-out found a reason (it then writes no more to it).
    pub(crate) fn trouble(&self) -> Option<Trouble> {
        lock(&self.queue).trouble
    }

    /// Whether an event went out since the last call.
    pub(crate) fn take_sent_event(&self) -> bool {
        std::mem::take(&mut lock(&self.queue).sent_event)
    }

    /// Ready once a fan-out left the connection's task something to do (frames to flush, a
    /// [`Trouble`]) since it last was; the task then looks at its outlet again.
    pub(crate) fn poll_nudged(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.nudged.swap(false, Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.task.register(cx.waker());
        if self.nudged.swap(false, Ordering::Acquire) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    fn nudge(&self) {
        self.nudged.store(true, Ordering::Release);
        self.task.wake();
    }

    /// Takes the events waiting in the receiver of tap `id` and sends them (see the module
    /// docs); nudges the connection's task when it must act.
    fn take_events(&self, id: u64) {
        let mut q = lock(&self.queue);
        let q = &mut *q;
        if q.closed || q.trouble.is_some() {
            return;
        }
        let Some(i) = q.taps.iter().position(|t| t.id == id) else {
            return;
        };
        let was_queued = !q.out.is_empty();
        loop {
            let e = match q.taps[i].events.try_recv() {
                Ok(e) => e,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Lagged(_)) => {
                    q.trouble = Some(Trouble::Lagged);
                    break;
                }
                Err(TryRecvError::Closed) => {
                    q.trouble = Some(Trouble::Closed);
                    break;
                }
            };
            let before = q.taps[i].at.replace(e.token.clone());
            let Some(frame) = q.taps[i].framer.frame(&e, &Positions(&q.taps)) else {
                q.taps[i].at = before;
                continue;
            };
            q.sent_event = true;
            match self.push_locked(q, Out::Shared(frame)) {
                Pushed::Ok => {}
                Pushed::OverBudget => {
                    q.trouble = Some(Trouble::OverBudget);
                    break;
                }
                Pushed::Gone => {
                    q.trouble = Some(Trouble::Gone);
                    break;
                }
            }
        }
        if q.trouble.is_some() || (!was_queued && !q.out.is_empty()) {
            self.nudge();
        }
    }
}

/// A connection's following of one channel: dropping it stops the following.
pub(crate) struct Tap {
    fanout: Arc<Fanout>,
    outlet: Arc<Outlet>,
    id: u64,
}

impl Drop for Tap {
    fn drop(&mut self) {
        lock(&self.outlet.queue).taps.retain(|t| t.id != self.id);
        let mut registry = lock(&self.fanout.registry.map);
        let mut outlets = lock(&self.fanout.outlets);
        outlets.retain(|(_, id)| *id != self.id);
        if outlets.is_empty() {
            // The last follower: the fan-out ends (a later follower starts a new one).
            if let Some(bucket) = registry.get_mut(&self.fanout.key) {
                bucket.retain(|f| !Arc::ptr_eq(f, &self.fanout));
                if bucket.is_empty() {
                    registry.remove(&self.fanout.key);
                }
            }
            self.fanout.stop.notify_one();
        }
    }
}

/// The fan-out of one channel: the outlets following it, written by its task.
struct Fanout {
    key: Arc<str>,
    /// The registry it is listed in (it leaves it with its last follower).
    registry: Arc<Registry>,
    /// A receiver of the channel, kept drained by the task, by which a follower's receiver is
    /// matched to its channel ([`broadcast::Receiver::same_channel`]).
    identity: Mutex<Channel>,
    outlets: Mutex<Vec<(Arc<Outlet>, u64)>>,
    stop: Notify,
}

/// Every running fan-out, by channel key (one key may name several channels over time, told
/// apart by [`Fanout::identity`]).
#[derive(Default)]
struct Registry {
    map: Mutex<HashMap<Arc<str>, Vec<Arc<Fanout>>>>,
}

/// The gateway's fan-outs.
#[derive(Clone, Default)]
pub(crate) struct Fanouts(Arc<Registry>);

/// Tap ids, unique for the process.
static TAP_IDS: AtomicU64 = AtomicU64::new(1);

impl Fanouts {
    /// Makes `outlet` follow the channel `events` (whose key is `key`: a document, a board),
    /// from where `events` stands, framing each event with `framer`; `at` is the token the
    /// connection starts from. The events `events` already holds are sent before this returns.
    pub(crate) fn follow(
        &self,
        key: &str,
        events: Channel,
        at: Option<Arc<str>>,
        outlet: &Arc<Outlet>,
        framer: Box<dyn Framer>,
    ) -> Tap {
        let id = TAP_IDS.fetch_add(1, Ordering::Relaxed);
        let fanout = {
            let mut registry = lock(&self.0.map);
            let bucket = registry.entry(Arc::from(key)).or_default();
            let found = bucket
                .iter()
                .find(|f| lock(&f.identity).same_channel(&events))
                .cloned();
            let fanout = found.unwrap_or_else(|| {
                let fanout = Arc::new(Fanout {
                    key: Arc::from(key),
                    registry: self.0.clone(),
                    identity: Mutex::new(events.resubscribe()),
                    outlets: Mutex::new(Vec::new()),
                    stop: Notify::new(),
                });
                bucket.push(fanout.clone());
                tokio::spawn(run(fanout.clone(), events.resubscribe()));
                fanout
            });
            lock(&fanout.outlets).push((outlet.clone(), id));
            fanout
        };
        lock(&outlet.queue).taps.push(Tapped {
            id,
            key: fanout.key.clone(),
            events,
            at,
            framer,
        });
        // Added to the fan-out before taking what the receiver holds: an event the fan-out
        // passed over before the tap was in its list is taken here, any later one by the
        // fan-out, and each exactly once (both take under the outlet's lock).
        outlet.take_events(id);
        Tap {
            fanout,
            outlet: outlet.clone(),
            id,
        }
    }
}

/// A fan-out's task: on each batch of events, every follower takes its events.
async fn run(fanout: Arc<Fanout>, mut wake: Channel) {
    let mut followers: Vec<(Arc<Outlet>, u64)> = Vec::new();
    loop {
        let closed = tokio::select! {
            r = wake.recv() => matches!(r, Err(RecvError::Closed)),
            () = fanout.stop.notified() => return,
        };
        // What arrived so far wakes this pass: drained first, so an event that arrives during
        // the pass wakes the next one.
        while wake.try_recv().is_ok() {}
        {
            let mut identity = lock(&fanout.identity);
            while !matches!(
                identity.try_recv(),
                Err(TryRecvError::Empty | TryRecvError::Closed)
            ) {}
        }
        followers.clear();
        followers.extend(lock(&fanout.outlets).iter().cloned());
        for (outlet, id) in &followers {
            outlet.take_events(*id);
            // A pass over thousands of connections takes tens of milliseconds: it gives the
            // worker back every so often (tokio's budget), so that commands, acks and the
            // hub's writers run meanwhile instead of waiting for the pass to end.
            tokio::task::coop::consume_budget().await;
        }
        followers.clear();
        if closed {
            return;
        }
    }
}

/// Waits until `stream` is readable (when `read`) or writable (when `write`); whether it is
/// readable. Polls tokio's per-direction readiness, which keeps the waker in the socket's
/// registration: nothing is linked into a waiter list and unlinked again on every wake-up.
pub(crate) async fn ready(stream: &TcpStream, read: bool, write: bool) -> io::Result<bool> {
    std::future::poll_fn(|cx| {
        if read && let Poll::Ready(r) = stream.poll_read_ready(cx) {
            return Poll::Ready(r.map(|()| true));
        }
        if write && let Poll::Ready(r) = stream.poll_write_ready(cx) {
            return Poll::Ready(r.map(|()| false));
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
#[path = "fanout_tests.rs"]
mod tests;

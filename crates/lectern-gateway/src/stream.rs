//! Opening and writing an SSE stream, whatever it follows: a session, a student's progress,
//! the caller's inbox or a board. [`open`] is the one way a stream opens: the caller's
//! `Last-Event-ID`, a token from their command-rate bucket (opening a stream loads a document,
//! so a client cannot make the node load documents faster than it may send commands), the
//! stream's own check, a connection slot, then its subscription; only the [`Source`] differs.
//! The opened stream is written by [`LeanStream`], through axum ([`respond`]) or by the front
//! door itself (`Gateway::open_stream`).
//!
//! Each event's `id:` is its resume token; a client that reconnects with `Last-Event-ID` (the
//! browser's EventSource does it by itself) gets exactly the events it missed, from this node
//! or another. A fresh stream starts with an `event: state` carrying the full view. Keep-alive
//! comments flow every `keepalive_s`. A stream that falls behind is ended with an `error` event
//! naming the reason, and the client resumes from its last id.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use lectern_hub::{Encoding, JoinStart, Joined, Published};
use lectern_model::{Caller, DocId, ResumeToken};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use crate::Gateway;
use crate::error::AppError;
use crate::extract::{AuthedUntil, last_event_id};
use crate::fanout::{self, Framer, Out, Positions, Pushed, Trouble};
use crate::limits::ConnSlot;
use crate::metrics;
use crate::sio::{ConnGuard, Transport};

/// What one kind of stream brings to [`open`]: who may follow it beyond what its
/// subscription checks, which events pass, and the subscription itself.
pub(crate) trait Source {
    /// The key of the channel the stream follows (its fan-out's, `fanout.rs`): the document's
    /// name, or the board's.
    fn channel(&self) -> String;

    /// Refuses `caller` before a connection slot is taken (default: no one; a document's join
    /// checks membership itself).
    async fn check(&self, _gw: &Gateway, _caller: &Caller) -> Result<(), AppError> {
        Ok(())
    }

    /// Which of the subscription's events the subscriber gets (default: all it may see).
    fn filter(&self) -> Filter {
        Filter::All
    }

    /// Subscribes `caller`: the stream's start (the state, or the events after `since`) and
    /// its live events.
    async fn join(
        self,
        gw: &Gateway,
        caller: Caller,
        since: Option<ResumeToken>,
    ) -> Result<Joined, AppError>;
}

/// The stream of a document's events, as the hub's join gives them (a session, an inbox).
pub(crate) struct DocStream(pub(crate) DocId);

impl Source for DocStream {
    fn channel(&self) -> String {
        self.0.to_string()
    }

    async fn join(
        self,
        gw: &Gateway,
        caller: Caller,
        since: Option<ResumeToken>,
    ) -> Result<Joined, AppError> {
        Ok(gw.hub().join(self.0, caller, since).await?)
    }
}

/// Opens a stream of `source` for `caller`, whose token expires at `expires_at_s`; see the
/// module docs for the order of its steps.
pub(crate) async fn open(
    gw: &Gateway,
    caller: Caller,
    expires_at_s: u64,
    headers: &HeaderMap,
    source: impl Source,
) -> Result<Opened, AppError> {
    let since = last_event_id(headers).inspect_err(|_| {
        gw.metrics()
            .resume(Transport::Sse.label(), Some(metrics::BAD_TOKEN));
    })?;
    gw.take_command_token(caller.user.as_str())?;
    source.check(gw, &caller).await?;
    let slot = gw.connection_slot(caller.user.as_str())?;
    let staff = caller.role.is_staff();
    let user = caller.user.to_string();
    let filter = source.filter();
    let channel = source.channel();
    let resuming = since.is_some();
    let joined = source.join(gw, caller, since).await?;
    if resuming {
        gw.metrics()
            .resume_start(Transport::Sse.label(), &joined.start);
    }
    Ok(Opened {
        joined,
        channel,
        user,
        staff,
        filter,
        slot,
        expires_at_s,
    })
}

/// A stream route's answer: [`open`], then the stream as the response body.
pub(crate) async fn respond(
    gw: Gateway,
    AuthedUntil(caller, expires_at_s): AuthedUntil,
    headers: &HeaderMap,
    source: impl Source,
) -> Result<Response, AppError> {
    let opened = open(&gw, caller, expires_at_s, headers, source).await?;
    Ok(stream_response(gw, opened))
}

/// Which events of a document a stream passes on.
#[derive(Clone)]
pub(crate) enum Filter {
    /// Everything the subscriber may see.
    All,
    /// `progress` events of one student.
    Progress(String),
}

impl Filter {
    fn keeps(&self, e: &Published, payload: &str) -> bool {
        match self {
            Filter::All => true,
            Filter::Progress(student) => {
                e.name == "progress"
                    && serde_json::from_str::<Value>(payload)
                        .ok()
                        .is_some_and(|p| p["student"] == student.as_str())
            }
        }
    }
}

/// A subscription ready to stream, before it is written (by [`LeanStream`]).
pub(crate) struct Opened {
    joined: Joined,
    /// The key of the channel it follows.
    channel: String,
    user: String,
    staff: bool,
    filter: Filter,
    /// The stream's connection slot, taken before the join.
    slot: ConnSlot,
    expires_at_s: u64,
}

/// The same stream through axum (a stream request on a kept-alive connection, or a server
/// that is not the node's accept loop): the lean stream's chunks as the response body.
fn stream_response(gw: Gateway, opened: Opened) -> Response {
    let lean = LeanStream::new(gw, opened);
    let chunks = stream::unfold(lean, |mut lean| async move {
        let chunk = lean.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk.as_ref().to_vec()), lean))
    });
    Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "text/event-stream")
        .header(axum::http::header::CACHE_CONTROL, "no-cache")
        .body(axum::body::Body::from_stream(chunks))
        .unwrap_or_else(|_| {
            AppError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "could not build the stream response",
            )
            .into_response()
        })
}

/// The head of a stream's response when the front door writes it: `connection: close` framing,
/// the body ends when the socket closes.
const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
    cache-control: no-cache\r\nconnection: close\r\n\r\n";

/// How long a stream that ends may take to send its last bytes before it is dropped.
const CLOSE_FLUSH_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// How a stream frames the events of the channel it follows (the fan-out calls it).
struct StreamFramer {
    gw: Gateway,
    user: String,
    staff: bool,
    filter: Filter,
}

impl Framer for StreamFramer {
    fn frame(&self, e: &Published, _: &Positions<'_>) -> Option<Arc<[u8]>> {
        let frame = event_frame(e, &self.user, self.staff, &self.filter)?;
        self.gw
            .metrics()
            .event_out(Transport::Sse.label(), e.published_at);
        Some(frame)
    }
}

/// The `error` event that ends a stream whose token expired.
const TOKEN_EXPIRED: &str = "token_expired";
/// The `error` event that ends every stream when the node stops.
const SHUTTING_DOWN: &str = "shutting_down";
/// The `error` event that ends a stream that fell behind.
const SLOW_CONSUMER: &str = "slow_consumer";

/// The data of the `error` event that ends a stream, by its code.
fn end_data(code: &'static str) -> String {
    let message = match code {
        TOKEN_EXPIRED => "your token expired; reconnect with a fresh one and your last event id",
        SHUTTING_DOWN => {
            "this node is shutting down; reconnect (to another node) with your last event id"
        }
        _ => "this stream fell behind; reconnect with your last event id",
    };
    json!({"code": code, "message": message}).to_string()
}

/// Appends one event in the `text/event-stream` format (fields in the order axum's `Event`
/// writes them: `event`, `id`, `data`).
fn write_event(out: &mut Vec<u8>, name: &str, id: Option<&str>, data: &str) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    write_message(out, id, data);
}

/// Appends one unnamed event (EventSource's `message`, which `onmessage` receives).
fn write_message(out: &mut Vec<u8>, id: Option<&str>, data: &str) {
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// One event, formatted, when the subscriber may see it.
fn lean_event_of(e: &Published, user: &str, staff: bool, filter: &Filter, out: &mut Vec<u8>) {
    if let Some(frame) = event_frame(e, user, staff, filter) {
        out.extend_from_slice(&frame);
    }
}

/// The `text/event-stream` event of `e` for a subscriber (`user`, staff or not), when it may
/// see it: formatted once per event and audience, and shared by every stream that gets it.
///
/// A progress stream sends each update twice, with the same id: named `progress` (for clients
/// that listen by name, like ours) and unnamed (for a plain `EventSource`'s `onmessage`, which
/// never sees named events). A client resuming from either id misses nothing.
fn event_frame(e: &Published, user: &str, staff: bool, filter: &Filter) -> Option<Arc<[u8]>> {
    let delivery = e.delivery_for(user, staff)?;
    let (_, payload) = e.deliveries.get(delivery)?;
    if !filter.keeps(e, payload) {
        return None;
    }
    let named = e.encoded(delivery, Encoding::Sse, |payload| {
        let mut out = Vec::new();
        write_event(&mut out, e.name, Some(&*e.token), payload);
        out
    })?;
    match filter {
        Filter::All => Some(named),
        Filter::Progress(_) => {
            let mut both = named.to_vec();
            write_message(&mut both, Some(&*e.token), payload);
            Some(Arc::from(both))
        }
    }
}

/// An open SSE stream that its server writes itself: [`LeanStream::next_chunk`] gives the next
/// bytes of the `text/event-stream` body (the start, events, keep-alive comments, the ending
/// `error` event), formatted into a fresh buffer that the writer drops once written, so an
/// idle stream holds no buffer. The connection counts as `transport="sse"` while it lives.
pub struct LeanStream {
    /// The start events, formatted; taken by the first chunk.
    start: Vec<u8>,
    events: tokio::sync::broadcast::Receiver<Arc<Published>>,
    /// Done once the node is stopping. Kept from one chunk to the next, like `timer`: made
    /// afresh for every event, each would join and leave a list every stream shares.
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Fires at the keep-alive (or the token's expiry); moved only when it fires.
    timer: Pin<Box<tokio::time::Sleep>>,
    user: String,
    staff: bool,
    filter: Filter,
    /// When the caller's token expires: the stream ends then, saying why (`None`: past the
    /// clock's range, so never while the node runs).
    expires: Option<tokio::time::Instant>,
    /// When the next keep-alive comment is due (each chunk postpones it).
    keepalive_at: tokio::time::Instant,
    done: bool,
    /// Counts the stream as a connection while it lives.
    _guard: ConnGuard,
    gw: Gateway,
    /// The key of the channel it follows (for its fan-out, when the front door writes it).
    channel: String,
}

impl std::fmt::Debug for LeanStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeanStream")
            .field("user", &self.user)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl LeanStream {
    pub(crate) fn new(gw: Gateway, opened: Opened) -> LeanStream {
        let Opened {
            joined,
            channel,
            user,
            staff,
            filter,
            slot,
            expires_at_s,
        } = opened;
        let guard = ConnGuard::counted(&gw, slot, Transport::Sse);
        let mut start = Vec::new();
        match &joined.start {
            JoinStart::Snapshot {
                state,
                token,
                resume_refused,
            } => {
                let data = json!({"state": state, "resumeRefused": resume_refused});
                write_event(
                    &mut start,
                    "state",
                    Some(&token.to_string()),
                    &data.to_string(),
                );
            }
            JoinStart::Replay { events, .. } => {
                for e in events {
                    lean_event_of(e, &user, staff, &filter, &mut start);
                }
            }
        }
        let now = tokio::time::Instant::now();
        let mut shutdown = gw.shutdown_signal();
        // Checked: a token that expires near the end of time must not overflow the clock.
        let expires = now.checked_add(std::time::Duration::from_secs(
            expires_at_s.saturating_sub(crate::auth::unix_now_s()),
        ));
        let keepalive_at = now + gw.keepalive();
        let wake = expires.map_or(keepalive_at, |e| keepalive_at.min(e));
        LeanStream {
            start,
            events: joined.events,
            shutdown: Box::pin(async move {
                // A closed sender (the gateway is gone) counts as stopping too.
                let _ = shutdown.wait_for(|stop| *stop).await;
            }),
            timer: Box::pin(tokio::time::sleep_until(wake)),
            user,
            staff,
            filter,
            expires,
            keepalive_at,
            done: false,
            _guard: guard,
            gw,
            channel,
        }
    }

    /// Writes the stream on `stream`, the front door's way: the response's head and the start
    /// from this task, the events from the channel's fan-out (`fanout.rs`), the keep-alives and
    /// the ending from this task again, until the stream ends, the client leaves or the server
    /// stops (`closed`). The task wakes for an event only when it did not all go out.
    ///
    /// Not an `async fn` (whose parameters would be moved into locals beside the captured
    /// ones): an idle stream's task holds this future for hours.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would hold its parameters twice"
    )]
    pub(crate) fn write_through(
        mut self,
        stream: TcpStream,
        mut closed: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send + 'static {
        async move {
            // The stream's fields are used in place, not moved out into locals: the future keeps
            // `self`'s room either way, and locals would take as much again.
            let outlet = self.gw.outlet(stream);
            // Taken, not appended from: the start's buffer must not stay for the stream's life.
            let start = std::mem::take(&mut self.start);
            let mut head = Vec::with_capacity(RESPONSE_HEAD.len() + start.len());
            head.extend_from_slice(RESPONSE_HEAD);
            head.extend_from_slice(&start);
            drop(start);
            if outlet.push(Out::Owned(head)) == Pushed::Gone {
                return;
            }
            let framer = StreamFramer {
                gw: self.gw.clone(),
                user: self.user,
                staff: self.staff,
                filter: self.filter,
            };
            let channel = self.channel;
            let tap =
                self.gw
                    .fanouts()
                    .follow(&channel, self.events, None, &outlet, Box::new(framer));
            drop(channel);
            // One wait for the server's stop, for the stream's life (made afresh per wake-up,
            // it would join and leave a list every connection shares).
            let stopping = closed.wait_for(|c| *c);
            tokio::pin!(stopping);
            let keepalive = self.gw.keepalive();
            let end = loop {
                if outlet.flush().is_err() {
                    return;
                }
                let writing = outlet.is_queued();
                tokio::select! {
                    // A client sends nothing more on a stream; a read notices it leave (EOF or
                    // reset) while the stream is idle.
                    r = fanout::ready(outlet.stream(), true, writing) => match r {
                        Ok(true) => match outlet.stream().try_read(&mut [0u8; 32]) {
                            Ok(0) => return,
                            Ok(_) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(_) => return,
                        },
                        Ok(false) => {}
                        Err(_) => return,
                    },
                    () = std::future::poll_fn(|cx| outlet.poll_nudged(cx)) => {
                        match outlet.trouble() {
                            None => {}
                            Some(Trouble::Gone) => return,
                            Some(Trouble::Closed) => break None,
                            Some(Trouble::Lagged | Trouble::OverBudget) => break Some(SLOW_CONSUMER),
                        }
                    }
                    () = self.timer.as_mut() => {
                        let now = tokio::time::Instant::now();
                        if self.expires.is_some_and(|e| now >= e) {
                            break Some(TOKEN_EXPIRED);
                        }
                        if outlet.take_sent_event() {
                            // Events went out: the keep-alive waits for a quiet interval.
                            self.keepalive_at = now + keepalive;
                        } else if now >= self.keepalive_at {
                            self.keepalive_at = now + keepalive;
                            match outlet.push(Out::Static(b":\n\n")) {
                                Pushed::Ok => {}
                                Pushed::OverBudget => break Some(SLOW_CONSUMER),
                                Pushed::Gone => return,
                            }
                        }
                        let wake = self.expires.map_or(self.keepalive_at, |e| self.keepalive_at.min(e));
                        self.timer.as_mut().reset(wake);
                    }
                    () = self.shutdown.as_mut() => break Some(SHUTTING_DOWN),
                    _ = &mut stopping => break None,
                }
            };
            // The fan-out writes no more: what follows is the stream's last words.
            match end {
                Some(SLOW_CONSUMER) => outlet.cut(),
                _ => outlet.close(),
            }
            if let Some(code) = end {
                let mut out = Vec::new();
                write_event(&mut out, "error", None, &end_data(code));
                outlet.push(Out::Owned(out));
            }
            outlet.finish(CLOSE_FLUSH_MAX).await;
            drop(tap);
        }
    }

    /// The next bytes of the body; `None` once the stream is over (close the connection).
    /// Cancel-safe: a dropped call loses nothing.
    pub async fn next_chunk(&mut self) -> Option<Chunk> {
        if self.done {
            return None;
        }
        let keepalive = self.gw.keepalive();
        if !self.start.is_empty() {
            self.keepalive_at = tokio::time::Instant::now() + keepalive;
            return Some(Chunk::Owned(std::mem::take(&mut self.start)));
        }
        loop {
            let recv = tokio::select! {
                r = self.events.recv() => r,
                () = self.timer.as_mut() => {
                    let now = tokio::time::Instant::now();
                    if self.expires.is_some_and(|e| now >= e) {
                        return Some(self.end(TOKEN_EXPIRED));
                    }
                    if now < self.keepalive_at {
                        // Events went out since it was set: wait out the rest.
                        self.rearm();
                        continue;
                    }
                    self.keepalive_at = now + keepalive;
                    self.rearm();
                    return Some(Chunk::Owned(b":\n\n".to_vec()));
                }
                () = self.shutdown.as_mut() => return Some(self.end(SHUTTING_DOWN)),
            };
            match recv {
                Ok(e) => {
                    if let Some(frame) = event_frame(&e, &self.user, self.staff, &self.filter) {
                        self.gw.metrics().event_out("sse", e.published_at);
                        // The keep-alive moves with each event; the timer catches up when it
                        // fires (one timer for both the keep-alive and the token's expiry).
                        self.keepalive_at = tokio::time::Instant::now() + keepalive;
                        return Some(Chunk::Shared(frame));
                    }
                }
                Err(RecvError::Lagged(_)) => return Some(self.end(SLOW_CONSUMER)),
                Err(RecvError::Closed) => {
                    self.done = true;
                    return None;
                }
            }
        }
    }

    /// Sets the timer to the next keep-alive or the token's expiry, whichever comes first.
    fn rearm(&mut self) {
        let wake = self
            .expires
            .map_or(self.keepalive_at, |e| self.keepalive_at.min(e));
        self.timer.as_mut().reset(wake);
    }

    /// The ending `error` event; the stream is over after it.
    fn end(&mut self, code: &'static str) -> Chunk {
        self.done = true;
        let mut out = Vec::new();
        write_event(&mut out, "error", None, &end_data(code));
        Chunk::Owned(out)
    }
}

/// Bytes of a stream's body: an event's frame shared by every stream that gets it, or bytes
/// of this stream's own.
#[derive(Debug)]
pub enum Chunk {
    /// A finished event, shared.
    Shared(Arc<[u8]>),
    /// The start, a keep-alive comment or the ending event.
    Owned(Vec<u8>),
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        match self {
            Chunk::Shared(b) => b,
            Chunk::Owned(b) => b,
        }
    }
}

#[cfg(test)]
mod tests {
    /// An idle SSE stream's task holds this future (the idle memory per SSE stream in
    /// BENCHMARKS.md): growing it is a choice to make knowingly, so this test fails first.
    #[test]
    fn an_idle_stream_stays_small() {
        fn returned<A, B, C, F>(_: impl FnOnce(A, B, C) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let task = returned(super::LeanStream::write_through);
        assert!(task <= 848, "a stream's future takes {task} bytes");
    }
}

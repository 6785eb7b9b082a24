//! Server-sent event streams: `/api/stream/sessions/{id}` and
//! `/api/stream/progress/{studentId}` (which a plain browser `EventSource` can follow: each
//! update also goes unnamed, for `onmessage`).
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

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use lectern_hub::{Encoding, JoinStart, Joined, Published};
use lectern_model::{Caller, CohortId, DocId, ResumeToken, SessionId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::Gateway;
use crate::error::AppError;
use crate::limits::ConnSlot;
use crate::rest::{AuthedUntil, parse_id};
use crate::sio::{ConnGuard, Transport};

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

pub(crate) fn last_event_id(headers: &HeaderMap) -> Result<Option<ResumeToken>, AppError> {
    match headers.get("last-event-id").map(|v| v.to_str()) {
        None => Ok(None),
        Some(Ok(s)) if s.trim().is_empty() => Ok(None),
        Some(Ok(s)) => ResumeToken::parse(s).map(Some).map_err(|e| {
            AppError::new(axum::http::StatusCode::BAD_REQUEST, e.code(), e.to_string())
        }),
        Some(Err(_)) => Err(AppError::bad_request("Last-Event-ID is not text")),
    }
}

/// A subscription ready to stream, before it is turned into a response (axum's [`Sse`] or the
/// node's lean writer, [`LeanStream`]).
pub(crate) struct Opened {
    pub(crate) joined: Joined,
    pub(crate) user: String,
    pub(crate) staff: bool,
    pub(crate) filter: Filter,
    /// The stream's connection slot, taken before the join.
    pub(crate) slot: ConnSlot,
    pub(crate) expires_at_s: u64,
}

/// What every document stream does before it streams, in this order: `Last-Event-ID`, a token
/// from the caller's command-rate bucket (opening a stream loads a document, so a client cannot
/// make the node load documents faster than it may send commands), a connection slot, then
/// `snapshot` (a fresh stream's first state in place of the document's view, when it gives
/// one) and the hub's join.
async fn open_doc(
    gw: &Gateway,
    caller: Caller,
    expires_at_s: u64,
    doc: DocId,
    headers: &HeaderMap,
    filter: Filter,
    snapshot: impl AsyncFnOnce(&Caller, &DocId) -> Result<Option<Value>, AppError>,
) -> Result<Opened, AppError> {
    let since = last_event_id(headers)?;
    gw.inner.limiter.command(caller.user.as_str())?;
    let slot = gw.inner.limiter.connect(caller.user.as_str())?;
    let staff = caller.role.is_staff();
    let user = caller.user.to_string();
    let state = snapshot(&caller, &doc).await?;
    let mut joined = gw.inner.hub.join(doc, caller, since).await?;
    if let (JoinStart::Snapshot { state: start, .. }, Some(state)) = (&mut joined.start, state) {
        *start = state;
    }
    Ok(Opened {
        joined,
        user,
        staff,
        filter,
        slot,
        expires_at_s,
    })
}

/// Everything `GET /api/stream/sessions/{id}` does before it streams.
async fn open_session(
    gw: &Gateway,
    caller: Caller,
    expires_at_s: u64,
    id: &str,
    headers: &HeaderMap,
) -> Result<Opened, AppError> {
    let session: SessionId = parse_id(id, "session id")?;
    let doc = DocId::Session(session);
    open_doc(
        gw,
        caller,
        expires_at_s,
        doc,
        headers,
        Filter::All,
        async |_, _| Ok(None),
    )
    .await
}

/// Everything `GET /api/stream/progress/{studentId}` does before it streams.
async fn open_progress(
    gw: &Gateway,
    caller: Caller,
    expires_at_s: u64,
    student: &str,
    q: &ProgressQuery,
    headers: &HeaderMap,
) -> Result<Opened, AppError> {
    let student: UserId = parse_id(student, "student id")?;
    let cohort: CohortId = match q.cohort.as_deref() {
        Some(c) => parse_id(c, "cohort")?,
        None => match caller.cohorts.as_slice() {
            [only] => only.clone(),
            _ => return Err(AppError::bad_request("say which cohort (`?cohort=`)")),
        },
    };
    if !caller.role.is_staff() && caller.user != student {
        return Err(AppError::new(
            axum::http::StatusCode::FORBIDDEN,
            "forbidden",
            "a student may only follow their own progress",
        ));
    }
    let filter = Filter::Progress(student.to_string());
    // The initial state of a progress stream is the student's progress, not the cohort view.
    let progress = async |caller: &Caller, doc: &DocId| {
        let (c, s) = (caller.clone(), student.clone());
        let progress = gw
            .inner
            .hub
            .read(doc.clone(), move |r| r.student_progress(&c, &s))
            .await??;
        Ok(Some(progress))
    };
    let doc = DocId::Cohort(cohort);
    open_doc(gw, caller, expires_at_s, doc, headers, filter, progress).await
}

/// `GET /api/stream/sessions/{id}`.
pub(crate) async fn session_stream(
    State(gw): State<Gateway>,
    AuthedUntil(caller, expires_at_s): AuthedUntil,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let opened = open_session(&gw, caller, expires_at_s, &id, &headers).await?;
    Ok(stream_response(gw, opened))
}

/// Query of the progress stream.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ProgressQuery {
    cohort: Option<String>,
}

/// `GET /api/stream/progress/{studentId}[?cohort=ID]`: a student sees only their own; staff of
/// the cohort see any. The cohort defaults to the caller's only cohort.
pub(crate) async fn progress_stream(
    State(gw): State<Gateway>,
    AuthedUntil(caller, expires_at_s): AuthedUntil,
    Path(student): Path<String>,
    Query(q): Query<ProgressQuery>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let opened = open_progress(&gw, caller, expires_at_s, &student, &q, &headers).await?;
    Ok(stream_response(gw, opened))
}

/// The same stream through axum (a stream request on a kept-alive connection, or a server
/// that is not the node's accept loop): the lean stream's chunks as the response body.
pub(crate) fn stream_response(gw: Gateway, opened: Opened) -> Response {
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

/// A stream route and its raw (still percent-encoded) path segment.
enum StreamRoute<'a> {
    Session(&'a str),
    Progress(&'a str),
    Notifications,
    Leaderboard(&'a str),
    Instructor(&'a str),
}

fn stream_route(path: &str) -> Option<StreamRoute<'_>> {
    let rest = path.strip_prefix("/api/stream/")?;
    if rest == "notifications" {
        return Some(StreamRoute::Notifications);
    }
    let (kind, segment) = rest.split_once('/')?;
    if segment.is_empty() || segment.contains('/') {
        return None;
    }
    match kind {
        "sessions" => Some(StreamRoute::Session(segment)),
        "progress" => Some(StreamRoute::Progress(segment)),
        "leaderboard" => Some(StreamRoute::Leaderboard(segment)),
        "instructor" => Some(StreamRoute::Instructor(segment)),
        _ => None,
    }
}

/// Percent-decodes a path segment, as axum's `Path` does (`+` stays `+`).
fn percent_decode(s: &str) -> Result<String, AppError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let v = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(u8::try_from(v).unwrap_or(0));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| AppError::bad_request("the path is not UTF-8"))
}

impl Gateway {
    /// Opens an SSE stream for a `GET` of `target` (the request target: path and query) with
    /// `headers`, for a server that writes the stream itself instead of through axum (the
    /// node's lean path: no HTTP framework state per idle stream).
    ///
    /// It does exactly what the `/api/stream/…` routes do (auth by header, cookie or query,
    /// `Last-Event-ID`, the rate limit, a connection slot, the join, the filters, the token's
    /// expiry, shutdown, keep-alive comments) and counts a refusal in `/metrics` as the
    /// router does. A target that is no stream route is `404 not_found`, like the router's.
    pub(crate) async fn open_stream(
        &self,
        target: &str,
        headers: &HeaderMap,
    ) -> Result<LeanStream, AppError> {
        let opened = self.open_lean(target, headers).await;
        match opened {
            Ok(opened) => Ok(LeanStream::new(self.clone(), opened)),
            Err(e) => {
                self.count_rejection(e.code);
                self.inner.metrics.connection_failed("sse");
                Err(e)
            }
        }
    }

    async fn open_lean(&self, target: &str, headers: &HeaderMap) -> Result<Opened, AppError> {
        if self.is_draining() {
            return Err(AppError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "this node is draining for maintenance; connect to another",
            ));
        }
        let not_found = || {
            AppError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                "no such route",
            )
        };
        let uri: axum::http::Uri = target.parse().map_err(|_| not_found())?;
        let route = stream_route(uri.path()).ok_or_else(not_found)?;
        let token = self.request_token(headers, uri.query())?;
        let verified = self.verify(token.as_deref())?;
        let (caller, expires_at_s) = (verified.caller, verified.expires_at_s);
        match route {
            StreamRoute::Session(id) => {
                let id = percent_decode(id)?;
                open_session(self, caller, expires_at_s, &id, headers).await
            }
            StreamRoute::Progress(student) => {
                let student = percent_decode(student)?;
                let q = match uri.query() {
                    None => ProgressQuery::default(),
                    Some(_) => {
                        Query::<ProgressQuery>::try_from_uri(&uri)
                            .map_err(|r| AppError::bad_request(r.body_text()))?
                            .0
                    }
                };
                open_progress(self, caller, expires_at_s, &student, &q, headers).await
            }
            StreamRoute::Notifications => {
                crate::notifications::open(self, caller, expires_at_s, headers).await
            }
            StreamRoute::Leaderboard(cohort) => {
                let cohort = percent_decode(cohort)?;
                crate::boards::open_leaderboard(self, caller, expires_at_s, &cohort, headers).await
            }
            StreamRoute::Instructor(cohort) => {
                let cohort = percent_decode(cohort)?;
                crate::boards::open_dashboard(self, caller, expires_at_s, &cohort, headers).await
            }
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
    fn new(gw: Gateway, opened: Opened) -> LeanStream {
        let Opened {
            joined,
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
        let mut shutdown = gw.inner.shutdown.subscribe();
        // Checked: a token that expires near the end of time must not overflow the clock.
        let expires = now.checked_add(std::time::Duration::from_secs(
            expires_at_s.saturating_sub(crate::unix_now_s()),
        ));
        let keepalive_at = now + gw.inner.keepalive;
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
        }
    }

    /// The next bytes of the body; `None` once the stream is over (close the connection).
    /// Cancel-safe: a dropped call loses nothing.
    pub async fn next_chunk(&mut self) -> Option<Chunk> {
        if self.done {
            return None;
        }
        let keepalive = self.gw.inner.keepalive;
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
                        self.gw.inner.metrics.event_out("sse", e.published_at);
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

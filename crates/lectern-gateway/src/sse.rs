//! Server-sent event streams: `/api/stream/sessions/{id}` and the seed's
//! `/api/stream/progress/{studentId}`.
//!
//! Each event's `id:` is its resume token; a client that reconnects with `Last-Event-ID` (the
//! browser's EventSource does it by itself) gets exactly the events it missed, from this node
//! or another. A fresh stream starts with an `event: state` carrying the full view. Keep-alive
//! comments flow every `keepalive_s`. A stream that falls behind is ended with an `error` event
//! naming the reason, and the client resumes from its last id.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use lectern_hub::{JoinStart, Joined, Published};
use lectern_model::{CohortId, DocId, ResumeToken, SessionId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::Gateway;
use crate::error::AppError;
use crate::limits::ConnSlot;
use crate::rest::{AuthedUntil, parse_id};

/// Which events of a document a stream passes on.
#[derive(Clone)]
enum Filter {
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

fn last_event_id(headers: &HeaderMap) -> Result<Option<ResumeToken>, AppError> {
    match headers.get("last-event-id").map(|v| v.to_str()) {
        None => Ok(None),
        Some(Ok(s)) if s.trim().is_empty() => Ok(None),
        Some(Ok(s)) => ResumeToken::parse(s).map(Some).map_err(|e| {
            AppError::new(axum::http::StatusCode::BAD_REQUEST, e.code(), e.to_string())
        }),
        Some(Err(_)) => Err(AppError::bad_request("Last-Event-ID is not text")),
    }
}

/// `GET /api/stream/sessions/{id}`.
pub(crate) async fn session_stream(
    State(gw): State<Gateway>,
    AuthedUntil(caller, expires_at_s): AuthedUntil,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let session: SessionId = parse_id(&id, "session id")?;
    let since = last_event_id(&headers)?;
    // Opening a stream loads a document: it counts against the caller's command rate, so a
    // client cannot make the node load documents faster than it may send commands.
    gw.inner.limiter.command(caller.user.as_str())?;
    let slot = gw.inner.limiter.connect(caller.user.as_str())?;
    let staff = caller.role.is_staff();
    let user = caller.user.to_string();
    let joined = gw
        .inner
        .hub
        .join(DocId::Session(session), caller, since)
        .await?;
    Ok(stream_response(
        gw,
        joined,
        user,
        staff,
        Filter::All,
        slot,
        expires_at_s,
    ))
}

/// Query of the progress stream.
#[derive(Debug, Deserialize)]
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
    let student: UserId = parse_id(&student, "student id")?;
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
    let since = last_event_id(&headers)?;
    gw.inner.limiter.command(caller.user.as_str())?;
    let slot = gw.inner.limiter.connect(caller.user.as_str())?;
    let staff = caller.role.is_staff();
    let user = caller.user.to_string();
    let doc = DocId::Cohort(cohort);
    let c = caller.clone();
    let s = student.clone();
    // The initial state of a progress stream is the student's progress, not the cohort view.
    let progress = gw
        .inner
        .hub
        .read(doc.clone(), move |r| r.student_progress(&c, &s))
        .await?
        .map_err(|r| AppError::from(lectern_hub::HubError::Rejected(r)))?;
    let mut joined = gw.inner.hub.join(doc, caller, since).await?;
    if let JoinStart::Snapshot { state, .. } = &mut joined.start {
        *state = progress;
    }
    Ok(stream_response(
        gw,
        joined,
        user,
        staff,
        Filter::Progress(student.to_string()),
        slot,
        expires_at_s,
    ))
}

/// Counts the stream as a connection while it lives.
struct Guard {
    gw: Gateway,
    _slot: ConnSlot,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.gw.inner.metrics.connection_closed("sse");
    }
}

struct StreamState {
    start: std::vec::IntoIter<Event>,
    events: tokio::sync::broadcast::Receiver<Arc<Published>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    user: String,
    staff: bool,
    filter: Filter,
    /// When the caller's token expires: the stream ends then, saying why.
    expires: tokio::time::Instant,
    done: bool,
    guard: Guard,
}

fn event_of(e: &Published, user: &str, staff: bool, filter: &Filter) -> Option<Event> {
    let payload = e.payload_for(user, staff)?;
    if !filter.keeps(e, payload) {
        return None;
    }
    Some(
        Event::default()
            .event(e.name)
            .id(e.token.clone())
            .data(payload.as_ref()),
    )
}

fn stream_response(
    gw: Gateway,
    joined: Joined,
    user: String,
    staff: bool,
    filter: Filter,
    slot: ConnSlot,
    expires_at_s: u64,
) -> Response {
    gw.inner.metrics.connection_opened("sse");
    let start: Vec<Event> = match &joined.start {
        JoinStart::Snapshot {
            state,
            token,
            resume_refused,
        } => {
            let data = json!({"state": state, "resumeRefused": resume_refused});
            vec![
                Event::default()
                    .event("state")
                    .id(token.to_string())
                    .data(data.to_string()),
            ]
        }
        JoinStart::Replay { events, .. } => events
            .iter()
            .filter_map(|e| event_of(e, &user, staff, &filter))
            .collect(),
    };
    let keepalive = gw.inner.keepalive;
    let state = StreamState {
        start: start.into_iter(),
        events: joined.events,
        shutdown: gw.inner.shutdown.subscribe(),
        user,
        staff,
        filter,
        expires: tokio::time::Instant::now()
            + std::time::Duration::from_secs(expires_at_s.saturating_sub(crate::unix_now_s())),
        done: false,
        guard: Guard { gw, _slot: slot },
    };
    let s = stream::unfold(state, next_event);
    Sse::new(s)
        .keep_alive(KeepAlive::new().interval(keepalive))
        .into_response()
}

async fn next_event(mut st: StreamState) -> Option<(Result<Event, Infallible>, StreamState)> {
    if st.done {
        return None;
    }
    if let Some(e) = st.start.next() {
        return Some((Ok(e), st));
    }
    loop {
        let recv = tokio::select! {
            r = st.events.recv() => r,
            () = tokio::time::sleep_until(st.expires) => {
                st.done = true;
                let data = json!({"code": "token_expired", "message": "your token expired; reconnect with a fresh one and your last event id"});
                return Some((Ok(Event::default().event("error").data(data.to_string())), st));
            }
            _ = st.shutdown.changed() => {
                st.done = true;
                let data = json!({"code": "shutting_down", "message": "this node is shutting down; reconnect (to another node) with your last event id"});
                return Some((Ok(Event::default().event("error").data(data.to_string())), st));
            }
        };
        match recv {
            Ok(e) => {
                if let Some(ev) = event_of(&e, &st.user, st.staff, &st.filter) {
                    st.guard.gw.inner.metrics.event_out("sse");
                    return Some((Ok(ev), st));
                }
            }
            Err(RecvError::Lagged(_)) => {
                st.done = true;
                let data = json!({"code": "slow_consumer", "message": "this stream fell behind; reconnect with your last event id"});
                return Some((
                    Ok(Event::default().event("error").data(data.to_string())),
                    st,
                ));
            }
            Err(RecvError::Closed) => return None,
        }
    }
}

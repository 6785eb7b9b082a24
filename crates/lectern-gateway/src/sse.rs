//! The stream routes: `/api/stream/sessions/{id}` and `/api/stream/progress/{studentId}`
//! (which a plain browser `EventSource` can follow: each update also goes unnamed, for
//! `onmessage`), and the front door's way in to every stream route
//! ([`Gateway::open_stream`]), which reads a stream target the way the router does and opens
//! it through the same [`stream::open`] (the notification and board streams bring their own
//! [`Source`](stream::Source)).

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use lectern_hub::{JoinStart, Joined};
use lectern_model::{Caller, CohortId, DocId, ResumeToken, SessionId, UserId};
use serde::Deserialize;

use crate::Gateway;
use crate::boards::BoardStream;
use crate::error::AppError;
use crate::extract::{AuthedUntil, not_found, parse_id};
use crate::stream::{self, DocStream, Filter, LeanStream, Source};

/// The stream routes of sessions and progress.
pub(crate) fn routes(gw: Gateway) -> Router {
    Router::new()
        .route("/api/stream/sessions/{id}", get(session_stream))
        .route("/api/stream/progress/{student}", get(progress_stream))
        .with_state(gw)
}

/// `GET /api/stream/sessions/{id}`.
async fn session_stream(
    State(gw): State<Gateway>,
    authed: AuthedUntil,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let session = session_source(&id)?;
    stream::respond(gw, authed, &headers, session).await
}

/// The stream of a session (its id as the path gives it).
fn session_source(id: &str) -> Result<DocStream, AppError> {
    let session: SessionId = parse_id(id, "session id")?;
    Ok(DocStream(DocId::Session(session)))
}

/// Query of the progress stream.
#[derive(Debug, Default, Deserialize)]
struct ProgressQuery {
    cohort: Option<String>,
}

/// `GET /api/stream/progress/{studentId}[?cohort=ID]`: a student sees only their own; staff of
/// the cohort see any. The cohort defaults to the caller's only cohort.
async fn progress_stream(
    State(gw): State<Gateway>,
    authed: AuthedUntil,
    Path(student): Path<String>,
    Query(q): Query<ProgressQuery>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let progress = ProgressStream::new(&authed.0, &student, &q)?;
    stream::respond(gw, authed, &headers, progress).await
}

/// A student's progress in a cohort: the cohort's `progress` events of that student, starting
/// from the student's progress (not the cohort view).
struct ProgressStream {
    cohort: CohortId,
    student: UserId,
}

impl ProgressStream {
    /// The progress stream `caller` asks for, or why they may not have it (checked before
    /// anything else: a student may only follow their own).
    fn new(caller: &Caller, student: &str, q: &ProgressQuery) -> Result<Self, AppError> {
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
        Ok(ProgressStream { cohort, student })
    }
}

impl Source for ProgressStream {
    fn channel(&self) -> String {
        DocId::Cohort(self.cohort.clone()).to_string()
    }

    fn filter(&self) -> Filter {
        Filter::Progress(self.student.to_string())
    }

    async fn join(
        self,
        gw: &Gateway,
        caller: Caller,
        since: Option<ResumeToken>,
    ) -> Result<Joined, AppError> {
        let doc = DocId::Cohort(self.cohort);
        let (c, s) = (caller.clone(), self.student);
        let progress = gw
            .hub()
            .read(doc.clone(), move |r| r.student_progress(&c, &s))
            .await??;
        let mut joined = gw.hub().join(doc, caller, since).await?;
        if let JoinStart::Snapshot { state, .. } = &mut joined.start {
            *state = progress;
        }
        Ok(joined)
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
                self.metrics().connection_failed("sse");
                Err(e)
            }
        }
    }

    async fn open_lean(
        &self,
        target: &str,
        headers: &HeaderMap,
    ) -> Result<stream::Opened, AppError> {
        if self.is_draining() {
            return Err(AppError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "this node is draining for maintenance; connect to another",
            ));
        }
        let uri: axum::http::Uri = target.parse().map_err(|_| not_found())?;
        let route = stream_route(uri.path()).ok_or_else(not_found)?;
        let token = self.request_token(headers, uri.query())?;
        let verified = self.verify(token.as_deref())?;
        let (caller, expires_at_s) = (verified.caller, verified.expires_at_s);
        match route {
            StreamRoute::Session(id) => {
                let session = session_source(&percent_decode(id)?)?;
                stream::open(self, caller, expires_at_s, headers, session).await
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
                let progress = ProgressStream::new(&caller, &student, &q)?;
                stream::open(self, caller, expires_at_s, headers, progress).await
            }
            StreamRoute::Notifications => {
                let inbox = crate::notifications::inbox_stream(&caller);
                stream::open(self, caller, expires_at_s, headers, inbox).await
            }
            StreamRoute::Leaderboard(cohort) => {
                let board = BoardStream::leaderboard(&percent_decode(cohort)?)?;
                stream::open(self, caller, expires_at_s, headers, board).await
            }
            StreamRoute::Instructor(cohort) => {
                let board = BoardStream::dashboard(&percent_decode(cohort)?)?;
                stream::open(self, caller, expires_at_s, headers, board).await
            }
        }
    }
}

//! Plain HTTP: a POST for every command, GETs for the views, the long-poll events route,
//! `/readyz` and `/metrics`. Callers and bodies come from the shared extractors of
//! `extract.rs`; the routes are merged with the others and given the shared middleware in
//! `router.rs`.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lectern_hub::JoinStart;
use lectern_model::{
    Caller, CohortId, Command, CommandBody, DocId, Listing, ResumeToken, SessionId, UserId,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Gateway;
use crate::error::AppError;
use crate::extract::{Authed, RawBody, json_object, not_found, parse_id};
use crate::metrics;
use crate::run::new_command_id;
use crate::sio::{ConnGuard, Transport};

/// The REST routes of the gateway (the shared middleware and the Socket.IO layer are added by
/// `router.rs`).
pub(crate) fn routes(gw: Gateway) -> Router {
    Router::new()
        .route("/", get(crate::page::index))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/sessions/{id}", get(session_view))
        .route("/api/sessions/{id}/commands", post(session_command))
        .route(
            "/api/sessions/{id}/commands/{name}",
            post(session_named_command),
        )
        .route("/api/sessions/{id}/events", get(long_poll))
        .route("/api/sessions/{id}/older/{listing}", get(session_page))
        .route("/api/cohorts/{id}", get(cohort_view))
        .route("/api/cohorts/{id}/commands", post(cohort_command))
        .route("/api/cohorts/{id}/aggregates", get(cohort_aggregates))
        .route(
            "/api/cohorts/{id}/progress/{student}",
            get(student_progress),
        )
        .route("/api/progress", post(progress))
        .fallback(async || not_found())
        .with_state(gw)
}

async fn readyz(State(gw): State<Gateway>) -> Response {
    if gw.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else if gw.is_draining() {
        // A load balancer stops sending clients here (`lectern drain`).
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn metrics(State(gw): State<Gateway>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        gw.metrics_text(),
    )
        .into_response()
}

/// A session command's body: a JSON object `{id?, cmd, …fields}`, its `cmd` set to `name` when
/// the route names it (`POST /api/sessions/{id}/{name}`).
pub(crate) fn command_body(
    body: &axum::body::Bytes,
    name: Option<&str>,
) -> Result<Command, AppError> {
    let mut v = json_object(body)?;
    if let Some(name) = name {
        v["cmd"] = json!(name);
    }
    command_from(v)
}

/// A command from a JSON object `{id?, cmd, …fields}` (`id` generated when absent).
fn command_from(mut v: Value) -> Result<Command, AppError> {
    if v.get("id").is_none_or(Value::is_null) {
        v["id"] = json!(new_command_id().as_str());
    }
    serde_json::from_value(v).map_err(|e| {
        AppError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_command",
            format!("not a valid command: {e}"),
        )
    })
}

async fn execute(
    gw: &Gateway,
    caller: &Caller,
    doc: DocId,
    cmd: Command,
) -> Result<Response, AppError> {
    if matches!(
        cmd.body,
        CommandBody::AttendanceJoin | CommandBody::AttendanceLeave
    ) {
        // Attendance is what the gateway sees of a user's connections; a client saying it
        // joined would let one student inflate visits (and the session's quota) at will.
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            "gateway_only",
            "attendance is recorded by the node when you connect and join, not sent",
        ));
    }
    if matches!(
        cmd.body,
        CommandBody::JoinCodeCreate { .. } | CommandBody::JoinCodeRedeem { .. }
    ) {
        // A code's stored key is made by the node with the cluster's key, and a redemption
        // writes who let whom in: only the join-code routes (`join.rs`), which check the
        // classroom policy and make both, may send them.
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            "gateway_only",
            "join codes are made with POST /api/sessions/{id}/join-codes and redeemed with POST /api/join",
        ));
    }
    let ack = gw.run(caller, doc, Some(cmd.id), cmd.body).await?;
    Ok(Json(ack).into_response())
}

async fn session_command(
    State(gw): State<Gateway>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, AppError> {
    let session: SessionId = parse_id(&id, "session id")?;
    let cmd = command_body(&body, None)?;
    execute(&gw, &caller, DocId::Session(session), cmd).await
}

async fn session_named_command(
    State(gw): State<Gateway>,
    Authed(caller): Authed,
    Path((id, name)): Path<(String, String)>,
    RawBody(body): RawBody,
) -> Result<Response, AppError> {
    let session: SessionId = parse_id(&id, "session id")?;
    let cmd = command_body(&body, Some(&name))?;
    execute(&gw, &caller, DocId::Session(session), cmd).await
}

async fn cohort_command(
    State(gw): State<Gateway>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, AppError> {
    let cohort: CohortId = parse_id(&id, "cohort id")?;
    let cmd = command_from(json_object(&body)?)?;
    // The course a cohort follows lives in its own document, which the cohort's model cannot
    // see: a link to a course this node does not store is refused here.
    if let lectern_model::CommandBody::CohortCourse { course } = &cmd.body
        && gw.hub().doc_heads(&DocId::Course(course.clone())).is_none()
    {
        return Err(AppError::new(
            StatusCode::NOT_FOUND,
            "doc_not_found",
            "no such course",
        ));
    }
    execute(&gw, &caller, DocId::Cohort(cohort), cmd).await
}

/// `POST /api/progress {cohort, student, lesson, status?, score?, maxScore?, id?}`.
async fn progress(
    State(gw): State<Gateway>,
    Authed(caller): Authed,
    RawBody(body): RawBody,
) -> Result<Response, AppError> {
    let v = json_object(&body)?;
    let field = |k: &str| v.get(k).and_then(Value::as_str);
    let cohort = match field("cohort") {
        Some(c) => parse_id::<CohortId>(c, "cohort")?,
        None => match caller.cohorts.as_slice() {
            [only] => only.clone(),
            _ => return Err(AppError::bad_request("say which cohort (`cohort`)")),
        },
    };
    let mut cmd = json!({
        "cmd": "progress.update",
        "student": v.get("student").cloned().unwrap_or_else(|| json!(caller.user.as_str())),
        "lesson": v.get("lesson").cloned().unwrap_or(Value::Null),
        "status": v.get("status").cloned().unwrap_or(Value::Null),
        "score": v.get("score").cloned().unwrap_or(Value::Null),
        "max_score": v.get("maxScore").or_else(|| v.get("max_score")).cloned().unwrap_or(Value::Null),
    });
    if let Some(id) = v.get("id") {
        cmd["id"] = id.clone();
    }
    execute(&gw, &caller, DocId::Cohort(cohort), command_from(cmd)?).await
}

/// Reads a view; a read loads a document, so it counts against the caller's command rate.
async fn read_view(
    gw: &Gateway,
    user: &str,
    doc: DocId,
    f: impl FnOnce(&lectern_model::Replica) -> Result<Value, lectern_model::Rejection> + Send + 'static,
) -> Result<Response, AppError> {
    gw.take_command_token(user)?;
    let view = gw.hub().read(doc, f).await?;
    let view = view?;
    Ok(Json(view).into_response())
}

async fn session_view(
    State(gw): State<Gateway>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let session: SessionId = parse_id(&id, "session id")?;
    let now = lectern_hub::system_now();
    read_view(
        &gw,
        &caller.user.to_string(),
        DocId::Session(session),
        move |r| {
            let mut v = r.session_view(&caller, now)?;
            v["token"] = json!(r.token().to_string());
            Ok(v)
        },
    )
    .await
}

/// Query of the session page route: `before=AT:ID` (the oldest item the client holds),
/// `limit` (default and most: a page, see `lectern_model::limits::PAGE_ITEMS_MAX`).
#[derive(Debug, Deserialize)]
pub(crate) struct PageQuery {
    before: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/sessions/{id}/older/{questions|chat|broadcasts}`: the items the session view left
/// out (it holds the newest only, and says how many older ones there are), a page at a time.
async fn session_page(
    State(gw): State<Gateway>,
    Authed(caller): Authed,
    Path((id, listing)): Path<(String, String)>,
    Query(q): Query<PageQuery>,
) -> Result<Response, AppError> {
    let session: SessionId = parse_id(&id, "session id")?;
    let listing = match listing.as_str() {
        "questions" => Listing::Questions,
        "chat" => Listing::Chat,
        "broadcasts" => Listing::Broadcasts,
        _ => {
            return Err(AppError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such list: questions, chat or broadcasts",
            ));
        }
    };
    let before = match q.before {
        None => None,
        Some(b) => {
            let parsed = b
                .split_once(':')
                .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id.to_owned())));
            Some(parsed.ok_or_else(|| AppError::bad_request("before is AT:ID"))?)
        }
    };
    let limit = q.limit.unwrap_or(lectern_model::limits::PAGE_ITEMS_MAX);
    read_view(
        &gw,
        &caller.user.to_string(),
        DocId::Session(session),
        move |r| {
            let before = before.as_ref().map(|(at, id)| (*at, id.as_str()));
            r.session_page(&caller, listing, before, limit)
        },
    )
    .await
}

async fn cohort_view(
    State(gw): State<Gateway>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let cohort: CohortId = parse_id(&id, "cohort id")?;
    read_view(
        &gw,
        &caller.user.to_string(),
        DocId::Cohort(cohort),
        move |r| r.cohort_view(&caller),
    )
    .await
}

async fn cohort_aggregates(
    State(gw): State<Gateway>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let cohort: CohortId = parse_id(&id, "cohort id")?;
    read_view(
        &gw,
        &caller.user.to_string(),
        DocId::Cohort(cohort),
        move |r| r.cohort_aggregates(&caller),
    )
    .await
}

async fn student_progress(
    State(gw): State<Gateway>,
    Authed(caller): Authed,
    Path((id, student)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let cohort: CohortId = parse_id(&id, "cohort id")?;
    let student: UserId = parse_id(&student, "student id")?;
    read_view(
        &gw,
        &caller.user.to_string(),
        DocId::Cohort(cohort),
        move |r| r.student_progress(&caller, &student),
    )
    .await
}

/// Query of the long-poll route.
#[derive(Debug, Deserialize)]
pub(crate) struct PollQuery {
    since: Option<String>,
    wait: Option<u64>,
}

/// Longest a long-poll request waits for an event, in seconds.
const LONG_POLL_WAIT_MAX_S: u64 = 30;

/// `GET /api/sessions/{id}/events?since=TOKEN&wait=25`: the events after `since`, waiting up to
/// `wait` seconds for the first one; without `since` (or with a token this node cannot resume
/// from) the state.
async fn long_poll(
    State(gw): State<Gateway>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    Query(q): Query<PollQuery>,
) -> Result<Response, AppError> {
    let session: SessionId = parse_id(&id, "session id")?;
    let since = q
        .since
        .as_deref()
        .map(ResumeToken::parse)
        .transpose()
        .inspect_err(|_| {
            gw.metrics()
                .resume(Transport::LongPoll.label(), Some(metrics::BAD_TOKEN));
        })?;
    let staff = caller.role.is_staff();
    let user = caller.user.to_string();
    gw.take_command_token(&user)?;
    let resuming = since.is_some();
    let mut joined = gw
        .hub()
        .join(DocId::Session(session), caller, since)
        .await?;
    if resuming {
        gw.metrics()
            .resume_start(Transport::LongPoll.label(), &joined.start);
    }
    let (mut events, mut token) = match joined.start {
        JoinStart::Snapshot {
            state,
            token,
            resume_refused,
        } => {
            return Ok(Json(json!({"state": state, "token": token.to_string(), "resumeRefused": resume_refused})).into_response());
        }
        JoinStart::Replay { events, token } => (events, token.to_string()),
    };
    if events.is_empty() {
        // A held request is a connection like any other: it counts against the caps and
        // shows in `/metrics` while it waits (it is subscribed by now).
        // Counted as a `longpoll` connection until it is answered.
        let _held = ConnGuard::open(&gw, &user, Transport::LongPoll)?;
        let wait = Duration::from_secs(q.wait.unwrap_or(25).min(LONG_POLL_WAIT_MAX_S));
        if let Ok(Ok(e)) = tokio::time::timeout(wait, joined.events.recv()).await {
            events.push(e);
            while let Ok(e) = joined.events.try_recv() {
                events.push(e);
            }
        }
    }
    let out: Vec<Value> = events
        .iter()
        .filter_map(|e| {
            token.replace_range(.., &e.token);
            let p: Value = serde_json::from_str(e.payload_for(&user, staff)?).ok()?;
            Some(json!({"event": e.name, "data": p, "token": &*e.token}))
        })
        .collect();
    Ok(Json(json!({"events": out, "token": token})).into_response())
}

//! Notifications over HTTP: the caller's inbox (`GET /api/notifications`, mark read, preferences),
//! its SSE stream (`GET /api/stream/notifications`, with the unread count in every event, resumed
//! by `Last-Event-ID` like every stream), and the signed unsubscribe endpoint that emails link to
//! (`/api/notifications/unsubscribe`: a GET shows a button, the RFC 8058 one-click POST acts).
//!
//! The inbox is the caller's own `inbox/{user}` document, so all of this is the hub's ordinary
//! commands, reads and joins; authorization (only the owner) is the model's.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use lectern_model::{Caller, Channel, CommandBody, CommandId, DocId, NotifyKind, Role};
use serde::Deserialize;

use crate::Gateway;
use crate::error::AppError;
use crate::extract::{Authed, AuthedUntil, RawBody, parse_id, typed_body};
use crate::run::new_command_id;
use crate::stream::{self, DocStream};

/// The notification routes. `unsubscribe_key` verifies unsubscribe links (the jobs sign them).
pub(crate) fn routes(gw: Gateway, unsubscribe_key: Arc<[u8]>) -> Router {
    let page_key = unsubscribe_key.clone();
    Router::new()
        .route("/api/notifications", get(list))
        .route("/api/notifications/read", post(mark_read))
        .route(
            "/api/notifications/preferences",
            get(preferences).put(set_preferences).post(set_preferences),
        )
        .route(
            "/api/notifications/unsubscribe",
            get(move |q: Query<UnsubscribeQuery>| unsubscribe_page(page_key.clone(), q)).post(
                move |gw: State<Gateway>, q: Query<UnsubscribeQuery>| {
                    unsubscribe(gw, unsubscribe_key.clone(), q)
                },
            ),
        )
        .route("/api/stream/notifications", get(stream))
        .with_state(gw)
}

fn inbox_of(caller: &Caller) -> DocId {
    DocId::Inbox(caller.user.clone())
}

/// `GET /api/notifications`: the newest notifications, the unread count and the preferences.
async fn list(State(gw): State<Gateway>, Authed(caller): Authed) -> Result<Response, AppError> {
    gw.take_command_token(caller.user.as_str())?;
    let doc = inbox_of(&caller);
    let view = gw.hub().read(doc, move |r| r.inbox_view(&caller)).await??;
    Ok(axum::Json(view).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadBody {
    /// Ids to mark read; absent or empty: all.
    #[serde(default)]
    ids: Vec<CommandId>,
    /// Idempotency id of the command.
    #[serde(default)]
    id: Option<CommandId>,
}

/// `POST /api/notifications/read` `{ids?: [..]}`: marks notifications read (all without ids).
async fn mark_read(
    State(gw): State<Gateway>,
    Authed(caller): Authed,
    RawBody(body): RawBody,
) -> Result<Response, AppError> {
    let body: ReadBody = typed_body(&body)?;
    let doc = inbox_of(&caller);
    let ack = gw
        .run(
            &caller,
            doc,
            body.id,
            CommandBody::InboxRead {
                notifications: body.ids,
            },
        )
        .await?;
    Ok(axum::Json(ack).into_response())
}

/// `GET /api/notifications/preferences`.
async fn preferences(
    State(gw): State<Gateway>,
    Authed(caller): Authed,
) -> Result<Response, AppError> {
    gw.take_command_token(caller.user.as_str())?;
    let prefs = gw
        .hub()
        .read(inbox_of(&caller), |r| r.inbox_prefs().to_json())
        .await?;
    Ok(axum::Json(prefs).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrefsBody {
    #[serde(default)]
    kinds: BTreeMap<NotifyKind, Channel>,
    #[serde(default)]
    digest: Option<bool>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    id: Option<CommandId>,
}

/// `PUT /api/notifications/preferences` `{kinds?: {grade: "email"|"in_app"|"off", …},
/// digest?, email?}`.
async fn set_preferences(
    State(gw): State<Gateway>,
    Authed(caller): Authed,
    RawBody(body): RawBody,
) -> Result<Response, AppError> {
    let body: PrefsBody = typed_body(&body)?;
    let ack = gw
        .run(
            &caller,
            inbox_of(&caller),
            body.id,
            CommandBody::InboxPrefs {
                kinds: body.kinds,
                digest: body.digest,
                email: body.email,
            },
        )
        .await?;
    Ok(axum::Json(ack).into_response())
}

/// The query of an unsubscribe link.
#[derive(Debug, Deserialize)]
pub(crate) struct UnsubscribeQuery {
    u: String,
    k: String,
    s: String,
}

/// The kinds an unsubscribe link names, if its signature holds.
fn checked(key: &[u8], q: &UnsubscribeQuery) -> Result<Vec<NotifyKind>, AppError> {
    if !lectern_jobs::unsubscribe::verify(key, &q.u, &q.k, &q.s) {
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            "bad_signature",
            "this unsubscribe link is not valid",
        ));
    }
    if q.k == lectern_jobs::unsubscribe::ALL_KINDS {
        return Ok(NotifyKind::ALL.to_vec());
    }
    NotifyKind::parse(&q.k)
        .map(|k| vec![k])
        .ok_or_else(|| AppError::bad_request(format!("unknown notification kind {:?}", q.k)))
}

/// `GET` of an unsubscribe link: a page with a button, since mail scanners fetch links and
/// must not unsubscribe anyone (RFC 8058 §3.2 keeps the action on POST).
async fn unsubscribe_page(
    key: Arc<[u8]>,
    Query(q): Query<UnsubscribeQuery>,
) -> Result<Response, AppError> {
    checked(&key, &q)?;
    let what = if q.k == lectern_jobs::unsubscribe::ALL_KINDS {
        "all Lectern emails".to_owned()
    } else {
        format!("Lectern emails about {}", q.k.replace('_', " "))
    };
    let page = format!(
        "<!doctype html><meta charset=utf-8><title>Unsubscribe</title>\
         <form method=post><p>Stop {what}? You keep seeing them in the app.</p>\
         <button type=submit>Unsubscribe</button></form>"
    );
    Ok(Html(page).into_response())
}

/// `POST` of an unsubscribe link (RFC 8058 one-click, or the page's button): the named kinds
/// go to in-app only.
async fn unsubscribe(
    State(gw): State<Gateway>,
    key: Arc<[u8]>,
    Query(q): Query<UnsubscribeQuery>,
) -> Result<Response, AppError> {
    let kinds = checked(&key, &q)?;
    let user = parse_id(&q.u, "user")?;
    let system = Caller {
        // Invariant: a fixed, valid id.
        user: "lectern-unsubscribe".parse().expect("a valid user id"),
        name: "Lectern".to_owned(),
        role: Role::Admin,
        cohorts: Vec::new(),
    };
    // The target user's own bucket (user ids have no ':'): clicking one's own link many times
    // cannot spend the tokens of anyone else's.
    gw.take_command_token(&format!("unsubscribe:{user}"))?;
    let inbox = DocId::Inbox(user);
    // Already in-app only: nothing to write (a repeated click changes nothing).
    let prefs = gw.hub().read(inbox.clone(), |r| r.inbox_prefs()).await;
    let done = prefs.is_ok_and(|p| kinds.iter().all(|k| p.channel(*k) == Channel::InApp));
    if !done {
        let body = CommandBody::InboxPrefs {
            kinds: kinds.into_iter().map(|k| (k, Channel::InApp)).collect(),
            digest: None,
            email: None,
        };
        gw.run_charged(&system, inbox, Some(new_command_id()), body)
            .await?;
    }
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "You are unsubscribed from these emails.\n",
    )
        .into_response())
}

/// The caller's inbox as a stream: the inbox (`state`), then `notification` (with `unread`),
/// `notifications:read` and `notifications:prefs` events.
pub(crate) fn inbox_stream(caller: &Caller) -> DocStream {
    DocStream(inbox_of(caller))
}

/// `GET /api/stream/notifications`: see [`inbox_stream`].
async fn stream(
    State(gw): State<Gateway>,
    authed: AuthedUntil,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let inbox = inbox_stream(&authed.0);
    stream::respond(gw, authed, &headers, inbox).await
}

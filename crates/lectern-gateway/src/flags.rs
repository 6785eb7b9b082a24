//! `GET /api/flags[?cohort=ID]`: the feature flags in force for the caller, so that the page
//! hides what an operator switched off (chat, polls, leaderboard, email, copilot).
//!
//! The answer is each feature's effective value (`{"chat": false, "polls": true, …}`) for the
//! cohort named, which the caller must belong to (otherwise, or without a cohort, the global
//! values): it never lists which other cohorts have flags. It is read from the hub's cached
//! flags (the `flags/cluster` document as last made durable here), so it costs no document
//! read. The commands of a switched-off feature are refused by the hub itself on every
//! transport (`feature_disabled`, 403); hiding is the page's courtesy, not the guard.

use axum::extract::{Query, State};
use axum::http::header::CACHE_CONTROL;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use lectern_model::CohortId;
use serde::Deserialize;

use crate::Gateway;
use crate::error::AppError;
use crate::extract::{Authed, parse_id};

/// The flags route.
pub(crate) fn routes(gw: Gateway) -> Router {
    Router::new().route("/api/flags", get(flags)).with_state(gw)
}

#[derive(Deserialize)]
struct FlagsQuery {
    cohort: Option<String>,
}

async fn flags(
    State(gw): State<Gateway>,
    Authed(caller): Authed,
    Query(q): Query<FlagsQuery>,
) -> Result<Response, AppError> {
    let cohort: Option<CohortId> = q
        .cohort
        .as_deref()
        .map(|c| parse_id(c, "cohort id"))
        .transpose()?
        .filter(|c| caller.is_member(c));
    let body = gw.hub().flags().effective(cohort.as_ref());
    Ok(([(CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

//! A classroom node's uplink as its staff see it (`GET /api/classroom`): offline since when,
//! syncing, or in sync, so the instructor page can say it during a class.
//!
//! The gateway knows no mesh: the node hands it a source of [`UplinkReport`]s
//! ([`Gateway::set_uplink`]) built from its mesh's status, and this route reads one per request
//! (no document is read). The operator's `/admin/status` says the same and more; this route is
//! for the cohort's staff (a TA, an instructor, an admin of one of the cohorts the node serves),
//! with their own token. Any other node answers 404 `not_classroom`, which hides the page's
//! panel.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CACHE_CONTROL;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::Gateway;
use crate::error::AppError;
use crate::extract::Authed;

/// Where a classroom node stands with its upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UplinkState {
    /// The uplink is down: the class runs on this node alone.
    Offline,
    /// The uplink is up and documents still wait to go up (a catch-up after an outage).
    Syncing,
    /// The uplink is up and nothing waits.
    InSync,
}

/// A classroom node's uplink now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UplinkReport {
    /// The upstream region node's name.
    pub upstream: String,
    /// The cohorts this node serves.
    pub cohorts: Vec<String>,
    /// Offline, syncing or in sync.
    pub state: UplinkState,
    /// When the uplink went down, seconds since the Unix epoch (offline only).
    pub offline_since: Option<u64>,
    /// For how long it has been down, in seconds (offline only).
    pub offline_s: Option<u64>,
    /// Documents waiting to go up to the upstream.
    pub waiting_docs: usize,
}

/// What the node gives the gateway: the report now, or `None` when this is no classroom node.
pub type UplinkSource = Arc<dyn Fn() -> Option<UplinkReport> + Send + Sync>;

/// The route.
pub(crate) fn routes(gw: Gateway) -> Router {
    Router::new()
        .route("/api/classroom", get(classroom))
        .with_state(gw)
}

/// `GET /api/classroom` (staff of a cohort the node serves): the [`UplinkReport`].
async fn classroom(
    State(gw): State<Gateway>,
    Authed(caller): Authed,
) -> Result<Response, AppError> {
    let Some(report) = gw.uplink_report() else {
        return Err(AppError::new(
            StatusCode::NOT_FOUND,
            "not_classroom",
            "this node is not a classroom node",
        ));
    };
    let staff = caller.role.is_staff()
        && report
            .cohorts
            .iter()
            .filter_map(|c| c.parse().ok())
            .any(|c| caller.is_staff_of(&c));
    if !staff {
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the classroom's uplink is for its cohorts' staff",
        ));
    }
    Ok(([(CACHE_CONTROL, "no-store")], Json(report)).into_response())
}

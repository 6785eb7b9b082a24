//! The node's admin API and the mesh's share policy: the two places where the node looks at the
//! hub and the mesh together.
//!
//! `GET /admin/status` (node id, name, region, uptime, documents, peers), `GET /admin/peers`
//! (peers only), `GET /admin/heads?doc=ID` (a document's heads digest, to compare replicas) and
//! the job queue (`GET /admin/jobs[?state=queued|dead|all&limit=N]`, `GET
//! /admin/jobs/show?id=ID`, `POST /admin/jobs/retry?id=ID`, `POST /admin/jobs/drop?id=ID`)
//! the stored documents (`GET /admin/docs[?prefix=&after=&limit=&heads_only=]`, a page at a time, and
//! `GET /admin/docs/show?doc=ID`, `POST /admin/docs/compact?doc=ID`) and the drain (`POST /admin/drain`, `POST /admin/undrain`:
//! `{draining, connections}`) and the feature flags (`GET /admin/flags`, `POST
//! /admin/flags/set?feature=F&enabled=true|false[&cohort=C]`, `POST
//! /admin/flags/unset?feature=F[&cohort=C]`: `{flags: {global, cohorts}}`, the flags in force
//! on this node once the change is durable here; the mesh carries it to the others; a node
//! restricted to some cohorts answers 403 `flags_read_only`)
//! answer only a `Authorization: Bearer {admin_token}`; without a configured token they answer
//! 404, so an unconfigured node exposes nothing. `lectern status`, `lectern peers` and `lectern
//! jobs`, `lectern docs`, `lectern drain` and `lectern undrain` call them. Errors are `{error: {code, message}}` with a stable code.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use lectern_gateway::Gateway;
use lectern_hub::Hub;
use lectern_jobs::{JOBS_LIST_MAX, JobControl, JobFilter, JobView, JobsError};
use lectern_mesh::{Mesh, ShareFilter};
use lectern_model::{
    Caller, CohortId, Command, CommandBody, DocId, Feature, Role, SessionId, UserId,
};
use serde_json::{Value, json};

use crate::config::ClassroomSettings;
use tokio::sync::watch;

/// The admin routes.
pub(crate) fn routes(parts: AdminParts) -> Router {
    let state = Arc::new(AdminState {
        parts,
        started: Instant::now(),
    });
    let s = state.clone();
    let heads = move |headers: HeaderMap, Query(q): Query<HeadsQuery>| {
        let state = s.clone();
        async move { state.guarded(&headers, |s| s.heads(&q.doc)) }
    };
    let s = state.clone();
    let status = move |headers: HeaderMap| {
        let state = s.clone();
        async move { state.guarded(&headers, |s| s.status()) }
    };
    let s = state.clone();
    let docs_list = move |headers: HeaderMap, Query(q): Query<DocsQuery>| {
        let state = s.clone();
        async move {
            if let Some(refused) = state.refusal(&headers) {
                return refused;
            }
            state.docs_list(q).await
        }
    };
    let s = state.clone();
    let docs_show = move |headers: HeaderMap, Query(q): Query<HeadsQuery>| {
        let state = s.clone();
        async move {
            if let Some(refused) = state.refusal(&headers) {
                return refused;
            }
            state.docs_show(&q.doc).await
        }
    };
    let s = state.clone();
    let docs_compact = move |headers: HeaderMap, Query(q): Query<HeadsQuery>| {
        let state = s.clone();
        async move {
            if let Some(refused) = state.refusal(&headers) {
                return refused;
            }
            state.docs_compact(&q.doc).await
        }
    };
    let s = state.clone();
    let backup = move |headers: HeaderMap| {
        let state = s.clone();
        async move {
            if let Some(refused) = state.refusal(&headers) {
                return refused;
            }
            state.backup()
        }
    };
    let s = state.clone();
    let drain = move |headers: HeaderMap| {
        let state = s.clone();
        async move {
            if let Some(refused) = state.refusal(&headers) {
                return refused;
            }
            state.gateway.drain().await;
            Json(state.drain_state()).into_response()
        }
    };
    let s = state.clone();
    let undrain = move |headers: HeaderMap| {
        let state = s.clone();
        async move {
            state.guarded(&headers, |s| {
                s.gateway.undrain();
                s.drain_state()
            })
        }
    };
    let s = state.clone();
    let peers = move |headers: HeaderMap| {
        let state = s.clone();
        async move { state.guarded(&headers, |s| json!({"peers": s.peers()})) }
    };
    let s = state.clone();
    let jobs_list = move |headers: HeaderMap, Query(q): Query<JobsQuery>| {
        let state = s.clone();
        async move {
            if let Some(refused) = state.refusal(&headers) {
                return refused;
            }
            state.jobs_list(q).await
        }
    };
    let s = state.clone();
    let jobs_show = move |headers: HeaderMap, Query(q): Query<JobQuery>| {
        let state = s.clone();
        async move {
            if let Some(refused) = state.refusal(&headers) {
                return refused;
            }
            match state.jobs.show(&q.id).await {
                Ok(view) => Json(json!({"job": job_json(&view, true)})).into_response(),
                Err(e) => jobs_error(&e),
            }
        }
    };
    let s = state.clone();
    let jobs_retry = move |headers: HeaderMap, Query(q): Query<JobQuery>| {
        let state = s.clone();
        async move {
            if let Some(refused) = state.refusal(&headers) {
                return refused;
            }
            match state.jobs.retry(&q.id).await {
                Ok(view) => Json(json!({"job": job_json(&view, false)})).into_response(),
                Err(e) => jobs_error(&e),
            }
        }
    };
    let s = state.clone();
    let flags_list = move |headers: HeaderMap| {
        let state = s.clone();
        async move { state.guarded(&headers, |s| json!({"flags": s.hub.flags().to_json()})) }
    };
    let s = state.clone();
    let flags_set = move |headers: HeaderMap, Query(q): Query<FlagQuery>| {
        let state = s.clone();
        async move {
            if let Some(refused) = state.refusal(&headers) {
                return refused;
            }
            state.flag_change(q, true).await
        }
    };
    let s = state.clone();
    let flags_unset = move |headers: HeaderMap, Query(q): Query<FlagQuery>| {
        let state = s.clone();
        async move {
            if let Some(refused) = state.refusal(&headers) {
                return refused;
            }
            state.flag_change(q, false).await
        }
    };
    let s = state.clone();
    let error_test = move |headers: HeaderMap, Query(q): Query<ErrorTestQuery>| {
        let state = s.clone();
        async move {
            if let Some(refused) = state.refusal(&headers) {
                return refused;
            }
            error_tracking_test(q).await
        }
    };
    let jobs_drop = move |headers: HeaderMap, Query(q): Query<JobQuery>| {
        let state = state.clone();
        async move {
            if let Some(refused) = state.refusal(&headers) {
                return refused;
            }
            match state.jobs.drop_job(&q.id).await {
                Ok(view) => Json(json!({"dropped": job_json(&view, false)})).into_response(),
                Err(e) => jobs_error(&e),
            }
        }
    };
    Router::new()
        .route("/admin/heads", get(heads))
        .route("/admin/status", get(status))
        .route("/admin/peers", get(peers))
        .route("/admin/docs", get(docs_list))
        .route("/admin/docs/show", get(docs_show))
        .route("/admin/docs/compact", post(docs_compact))
        .route("/admin/backup", get(backup))
        .route("/admin/drain", post(drain))
        .route("/admin/undrain", post(undrain))
        .route("/admin/jobs", get(jobs_list))
        .route("/admin/jobs/show", get(jobs_show))
        .route("/admin/jobs/retry", post(jobs_retry))
        .route("/admin/jobs/drop", post(jobs_drop))
        .route("/admin/flags", get(flags_list))
        .route("/admin/flags/set", post(flags_set))
        .route("/admin/flags/unset", post(flags_unset))
        .route("/admin/error-tracking/test", post(error_test))
}

/// `?kind=error|panic&note=` of `/admin/error-tracking/test`.
#[derive(serde::Deserialize)]
struct ErrorTestQuery {
    kind: Option<String>,
    /// Words to carry in the event (at most [`ERROR_TEST_NOTE_MAX_CHARS`]), to find it again.
    note: Option<String>,
}

/// The longest note a test event carries, in characters.
const ERROR_TEST_NOTE_MAX_CHARS: usize = 200;

/// `POST /admin/error-tracking/test`: an error-level event (`kind=error`, the default) or a
/// panic in a task of its own (`kind=panic`; tokio catches it, the node goes on), so that an
/// operator can check the DSN after a deploy. `{"enabled": bool}`: whether error tracking is on.
async fn error_tracking_test(q: ErrorTestQuery) -> Response {
    let note: String = q
        .note
        .unwrap_or_default()
        .chars()
        .take(ERROR_TEST_NOTE_MAX_CHARS)
        .collect();
    let enabled = sentry::Hub::current().client().is_some();
    match q.kind.as_deref() {
        None | Some("error") => {
            tracing::error!(note = %note, "error tracking test: an operator asked for this event ({note})");
        }
        Some("panic") => {
            let task = tokio::spawn(async move {
                panic!("error tracking test: a node task panicked on purpose ({note})");
            });
            // Joined so the answer comes after the panic was reported; its error is the panic.
            let _ = task.await;
        }
        Some(other) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_input",
                &format!("kind {other:?}: error or panic"),
            );
        }
    }
    if let Some(client) = sentry::Hub::current().client() {
        client.flush(Some(std::time::Duration::from_secs(2)));
    }
    Json(json!({"enabled": enabled})).into_response()
}

/// `?feature=&cohort=&enabled=` of `/admin/flags/{set,unset}`.
#[derive(serde::Deserialize)]
struct FlagQuery {
    feature: String,
    cohort: Option<String>,
    /// Only for `set`.
    enabled: Option<bool>,
}

/// Tells apart the command ids of flag changes made within one millisecond on one node.
static FLAG_CHANGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `?doc=` of `/admin/heads`.
#[derive(serde::Deserialize)]
struct HeadsQuery {
    doc: String,
}

/// Documents `/admin/docs` lists at most, whatever `limit` asks.
const DOCS_LIST_MAX: usize = 1_000;

/// `?prefix=&after=&limit=&heads_only=` of `/admin/docs`.
#[derive(serde::Deserialize)]
struct DocsQuery {
    /// Only ids starting with this (`session/`, `cohort/`, `inbox/`, `course/`).
    prefix: Option<String>,
    /// Only ids after this one (the previous page's last).
    after: Option<String>,
    limit: Option<usize>,
    /// Each document's id and heads only, without reading its bytes from the store: a cheap
    /// page for comparing the nodes of a cluster.
    #[serde(default)]
    heads_only: bool,
}

/// `?state=&limit=` of `/admin/jobs`.
#[derive(serde::Deserialize)]
struct JobsQuery {
    state: Option<String>,
    limit: Option<usize>,
}

/// `?id=` of `/admin/jobs/{show,retry,drop}`.
#[derive(serde::Deserialize)]
struct JobQuery {
    id: String,
}

/// What the admin API reads and acts on.
pub(crate) struct AdminParts {
    pub(crate) hub: Hub,
    pub(crate) gateway: Gateway,
    /// The mesh, when configured.
    pub(crate) mesh: Option<Arc<Mesh>>,
    /// The content blobs, for what `status` says this node holds.
    pub(crate) content: Arc<lectern_content::BlobStore>,
    pub(crate) jobs: JobControl,
    /// The admin token; `None`: no admin API.
    pub(crate) token: Option<String>,
    /// A classroom node's settings.
    pub(crate) classroom: Option<ClassroomSettings>,
    /// False on a node restricted to some cohorts (`mesh.share_cohorts`, a classroom node):
    /// it takes the cluster's flags from its region, whose mesh holds it read-only for them.
    pub(crate) flags_writable: bool,
}

struct AdminState {
    parts: AdminParts,
    started: Instant,
}

impl std::ops::Deref for AdminState {
    type Target = AdminParts;

    fn deref(&self) -> &AdminParts {
        &self.parts
    }
}

impl AdminState {
    /// The answer to a request without the admin token; `None` for one with it.
    fn refusal(&self, headers: &HeaderMap) -> Option<Response> {
        let Some(expected) = &self.token else {
            return Some(error(
                StatusCode::NOT_FOUND,
                "not_found",
                "the admin API is not configured (set admin_token)",
            ));
        };
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            return Some(error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid admin token is required",
            ));
        }
        None
    }

    fn guarded(&self, headers: &HeaderMap, f: impl FnOnce(&AdminState) -> Value) -> Response {
        match self.refusal(headers) {
            None => Json(f(self)).into_response(),
            Some(refused) => refused,
        }
    }

    async fn jobs_list(&self, q: JobsQuery) -> Response {
        let filter = match q.state.as_deref() {
            None | Some("all") => JobFilter::All,
            Some("queued") => JobFilter::Queued,
            Some("dead") => JobFilter::Dead,
            Some(_) => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_state",
                    "state must be queued, dead or all",
                );
            }
        };
        let limit = q.limit.unwrap_or(JOBS_LIST_MAX).min(JOBS_LIST_MAX);
        match self.jobs.list(filter, limit).await {
            Ok(listing) => Json(json!({
                "counts": {
                    "queued": listing.queued,
                    "parked": listing.parked,
                    "running": listing.running,
                    "dead": listing.dead,
                },
                "jobs": listing.jobs.iter().map(|j| job_json(j, false)).collect::<Vec<_>>(),
            }))
            .into_response(),
            Err(e) => jobs_error(&e),
        }
    }

    fn status(&self) -> Value {
        let id = self.hub.identity();
        let mesh = self.mesh.as_ref().map(|m| m.status());
        json!({
            "nodeId": id.node_id.to_string(),
            "bootEpoch": id.boot_epoch,
            "name": mesh.as_ref().map(|m| m.name.clone()),
            "region": mesh.as_ref().map(|m| m.region.clone()),
            "quic": mesh.as_ref().map(|m| m.listen.clone()),
            "uptimeS": self.started.elapsed().as_secs(),
            "documents": self.hub.heads_summary().len(),
            "docsLoaded": self.hub.loaded_docs(),
            "peerFaults": mesh.as_ref().map(|m| m.peer_faults),
            "draining": self.gateway.is_draining(),
            "connections": self.gateway.connections(),
            "classroom": self.classroom_status(mesh.as_ref()),
            "content": self.content_status(),
            "peers": self.peers(),
        })
    }

    /// The content blobs the stored courses name and how many are here (with peers, the node
    /// brings the rest), and how many came from peers since start.
    fn content_status(&self) -> Value {
        let (wanted, held) = self.content.wanted_held();
        let stats = self.content.stats();
        json!({
            "courseBlobs": wanted,
            "held": held,
            "pulled": stats.pulled,
            "pullFailures": stats.pull_failures,
        })
    }

    /// A classroom node's uplink: its upstream, its cohorts, whether the link is up (and for
    /// how long it has been down), what waits to go up. `null` on other nodes.
    fn classroom_status(&self, mesh: Option<&lectern_mesh::MeshStatus>) -> Value {
        let Some(c) = &self.classroom else {
            return Value::Null;
        };
        let upstream = c.upstream.clone().unwrap_or_default();
        let name = upstream.split('@').next().unwrap_or_default();
        let peer = mesh.and_then(|m| m.peers.iter().find(|p| p.name == name));
        json!({
            "upstream": upstream,
            "cohorts": c.cohorts,
            "uplink": if peer.is_some_and(|p| p.state == "connected") { "up" } else { "down" },
            "offlineS": peer.and_then(|p| p.offline_s),
            "lagDocs": peer.map(|p| p.lag_docs),
            "lastError": peer.and_then(|p| p.last_error.clone()),
        })
    }

    /// What `/admin/drain` and `/admin/undrain` answer: whether the node drains and how many
    /// client connections it still holds.
    fn drain_state(&self) -> Value {
        json!({
            "draining": self.gateway.is_draining(),
            "connections": self.gateway.connections(),
        })
    }

    /// A stored document's sizes as `/admin/docs` lists them: snapshot and chunk bytes (a chunk
    /// per commit since the last compaction) and its heads digest. `None` if not stored.
    fn doc_entry(&self, doc: &str) -> Result<Option<Value>, lectern_store::StoreError> {
        let stored = self.hub.store().load_doc(doc)?;
        Ok(stored.map(|d| {
            json!({
                "doc": doc,
                "bytes": d.snapshot_bytes + d.chunk_bytes,
                "snapshotBytes": d.snapshot_bytes,
                "chunks": d.chunks.len(),
                "chunkBytes": d.chunk_bytes,
                "heads": self.heads(doc)["heads"],
            })
        }))
    }

    /// `/admin/docs`: a page of stored documents, by id.
    async fn docs_list(&self, q: DocsQuery) -> Response {
        let limit = q.limit.unwrap_or(100).min(DOCS_LIST_MAX);
        let ids = match self.hub.store().doc_ids() {
            Ok(ids) => ids,
            Err(e) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store_failed",
                    &e.to_string(),
                );
            }
        };
        let total = ids.len();
        let mut docs = Vec::new();
        let mut more = false;
        for id in ids
            .into_iter()
            .filter(|id| q.prefix.as_deref().is_none_or(|p| id.starts_with(p)))
            .filter(|id| q.after.as_deref().is_none_or(|a| id.as_str() > a))
        {
            if docs.len() == limit {
                more = true;
                break;
            }
            if q.heads_only {
                docs.push(self.heads(&id));
                continue;
            }
            match self.doc_entry(&id) {
                Ok(Some(entry)) => docs.push(entry),
                Ok(None) => {}
                Err(e) => return store_failed(&e),
            }
        }
        Json(json!({"total": total, "docs": docs, "more": more})).into_response()
    }

    /// `/admin/docs/show`: one document's sizes, heads and history length (it is loaded to
    /// count its changes), and where it is replicated: each peer this node has synced it
    /// with, whether the heads both last had in common are this node's heads now (`inSync`),
    /// and whether that peer is connected.
    async fn docs_show(&self, doc: &str) -> Response {
        let entry = match self.doc_entry(doc) {
            Ok(Some(entry)) => entry,
            Ok(None) => return doc_not_found(doc),
            Err(e) => return store_failed(&e),
        };
        let Ok(id) = DocId::parse(doc) else {
            return doc_not_found(doc);
        };
        let read = self
            .hub
            .read(id, |r| (r.change_count(), r.doc().get_heads()))
            .await;
        let (changes, heads) = match read {
            Ok((n, heads)) => (json!(n), Some(heads)),
            Err(e) => (json!({"error": e.to_string()}), None),
        };
        let states = match self.hub.store().sync_states_of(doc) {
            Ok(states) => states,
            Err(e) => return store_failed(&e),
        };
        let connected = self
            .mesh
            .as_ref()
            .map(|m| m.connected_peers())
            .unwrap_or_default();
        let replicated: Vec<serde_json::Value> = states
            .iter()
            .map(|(peer, bytes)| {
                let shared = lectern_model::automerge::sync::State::decode(bytes)
                    .ok()
                    .map(|s| s.shared_heads);
                let in_sync = match (&shared, &heads) {
                    (Some(shared), Some(heads)) => {
                        let mut a = shared.clone();
                        let mut b = heads.clone();
                        a.sort();
                        b.sort();
                        json!(a == b)
                    }
                    _ => serde_json::Value::Null,
                };
                // The state is kept under the peer's certificate name and node id.
                let name = peer.split('#').next().unwrap_or(peer);
                json!({
                    "peer": peer,
                    "inSync": in_sync,
                    "connected": connected.iter().any(|c| c == name),
                })
            })
            .collect();
        let mut entry = entry;
        entry["changes"] = changes;
        entry["replicated"] = json!(replicated);
        Json(json!({"doc": entry})).into_response()
    }

    /// `/admin/backup`: every stored document, read through its writer while the node serves,
    /// streamed as the lines of a backup (`crate::backup`).
    fn backup(&self) -> Response {
        let (tx, rx) = tokio::sync::mpsc::channel::<String>(BACKUP_LINES_IN_FLIGHT);
        let hub = self.hub.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::backup::write(&hub, tx).await {
                tracing::warn!(error = format!("{e:#}"), "a backup failed");
            }
        });
        let lines = futures_util::stream::unfold(rx, |mut rx| async move {
            let line = rx.recv().await?;
            Some((Ok::<_, std::convert::Infallible>(line), rx))
        });
        Response::builder()
            .header(axum::http::header::CONTENT_TYPE, "application/x-ndjson")
            .body(axum::body::Body::from_stream(lines))
            .unwrap_or_else(|_| {
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "backup_failed",
                    "no body",
                )
            })
    }

    /// `/admin/docs/compact`: the document rewritten as one snapshot now (its chunks folded
    /// in), after the commands queued before; its stored bytes before and after.
    async fn docs_compact(&self, doc: &str) -> Response {
        let Ok(id) = DocId::parse(doc) else {
            return doc_not_found(doc);
        };
        match self.hub.compact(id).await {
            Ok(c) => Json(json!({
                "doc": doc,
                "bytesBefore": c.bytes_before,
                "bytesAfter": c.bytes_after,
            }))
            .into_response(),
            Err(e) if e.code() == "doc_not_found" => doc_not_found(doc),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.code(), &e.to_string()),
        }
    }

    /// Sets (`set`) or unsets a flag as a `flag.set` / `flag.unset` command on the flags
    /// document, acknowledged once durable here (and so in force here).
    async fn flag_change(&self, q: FlagQuery, set: bool) -> Response {
        if !self.flags_writable {
            // The region would not take the change (a scoped peer's writes to the flags are
            // refused there), so the flag would hold on this node alone, against the cluster.
            return error(
                StatusCode::FORBIDDEN,
                "flags_read_only",
                "this node serves only some cohorts (a classroom node): it takes the cluster's \
                 feature flags from its region and cannot set them; run the command against a \
                 region node",
            );
        }
        let Some(feature) = Feature::parse(&q.feature) else {
            let names: Vec<&str> = Feature::ALL.iter().map(|f| f.as_str()).collect();
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_feature",
                &format!(
                    "no feature {:?}; the features are {}",
                    q.feature,
                    names.join(", ")
                ),
            );
        };
        let cohort = match q.cohort.as_deref().map(str::parse::<CohortId>).transpose() {
            Ok(c) => c,
            Err(e) => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_cohort",
                    &format!("the cohort id is not valid: {e}"),
                );
            }
        };
        let body = match (set, q.enabled) {
            (true, Some(enabled)) => CommandBody::FlagSet {
                feature,
                cohort,
                enabled,
            },
            (true, None) => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_input",
                    "set needs enabled=true or enabled=false",
                );
            }
            (false, _) => CommandBody::FlagUnset { feature, cohort },
        };
        let n = FLAG_CHANGES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!(
            "flag-{}-{}-{n}",
            lectern_hub::system_now().0,
            // The node id's first half and the boot epoch: unique enough per process, and
            // the id stays within ID_LEN_MAX_BYTES (64).
            {
                let actor = self.hub.identity().actor_bytes();
                actor[..8]
                    .iter()
                    .chain(&actor[16..])
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            }
        );
        let Ok(id) = id.parse() else {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "could not make a command id",
            );
        };
        let operator = Caller {
            user: match "operator".parse() {
                Ok(u) => u,
                Err(_) => {
                    return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "bad user id");
                }
            },
            name: "operator".into(),
            role: Role::Admin,
            cohorts: Vec::new(),
        };
        match self
            .hub
            .execute(DocId::Flags, operator, Command { id, body })
            .await
        {
            Ok(_) => Json(json!({"flags": self.hub.flags().to_json()})).into_response(),
            // Unsetting before anything was ever set: nothing to forget.
            Err(e) if !set && e.is_not_found() => {
                Json(json!({"flags": self.hub.flags().to_json()})).into_response()
            }
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.code(), &e.to_string()),
        }
    }

    fn heads(&self, doc: &str) -> Value {
        let digest = DocId::parse(doc)
            .ok()
            .and_then(|d| self.hub.doc_heads(&d))
            .map(|h| h.iter().map(|b| format!("{b:02x}")).collect::<String>());
        json!({"doc": doc, "heads": digest})
    }

    fn peers(&self) -> Value {
        match &self.mesh {
            Some(mesh) => serde_json::to_value(mesh.status().peers).unwrap_or(Value::Null),
            None => json!([]),
        }
    }
}

/// Backup lines (one document each) read ahead of the client.
const BACKUP_LINES_IN_FLIGHT: usize = 16;

/// 500 `store_failed`: the store could not be read.
fn store_failed(e: &lectern_store::StoreError) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "store_failed",
        &e.to_string(),
    )
}

/// 404 `doc_not_found` (the CLI's exit code 5; `not_found` means the admin API is off).
fn doc_not_found(doc: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "doc_not_found",
        &format!("no document {doc} on this node"),
    )
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// A job as the admin API shows it; `full` adds the whole stored record (what `lectern jobs
/// show` prints). Listings carry the title but never the notification's body.
fn job_json(view: &JobView, full: bool) -> Value {
    let mut v = json!({"id": view.id, "state": view.state.as_str()});
    match &view.record {
        Ok(r) => {
            let n = r.notification();
            v["kind"] = json!(r.kind());
            v["attempts"] = json!(r.attempts);
            v["runAtMs"] = json!(r.run_at_ms);
            v["lastError"] = json!(r.last_error);
            v["parkedSinceMs"] = json!(r.parked_since_ms);
            v["user"] = json!(r.user().map(|u| u.to_string()));
            v["notification"] = json!({
                "id": n.id.to_string(),
                "kind": n.kind.as_str(),
                "title": n.title,
            });
            if full {
                v["record"] = serde_json::to_value(r).unwrap_or(Value::Null);
            }
        }
        Err(reason) => v["unreadable"] = json!(reason),
    }
    v
}

/// The answer to a refused job request.
fn jobs_error(e: &JobsError) -> Response {
    let status = match e {
        JobsError::NotFound(_) => StatusCode::NOT_FOUND,
        JobsError::Running(_) => StatusCode::CONFLICT,
        JobsError::BadId(_) => StatusCode::UNPROCESSABLE_ENTITY,
        JobsError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        JobsError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(error = %e, "an admin job request failed");
    }
    error(status, e.code(), &e.to_string())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The share policy of a node restricted to `cohorts`: the cluster's flags document
/// (`flags/cluster`), their cohort documents, the session
/// documents their cohort documents list, the course each follows (whose blobs the node then
/// prefetches), and the inboxes of their rosters' members (so a
/// notification made on either side reaches its owner on the other), refreshed whenever one of
/// the cohorts changes; the receiver ticks after each refresh, so the mesh can run
/// anti-entropy for newly admitted documents. A member's inbox holds every notification of
/// theirs, from other cohorts too: the node serves that member, so it may hold what they see.
pub(crate) fn share_filter(hub: &Hub, cohorts: &[String]) -> (ShareFilter, watch::Receiver<u64>) {
    let cohort_docs: HashSet<String> = cohorts.iter().map(|c| format!("cohort/{c}")).collect();
    let sessions: Arc<RwLock<HashSet<String>>> = Arc::new(RwLock::new(HashSet::new()));
    let ids: Vec<CohortId> = cohorts.iter().filter_map(|c| c.parse().ok()).collect();
    let (ticks, rx) = watch::channel(0u64);
    tokio::spawn(refresh_sessions(hub.clone(), ids, sessions.clone(), ticks));
    // The cluster's flags go everywhere, so that a feature switched off is off on a classroom
    // node too (its cohort flags included: they live in the same document).
    let flags_doc = DocId::Flags.to_string();
    let filter: ShareFilter = Arc::new(move |doc: &str| {
        doc == flags_doc
            || cohort_docs.contains(doc)
            || sessions.read().map(|s| s.contains(doc)).unwrap_or(false)
    });
    (filter, rx)
}

/// Keeps `sessions` equal to the session documents listed by `cohorts`' documents, the
/// courses they follow and the inboxes of their members.
async fn refresh_sessions(
    hub: Hub,
    cohorts: Vec<CohortId>,
    sessions: Arc<RwLock<HashSet<String>>>,
    ticks: watch::Sender<u64>,
) {
    let mut changes = hub.changes();
    let reader = Caller {
        user: match "mesh".parse() {
            Ok(u) => u,
            Err(_) => return,
        },
        name: "mesh".into(),
        role: Role::Admin,
        cohorts: cohorts.clone(),
    };
    loop {
        let mut found = HashSet::new();
        for cohort in &cohorts {
            let reader = reader.clone();
            let view = hub
                .read(DocId::Cohort(cohort.clone()), move |r| {
                    r.cohort_view(&reader)
                })
                .await;
            if let Ok(Ok(view)) = &view
                && let Some(list) = view["sessions"].as_array()
            {
                for s in list {
                    let Some(id) = s["id"].as_str() else {
                        continue;
                    };
                    let Ok(session) = id.parse::<SessionId>() else {
                        continue;
                    };
                    // Only a session of this cohort is shared, whatever the cohort document
                    // links: a link to another cohort's session must not widen what a
                    // classroom node receives. A session this node does not hold yet is
                    // listed so that the mesh can bring it (it cannot arrive otherwise); once
                    // here, the next refresh drops it if it names another cohort.
                    let owner = hub
                        .read(DocId::Session(session), |r| r.session_cohort())
                        .await;
                    let keep = match &owner {
                        Ok(Some(o)) => o == cohort,
                        Ok(None) => false,
                        Err(_) => true,
                    };
                    if keep {
                        found.insert(format!("session/{id}"));
                    }
                }
            }
            // The course the cohort follows: its outline, hence the blobs its lessons need.
            if let Ok(Ok(view)) = &view
                && let Some(course) = view["courseId"].as_str()
                && let Ok(course) = course.parse()
            {
                found.insert(DocId::Course(course).to_string());
            }
            if let Ok(Ok(view)) = &view
                && let Some(roster) = view["roster"].as_array()
            {
                let members = roster.iter().filter_map(|m| m["user"].as_str());
                for user in members.filter_map(|u| u.parse::<UserId>().ok()) {
                    found.insert(DocId::Inbox(user).to_string());
                }
            }
        }
        let grew = match sessions.write() {
            Ok(mut s) => {
                let grew = !found.is_subset(&s);
                *s = found;
                grew
            }
            Err(_) => false,
        };
        if grew {
            ticks.send_modify(|t| *t += 1);
        }
        // Wait for a change of one of the cohorts (or a lag, which may hide one). Once nobody
        // listens to the ticks (the mesh stopped), end, letting go of the hub: its change feed
        // never closes while this task holds it.
        loop {
            let received = tokio::select! {
                received = changes.recv() => received,
                () = ticks.closed() => return,
            };
            match received {
                Ok(change) => {
                    if matches!(&change.doc, DocId::Cohort(c) if cohorts.contains(c)) {
                        break;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

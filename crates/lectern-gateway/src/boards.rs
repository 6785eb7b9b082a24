//! Live boards over SSE: a cohort's leaderboard (`/api/stream/leaderboard/{cohortId}`, any
//! member) and the instructor dashboard (`/api/stream/instructor/{cohortId}`, staff).
//!
//! A board is a computed snapshot, not a document's event log, so it is pushed by a ticker: one
//! task per (board, cohort) while anyone watches, waking every `leaderboard_interval_ms` (30 s)
//! or `dashboard_interval_ms` (5 s). It recomputes only when a watched document changed since the
//! last tick (the hub's change feed: the cohort, and for the dashboard the cohort's sessions; the
//! dashboard also on every tick, since "inactive for N days" moves with the clock) and publishes
//! only when the result differs. So a board updates at most once per interval, and only when it
//! changed.
//!
//! Every board carries `publishedAt` (ms since the Unix epoch): the scheduled time of the tick
//! that published it, or for a board computed when its ticker started, the time it was computed;
//! it holds every change made before then ("data as of"). Ticks are scheduled at least an
//! interval apart (a late tick pushes the next one back, never closer), and the stamps come from
//! the monotonic clock (the ticker's start on the wall clock plus the tick's offset from it), so
//! two updates' `publishedAt` differ by at least the interval, however late either was sent or
//! read.
//!
//! Every snapshot's event id is a hash of its content, `publishedAt` left out. A client that
//! reconnects with `Last-Event-ID` equal to the current hash gets nothing until the next change;
//! with any other id, the current board. Streams open and run as every SSE stream does
//! (`stream.rs`: keep-alive, token expiry, shutdown, slow consumers); the first event is
//! `state`, then `leaderboard` or `dashboard` events. Staff see full names on the leaderboard;
//! students see "Anonymous" for classmates who opted out (`leaderboard.privacy`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use lectern_hub::{JoinStart, Joined, Published};
use lectern_model::automerge::ChangeHash;
use lectern_model::{Audience, Caller, CohortId, DocId, ResumeToken, Role, SessionId};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

use crate::Gateway;
use crate::error::AppError;
use crate::extract::{Authed, AuthedUntil, parse_id};
use crate::stream::{self, Source};
use crate::sync::lock;

/// Events buffered per board for slow subscribers (a board changes at most every few seconds).
const BOARD_CHANNEL_CAPACITY: usize = 16;

/// How often boards update, and what the dashboard counts.
#[derive(Debug, Clone)]
pub struct BoardSettings {
    /// The leaderboard updates at most this often. Default 30,000 ms.
    pub leaderboard_interval_ms: u64,
    /// The dashboard updates at most this often. Default 5,000 ms.
    pub dashboard_interval_ms: u64,
    /// A student with no progress and no session visit for this long is inactive. Default 7.
    pub inactive_days: u64,
    /// The dashboard reads this many of the cohort's newest sessions. Default 20.
    pub dashboard_sessions_max: usize,
}

impl Default for BoardSettings {
    fn default() -> Self {
        BoardSettings {
            leaderboard_interval_ms: 30_000,
            dashboard_interval_ms: 5_000,
            inactive_days: 7,
            dashboard_sessions_max: 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Board {
    Leaderboard,
    Dashboard,
}

impl Board {
    fn event(self) -> &'static str {
        match self {
            Board::Leaderboard => "leaderboard",
            Board::Dashboard => "dashboard",
        }
    }
}

/// One computed board: its id (a content hash), the staff version and the students' version.
#[derive(Clone)]
struct Snapshot {
    token: ResumeToken,
    full: Value,
    public: Value,
    /// Documents whose change makes the board stale.
    watched: HashSet<DocId>,
}

/// The payload field with a board's publication time (see the module docs).
const PUBLISHED_AT: &str = "publishedAt";

impl Snapshot {
    /// The snapshot with `publishedAt` set in both versions (the token, a hash of the content,
    /// stays as it is).
    fn stamped(mut self, published_at_ms: u64) -> Snapshot {
        for v in [&mut self.full, &mut self.public] {
            if let Value::Object(map) = v {
                map.insert(PUBLISHED_AT.to_owned(), json!(published_at_ms));
            }
        }
        self
    }
}

struct Ticker {
    tx: broadcast::Sender<Arc<Published>>,
    /// The latest snapshot; subscribing and publishing happen under this lock, so a subscriber
    /// gets either the old snapshot and the new event, or the new snapshot alone.
    latest: Arc<Mutex<Snapshot>>,
}

/// The running tickers of a gateway.
#[derive(Default)]
pub(crate) struct Boards {
    tickers: Mutex<HashMap<(Board, CohortId), Ticker>>,
}

/// The board routes.
pub(crate) fn routes(gw: Gateway) -> Router {
    Router::new()
        .route("/api/stream/leaderboard/{cohort}", get(leaderboard_stream))
        .route("/api/stream/instructor/{cohort}", get(dashboard_stream))
        .route("/api/cohorts/{cohort}/leaderboard/me", get(leaderboard_me))
        .with_state(gw)
}

/// `GET /api/cohorts/{cohort}/leaderboard/me`: the caller's own place on the cohort's current
/// leaderboard (the one its stream last published): `{rank, of, score, maxScore,
/// completedLessons, anonymous, publishedAt}`, `rank` null when the caller is not on it. A
/// student who opted out is "Anonymous" to everyone on the shared board, themselves included:
/// this is how their page finds their own row and shows their privacy choice.
async fn leaderboard_me(
    State(gw): State<Gateway>,
    Authed(caller): Authed,
    Path(cohort): Path<String>,
) -> Result<Json<Value>, AppError> {
    let cohort: CohortId = parse_id(&cohort, "cohort id")?;
    gw.take_command_token(caller.user.as_str())?;
    authorize_read(&gw, &caller, &cohort).await?;
    let user = caller.user.as_str();
    let key = (Board::Leaderboard, cohort.clone());
    // The published board when its ticker runs (read in place: it may list thousands).
    let running = {
        let tickers = lock(&gw.boards().tickers);
        tickers
            .get(&key)
            .map(|t| place(&cohort, &lock(&t.latest).full, user))
    };
    let mine = match running {
        Some(mine) => mine,
        None => {
            let at = lectern_hub::system_now().0;
            let board = compute(&gw, Board::Leaderboard, &cohort).await?;
            place(&cohort, &board.stamped(at).full, user)
        }
    };
    Ok(Json(mine))
}

/// `user`'s place on the full leaderboard `full` (see [`leaderboard_me`]).
fn place(cohort: &CohortId, full: &Value, user: &str) -> Value {
    let entries = full["entries"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let me = entries.iter().find(|e| e["user"].as_str() == Some(user));
    let field = |k: &str| me.map_or(Value::Null, |e| e[k].clone());
    json!({
        "cohort": cohort.as_str(),
        "of": entries.len(),
        "rank": field("rank"),
        "score": field("score"),
        "maxScore": field("maxScore"),
        "completedLessons": field("completedLessons"),
        "anonymous": me.is_some_and(|e| e["anonymous"] == true),
        PUBLISHED_AT: full[PUBLISHED_AT],
    })
}

/// Refuses `caller` unless they may read `cohort`'s document.
async fn authorize_read(gw: &Gateway, caller: &Caller, cohort: &CohortId) -> Result<(), AppError> {
    let c = caller.clone();
    gw.hub()
        .read(DocId::Cohort(cohort.clone()), move |r| r.authorize_read(&c))
        .await?
        .map_err(AppError::from)
}

async fn leaderboard_stream(
    State(gw): State<Gateway>,
    authed: AuthedUntil,
    Path(cohort): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let board = BoardStream::leaderboard(&cohort)?;
    stream::respond(gw, authed, &headers, board).await
}

async fn dashboard_stream(
    State(gw): State<Gateway>,
    authed: AuthedUntil,
    Path(cohort): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let board = BoardStream::dashboard(&cohort)?;
    stream::respond(gw, authed, &headers, board).await
}

/// A board of a cohort as a stream: its current snapshot (nothing, for a client that has it),
/// then every update its ticker publishes.
pub(crate) struct BoardStream {
    board: Board,
    cohort: CohortId,
}

impl BoardStream {
    /// The leaderboard of `cohort` (its id as the path gives it): `GET
    /// /api/stream/leaderboard/{cohort}`.
    pub(crate) fn leaderboard(cohort: &str) -> Result<Self, AppError> {
        Ok(BoardStream {
            board: Board::Leaderboard,
            cohort: parse_id(cohort, "cohort id")?,
        })
    }

    /// The instructor dashboard of `cohort`: `GET /api/stream/instructor/{cohort}`.
    pub(crate) fn dashboard(cohort: &str) -> Result<Self, AppError> {
        Ok(BoardStream {
            board: Board::Dashboard,
            cohort: parse_id(cohort, "cohort id")?,
        })
    }
}

impl Source for BoardStream {
    /// Members of the cohort may follow its leaderboard; only its staff, its dashboard.
    async fn check(&self, gw: &Gateway, caller: &Caller) -> Result<(), AppError> {
        authorize_read(gw, caller, &self.cohort).await?;
        if self.board == Board::Dashboard && !caller.is_staff_of(&self.cohort) {
            return Err(AppError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "only staff of the cohort see its dashboard",
            ));
        }
        Ok(())
    }

    async fn join(
        self,
        gw: &Gateway,
        caller: Caller,
        since: Option<ResumeToken>,
    ) -> Result<Joined, AppError> {
        let staff = caller.role.is_staff();
        let (events, snapshot) = subscribe(gw, self.board, &self.cohort).await?;
        let start = if since.as_ref() == Some(&snapshot.token) {
            JoinStart::Replay {
                events: Vec::new(),
                token: snapshot.token,
            }
        } else {
            JoinStart::Snapshot {
                state: if staff {
                    snapshot.full
                } else {
                    snapshot.public
                },
                token: snapshot.token,
                resume_refused: None,
            }
        };
        Ok(Joined { start, events })
    }
}

/// A receiver of the board's updates and its current snapshot, starting its ticker if needed.
async fn subscribe(
    gw: &Gateway,
    board: Board,
    cohort: &CohortId,
) -> Result<(broadcast::Receiver<Arc<Published>>, Snapshot), AppError> {
    let key = (board, cohort.clone());
    {
        let tickers = lock(&gw.boards().tickers);
        if let Some(t) = tickers.get(&key) {
            let latest = lock(&t.latest);
            return Ok((t.tx.subscribe(), latest.clone()));
        }
    }
    let at = lectern_hub::system_now().0;
    let computed = compute(gw, board, cohort).await?.stamped(at);
    let mut tickers = lock(&gw.boards().tickers);
    if let Some(t) = tickers.get(&key) {
        // Another subscriber started it meanwhile.
        let latest = lock(&t.latest);
        return Ok((t.tx.subscribe(), latest.clone()));
    }
    let (tx, rx) = broadcast::channel(BOARD_CHANNEL_CAPACITY);
    let latest = Arc::new(Mutex::new(computed.clone()));
    tickers.insert(
        key,
        Ticker {
            tx: tx.clone(),
            latest: latest.clone(),
        },
    );
    tokio::spawn(tick(gw.clone(), board, cohort.clone(), tx, latest));
    Ok((rx, computed))
}

/// The ticker of one board: see the module docs.
async fn tick(
    gw: Gateway,
    board: Board,
    cohort: CohortId,
    tx: broadcast::Sender<Arc<Published>>,
    latest: Arc<Mutex<Snapshot>>,
) {
    let every = Duration::from_millis(
        match board {
            Board::Leaderboard => gw.board_settings().leaderboard_interval_ms,
            Board::Dashboard => gw.board_settings().dashboard_interval_ms,
        }
        .max(1),
    );
    let mut feed = gw.hub().changes();
    let mut shutdown = gw.shutdown_signal();
    // The same moment on both clocks: stamps are `origin_ms` plus a tick's offset from `origin`.
    let origin = tokio::time::Instant::now();
    let origin_ms = lectern_hub::system_now().0;
    let mut interval = tokio::time::interval_at(origin, every);
    // A tick that comes late pushes the next one back: `tick()` returns each tick's scheduled
    // time, and those are at least `every` apart.
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is `origin` itself.
    interval.tick().await;
    let mut dirty = false;
    loop {
        tokio::select! {
            scheduled = interval.tick() => {
                {
                    let mut tickers = lock(&gw.boards().tickers);
                    if tx.receiver_count() == 0 {
                        tickers.remove(&(board, cohort.clone()));
                        return;
                    }
                }
                if !(dirty || board == Board::Dashboard) {
                    continue;
                }
                dirty = false;
                match compute(&gw, board, &cohort).await {
                    Ok(next) => {
                        let mut current = lock(&latest);
                        if next.token != current.token {
                            let offset = scheduled.duration_since(origin).as_millis();
                            let offset = u64::try_from(offset).unwrap_or(u64::MAX);
                            let next = next.stamped(origin_ms.saturating_add(offset));
                            let published = Arc::new(Published::new(
                                DocId::Cohort(cohort.clone()),
                                board.event(),
                                next.token.to_string(),
                                String::new(),
                                vec![
                                    (Audience::Staff, Arc::from(next.full.to_string())),
                                    (Audience::All, Arc::from(next.public.to_string())),
                                ],
                            ));
                            *current = next;
                            let _ = tx.send(published);
                        } else {
                            current.watched = next.watched;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e.message, "a board did not compute"),
                }
            }
            changed = feed.recv() => match changed {
                Ok(change) => dirty |= lock(&latest).watched.contains(&change.doc),
                Err(broadcast::error::RecvError::Lagged(_)) => dirty = true,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// The hash of a board's content, as a resume token.
fn content_token(full: &Value, public: &Value) -> ResumeToken {
    let mut h = Sha256::new();
    h.update(full.to_string().as_bytes());
    h.update(b"\n");
    h.update(public.to_string().as_bytes());
    ResumeToken::from_heads(vec![ChangeHash(h.finalize().into())])
}

/// The gateway reads boards as staff of the cohort would.
fn reader(cohort: &CohortId) -> Caller {
    Caller {
        // Invariant: a fixed, valid id.
        user: "lectern-boards".parse().expect("a valid user id"),
        name: "Lectern".to_owned(),
        role: Role::Admin,
        cohorts: vec![cohort.clone()],
    }
}

async fn compute(gw: &Gateway, board: Board, cohort: &CohortId) -> Result<Snapshot, AppError> {
    let doc = DocId::Cohort(cohort.clone());
    match board {
        Board::Leaderboard => {
            let (full, public) = gw
                .hub()
                .read(doc.clone(), |r| r.leaderboard())
                .await?
                .map_err(AppError::from)?;
            Ok(Snapshot {
                token: content_token(&full, &public),
                full,
                public,
                watched: HashSet::from([doc]),
            })
        }
        Board::Dashboard => dashboard(gw, cohort).await,
    }
}

/// The instructor dashboard of `cohort`, from the cohort and its newest sessions.
async fn dashboard(gw: &Gateway, cohort: &CohortId) -> Result<Snapshot, AppError> {
    let settings = gw.board_settings();
    let doc = DocId::Cohort(cohort.clone());
    let staff = reader(cohort);
    let (aggregates, activity) = gw
        .hub()
        .read(doc.clone(), move |r| {
            Ok::<_, lectern_model::Rejection>((r.cohort_aggregates(&staff)?, r.cohort_activity()?))
        })
        .await?
        .map_err(AppError::from)?;
    let now = lectern_hub::system_now();
    let mut watched = HashSet::from([doc]);
    let mut online: HashSet<String> = HashSet::new();
    let mut last_seen: HashMap<String, i64> = HashMap::new();
    let mut open_questions = 0;
    let mut polls = Vec::new();
    let students = aggregates["students"].as_u64().unwrap_or(0);
    let sessions: Vec<&str> = activity["sessions"]
        .as_array()
        .map(|s| s.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for id in sessions.into_iter().take(settings.dashboard_sessions_max) {
        let Ok(session) = id.parse::<SessionId>() else {
            continue;
        };
        let sdoc = DocId::Session(session);
        watched.insert(sdoc.clone());
        let summary = match gw
            .hub()
            .read(sdoc, move |r| {
                Ok::<_, lectern_model::Rejection>((r.session_cohort(), r.session_summary(now)?))
            })
            .await
        {
            // Only a session of this cohort counts, whatever the cohort document lists (a link
            // made by a peer or an older node may name another cohort's session).
            Ok(Ok((Some(owner), s))) if &owner == cohort => s,
            // A linked session that does not read (not here yet) is left out, not fatal.
            _ => continue,
        };
        for u in summary["present"].as_array().into_iter().flatten() {
            if let Some(u) = u.as_str() {
                online.insert(u.to_owned());
            }
        }
        if let Some(seen) = summary["lastSeen"].as_object() {
            for (u, t) in seen {
                let t = t.as_i64().unwrap_or(0);
                let e = last_seen.entry(u.clone()).or_insert(t);
                *e = (*e).max(t);
            }
        }
        open_questions += summary["openQuestions"].as_u64().unwrap_or(0);
        for p in summary["polls"].as_array().into_iter().flatten() {
            let voters = p["voters"].as_u64().unwrap_or(0);
            let participation = if students == 0 {
                0.0
            } else {
                (voters as f64 * 1000.0 / students as f64).round() / 10.0
            };
            polls.push(json!({
                "session": id, "poll": p["id"], "question": p["question"], "open": p["open"],
                "voters": voters, "participationPct": participation,
            }));
        }
    }
    let inactive_ms = settings.inactive_days.saturating_mul(86_400_000) as i64;
    let cutoff = now.as_i64() - inactive_ms;
    let inactive: Vec<Value> = activity["students"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let user = s["user"].as_str()?;
            let last = [s["lastProgressAt"].as_i64(), last_seen.get(user).copied()]
                .into_iter()
                .flatten()
                .max();
            match last {
                Some(t) if t >= cutoff => None,
                _ => Some(json!({"user": user, "name": s["name"], "lastActiveAt": last})),
            }
        })
        .collect();
    // Online now: the cohort's students; staff (and anyone else present) only as a count.
    let roster: HashSet<&str> = activity["students"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["user"].as_str())
        .collect();
    let (mut online, others): (Vec<String>, Vec<String>) = online
        .into_iter()
        .partition(|u| roster.contains(u.as_str()));
    online.sort();
    let payload = json!({
        "cohort": cohort.as_str(),
        "students": students,
        "online": {"count": online.len(), "users": online, "staff": others.len()},
        "lessons": aggregates["lessons"],
        "completionRate": aggregates["completionRate"],
        "openQuestions": open_questions,
        "polls": polls,
        "inactiveDays": settings.inactive_days,
        "inactive": inactive,
    });
    Ok(Snapshot {
        token: content_token(&payload, &payload),
        full: payload.clone(),
        public: payload,
        watched,
    })
}

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
use lectern_model::{
    Audience, Caller, CohortId, Dashboard, DocId, Feature, Leaderboard, Rejection, ResumeToken,
    Role,
};
use serde::Serialize;
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

/// One computed board: its id (a content hash), the staff version and the students' version
/// as clients receive them (rendered once per computation by the model's typed boards).
#[derive(Clone)]
struct Snapshot {
    token: ResumeToken,
    full: Value,
    public: Value,
    /// The leaderboard itself, where one student finds their place (`None` for a dashboard).
    ranking: Option<Arc<Leaderboard>>,
    /// When it was published (see the module docs); 0 until [`Snapshot::stamped`].
    published_at_ms: u64,
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
            stamp(v, published_at_ms);
        }
        self.published_at_ms = published_at_ms;
        self
    }

    /// `user`'s place on this leaderboard, stamped like the board (see [`leaderboard_me`]).
    fn place(&self, cohort: &CohortId, user: &str) -> Result<Value, AppError> {
        let place = match &self.ranking {
            Some(board) => board.place(user),
            // A dashboard ranks nobody.
            None => Leaderboard::rank(cohort.clone(), Vec::new()).place(user),
        };
        let mut v = wire(&place)?;
        stamp(&mut v, self.published_at_ms);
        Ok(v)
    }
}

/// Adds `publishedAt` to a board's JSON object.
fn stamp(v: &mut Value, published_at_ms: u64) {
    if let Value::Object(map) = v {
        map.insert(PUBLISHED_AT.to_owned(), json!(published_at_ms));
    }
}

/// A typed board as the JSON clients receive.
fn wire(board: &impl Serialize) -> Result<Value, AppError> {
    serde_json::to_value(board).map_err(|e| {
        AppError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("encode a board: {e}"),
        )
    })
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
    gw.hub()
        .flags()
        .check(Feature::Leaderboard, Some(&cohort))?;
    let user = caller.user.as_str();
    let key = (Board::Leaderboard, cohort.clone());
    // The published board when its ticker runs (read in place: it may list thousands).
    let running = {
        let tickers = lock(&gw.boards().tickers);
        tickers
            .get(&key)
            .map(|t| lock(&t.latest).place(&cohort, user))
    };
    let mine = match running {
        Some(mine) => mine?,
        None => {
            let at = lectern_hub::system_now().0;
            let board = compute(&gw, Board::Leaderboard, &cohort).await?;
            board.stamped(at).place(&cohort, user)?
        }
    };
    Ok(Json(mine))
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
    fn channel(&self) -> String {
        format!("{}/{}", self.board.event(), self.cohort)
    }

    /// Members of the cohort may follow its leaderboard; only its staff, its dashboard.
    async fn check(&self, gw: &Gateway, caller: &Caller) -> Result<(), AppError> {
        authorize_read(gw, caller, &self.cohort).await?;
        // A stream already open when the flag goes off keeps running; new ones are refused.
        if self.board == Board::Leaderboard {
            gw.hub()
                .flags()
                .check(Feature::Leaderboard, Some(&self.cohort))?;
        }
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
            let board = gw
                .hub()
                .read(doc.clone(), |r| r.leaderboard())
                .await?
                .map_err(AppError::from)?;
            let full = wire(&board)?;
            let public = wire(&board.public())?;
            Ok(Snapshot {
                token: content_token(&full, &public),
                full,
                public,
                ranking: Some(Arc::new(board)),
                published_at_ms: 0,
                watched: HashSet::from([doc]),
            })
        }
        Board::Dashboard => dashboard(gw, cohort).await,
    }
}

/// The instructor dashboard of `cohort`, from the cohort and its newest sessions: the gateway
/// reads the documents, the model's [`Dashboard::compute`] does the rest.
async fn dashboard(gw: &Gateway, cohort: &CohortId) -> Result<Snapshot, AppError> {
    let settings = gw.board_settings();
    let doc = DocId::Cohort(cohort.clone());
    let staff = reader(cohort);
    let (aggregates, activity) = gw
        .hub()
        .read(doc.clone(), move |r| {
            Ok::<_, Rejection>((r.aggregates(&staff)?, r.cohort_activity()?))
        })
        .await?
        .map_err(AppError::from)?;
    let now = lectern_hub::system_now();
    let mut watched = HashSet::from([doc]);
    let mut sessions = Vec::new();
    for session in activity
        .sessions
        .iter()
        .take(settings.dashboard_sessions_max)
    {
        let sdoc = DocId::Session(session.clone());
        watched.insert(sdoc.clone());
        let read = gw
            .hub()
            .read(sdoc, |r| {
                Ok::<_, Rejection>((r.session_cohort(), r.session_summary()?))
            })
            .await;
        match read {
            // Only a session of this cohort counts, whatever the cohort document lists (a link
            // made by a peer or an older node may name another cohort's session).
            Ok(Ok((Some(owner), s))) if &owner == cohort => sessions.push(s),
            // A linked session that does not read (not here yet) is left out, not fatal.
            _ => continue,
        }
    }
    let board = Dashboard::compute(
        cohort.clone(),
        aggregates,
        &activity,
        &sessions,
        settings.inactive_days,
        now,
    );
    let payload = wire(&board)?;
    Ok(Snapshot {
        token: content_token(&payload, &payload),
        full: payload.clone(),
        public: payload,
        ranking: None,
        published_at_ms: 0,
        watched,
    })
}

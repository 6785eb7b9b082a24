//! A replica of one document: the automerge doc, the command ids it has applied, and the
//! operations the hub performs on it (apply a command, sync with a peer, replay events, read
//! views).
//!
//! Events, for local commands, remote changes and replays alike, come from one function:
//! walk the changes in order keeping the running heads (the resume token after each change),
//! parse each change's envelope, and read the touched item as of that token. The current state
//! is read instead whenever no later change in the walk touches the same item, which is the
//! common case and costs nothing extra; only an item touched several times in one walk is read
//! at historical heads. So a replay from any token yields exactly the events emitted live after
//! it.

use std::collections::{BTreeSet, HashMap, HashSet};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::CommitOptions;
use automerge::{ActorId, Automerge, ChangeHash};
use serde_json::Value;

use crate::Caller;
use crate::apply::apply;
use crate::board::{self, CohortActivity, Leaderboard, SessionSummary};
use crate::command::Command;
use crate::derive::derive;
use crate::envelope::Envelope;
use crate::event::Event;
use crate::ids::{CohortId, CommandId, DocId, Millis, UserId};
use crate::limits::REPLAY_EVENTS_MAX;
use crate::read::Reader;
use crate::reject::{RejectCode, Rejection};
use crate::resume::{ResumeError, ResumeToken};
use crate::schema::genesis;
use crate::view::{self, CohortAggregates, Listing};
use crate::write::{Counts, Target};

/// The result of an applied command.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The event for subscribers (None only if the item no longer reads, which a local command
    /// cannot cause).
    pub event: Option<Event>,
    /// The document's heads after the command.
    pub token: ResumeToken,
}

/// A document that does not load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document does not load: {0}")]
pub struct LoadError(pub String);

/// A sync message that does not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// The bytes are not an automerge sync message.
    #[error("malformed sync message: {0}")]
    Decode(String),
    /// The message decoded but its changes do not apply.
    #[error("sync message does not apply: {0}")]
    Apply(String),
    /// automerge panicked on the message (its change parser unwraps on some malformed
    /// changes). The replica may be half-changed: its owner must drop it and load the document
    /// again from the store.
    #[error("sync message panicked automerge: {0}")]
    Panicked(String),
}

struct ChangeInfo {
    hash: ChangeHash,
    deps: Vec<ChangeHash>,
    envelope: Option<Envelope>,
}

/// One document and its command-id index.
pub struct Replica {
    id: DocId,
    doc: Automerge,
    seen: HashSet<String>,
    /// The command ids that more than one change carries, with how many: a command applied on
    /// two nodes before they met (a client's retry on another node, the first node's ack lost
    /// with it). Its effect merges into one; its event must go out once (`events_for`).
    repeated: HashMap<String, usize>,
    counts: Counts,
    /// The users with an open visit (sessions only): kept as attendance changes arrive, so
    /// that a join's view does not read every visit of a big class (joins run one after
    /// another on the document's task).
    present: HashSet<String>,
}

impl Replica {
    /// A new, empty document (just its genesis change), writing as `actor`.
    pub fn new(id: DocId, actor: &[u8]) -> Replica {
        let mut doc = genesis(id.kind());
        doc.set_actor(ActorId::from(actor));
        Replica {
            id,
            doc,
            seen: HashSet::new(),
            repeated: HashMap::new(),
            counts: Counts::default(),
            present: HashSet::new(),
        }
    }

    /// Loads a saved document (snapshot and chunks concatenated), writing as `actor`.
    pub fn load(id: DocId, bytes: &[u8], actor: &[u8]) -> Result<Replica, LoadError> {
        let mut doc = Automerge::load(bytes).map_err(|e| LoadError(e.to_string()))?;
        // A document saved by us always holds the genesis change; merging it again is a no-op
        // then, and gives a foreign or truncated document the top-level maps it lacks.
        let mut g = genesis(id.kind());
        doc.merge(&mut g).map_err(|e| LoadError(e.to_string()))?;
        doc.set_actor(ActorId::from(actor));
        let present = view::present_users(&Reader::now(&doc));
        let mut replica = Replica {
            id,
            doc,
            seen: HashSet::new(),
            repeated: HashMap::new(),
            counts: Counts::default(),
            present,
        };
        let envelopes: Vec<Envelope> = replica
            .doc
            .get_changes_meta(&[])
            .iter()
            .filter_map(|m| Envelope::parse(m.message.as_deref()))
            .collect();
        for env in envelopes {
            replica.index(env);
        }
        Ok(replica)
    }

    /// The document's id.
    pub fn id(&self) -> &DocId {
        &self.id
    }

    /// The automerge document (read-only).
    pub fn doc(&self) -> &Automerge {
        &self.doc
    }

    /// The current heads as a resume token.
    pub fn token(&self) -> ResumeToken {
        ResumeToken::from_heads(self.doc.get_heads())
    }

    /// Whether a command with this id was applied here (locally or by a replica).
    pub fn has_applied(&self, id: &CommandId) -> bool {
        self.seen.contains(id.as_str())
    }

    /// Whether the document has been created (`session.create` / `cohort.create`).
    pub fn exists(&self) -> bool {
        let r = Reader::now(&self.doc);
        r.root_map(crate::schema::META)
            .and_then(|m| r.str(&m, "title"))
            .is_some()
    }

    /// Validates, authorizes and applies `cmd` as one commit, or refuses it leaving the
    /// document unchanged.
    pub fn apply(
        &mut self,
        caller: &Caller,
        cmd: &Command,
        now: Millis,
    ) -> Result<Applied, Rejection> {
        if cmd.body.doc_kind() != self.id.kind() {
            return Err(Rejection::new(
                RejectCode::WrongDocument,
                format!("{} does not apply to {}", cmd.body.name(), self.id),
            ));
        }
        if self.seen.contains(cmd.id.as_str()) {
            return Err(Rejection::new(
                RejectCode::DuplicateCommand,
                format!("command {} was already applied", cmd.id),
            ));
        }
        let id = self.id.clone();
        let time_s = now.as_i64() / 1000;
        let envelope = |t: &Target| {
            let env = Envelope {
                c: cmd.body.name().to_owned(),
                i: cmd.id.as_str().to_owned(),
                u: caller.user.as_str().to_owned(),
                t: t.target.clone(),
                l: t.lesson.clone(),
            };
            // Invariant: an Envelope of strings always serializes.
            let message = serde_json::to_string(&env).expect("serialize an envelope of strings");
            CommitOptions::default()
                .with_message(message)
                .with_time(time_s)
        };
        let done = self
            .doc
            .transact_with(envelope, |tx| {
                apply(tx, &id, caller, cmd, now, &self.counts)
            })
            .map_err(|failure| failure.error)?;
        if done.hash.is_none() {
            // automerge drops a put of the value a key already holds, so a command that changes
            // nothing (an upvote that is already on, closing a closed poll) commits no change.
            // It still needs one: the envelope is what carries the command id to other replicas
            // and across a reload, and what gives its event a token of its own.
            self.doc.empty_commit(envelope(&done.result));
        }
        let target = done.result;
        let env = Envelope {
            c: cmd.body.name().to_owned(),
            i: cmd.id.as_str().to_owned(),
            u: caller.user.as_str().to_owned(),
            t: target.target,
            l: target.lesson,
        };
        self.note_attendance(&env);
        self.index(env.clone());
        let token = self.token();
        let event = derive(&Reader::now(&self.doc), &env).map(|(name, deliveries)| Event {
            name,
            token: token.clone(),
            command: env.i.clone(),
            deliveries,
        });
        Ok(Applied { event, token })
    }

    /// Everything, compacted.
    pub fn save(&self) -> Vec<u8> {
        self.doc.save()
    }

    /// The changes after `heads`, in the incremental format `load` accepts appended.
    pub fn save_after(&self, heads: &[ChangeHash]) -> Vec<u8> {
        self.doc.save_after(heads)
    }

    /// The number of changes in the document's history.
    pub fn change_count(&self) -> usize {
        self.doc.get_changes_meta(&[]).len()
    }

    /// The next sync message for a peer, if there is anything to say.
    ///
    /// The state holds what the peer last said (its heads, needs and bloom filters), and
    /// automerge 0.12 panics on some of it; a peer's bytes must not take the writer task down.
    /// Then the state starts over (a fresh conversation, which the peer answers from scratch,
    /// read-only if it was) and the message is the one a fresh state makes.
    pub fn generate_sync_message(&self, state: &mut sync::State) -> Option<Vec<u8>> {
        let generated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.doc.generate_sync_message(state).map(|m| m.encode())
        }));
        generated.unwrap_or_else(|_| {
            // The conversation starts over in the same mode: a peer that may only read this
            // document stays one that may only read it.
            let read_only = state.read_only;
            *state = sync::State::new();
            state.set_read_only(read_only);
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.doc.generate_sync_message(state).map(|m| m.encode())
            }))
            .ok()
            .flatten()
        })
    }

    /// Applies a peer's sync message and returns the events of the changes it brought.
    pub fn receive_sync_message(
        &mut self,
        state: &mut sync::State,
        message: &[u8],
    ) -> Result<Vec<Event>, SyncError> {
        self.receive_sync_message_with(state, message, true)
    }

    /// Applies a peer's sync message; derives the events of the changes it brought only if
    /// `with_events` (deriving them is most of the cost of a catch-up, and a document nobody
    /// follows needs none: a later subscriber starts from a snapshot or a replay).
    pub fn receive_sync_message_with(
        &mut self,
        state: &mut sync::State,
        message: &[u8],
        with_events: bool,
    ) -> Result<Vec<Event>, SyncError> {
        let message =
            sync::Message::decode(message).map_err(|e| SyncError::Decode(e.to_string()))?;
        if let Some(why) = message.have.iter().find_map(|h| bloom_refused(&h.bloom)) {
            return Err(SyncError::Decode(why.to_owned()));
        }
        if let Some(why) = crate::chunks::changes_refused(message.changes.iter()) {
            return Err(SyncError::Decode(why.to_owned()));
        }
        // automerge 0.12's change parser (hexane) unwraps on some malformed columns, and what
        // a peer's changes leave in the document is read right after (their history, their
        // events): a peer's bytes must not take the writer task down with them. Nothing else
        // holds the document while it unwinds, and the caller drops this replica (see
        // `SyncError::Panicked`).
        let received = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.apply_sync_message(state, message, with_events)
        }));
        received.unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic without a message");
            Err(SyncError::Panicked(why.to_owned()))
        })
    }

    /// The part of [`Replica::receive_sync_message_with`] that runs automerge on the message.
    fn apply_sync_message(
        &mut self,
        state: &mut sync::State,
        message: sync::Message,
        with_events: bool,
    ) -> Result<Vec<Event>, SyncError> {
        let old = self.doc.get_heads();
        self.doc
            .receive_sync_message(state, message)
            .map_err(|e| SyncError::Apply(e.to_string()))?;
        if self.doc.get_heads() == old {
            return Ok(Vec::new());
        }
        let changes = self.changes_since(&old);
        for c in &changes {
            if let Some(env) = &c.envelope {
                self.note_attendance(env);
                self.index(env.clone());
            }
        }
        if !with_events {
            return Ok(Vec::new());
        }
        Ok(self.events_for(&old, &changes))
    }

    /// The events after `token`, exactly as they were emitted live.
    pub fn events_since(&self, token: &ResumeToken) -> Result<Vec<Event>, ResumeError> {
        let unknown: Vec<String> = token
            .heads()
            .iter()
            .filter(|h| self.doc.get_change_meta_by_hash(h).is_none())
            .map(|h| h.to_string())
            .collect();
        if !unknown.is_empty() {
            return Err(ResumeError::UnknownHeads(unknown));
        }
        let changes = self.changes_since(token.heads());
        if changes.len() > REPLAY_EVENTS_MAX {
            return Err(ResumeError::TooFarBehind(changes.len()));
        }
        Ok(self.events_for(token.heads(), &changes))
    }

    /// The full state of a session for `viewer`.
    pub fn session_view(&self, viewer: &Caller, now: Millis) -> Result<Value, Rejection> {
        let DocId::Session(id) = &self.id else {
            return Err(wrong_kind());
        };
        view::session_view(
            &Reader::now(&self.doc),
            id.as_str(),
            viewer,
            now,
            self.present.len(),
        )
    }

    /// A page of a session's questions, chat or broadcasts for `viewer`, older than `before`
    /// (`at` and id of the oldest item the client holds): `{items, more}`.
    pub fn session_page(
        &self,
        viewer: &Caller,
        listing: Listing,
        before: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Value, Rejection> {
        if !matches!(self.id, DocId::Session(_)) {
            return Err(wrong_kind());
        }
        view::session_page(&Reader::now(&self.doc), viewer, listing, before, limit)
    }

    /// The cohort as `viewer` sees it.
    pub fn cohort_view(&self, viewer: &Caller) -> Result<Value, Rejection> {
        let DocId::Cohort(id) = &self.id else {
            return Err(wrong_kind());
        };
        view::cohort_view(&Reader::now(&self.doc), id, viewer)
    }

    /// One student's progress.
    pub fn student_progress(&self, viewer: &Caller, student: &UserId) -> Result<Value, Rejection> {
        let DocId::Cohort(id) = &self.id else {
            return Err(wrong_kind());
        };
        view::student_progress(&Reader::now(&self.doc), id, viewer, student)
    }

    /// Per-lesson aggregates of a cohort (staff), as clients receive them.
    pub fn cohort_aggregates(&self, viewer: &Caller) -> Result<Value, Rejection> {
        let aggregates = self.aggregates(viewer)?;
        serde_json::to_value(aggregates)
            .map_err(|e| Rejection::new(RejectCode::Internal, format!("encode aggregates: {e}")))
    }

    /// Per-lesson aggregates of a cohort (staff).
    pub fn aggregates(&self, viewer: &Caller) -> Result<CohortAggregates, Rejection> {
        let DocId::Cohort(id) = &self.id else {
            return Err(wrong_kind());
        };
        view::cohort_aggregates(&Reader::now(&self.doc), id, viewer)
    }

    /// Records an applied command: its id (idempotency) and its kind (count limits).
    /// After an attendance change by `env.u` (local or merged), re-reads that user's visits:
    /// the result holds whatever order concurrent joins and leaves merged in.
    fn note_attendance(&mut self, env: &Envelope) {
        if !matches!(env.c.as_str(), "attendance.join" | "attendance.leave") {
            return;
        }
        if view::is_present(&Reader::now(&self.doc), &env.u) {
            self.present.insert(env.u.clone());
        } else {
            self.present.remove(&env.u);
        }
    }

    /// The number of users present in this session (0 for a cohort).
    pub fn present(&self) -> usize {
        self.present.len()
    }

    fn index(&mut self, env: Envelope) {
        if self.seen.contains(&env.i) {
            *self.repeated.entry(env.i).or_insert(1) += 1;
        } else {
            self.seen.insert(env.i);
            self.counts.count(env.c, &env.u);
        }
    }

    fn changes_since(&self, heads: &[ChangeHash]) -> Vec<ChangeInfo> {
        self.doc
            .get_changes_meta(heads)
            .into_iter()
            .map(|m| ChangeInfo {
                hash: m.hash,
                deps: m.deps,
                envelope: Envelope::parse(m.message.as_deref()),
            })
            .collect()
    }

    fn events_for(&self, start: &[ChangeHash], changes: &[ChangeInfo]) -> Vec<Event> {
        let mut last_touch: HashMap<(&str, Option<&str>), usize> = HashMap::new();
        for (i, c) in changes.iter().enumerate() {
            if let Some(env) = &c.envelope {
                last_touch.insert(env.item_key(), i);
            }
        }
        // A command id that several changes carry gets one event: for the first of them that
        // `changes` holds, none if `start`'s history holds one already. So a subscriber that
        // saw it live on one node and resumes on the other does not get it again.
        let mut repeats_here: HashMap<&str, usize> = HashMap::new();
        for env in changes.iter().filter_map(|c| c.envelope.as_ref()) {
            if self.repeated.contains_key(&env.i) {
                *repeats_here.entry(env.i.as_str()).or_default() += 1;
            }
        }
        let mut once: HashSet<&str> = HashSet::new();
        let mut heads: BTreeSet<ChangeHash> = start.iter().copied().collect();
        let mut events = Vec::new();
        for (i, c) in changes.iter().enumerate() {
            for d in &c.deps {
                heads.remove(d);
            }
            heads.insert(c.hash);
            let Some(env) = &c.envelope else { continue };
            if let Some(&carried) = self.repeated.get(&env.i) {
                let earlier = carried > repeats_here.get(env.i.as_str()).copied().unwrap_or(0);
                if earlier || !once.insert(env.i.as_str()) {
                    continue;
                }
            }
            let at: Vec<ChangeHash> = heads.iter().copied().collect();
            let derived = if last_touch.get(&env.item_key()) == Some(&i) {
                derive(&Reader::now(&self.doc), env)
            } else {
                derive(&Reader::at(&self.doc, &at), env)
            };
            if let Some((name, deliveries)) = derived {
                events.push(Event {
                    name,
                    token: ResumeToken::from_heads(at),
                    command: env.i.clone(),
                    deliveries,
                });
            }
        }
        events
    }
}

fn wrong_kind() -> Rejection {
    Rejection::new(
        RejectCode::WrongDocument,
        "this view does not apply to this kind of document",
    )
}

impl Replica {
    /// Whether `caller` may subscribe to this document's events: a member of its cohort.
    pub fn authorize_read(&self, caller: &Caller) -> Result<(), Rejection> {
        let r = Reader::now(&self.doc);
        let cohort = match &self.id {
            DocId::Session(_) => match view::session_meta(&r) {
                Some((cohort, _)) => cohort,
                None => {
                    return Err(Rejection::new(RejectCode::DocNotFound, "no such session"));
                }
            },
            DocId::Inbox(owner) => return crate::inbox::authorize_read(caller, owner),
            // Course metadata is public: it is served to anyone, once the course exists.
            DocId::Course(_) => {
                return if self.exists() {
                    Ok(())
                } else {
                    Err(Rejection::new(RejectCode::DocNotFound, "no such course"))
                };
            }
            DocId::Cohort(c) => {
                if !self.exists() {
                    return Err(Rejection::new(RejectCode::DocNotFound, "no such cohort"));
                }
                c.clone()
            }
            // Clients learn the flags that apply to them from the node's cached set
            // (`GET /api/flags`); the document itself is the operators'.
            DocId::Flags => {
                return if caller.role == crate::auth::Role::Admin {
                    Ok(())
                } else {
                    Err(Rejection::new(
                        RejectCode::Forbidden,
                        "only an admin reads the flags document",
                    ))
                };
            }
        };
        crate::auth::authorize(caller, &cohort, crate::auth::Needs::Member)
    }

    /// The state a joining client needs: the session view or the cohort view.
    pub fn join_view(&self, caller: &Caller, now: Millis) -> Result<Value, Rejection> {
        match &self.id {
            DocId::Session(_) => self.session_view(caller, now),
            DocId::Cohort(_) => self.cohort_view(caller),
            DocId::Inbox(_) => self.inbox_view(caller),
            DocId::Course(_) => self.course_view(),
            DocId::Flags => Ok(self.flags().to_json()),
        }
    }

    /// The leaderboard of a cohort as staff see it ([`Leaderboard::public`] is the students'
    /// board). Authorize with [`Replica::authorize_read`] first.
    pub fn leaderboard(&self) -> Result<Leaderboard, Rejection> {
        let DocId::Cohort(id) = &self.id else {
            return Err(wrong_kind());
        };
        if !self.exists() {
            return Err(Rejection::new(RejectCode::DocNotFound, "no such cohort"));
        }
        let scores = board::student_scores(&Reader::now(&self.doc));
        Ok(Leaderboard::rank(id.clone(), scores))
    }

    /// Per student of a cohort: their latest progress time; and the cohort's sessions, newest
    /// first (the instructor dashboard's cohort half).
    pub fn cohort_activity(&self) -> Result<CohortActivity, Rejection> {
        if !matches!(self.id, DocId::Cohort(_)) {
            return Err(wrong_kind());
        }
        Ok(board::cohort_activity(&Reader::now(&self.doc)))
    }

    /// A session for the instructor dashboard: present users, last-seen times, open questions,
    /// poll participation.
    pub fn session_summary(&self) -> Result<SessionSummary, Rejection> {
        let DocId::Session(id) = &self.id else {
            return Err(wrong_kind());
        };
        Ok(board::session_summary(&Reader::now(&self.doc), id))
    }

    /// The cohort this session document belongs to: `None` for a cohort or inbox document, or a
    /// session not created (here) yet. What the dashboard and the share policy compare a cohort's
    /// links against.
    pub fn session_cohort(&self) -> Option<CohortId> {
        if !matches!(self.id, DocId::Session(_)) {
            return None;
        }
        crate::session::session_cohort(&self.doc)
    }

    /// The role a cohort document's roster gives `user`: `None` when the roster does not list
    /// them, lists them as removed, or this is not a cohort document. What a classroom node
    /// checks a token against before it extends it.
    pub fn roster_role(&self, user: &str) -> Option<crate::Role> {
        if !matches!(self.id, DocId::Cohort(_)) {
            return None;
        }
        let entry = crate::view::roster_entry(&Reader::now(&self.doc), user)?;
        if entry["removed"] == true {
            return None;
        }
        crate::Role::parse(entry["role"].as_str()?)
    }

    /// The feature flags this document holds (none for any other document).
    pub fn flags(&self) -> crate::FlagSet {
        match &self.id {
            DocId::Flags => crate::flags::read_flags(&Reader::now(&self.doc)),
            _ => crate::FlagSet::new(),
        }
    }

    /// The cohort whose feature flags apply to this document's commands: a cohort's own id, a
    /// session's cohort (once created), none for any other document.
    pub fn flag_cohort(&self) -> Option<CohortId> {
        match &self.id {
            DocId::Cohort(c) => Some(c.clone()),
            DocId::Session(_) => self.session_cohort(),
            _ => None,
        }
    }

    /// The course as anyone sees it (its metadata is public); `doc_not_found` before
    /// `course.create`.
    pub fn course_view(&self) -> Result<Value, Rejection> {
        let DocId::Course(id) = &self.id else {
            return Err(wrong_kind());
        };
        crate::course::course_view(&Reader::now(&self.doc), id.as_str())
            .ok_or_else(|| Rejection::new(RejectCode::DocNotFound, "no such course"))
    }

    /// The published outline of a course document (empty for any other document or before
    /// the first publication): what a node walks to find the blobs a course needs.
    pub fn course_outline(&self) -> Vec<crate::CourseModule> {
        match &self.id {
            DocId::Course(_) => crate::course::course_outline(&Reader::now(&self.doc)),
            _ => Vec::new(),
        }
    }

    /// The inbox as `viewer` (its owner or an admin) sees it.
    pub fn inbox_view(&self, viewer: &Caller) -> Result<Value, Rejection> {
        let DocId::Inbox(owner) = &self.id else {
            return Err(wrong_kind());
        };
        crate::inbox::inbox_view(&Reader::now(&self.doc), owner, viewer)
    }

    /// The notification preferences of an inbox (defaults for any other document).
    pub fn inbox_prefs(&self) -> crate::InboxPrefs {
        match &self.id {
            DocId::Inbox(_) => crate::inbox::read_prefs(&Reader::now(&self.doc)),
            _ => crate::InboxPrefs::default(),
        }
    }

    /// Who `cmd` notifies, when `caller` just applied it here at `now` (the notification's id
    /// is made of the document's and the command's ids: the same wherever it is applied). The hub asks only for commands it accepted itself, never for
    /// changes from peers: one notification per event however many nodes hold the document.
    pub fn trigger_for(
        &self,
        caller: &Caller,
        cmd: &Command,
        now: Millis,
    ) -> Option<crate::Trigger> {
        crate::trigger::trigger(&self.doc, &self.id, caller, cmd, now)
    }
}

impl Replica {
    /// The kind of a poll of this session, so that a transport can read a bare vote
    /// (`2`, `[0, 2]`, `"text"`) in the poll's terms.
    pub fn poll_kind(&self, poll: &crate::PollId) -> Option<crate::PollKind> {
        let r = Reader::now(&self.doc);
        let p = r
            .root_map(crate::schema::POLLS)
            .and_then(|ps| r.map(&ps, poll.as_str()))?;
        Some(view::poll_shape(&r, &p).kind)
    }
}

/// Most probes per hash a peer's bloom filter may ask for. automerge uses 7; it runs the probes
/// for every change it tests against the filter, allocating and looping `probes` times each, so
/// a filter claiming billions would hold the document's writer for seconds (or fail the
/// allocation).
pub const BLOOM_PROBES_MAX: u64 = 32;

/// Most bits per entry a peer's bloom filter may declare (automerge uses 10).
pub const BLOOM_BITS_PER_ENTRY_MAX: u64 = 64;

/// Why a peer's bloom filter (a `have` of its sync message) is refused, if it is. automerge
/// 0.12 trusts the filter's parameters: it takes its probes modulo the filter's bit count (a
/// filter that claims entries but has no bits divides by zero and panics the writer task) and
/// loops once per declared probe. Its encoding is nothing at all for the empty filter, or three
/// LEB128 numbers (entries, bits per entry, probes) and then the bits.
fn bloom_refused(bloom: &sync::BloomFilter) -> Option<&'static str> {
    let bytes = bloom.to_bytes();
    if bytes.is_empty() {
        // The empty filter of a side with nothing new since the shared heads: never probed.
        return None;
    }
    let mut rest = crate::chunks::Reader::new(&bytes);
    let mut numbers = [0u64; 3];
    for n in &mut numbers {
        let Ok(v) = rest.u() else {
            return Some("a bloom filter that does not parse");
        };
        *n = v;
    }
    let [entries, bits_per_entry, probes] = numbers;
    if entries > 0 && rest.is_empty() {
        return Some("a bloom filter with entries and no bits");
    }
    if probes > BLOOM_PROBES_MAX {
        return Some("a bloom filter with too many probes");
    }
    if bits_per_entry > BLOOM_BITS_PER_ENTRY_MAX {
        return Some("a bloom filter with too many bits per entry");
    }
    None
}

#[cfg(test)]
mod hostile_sync_tests {
    use super::*;
    use crate::{Caller, Command, CommandBody, DocId, Millis, Role};

    /// A sync message the `hub_sync` fuzz target found (`crash-c47cc5e9…` in its corpus, less
    /// its first byte): a `have` whose bloom filter claims entries with zero bits per entry, so no bits.
    const BITLESS_BLOOM: &[u8] = &[
        0x42, 0x01, 0xde, 0xfe, 0x99, 0x30, 0x40, 0x71, 0x3e, 0x2a, 0x8c, 0xa1, 0x5b, 0xb1, 0x56,
        0x9e, 0xb1, 0xe7, 0x12, 0x97, 0x35, 0xcd, 0x7a, 0x4e, 0x16, 0x32, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0xd4, 0x00, 0x01, 0x00, 0x07, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x03, 0x0a, 0x07, 0xcd, 0x5c, 0x5e, 0x64, 0x00, 0x02, 0x02, 0x84,
    ];

    /// A member of cohort `c1` with `role`.
    fn member(user: &str, role: Role) -> Caller {
        Caller {
            user: user.parse().expect("a user id"),
            name: user.into(),
            role,
            cohorts: vec!["c1".parse().expect("a cohort id")],
        }
    }

    /// Asserts that `replica` still takes a well-formed first message from an empty peer.
    fn still_syncs(replica: &mut Replica) {
        let empty = Replica::new(DocId::parse("session/s1").expect("a doc id"), &[6; 16]);
        let hello = empty
            .generate_sync_message(&mut sync::State::new())
            .expect("a first message");
        replica
            .receive_sync_message(&mut sync::State::new(), &hello)
            .expect("a real message is taken");
    }

    /// `session/s1` in cohort `c1`, created by an instructor on a replica with `actor`.
    fn created_session(actor: u8) -> Replica {
        let mut replica = Replica::new(DocId::parse("session/s1").expect("a doc id"), &[actor; 16]);
        let create = Command {
            id: "c1".parse().expect("a command id"),
            body: CommandBody::SessionCreate {
                cohort: "c1".parse().expect("a cohort id"),
                title: "T".into(),
                moderation: false,
            },
        };
        replica
            .apply(&member("ada", Role::Instructor), &create, Millis(1))
            .expect("the session is created");
        replica
    }

    #[test]
    fn a_bloom_filter_without_bits_is_refused_not_a_panic() {
        let mut replica = created_session(5);
        let mut state = sync::State::new();
        let refused = replica.receive_sync_message(&mut state, BITLESS_BLOOM);
        assert!(
            matches!(&refused, Err(SyncError::Decode(why)) if why.contains("bloom")),
            "{refused:?}"
        );
        // Taken into the state, that filter made the next message's generation (the hub's
        // reply) divide by zero.
        let _ = replica.generate_sync_message(&mut state);
        // A well-formed message from an empty peer still syncs.
        still_syncs(&mut replica);
    }

    /// A peer's bloom filter that asks for 4,294,967,295 probes per hash (found by the
    /// `hub_sync` fuzz target as a 6-second hang of one input) is refused at once, as are too
    /// many bits per entry; automerge's own parameters pass. Kills: a check that trusts the
    /// filter's parameters.
    #[test]
    fn a_bloom_filter_with_absurd_parameters_is_refused_at_once() {
        let sender = created_session(5);
        let mut receiver = Replica::load(sender.id().clone(), &sender.save(), &[6; 16])
            .expect("the saved document loads");
        let honest = sender
            .generate_sync_message(&mut sync::State::new())
            .expect("a first message");
        let with_bloom = |bloom: &[u8]| {
            let mut m = sync::Message::decode(&honest).expect("an honest message decodes");
            m.have = vec![sync::Have {
                last_sync: Vec::new(),
                bloom: sync::BloomFilter::try_from(bloom).expect("the filter parses"),
            }];
            m.encode()
        };
        // entries 1, 10 bits each, probes u32::MAX, then the 2 bytes of bits.
        let probes = with_bloom(&[0x01, 0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0xff, 0xff]);
        let refused = receiver.receive_sync_message(&mut sync::State::new(), &probes);
        assert!(
            matches!(&refused, Err(SyncError::Decode(why)) if why.contains("probes")),
            "{refused:?}"
        );
        // entries 1, 200 bits each, 7 probes, then the 25 bytes of bits.
        let mut wide = vec![0x01, 0xc8, 0x01, 0x07];
        wide.extend([0u8; 25]);
        let refused = receiver.receive_sync_message(&mut sync::State::new(), &with_bloom(&wide));
        assert!(
            matches!(&refused, Err(SyncError::Decode(why)) if why.contains("bits per entry")),
            "{refused:?}"
        );
        // automerge's own: entries 1, 10 bits, 7 probes.
        let fine = with_bloom(&[0x01, 0x0a, 0x07, 0x00, 0x00]);
        receiver
            .receive_sync_message(&mut sync::State::new(), &fine)
            .expect("automerge's parameters pass");
    }

    /// A certified peer's 736-byte sync message whose bundle declares runs of billions of rows
    /// (found by the `hub_sync` fuzz target; automerge 0.12 alone allocated 24 GB on it until
    /// the kernel killed the process) is refused before automerge parses it, and the replica
    /// still syncs. Kills: a receive that hands a peer's changes to automerge unchecked (this
    /// test then runs out of memory).
    #[test]
    fn changes_declaring_billions_of_rows_are_refused_before_automerge_parses_them() {
        let mut replica = created_session(5);
        let bomb = include_bytes!("../testdata/run-bomb.sync");
        let refused = replica.receive_sync_message(&mut sync::State::new(), bomb);
        assert!(
            matches!(&refused, Err(SyncError::Decode(why)) if why.contains("rows")),
            "{refused:?}"
        );
        still_syncs(&mut replica);
    }

    /// Two replicas that synced, then parted (their sync states cut back to the persisted
    /// part, as a reconnect does): one side writes, and the sync after the reconnect brings
    /// the change across, with every message taken. Kills: a hostile-input check that refuses
    /// the honest messages of this exchange (the bloom filters of a side with nothing new).
    #[test]
    fn replicas_that_parted_sync_again_with_every_message_taken() {
        let mut x = created_session(5);
        let doc = DocId::parse("session/s1").expect("a doc id");
        let mut y = Replica::new(doc.clone(), &[6; 16]);
        let (mut sx, mut sy) = (sync::State::new(), sync::State::new());
        let exchange = |x: &mut Replica,
                        y: &mut Replica,
                        sx: &mut sync::State,
                        sy: &mut sync::State| {
            for round in 0..20 {
                let a = x.generate_sync_message(sx);
                if let Some(m) = &a {
                    y.receive_sync_message(sy, m)
                        .unwrap_or_else(|e| panic!("round {round}: y refused x's message: {e}"));
                }
                let b = y.generate_sync_message(sy);
                if let Some(m) = &b {
                    x.receive_sync_message(sx, m)
                        .unwrap_or_else(|e| panic!("round {round}: x refused y's message: {e}"));
                }
                if a.is_none() && b.is_none() {
                    return;
                }
            }
            panic!("the exchange did not settle in 20 rounds");
        };
        exchange(&mut x, &mut y, &mut sx, &mut sy);
        assert_eq!(x.doc.get_heads(), y.doc.get_heads());
        // Parted: the states keep only their persisted part; y writes meanwhile.
        let mut sx = sync::State::decode(&sx.encode()).expect("a state decodes");
        let mut sy = sync::State::decode(&sy.encode()).expect("a state decodes");
        let ask = Command {
            id: "q1".parse().expect("a command id"),
            body: CommandBody::QaAsk {
                text: "while apart".into(),
                anonymous: false,
            },
        };
        y.apply(&member("s1", Role::Student), &ask, Millis(2))
            .expect("the question is asked");
        exchange(&mut x, &mut y, &mut sx, &mut sy);
        assert_eq!(x.doc.get_heads(), y.doc.get_heads(), "x has y's change");
    }

    /// Regression: a check of the bloom filters refused every empty filter too (its encoding
    /// is no bytes at all), so two replicas that had synced once could never sync again.
    #[test]
    fn two_replicas_keep_syncing_after_their_first_exchange() {
        let caller = Caller {
            user: "u1".parse().expect("a user id"),
            name: "Ada".into(),
            role: Role::Instructor,
            cohorts: vec!["c1".parse().expect("a cohort id")],
        };
        let doc = DocId::parse("session/s1").expect("a doc id");
        let (mut a, mut b) = (
            Replica::new(doc.clone(), &[5; 16]),
            Replica::new(doc, &[6; 16]),
        );
        let (mut to_b, mut to_a) = (sync::State::new(), sync::State::new());
        let exchange =
            |a: &mut Replica, b: &mut Replica, to_b: &mut sync::State, to_a: &mut sync::State| {
                for _ in 0..20 {
                    let m1 = a.generate_sync_message(to_b);
                    if let Some(m) = &m1 {
                        b.receive_sync_message(to_a, m)
                            .expect("b takes a's message");
                    }
                    let m2 = b.generate_sync_message(to_a);
                    if let Some(m) = &m2 {
                        a.receive_sync_message(to_b, m)
                            .expect("a takes b's message");
                    }
                    if m1.is_none() && m2.is_none() {
                        return;
                    }
                }
            };
        for (i, title) in ["one", "two"].into_iter().enumerate() {
            let create = Command {
                id: format!("c{i}").parse().expect("a command id"),
                body: CommandBody::SessionCreate {
                    cohort: "c1".parse().expect("a cohort id"),
                    title: title.into(),
                    moderation: false,
                },
            };
            let _ = a.apply(&caller, &create, Millis(1));
            exchange(&mut a, &mut b, &mut to_b, &mut to_a);
            assert_eq!(a.doc().get_heads(), b.doc().get_heads(), "round {i}");
        }
    }
}

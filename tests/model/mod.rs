//! Tests of `lectern-model`, the IO-free domain, at its public boundary: replicas of one
//! document converge whatever the interleaving of commands and sync rounds (`convergence`),
//! every command is authorized exactly as documented (`roles`), bad input is refused without a
//! trace (`bad_input`), events replay exactly as they were emitted (`resume`), course documents hold whole
//! published versions (`course`), join codes let newcomers in only within their bounds
//! (`join_codes`), and one person cannot use up a document's shared limits
//! (`quotas`).
//!
//! This file holds what the four share: the cohort and session used everywhere, one caller per
//! role, id and command builders, helpers that apply a command expecting success or a given
//! refusal, and a sync helper that runs automerge's sync protocol between replicas until none
//! of them has anything left to say.

mod bad_input;
mod convergence;
mod course;
mod join_codes;
mod quotas;
mod resume;
mod roles;

use automerge::ChangeHash;
use automerge::sync::State;
use lectern_model::{
    Applied, Caller, CohortId, Command, CommandBody, CommandId, DocId, Event, LessonId, Millis,
    PollId, QuestionId, RejectCode, Replica, Role, SessionId, UserId,
};

/// The cohort every test document belongs to.
pub const COHORT: &str = "c1";
/// A cohort none of the test documents belong to (the outsider's).
pub const OTHER_COHORT: &str = "c2";
/// The session every session test document is.
pub const SESSION: &str = "s1";
/// The clock value tests pass when time does not matter.
pub const NOW: Millis = Millis(1_700_000_000_000);

/// The test cohort's id.
pub fn cohort_id() -> CohortId {
    CohortId::new(COHORT).expect("COHORT is a valid id")
}

/// `session/s1`.
pub fn session_doc() -> DocId {
    DocId::Session(SessionId::new(SESSION).expect("SESSION is a valid id"))
}

/// `cohort/c1`.
pub fn cohort_doc() -> DocId {
    DocId::Cohort(cohort_id())
}

/// `course/k1`.
pub fn course_doc() -> DocId {
    DocId::Course(lectern_model::CourseId::new("k1").expect("a valid course id"))
}

/// A caller with one cohort claim (none for an empty `cohort`).
pub fn caller(user: &str, role: Role, cohort: &str) -> Caller {
    Caller {
        user: uid(user),
        name: format!("{user} name"),
        role,
        cohorts: if cohort.is_empty() {
            Vec::new()
        } else {
            vec![CohortId::new(cohort).expect("test cohort ids are valid")]
        },
    }
}

/// A student of the test cohort.
pub fn student(user: &str) -> Caller {
    caller(user, Role::Student, COHORT)
}

/// The test cohort's TA.
pub fn ta() -> Caller {
    caller("ta1", Role::Ta, COHORT)
}

/// The test cohort's instructor.
pub fn instructor() -> Caller {
    caller("ins1", Role::Instructor, COHORT)
}

/// An admin: no cohort claim, a member of every cohort all the same.
pub fn admin() -> Caller {
    caller("adm1", Role::Admin, "")
}

/// A student of another cohort.
pub fn outsider() -> Caller {
    caller("out1", Role::Student, OTHER_COHORT)
}

/// A user id.
pub fn uid(s: &str) -> UserId {
    UserId::new(s).expect("test user ids are valid")
}

/// A question id.
pub fn qid(s: &str) -> QuestionId {
    QuestionId::new(s).expect("test question ids are valid")
}

/// A poll id.
pub fn pid(s: &str) -> PollId {
    PollId::new(s).expect("test poll ids are valid")
}

/// A lesson id.
pub fn lid(s: &str) -> LessonId {
    LessonId::new(s).expect("test lesson ids are valid")
}

/// A command id (also the id of a chat message).
pub fn cid(s: &str) -> CommandId {
    CommandId::new(s).expect("test command ids are valid")
}

/// A command with id `id`.
pub fn cmd(id: &str, body: CommandBody) -> Command {
    Command { id: cid(id), body }
}

/// The document's heads (sorted by automerge).
pub fn heads(r: &Replica) -> Vec<ChangeHash> {
    r.doc().get_heads()
}

/// Applies a command that must be accepted; the panic names the command and the rejection.
pub fn ok(r: &mut Replica, who: &Caller, c: &Command, now: Millis) -> Applied {
    match r.apply(who, c, now) {
        Ok(applied) => applied,
        Err(e) => panic!(
            "{} ({}) by {} was refused: {e}",
            c.body.name(),
            c.id,
            who.user
        ),
    }
}

/// Applies a command that must be refused; checks the document did not change and returns the
/// code.
pub fn refused(r: &mut Replica, who: &Caller, c: &Command, now: Millis) -> RejectCode {
    let before = heads(r);
    let applied_before = r.has_applied(&c.id);
    let code = match r.apply(who, c, now) {
        Ok(_) => panic!("{} ({}) by {} was accepted", c.body.name(), c.id, who.user),
        Err(e) => e.code,
    };
    assert_eq!(
        heads(r),
        before,
        "refused {} ({code}) changed the document",
        c.body.name()
    );
    assert_eq!(
        r.has_applied(&c.id),
        applied_before,
        "refused {} ({code}) changed the applied-command index",
        c.body.name()
    );
    code
}

/// A session replica on which the instructor has created session `s1` of cohort `c1`.
pub fn live_session(actor: &[u8]) -> Replica {
    let mut r = Replica::new(session_doc(), actor);
    let create = cmd(
        "create",
        CommandBody::SessionCreate {
            cohort: cohort_id(),
            title: "Lecture 1".into(),
            moderation: false,
        },
    );
    ok(&mut r, &instructor(), &create, NOW);
    r
}

/// A cohort replica on which an admin has created cohort `c1`.
pub fn live_cohort(actor: &[u8]) -> Replica {
    let mut r = Replica::new(cohort_doc(), actor);
    let create = cmd(
        "create",
        CommandBody::CohortCreate {
            course: "Rust 101".into(),
            title: "Spring".into(),
            home_region: "eu".into(),
        },
    );
    ok(&mut r, &admin(), &create, NOW);
    r
}

/// Sync states between replicas: `at[i][j]` is replica i's state for peer j. They persist
/// across rounds, as they do between two connected nodes.
pub struct SyncStates {
    at: Vec<Vec<State>>,
}

impl SyncStates {
    /// Fresh states for `n` replicas.
    pub fn new(n: usize) -> SyncStates {
        SyncStates {
            at: (0..n)
                .map(|_| (0..n).map(|_| State::new()).collect())
                .collect(),
        }
    }

    /// One message from `from` to `to`, if `from` has anything to say: returns the events the
    /// receiver emitted, or `None` when no message was generated.
    pub fn round(
        &mut self,
        replicas: &mut [Replica],
        from: usize,
        to: usize,
    ) -> Option<Vec<Event>> {
        assert_ne!(from, to, "a replica does not sync with itself");
        let msg = replicas[from].generate_sync_message(&mut self.at[from][to])?;
        let events = replicas[to]
            .receive_sync_message(&mut self.at[to][from], &msg)
            .unwrap_or_else(|e| panic!("replica {to} refused a message from {from}: {e}"));
        Some(events)
    }

    /// Replica `from`'s sync state for peer `to`, to generate a message outside [`Self::round`]
    /// (a message a faulty link then loses, duplicates or reorders).
    pub fn state(&mut self, from: usize, to: usize) -> &mut State {
        &mut self.at[from][to]
    }

    /// Delivers `msg`, generated by `from`, to `to`: the events the receiver emitted, or why
    /// it refused the message.
    pub fn deliver(
        &mut self,
        replicas: &mut [Replica],
        from: usize,
        to: usize,
        msg: &[u8],
    ) -> Result<Vec<Event>, String> {
        replicas[to]
            .receive_sync_message(&mut self.at[to][from], msg)
            .map_err(|e| format!("replica {to} refused a message from {from}: {e}"))
    }

    /// Replica `at`'s state for `peer` is persisted and loaded back, as a node does across a
    /// reconnect or a restart (only what automerge persists survives).
    pub fn reload(&mut self, at: usize, peer: usize) -> Result<(), String> {
        let bytes = self.at[at][peer].encode();
        self.at[at][peer] =
            State::decode(&bytes).map_err(|e| format!("a persisted sync state: {e}"))?;
        Ok(())
    }

    /// Runs rounds between every ordered pair until no replica generates a message; returns
    /// the events each replica emitted, in order.
    pub fn quiesce(&mut self, replicas: &mut [Replica]) -> Vec<Vec<Event>> {
        let n = replicas.len();
        let mut events: Vec<Vec<Event>> = vec![Vec::new(); n];
        // Each pass moves every change at least one hop; a few dozen passes is far more than
        // three replicas need, so running out means the protocol does not settle.
        for _ in 0..64 {
            let mut quiet = true;
            for from in 0..n {
                for (to, received) in events.iter_mut().enumerate() {
                    if from == to {
                        continue;
                    }
                    if let Some(e) = self.round(replicas, from, to) {
                        quiet = false;
                        received.extend(e);
                    }
                }
            }
            if quiet {
                return events;
            }
        }
        panic!("sync did not quiesce in 64 passes");
    }
}

/// Syncs all replicas with fresh sync states until quiet; returns the events each emitted.
pub fn sync_all(replicas: &mut [Replica]) -> Vec<Vec<Event>> {
    SyncStates::new(replicas.len()).quiesce(replicas)
}

//! Synthetic class traffic: the callers of a benchmark cohort and a seeded generator of a
//! plausible live class (chat, questions and votes, polls, attendance, answers).
//!
//! Every command the generator emits is one the model accepts: it tracks which questions and
//! polls exist, which polls are open, who is present and who voted for what, so a rejection in
//! a benchmark is a bug, not noise. The same seed gives the same commands, in order.

use std::collections::HashSet;

use lectern_model::{
    Caller, CohortId, Command, CommandBody, CommandId, PollChoice, PollId, PollKind, PollSpec,
    QuestionId, Role, UserId,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The cohort every benchmark session belongs to (no cohort document is created: membership
/// comes from the callers' claims, as for a token).
pub const COHORT: &str = "bench-cohort";

/// A caller with `role`, member of [`COHORT`].
pub fn caller(user: &str, name: &str, role: Role) -> Caller {
    Caller {
        // Invariant: benchmark user ids are built from [a-z0-9-] and are short.
        user: UserId::new(user).expect("benchmark user ids are valid"),
        name: name.to_owned(),
        role,
        cohorts: vec![cohort()],
    }
}

/// [`COHORT`] as an id.
pub fn cohort() -> CohortId {
    // Invariant: a literal that satisfies the id rules.
    CohortId::new(COHORT).expect("the benchmark cohort id is valid")
}

/// An admin (a member of every cohort).
pub fn admin() -> Caller {
    caller("admin", "Admin", Role::Admin)
}

/// Student number `i`.
pub fn student(i: usize) -> Caller {
    caller(
        &format!("student-{i}"),
        &format!("Student {i}"),
        Role::Student,
    )
}

/// A command with id `id`.
pub fn command(id: &str, body: CommandBody) -> Command {
    Command {
        // Invariant: benchmark command ids are a short prefix and a number.
        id: CommandId::new(id).expect("benchmark command ids are valid"),
        body,
    }
}

/// `session.create` in [`COHORT`].
pub fn session_create(id: &str) -> Command {
    command(
        id,
        CommandBody::SessionCreate {
            cohort: cohort(),
            title: "Distributed systems, week 7: consensus and group commit".into(),
            moderation: false,
        },
    )
}

/// Relative weights of the kinds of command in a class, per mille.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// `chat.send`.
    pub chat: u32,
    /// `qa.upvote` / `qa.unvote` (a second vote by the same student takes it back).
    pub upvote: u32,
    /// `poll.vote`.
    pub poll_vote: u32,
    /// `qa.ask`.
    pub ask: u32,
    /// `attendance.join` / `attendance.leave` (reconnects).
    pub attendance: u32,
    /// `qa.answer` (by the TA).
    pub answer: u32,
    /// `poll.create`, `poll.close`, `poll.reveal` (by the instructor).
    pub poll_admin: u32,
}

impl Mix {
    /// The mix of a lively class: chat 40 %, upvotes 30 %, poll votes 15 %, asks 8 %,
    /// attendance 4 %, answers 2 %, poll lifecycle 1 %.
    pub const CLASS: Mix = Mix {
        chat: 400,
        upvote: 300,
        poll_vote: 150,
        ask: 80,
        attendance: 40,
        answer: 20,
        poll_admin: 10,
    };

    fn total(&self) -> u32 {
        self.chat
            + self.upvote
            + self.poll_vote
            + self.ask
            + self.attendance
            + self.answer
            + self.poll_admin
    }
}

#[derive(Debug, Clone)]
struct Poll {
    id: PollId,
    kind: PollKind,
    options: u32,
    votes: u32,
    /// Setup polls stay open so that later batches can vote on them.
    permanent: bool,
    close_after_votes: u32,
}

/// A seeded generator of one class's commands.
#[derive(Clone)]
pub struct Class {
    rng: StdRng,
    prefix: String,
    seq: u64,
    mix: Mix,
    /// The instructor.
    pub instructor: Caller,
    /// The TA.
    pub ta: Caller,
    /// The students.
    pub students: Vec<Caller>,
    questions: Vec<QuestionId>,
    unanswered: Vec<QuestionId>,
    voted: HashSet<(usize, usize)>,
    open_polls: Vec<Poll>,
    unrevealed: Vec<PollId>,
    polls_created: u32,
    /// In the room: a student who is not joins before doing anything else.
    active: Vec<bool>,
    /// Has a visit this generator opened and not closed (so `attendance.leave` applies).
    present: Vec<bool>,
}

impl Class {
    /// A class of `students` with `mix`, seeded; command ids are `{prefix}{n}`.
    pub fn new(seed: u64, students: usize, mix: Mix, prefix: &str) -> Class {
        Class {
            rng: StdRng::seed_from_u64(seed),
            prefix: prefix.to_owned(),
            seq: 0,
            mix,
            instructor: caller("instructor", "Ada (instructor)", Role::Instructor),
            ta: caller("ta", "Barbara (TA)", Role::Ta),
            students: (0..students).map(student).collect(),
            questions: Vec::new(),
            unanswered: Vec::new(),
            voted: HashSet::new(),
            open_polls: Vec::new(),
            unrevealed: Vec::new(),
            polls_created: 0,
            active: vec![false; students],
            present: vec![false; students],
        }
    }

    /// The session's `session.create`, by the instructor.
    pub fn create_session(&mut self) -> (Caller, Command) {
        let id = self.next_id();
        (self.instructor.clone(), session_create(&id))
    }

    /// Questions and polls that later commands (and [`Class::fork`]s) can always refer to;
    /// the polls never close.
    pub fn setup_items(&mut self, questions: usize, polls: usize) -> Vec<(Caller, Command)> {
        let mut out = Vec::new();
        for i in 0..questions {
            let who = i % self.students.len();
            out.push(self.ask(who));
        }
        for _ in 0..polls {
            out.push(self.create_poll(true));
        }
        out
    }

    /// A generator that knows the same questions and polls but nothing of who voted, with its
    /// own seed and command-id prefix. Its commands apply to any document that holds this
    /// generator's commands so far, whatever else was applied after them: its students count as
    /// in the room already (a class under way), and it leaves only visits it opened itself.
    pub fn fork(&self, seed: u64, prefix: &str) -> Class {
        let mut c = self.clone();
        c.rng = StdRng::seed_from_u64(seed);
        c.prefix = prefix.to_owned();
        c.seq = 0;
        c.voted.clear();
        c.unanswered.clear();
        c.unrevealed.clear();
        c.open_polls.retain(|p| p.permanent);
        c.active = vec![true; c.students.len()];
        c.present = vec![false; c.students.len()];
        c
    }

    /// The next command of the class.
    pub fn next_command(&mut self) -> (Caller, Command) {
        let m = self.mix;
        let mut roll = self.rng.random_range(0..m.total());
        let mut pick = |w: u32| {
            let hit = roll < w;
            roll = roll.saturating_sub(w);
            hit
        };
        if pick(m.chat) {
            let who = self.any_student();
            self.chat(who)
        } else if pick(m.upvote) {
            let who = self.any_student();
            self.upvote(who)
        } else if pick(m.poll_vote) {
            let who = self.any_student();
            self.vote(who)
        } else if pick(m.ask) {
            let who = self.any_student();
            self.ask(who)
        } else if pick(m.attendance) {
            let who = self.rng.random_range(0..self.students.len());
            self.toggle_presence(who)
        } else if pick(m.answer) {
            self.answer()
        } else {
            self.poll_lifecycle()
        }
    }

    /// A random student. One who is not in the room joins before acting (so the first commands
    /// of a class are its students arriving): see `join_first`.
    fn any_student(&mut self) -> usize {
        self.rng.random_range(0..self.students.len())
    }

    fn join_first(&mut self, who: usize) -> Option<(Caller, Command)> {
        if self.active[who] {
            return None;
        }
        Some(self.toggle_presence(who))
    }

    /// Leaves if this generator opened the student's visit, joins otherwise (a reconnect).
    fn toggle_presence(&mut self, who: usize) -> (Caller, Command) {
        let body = if self.present[who] {
            CommandBody::AttendanceLeave
        } else {
            CommandBody::AttendanceJoin
        };
        self.present[who] = !self.present[who];
        self.active[who] = self.present[who];
        let id = self.next_id();
        (self.students[who].clone(), command(&id, body))
    }

    fn chat(&mut self, who: usize) -> (Caller, Command) {
        if let Some(join) = self.join_first(who) {
            return join;
        }
        let text = self.text(4, 14);
        let id = self.next_id();
        (
            self.students[who].clone(),
            command(&id, CommandBody::ChatSend { text }),
        )
    }

    fn ask(&mut self, who: usize) -> (Caller, Command) {
        if let Some(join) = self.join_first(who) {
            return join;
        }
        let text = format!("{}?", self.text(8, 20));
        let anonymous = self.rng.random_bool(0.2);
        let id = self.next_id();
        // Invariant: a command id is a valid question id (same rules).
        let q = QuestionId::new(id.clone()).expect("command ids are valid question ids");
        self.questions.push(q.clone());
        self.unanswered.push(q);
        (
            self.students[who].clone(),
            command(&id, CommandBody::QaAsk { text, anonymous }),
        )
    }

    fn upvote(&mut self, who: usize) -> (Caller, Command) {
        if self.questions.is_empty() {
            return self.ask(who);
        }
        if let Some(join) = self.join_first(who) {
            return join;
        }
        // Students vote on what is on screen: the newest 30 questions.
        let lo = self.questions.len().saturating_sub(30);
        let qi = self.rng.random_range(lo..self.questions.len());
        let question = self.questions[qi].clone();
        let body = if self.voted.insert((qi, who)) {
            CommandBody::QaUpvote { question }
        } else {
            self.voted.remove(&(qi, who));
            CommandBody::QaUnvote { question }
        };
        let id = self.next_id();
        (self.students[who].clone(), command(&id, body))
    }

    fn vote(&mut self, who: usize) -> (Caller, Command) {
        if self.open_polls.is_empty() {
            return self.create_poll(false);
        }
        if let Some(join) = self.join_first(who) {
            return join;
        }
        // Mostly the newest poll, sometimes an older open one.
        let n = self.open_polls.len();
        let pi = if self.rng.random_bool(0.8) {
            n - 1
        } else {
            self.rng.random_range(0..n)
        };
        let (kind, options) = (self.open_polls[pi].kind, self.open_polls[pi].options);
        let choice = match kind {
            PollKind::Single => PollChoice::Single(self.rng.random_range(0..options)),
            PollKind::Rating => PollChoice::Rating(self.rng.random_range(1..=options)),
            PollKind::Multiple => {
                let picked: Vec<u32> = (0..options).filter(|_| self.rng.random_bool(0.4)).collect();
                PollChoice::Multiple(if picked.is_empty() { vec![0] } else { picked })
            }
            PollKind::OpenText => PollChoice::Text(self.word().to_owned()),
        };
        self.open_polls[pi].votes += 1;
        let poll = self.open_polls[pi].id.clone();
        let id = self.next_id();
        (
            self.students[who].clone(),
            command(&id, CommandBody::PollVote { poll, choice }),
        )
    }

    fn answer(&mut self) -> (Caller, Command) {
        if self.unanswered.is_empty() {
            let who = self.any_student();
            return self.chat(who);
        }
        let i = self.rng.random_range(0..self.unanswered.len());
        let question = self.unanswered.swap_remove(i);
        let text = self.text(10, 30);
        let id = self.next_id();
        (
            self.ta.clone(),
            command(&id, CommandBody::QaAnswer { question, text }),
        )
    }

    /// Closes a poll that has had its votes, reveals a closed one, or creates the next.
    fn poll_lifecycle(&mut self) -> (Caller, Command) {
        if let Some(i) = self
            .open_polls
            .iter()
            .position(|p| !p.permanent && p.votes >= p.close_after_votes)
        {
            let poll = self.open_polls.remove(i).id;
            self.unrevealed.push(poll.clone());
            let id = self.next_id();
            return (
                self.instructor.clone(),
                command(&id, CommandBody::PollClose { poll }),
            );
        }
        if let Some(poll) = self.unrevealed.pop() {
            let id = self.next_id();
            return (
                self.instructor.clone(),
                command(&id, CommandBody::PollReveal { poll }),
            );
        }
        self.create_poll(false)
    }

    fn create_poll(&mut self, permanent: bool) -> (Caller, Command) {
        let kinds = [
            PollKind::Single,
            PollKind::Rating,
            PollKind::Multiple,
            PollKind::OpenText,
        ];
        let kind = kinds[self.polls_created as usize % kinds.len()];
        self.polls_created += 1;
        let (options, scale_max, n) = match kind {
            PollKind::Single | PollKind::Multiple => (
                (0..4)
                    .map(|i| format!("Option {i}: {}", self.text(2, 5)))
                    .collect(),
                None,
                4,
            ),
            PollKind::Rating => (Vec::new(), Some(5), 5),
            PollKind::OpenText => (Vec::new(), None, 0),
        };
        let question = format!("{}?", self.text(6, 12));
        let id = self.next_id();
        // Invariant: a command id is a valid poll id (same rules).
        let poll = PollId::new(id.clone()).expect("command ids are valid poll ids");
        let close_after_votes = self.rng.random_range(30..60);
        self.open_polls.push(Poll {
            id: poll,
            kind,
            options: n,
            votes: 0,
            permanent,
            close_after_votes,
        });
        let spec = PollSpec {
            question,
            kind,
            options,
            scale_max,
            hide_results: self.rng.random_bool(0.3),
        };
        (
            self.instructor.clone(),
            command(&id, CommandBody::PollCreate(spec)),
        )
    }

    fn next_id(&mut self) -> String {
        self.seq += 1;
        format!("{}{}", self.prefix, self.seq)
    }

    fn word(&mut self) -> &'static str {
        WORDS[self.rng.random_range(0..WORDS.len())]
    }

    fn text(&mut self, min_words: usize, max_words: usize) -> String {
        let n = self.rng.random_range(min_words..=max_words);
        (0..n).map(|_| self.word()).collect::<Vec<_>>().join(" ")
    }
}

const WORDS: &[&str] = &[
    "why",
    "does",
    "the",
    "leader",
    "need",
    "a",
    "quorum",
    "before",
    "it",
    "commits",
    "log",
    "entry",
    "what",
    "happens",
    "when",
    "two",
    "nodes",
    "disagree",
    "about",
    "term",
    "is",
    "this",
    "on",
    "exam",
    "could",
    "you",
    "repeat",
    "last",
    "slide",
    "clock",
    "drift",
    "vector",
    "lamport",
    "timestamp",
    "replica",
    "partition",
    "network",
    "latency",
    "fsync",
    "disk",
    "batch",
    "group",
    "commit",
    "merge",
    "conflict",
    "crdt",
    "map",
    "counter",
    "register",
    "consensus",
    "raft",
    "paxos",
    "election",
    "heartbeat",
    "timeout",
    "snapshot",
    "compaction",
    "thanks",
    "great",
    "question",
    "example",
    "homework",
    "deadline",
    "lab",
    "sorry",
    "audio",
];

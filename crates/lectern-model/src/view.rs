//! Reading documents into what clients see: the state a joining client needs, a student's
//! progress, cohort aggregates, and the per-item payloads events carry.
//!
//! Items are parsed into small structs first (skipping anything that does not fit the schema),
//! then rendered to JSON for a viewer: students do not see the authors of anonymous questions,
//! questions waiting for moderation (except their own), or poll results before they are
//! revealed.

use std::collections::{BTreeMap, HashMap, HashSet};

use automerge::{ObjId, ReadDoc};
use serde::Serialize;
use serde_json::{Value, json};

use crate::Caller;
use crate::auth::{Needs, authorize};
use crate::command::{PollKind, ProgressStatus};
use crate::ids::{CohortId, Millis, UserId};
use crate::limits::{
    BROADCASTS_IN_VIEW_MAX, CHAT_IN_VIEW_MAX, PAGE_ITEMS_MAX, QUESTIONS_IN_VIEW_MAX,
    WORD_CLOUD_WORDS_MAX,
};
use crate::read::Reader;
use crate::reject::{RejectCode, Rejection};
use crate::schema::*;

// ---------------------------------------------------------------------------------------------
// Questions
// ---------------------------------------------------------------------------------------------

/// A question as stored.
#[derive(Debug, Clone)]
pub(crate) struct Question {
    pub(crate) id: String,
    text: String,
    pub(crate) author: String,
    author_name: String,
    anonymous: bool,
    pub(crate) status: String,
    at: i64,
    pinned: bool,
    answer: Option<Answer>,
    upvotes: usize,
    /// The voters maps of the question's copies: the one that reads (the winner of a
    /// conflict) first, then those of copies made concurrently with it (see [`Question::read`]).
    voters: Vec<ObjId>,
}

#[derive(Debug, Clone)]
struct Answer {
    text: String,
    by: String,
    by_name: String,
    at: i64,
}

impl Question {
    /// The answer's text, if the question was answered.
    pub(crate) fn answer_text(&self) -> Option<&str> {
        self.answer.as_ref().map(|a| a.text.as_str())
    }

    /// The question's text.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// Reads `questions[id]`.
    ///
    /// Two nodes that both applied one `qa.ask` before they met (a client's retry on another
    /// node after the first one died with its ack) each made the question's map; after the
    /// merge one copy reads (automerge's winner), and what was written on the other copy before
    /// the merge (votes, an answer, a pin, moderation) would be lost with it. So the copies
    /// read as one question: each field is its last write in any copy ([`Reader::latest`]),
    /// and the votes are merged: a user's vote is the one in the first copy (the winner first)
    /// that holds one. Writes after the merge go to the winner and sort after everything seen.
    pub(crate) fn read<D: ReadDoc>(r: &Reader<'_, D>, id: &str) -> Option<Question> {
        let qs = r.root_map(QUESTIONS)?;
        Self::read_obj(r, &qs, id)
    }

    fn read_obj<D: ReadDoc>(r: &Reader<'_, D>, qs: &ObjId, id: &str) -> Option<Question> {
        let copies = r.copies(qs, id);
        let q = copies.first()?.clone();
        let voters: Vec<ObjId> = copies.iter().filter_map(|c| r.map(c, "voters")).collect();
        let upvotes = match voters.as_slice() {
            [] => 0,
            [only] => r.count_true(only),
            copies => {
                let mut votes = BTreeMap::new();
                for copy in copies {
                    for (user, up) in r.bools(copy) {
                        votes.entry(user).or_insert(up);
                    }
                }
                votes.values().filter(|up| **up).count()
            }
        };
        // The copy holding the last write of `key` (the only copy, nearly always: then no
        // lookup).
        let at = |key: &str| match copies.as_slice() {
            [_] => &q,
            _ => r.latest(&copies, key).unwrap_or(&q),
        };
        // The answer's fields are written together: read them from one copy.
        let answered = at("answer");
        let answer = r.str(answered, "answer").map(|text| Answer {
            text,
            by: r.str(answered, "answer_by").unwrap_or_default(),
            by_name: r.str(answered, "answer_by_name").unwrap_or_default(),
            at: r.int(answered, "answer_at").unwrap_or(0),
        });
        Some(Question {
            id: id.to_owned(),
            text: r.str(&q, "text")?,
            author: r.str(&q, "author")?,
            author_name: r.str(&q, "author_name").unwrap_or_default(),
            anonymous: r.bool(&q, "anonymous").unwrap_or(false),
            status: r
                .str(at("status"), "status")
                .unwrap_or_else(|| Q_VISIBLE.to_owned()),
            at: r.int(&q, "at").unwrap_or(0),
            pinned: r.bool(at("pinned"), "pinned").unwrap_or(false),
            answer,
            upvotes,
            voters,
        })
    }

    /// Upvotes: the number of distinct users whose vote is on.
    pub(crate) fn upvotes(&self) -> usize {
        self.upvotes
    }

    /// Whether `user`'s vote on this question is on.
    fn voted<D: ReadDoc>(&self, r: &Reader<'_, D>, user: &str) -> bool {
        self.voters.iter().find_map(|v| r.bool(v, user)) == Some(true)
    }

    /// Everyone sees visible questions; staff see all; an author sees their own.
    pub(crate) fn visible_to(&self, user: &str, staff: bool) -> bool {
        staff || self.status == Q_VISIBLE || self.author == user
    }

    /// Whether students other than the author see it.
    pub(crate) fn public(&self) -> bool {
        self.status == Q_VISIBLE
    }

    /// JSON for a viewer; `reveal_author` is false for classmates of an anonymous asker.
    pub(crate) fn to_json(&self, reveal_author: bool) -> Value {
        let author = if reveal_author || !self.anonymous {
            json!({"id": self.author, "name": self.author_name})
        } else {
            Value::Null
        };
        json!({
            "id": self.id,
            "question": self.text,
            "author": author,
            "anonymous": self.anonymous,
            "status": self.status,
            "pending": self.status == Q_PENDING,
            "upvotes": self.upvotes(),
            "pinned": self.pinned,
            "answered": self.answer.is_some(),
            "answer": self.answer.as_ref().map(|a| json!({
                "text": a.text, "by": {"id": a.by, "name": a.by_name}, "at": a.at
            })),
            "createdAt": self.at,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Polls
// ---------------------------------------------------------------------------------------------

/// What a vote is checked against.
pub(crate) struct PollShape {
    pub(crate) kind: PollKind,
    pub(crate) options: Vec<String>,
    pub(crate) scale_max: u32,
}

/// Reads the shape of the poll at `p`; an unreadable kind reads as open text (which accepts
/// only text votes), so a malformed poll can never be voted into an out-of-range tally.
pub(crate) fn poll_shape<D: ReadDoc>(r: &Reader<'_, D>, p: &ObjId) -> PollShape {
    PollShape {
        kind: r
            .str(p, "kind")
            .and_then(|k| PollKind::parse(&k))
            .unwrap_or(PollKind::OpenText),
        options: r
            .str(p, "options")
            .and_then(|o| serde_json::from_str(&o).ok())
            .unwrap_or_default(),
        scale_max: r
            .int(p, "scale_max")
            .and_then(|m| u32::try_from(m).ok())
            .unwrap_or(0),
    }
}

/// A poll as stored.
pub(crate) struct Poll {
    pub(crate) id: String,
    pub(crate) question: String,
    shape: PollShape,
    hide_results: bool,
    open: bool,
    revealed: bool,
    at: i64,
    pub(crate) votes: Vec<(String, String)>,
}

impl Poll {
    /// Reads `polls[id]`.
    pub(crate) fn read<D: ReadDoc>(r: &Reader<'_, D>, id: &str) -> Option<Poll> {
        let p = r.root_map(POLLS).and_then(|ps| r.map(&ps, id))?;
        Some(Poll {
            id: id.to_owned(),
            question: r.str(&p, "question")?,
            shape: poll_shape(r, &p),
            hide_results: r.bool(&p, "hide_results").unwrap_or(false),
            open: r.str(&p, "state").as_deref() == Some("open"),
            revealed: r.bool(&p, "revealed").unwrap_or(false),
            at: r.int(&p, "at").unwrap_or(0),
            votes: r
                .map(&p, "votes")
                .map(|v| r.str_entries(&v))
                .unwrap_or_default(),
        })
    }

    /// Whether votes are still taken.
    pub(crate) fn is_open(&self) -> bool {
        self.open
    }

    /// Students see results unless the poll hides them until it is revealed.
    pub(crate) fn results_public(&self) -> bool {
        !self.hide_results || self.revealed
    }

    /// The tally.
    pub(crate) fn results(&self) -> Value {
        let voters = self.votes.len();
        match self.shape.kind {
            PollKind::Single | PollKind::Multiple => {
                let mut counts = vec![0u64; self.shape.options.len()];
                for (_, v) in &self.votes {
                    for i in v.split(',').filter_map(|s| s.parse::<usize>().ok()) {
                        if let Some(c) = counts.get_mut(i) {
                            *c += 1;
                        }
                    }
                }
                json!({"voters": voters, "counts": counts})
            }
            PollKind::Rating => {
                let max = self.shape.scale_max as usize;
                let mut counts = vec![0u64; max];
                let (mut sum, mut n) = (0u64, 0u64);
                for (_, v) in &self.votes {
                    if let Ok(x) = v.parse::<usize>()
                        && (1..=max).contains(&x)
                    {
                        counts[x - 1] += 1;
                        sum += x as u64;
                        n += 1;
                    }
                }
                let average = if n == 0 {
                    Value::Null
                } else {
                    json!((sum as f64 / n as f64 * 100.0).round() / 100.0)
                };
                json!({"voters": voters, "counts": counts, "average": average})
            }
            PollKind::OpenText => {
                let mut words: HashMap<String, u64> = HashMap::new();
                for (_, v) in &self.votes {
                    for w in v
                        .split(|c: char| !c.is_alphanumeric())
                        .filter(|w| !w.is_empty())
                    {
                        *words.entry(w.to_lowercase()).or_default() += 1;
                    }
                }
                let mut words: Vec<(String, u64)> = words.into_iter().collect();
                words.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                words.truncate(WORD_CLOUD_WORDS_MAX);
                let words: Vec<Value> = words
                    .into_iter()
                    .map(|(word, count)| json!({"word": word, "count": count}))
                    .collect();
                json!({"voters": voters, "words": words})
            }
        }
    }

    /// JSON with or without results.
    pub(crate) fn to_json(&self, with_results: bool) -> Value {
        json!({
            "id": self.id,
            "question": self.question,
            "kind": self.shape.kind.as_str(),
            "options": self.shape.options,
            "scaleMax": (self.shape.kind == PollKind::Rating).then_some(self.shape.scale_max),
            "hideResults": self.hide_results,
            "state": if self.open { "open" } else { "closed" },
            "revealed": self.revealed,
            "createdAt": self.at,
            "results": if with_results { self.results() } else { Value::Null },
        })
    }

    /// The viewer's own vote, as stored.
    fn vote_of(&self, user: &str) -> Option<&str> {
        self.votes
            .iter()
            .find(|(u, _)| u == user)
            .map(|(_, v)| v.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// Chat, broadcasts, attendance, meta
// ---------------------------------------------------------------------------------------------

/// A chat message or broadcast as JSON, if it reads.
pub(crate) fn chat_message<D: ReadDoc>(r: &Reader<'_, D>, id: &str) -> Option<(i64, bool, Value)> {
    let m = r.root_map(CHAT).and_then(|c| r.map(&c, id))?;
    let at = r.int(&m, "at").unwrap_or(0);
    let deleted = r.bool(&m, "deleted").unwrap_or(false);
    let json = json!({
        "id": id,
        "text": r.str(&m, "text")?,
        "author": {"id": r.str(&m, "author")?, "name": r.str(&m, "author_name").unwrap_or_default()},
        "at": at,
    });
    Some((at, deleted, json))
}

/// A broadcast as JSON, if it reads.
pub(crate) fn broadcast<D: ReadDoc>(r: &Reader<'_, D>, id: &str) -> Option<(i64, Value)> {
    let b = r.root_map(BROADCASTS).and_then(|c| r.map(&c, id))?;
    let at = r.int(&b, "at").unwrap_or(0);
    Some((
        at,
        json!({
            "id": id,
            "text": r.str(&b, "text")?,
            "by": {"id": r.str(&b, "by").unwrap_or_default(), "name": r.str(&b, "by_name").unwrap_or_default()},
            "at": at,
        }),
    ))
}

struct Visit {
    user: String,
    name: String,
    join_at: i64,
    leave_at: Option<i64>,
}

fn visits<D: ReadDoc>(r: &Reader<'_, D>, user: Option<&str>) -> Vec<Visit> {
    let Some(att) = r.root_map(ATTENDANCE) else {
        return Vec::new();
    };
    let keys = match user {
        Some(u) => r.keys_under(&att, u),
        None => r.keys(&att),
    };
    keys.iter()
        .filter_map(|k| {
            let v = r.map(&att, k)?;
            Some(Visit {
                user: r.str(&v, "user")?,
                name: r.str(&v, "name").unwrap_or_default(),
                join_at: r.int(&v, "join_at")?,
                leave_at: r.int(&v, "leave_at"),
            })
        })
        .collect()
}

/// Whether `user` has a visit of this session that is still open.
pub(crate) fn is_present<D: ReadDoc>(r: &Reader<'_, D>, user: &str) -> bool {
    visits(r, Some(user)).iter().any(|v| v.leave_at.is_none())
}

/// The users with a visit of this session that is still open.
pub(crate) fn present_users<D: ReadDoc>(r: &Reader<'_, D>) -> HashSet<String> {
    visits(r, None)
        .into_iter()
        .filter(|v| v.leave_at.is_none())
        .map(|v| v.user)
        .collect()
}

/// Attendance of everyone (`user` None) or one user: who is present, with minutes present
/// as of `now`.
pub(crate) fn attendance<D: ReadDoc>(
    r: &Reader<'_, D>,
    user: Option<&str>,
    now: Option<Millis>,
) -> (usize, Value) {
    let mut users: BTreeMap<String, (String, bool, i64)> = BTreeMap::new();
    for v in visits(r, user) {
        let e = users.entry(v.user).or_insert((v.name, false, 0));
        match v.leave_at {
            None => {
                e.1 = true;
                if let Some(now) = now {
                    e.2 += (now.as_i64() - v.join_at).max(0);
                }
            }
            Some(leave) => e.2 += (leave - v.join_at).max(0),
        }
    }
    let present = users.values().filter(|u| u.1).count();
    let list: Vec<Value> = users
        .into_iter()
        .map(|(user, (name, present, ms))| {
            json!({"user": user, "name": name, "present": present, "minutesPresent": ms / 60_000})
        })
        .collect();
    (present, Value::Array(list))
}

/// When each user was last seen in the session: the latest of their joins and leaves (ms).
pub(crate) fn last_seen<D: ReadDoc>(r: &Reader<'_, D>) -> BTreeMap<String, i64> {
    let mut seen: BTreeMap<String, i64> = BTreeMap::new();
    for v in visits(r, None) {
        let t = v.leave_at.unwrap_or(v.join_at).max(v.join_at);
        let e = seen.entry(v.user).or_insert(t);
        *e = (*e).max(t);
    }
    seen
}

/// The session's meta as JSON (None until the session is created).
pub(crate) fn session_meta<D: ReadDoc>(r: &Reader<'_, D>) -> Option<(CohortId, Value)> {
    let m = r.root_map(META)?;
    let cohort = CohortId::new(r.str(&m, "cohort")?).ok()?;
    let json = json!({
        "cohort": cohort.as_str(),
        "title": r.str(&m, "title").unwrap_or_default(),
        "moderation": r.bool(&m, "moderation").unwrap_or(false),
        "state": r.str(&m, "state").unwrap_or_else(|| "live".into()),
        "createdAt": r.int(&m, "created_at").unwrap_or(0),
    });
    Some((cohort, json))
}

/// The full state of a session for `viewer`, as a joining client needs it. `present` is the
/// number of users present, which the replica keeps up to date: a student's view needs only
/// that, and counting the visits here would make every join cost O(visits) (see
/// `Replica::present`); staff get the per-user list, which reads every visit.
pub(crate) fn session_view<D: ReadDoc>(
    r: &Reader<'_, D>,
    session: &str,
    viewer: &Caller,
    now: Millis,
    present: usize,
) -> Result<Value, Rejection> {
    let Some((cohort, mut meta)) = session_meta(r) else {
        return Err(Rejection::new(RejectCode::DocNotFound, "no such session"));
    };
    authorize(viewer, &cohort, Needs::Member)?;
    let staff = viewer.role.is_staff();
    let user = viewer.user.as_str();

    let questions = items(r, Listing::Questions, user, staff);
    let questions_more = questions.len().saturating_sub(QUESTIONS_IN_VIEW_MAX);

    let mut polls: Vec<Poll> = r
        .root_map(POLLS)
        .map(|ps| {
            r.keys(&ps)
                .iter()
                .filter_map(|k| Poll::read(r, k))
                .collect()
        })
        .unwrap_or_default();
    polls.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.id.cmp(&b.id)));
    let polls: Vec<Value> = polls
        .iter()
        .map(|p| {
            let mut j = p.to_json(staff || p.results_public());
            j["myVote"] = json!(p.vote_of(user));
            j
        })
        .collect();

    let chat = items(r, Listing::Chat, user, staff);
    let chat_more = chat.len().saturating_sub(CHAT_IN_VIEW_MAX);
    let broadcasts = items(r, Listing::Broadcasts, user, staff);
    let broadcasts_more = broadcasts.len().saturating_sub(BROADCASTS_IN_VIEW_MAX);
    let newest = |list: Vec<Item>, skip: usize| -> Vec<Value> {
        list.into_iter().skip(skip).map(|i| i.json).collect()
    };
    let (questions, chat, broadcasts) = (
        newest(questions, questions_more),
        newest(chat, chat_more),
        newest(broadcasts, broadcasts_more),
    );

    let attendance = if staff {
        let (present, users) = attendance(r, None, Some(now));
        json!({"present": present, "users": users})
    } else {
        json!({"present": present})
    };

    meta["id"] = json!(session);
    meta["questions"] = Value::Array(questions);
    meta["polls"] = Value::Array(polls);
    meta["chat"] = Value::Array(chat);
    meta["broadcasts"] = Value::Array(broadcasts);
    meta["attendance"] = attendance;
    // How many older items each list left out: fetched on demand, a page at a time
    // (`session_page`), so a join costs the same in a session of any age.
    meta["older"] = json!({
        "questions": questions_more,
        "chat": chat_more,
        "broadcasts": broadcasts_more,
    });
    Ok(meta)
}

/// A list of a session that the view holds only the newest of, the rest paged on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// The questions `viewer` may see.
    Questions,
    /// Chat messages not deleted.
    Chat,
    /// Instructor broadcasts.
    Broadcasts,
}

/// One item of a [`Listing`]: its time and id (the order, and a page's cursor) and its JSON.
struct Item {
    at: i64,
    id: String,
    json: Value,
}

/// Every item of `listing` `user` may see, oldest first (by time, then id).
fn items<D: ReadDoc>(r: &Reader<'_, D>, listing: Listing, user: &str, staff: bool) -> Vec<Item> {
    let mut out: Vec<Item> = match listing {
        Listing::Questions => r
            .root_map(QUESTIONS)
            .map(|qs| {
                r.keys(&qs)
                    .iter()
                    .filter_map(|k| Question::read_obj(r, &qs, k))
                    .filter(|q| q.visible_to(user, staff))
                    .map(|q| {
                        let mut json = q.to_json(staff || q.author == user);
                        json["voted"] = json!(q.voted(r, user));
                        Item {
                            at: q.at,
                            id: q.id.clone(),
                            json,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default(),
        Listing::Chat => r
            .root_map(CHAT)
            .map(|c| {
                r.keys(&c)
                    .iter()
                    .filter_map(|k| {
                        let (at, deleted, json) = chat_message(r, k)?;
                        (!deleted).then(|| Item {
                            at,
                            id: k.clone(),
                            json,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default(),
        Listing::Broadcasts => r
            .root_map(BROADCASTS)
            .map(|b| {
                r.keys(&b)
                    .iter()
                    .filter_map(|k| {
                        let (at, json) = broadcast(r, k)?;
                        Some(Item {
                            at,
                            id: k.clone(),
                            json,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default(),
    };
    out.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.id.cmp(&b.id)));
    out
}

/// A page of `listing` for `viewer`: at most `limit` (capped at [`PAGE_ITEMS_MAX`]) items older
/// than `before` (the `at` and `id` of the oldest item the client holds; `None`: the newest),
/// oldest first, and whether older ones remain: `{items, more}`.
pub(crate) fn session_page<D: ReadDoc>(
    r: &Reader<'_, D>,
    viewer: &Caller,
    listing: Listing,
    before: Option<(i64, &str)>,
    limit: usize,
) -> Result<Value, Rejection> {
    let Some((cohort, _)) = session_meta(r) else {
        return Err(Rejection::new(RejectCode::DocNotFound, "no such session"));
    };
    authorize(viewer, &cohort, Needs::Member)?;
    let all = items(r, listing, viewer.user.as_str(), viewer.role.is_staff());
    let end = match before {
        None => all.len(),
        Some((at, id)) => all.partition_point(|i| (i.at, i.id.as_str()) < (at, id)),
    };
    let start = end.saturating_sub(limit.clamp(1, PAGE_ITEMS_MAX));
    let page: Vec<Value> = all
        .into_iter()
        .skip(start)
        .take(end - start)
        .map(|i| i.json)
        .collect();
    Ok(json!({"items": page, "more": start > 0}))
}

// ---------------------------------------------------------------------------------------------
// Cohorts
// ---------------------------------------------------------------------------------------------

/// One lesson's progress for one student.
#[derive(Debug, Clone, Default)]
pub(crate) struct LessonProgress {
    status: Option<ProgressStatus>,
    score: Option<i64>,
    max: Option<i64>,
    at: i64,
}

impl LessonProgress {
    pub(crate) fn score(&self) -> Option<i64> {
        self.score
    }

    pub(crate) fn max(&self) -> Option<i64> {
        self.max
    }

    pub(crate) fn at(&self) -> i64 {
        self.at
    }

    pub(crate) fn completed(&self) -> bool {
        self.status == Some(ProgressStatus::Completed)
    }

    pub(crate) fn to_json(&self, student: &str, lesson: &str) -> Value {
        json!({
            "student": student,
            "lesson": lesson,
            "status": self.status.unwrap_or(ProgressStatus::NotStarted).as_str(),
            "score": self.score,
            "maxScore": self.max,
            "updatedAt": self.at,
        })
    }
}

/// A student's lessons, merged across every concurrently created copy of their progress map:
/// each field is taken from the copy whose `{lesson}/at` is newest.
pub(crate) fn student_lessons<D: ReadDoc>(
    r: &Reader<'_, D>,
    student: &str,
) -> BTreeMap<String, LessonProgress> {
    let Some(progress) = r.root_map(PROGRESS) else {
        return BTreeMap::new();
    };
    // lesson -> field -> (at, value)
    let mut fields: BTreeMap<String, BTreeMap<String, (i64, String)>> = BTreeMap::new();
    for copy in r.all_maps(&progress, student) {
        for key in r.keys(&copy) {
            let Some((lesson, field)) = key.split_once('/') else {
                continue;
            };
            let at = r.int(&copy, &format!("{lesson}/at")).unwrap_or(0);
            let value = match field {
                "status" => r.str(&copy, &key),
                "score" | "max" | "at" => r.int(&copy, &key).map(|i| i.to_string()),
                _ => None,
            };
            let Some(value) = value else { continue };
            let slot = fields.entry(lesson.to_owned()).or_default();
            match slot.get(field) {
                Some((old_at, _)) if *old_at >= at => {}
                _ => {
                    slot.insert(field.to_owned(), (at, value));
                }
            }
        }
    }
    fields
        .into_iter()
        .map(|(lesson, f)| {
            let get = |k: &str| f.get(k).map(|(_, v)| v.clone());
            let p = LessonProgress {
                status: get("status").and_then(|s| ProgressStatus::parse(&s)),
                score: get("score").and_then(|s| s.parse().ok()),
                max: get("max").and_then(|s| s.parse().ok()),
                at: get("at").and_then(|s| s.parse().ok()).unwrap_or(0),
            };
            (lesson, p)
        })
        .collect()
}

fn cohort_must_exist<D: ReadDoc>(r: &Reader<'_, D>) -> Result<ObjId, Rejection> {
    r.root_map(META)
        .filter(|m| r.str(m, "title").is_some())
        .ok_or_else(|| Rejection::new(RejectCode::DocNotFound, "no such cohort"))
}

pub(crate) struct RosterEntry {
    pub(crate) user: String,
    pub(crate) role: String,
    pub(crate) name: String,
    /// How a newcomer let in by a join code came in (see [`joined`]).
    pub(crate) joined: Option<Value>,
}

/// A roster entry made by `join_code.redeem`: `{session, by, at}` (the code's session, the
/// staff member who made the code, when the newcomer came in), for the cohort's staff.
fn joined<D: ReadDoc>(r: &Reader<'_, D>, e: &ObjId) -> Option<Value> {
    r.str(e, "via_code")?;
    Some(json!({
        "session": r.str(e, "via_session").unwrap_or_default(),
        "by": r.str(e, "via_by").unwrap_or_default(),
        "at": r.int(e, "at").unwrap_or(0),
    }))
}

pub(crate) fn roster<D: ReadDoc>(r: &Reader<'_, D>) -> Vec<RosterEntry> {
    let Some(ro) = r.root_map(ROSTER) else {
        return Vec::new();
    };
    r.keys(&ro)
        .iter()
        .filter_map(|k| {
            let e = r.map(&ro, k)?;
            if r.bool(&e, "removed").unwrap_or(false) {
                return None;
            }
            Some(RosterEntry {
                user: k.clone(),
                role: r.str(&e, "role")?,
                name: r.str(&e, "name").unwrap_or_default(),
                joined: joined(r, &e),
            })
        })
        .collect()
}

/// The cohort as a member sees it: meta, announcements, sessions; the roster for staff.
pub(crate) fn cohort_view<D: ReadDoc>(
    r: &Reader<'_, D>,
    cohort: &CohortId,
    viewer: &Caller,
) -> Result<Value, Rejection> {
    let m = cohort_must_exist(r)?;
    authorize(viewer, cohort, Needs::Member)?;
    let mut announcements: Vec<Value> = r
        .root_map(ANNOUNCEMENTS)
        .map(|a| {
            r.keys(&a)
                .iter()
                .filter_map(|k| announcement(r, k))
                .collect()
        })
        .unwrap_or_default();
    announcements.sort_by_key(|a| a["at"].as_i64());
    let sessions: Vec<Value> = r
        .root_map(SESSIONS)
        .map(|s| {
            r.keys(&s)
                .iter()
                .filter_map(|k| {
                    let e = r.map(&s, k)?;
                    Some(json!({"id": k, "title": r.str(&e, "title")?, "at": r.int(&e, "at").unwrap_or(0)}))
                })
                .collect()
        })
        .unwrap_or_default();
    let roster_json = viewer.is_staff_of(cohort).then(|| {
        roster(r)
            .into_iter()
            .map(|e| match e.joined {
                Some(j) => json!({"user": e.user, "role": e.role, "name": e.name, "joined": j}),
                None => json!({"user": e.user, "role": e.role, "name": e.name}),
            })
            .collect::<Vec<_>>()
    });
    Ok(json!({
        "id": cohort.as_str(),
        "course": r.str(&m, "course").unwrap_or_default(),
        "courseId": r.str(&m, "course_id"),
        "title": r.str(&m, "title").unwrap_or_default(),
        "homeRegion": r.str(&m, "home_region").unwrap_or_default(),
        "announcements": announcements,
        "sessions": sessions,
        "roster": roster_json,
    }))
}

/// An announcement as JSON, if it reads.
pub(crate) fn announcement<D: ReadDoc>(r: &Reader<'_, D>, id: &str) -> Option<Value> {
    let a = r.root_map(ANNOUNCEMENTS).and_then(|x| r.map(&x, id))?;
    Some(json!({
        "id": id,
        "title": r.str(&a, "title")?,
        "body": r.str(&a, "body")?,
        "by": {"id": r.str(&a, "by").unwrap_or_default(), "name": r.str(&a, "by_name").unwrap_or_default()},
        "at": r.int(&a, "at").unwrap_or(0),
    }))
}

/// A roster entry as JSON (also for removed entries, flagged).
pub(crate) fn roster_entry<D: ReadDoc>(r: &Reader<'_, D>, user: &str) -> Option<Value> {
    let e = r.root_map(ROSTER).and_then(|x| r.map(&x, user))?;
    let mut entry = json!({
        "user": user,
        "role": r.str(&e, "role")?,
        "name": r.str(&e, "name").unwrap_or_default(),
        "removed": r.bool(&e, "removed").unwrap_or(false),
    });
    if let Some(j) = joined(r, &e) {
        entry["joined"] = j;
    }
    Some(entry)
}

/// A student's progress: the student themself or staff of the cohort.
pub(crate) fn student_progress<D: ReadDoc>(
    r: &Reader<'_, D>,
    cohort: &CohortId,
    viewer: &Caller,
    student: &UserId,
) -> Result<Value, Rejection> {
    cohort_must_exist(r)?;
    authorize(viewer, cohort, Needs::Member)?;
    if !viewer.role.is_staff() && &viewer.user != student {
        return Err(Rejection::new(
            RejectCode::Forbidden,
            "a student may only see their own progress",
        ));
    }
    let lessons: Vec<Value> = student_lessons(r, student.as_str())
        .iter()
        .map(|(lesson, p)| p.to_json(student.as_str(), lesson))
        .collect();
    Ok(json!({"student": student.as_str(), "lessons": lessons}))
}

/// One lesson's aggregates over a cohort's students.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LessonAggregate {
    /// The lesson.
    pub lesson: String,
    /// Students who have not started it (all students minus the two counts below).
    pub not_started: u64,
    /// Students in progress.
    pub in_progress: u64,
    /// Students who completed it.
    pub completed: u64,
    /// Completed over all students, in percent, one decimal.
    pub completion_rate: f64,
    /// The average of the scored students' score percentages, one decimal (`None`: no score).
    pub average_score_pct: Option<f64>,
}

/// Per-lesson aggregates of a cohort (`GET /api/cohorts/{id}/aggregates`, and the dashboard's).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CohortAggregates {
    /// The cohort.
    pub cohort: CohortId,
    /// Its students: the roster's plus anyone with progress (a roster may lag the LMS).
    pub students: u64,
    /// Every lesson anyone has progress in, by lesson id.
    pub lessons: Vec<LessonAggregate>,
    /// Completed (student, lesson) pairs over all pairs, in percent, one decimal.
    pub completion_rate: f64,
}

/// Per-lesson status counts, completion rate and average score percentage (staff only).
pub(crate) fn cohort_aggregates<D: ReadDoc>(
    r: &Reader<'_, D>,
    cohort: &CohortId,
    viewer: &Caller,
) -> Result<CohortAggregates, Rejection> {
    cohort_must_exist(r)?;
    authorize(viewer, cohort, Needs::Staff)?;
    // Students: the roster's students plus anyone with progress (a roster may lag the LMS).
    let mut students: Vec<String> = roster(r)
        .into_iter()
        .filter(|e| e.role == "student")
        .map(|e| e.user)
        .collect();
    if let Some(p) = r.root_map(PROGRESS) {
        students.extend(r.keys(&p));
    }
    students.sort();
    students.dedup();
    #[derive(Default)]
    struct Agg {
        in_progress: u64,
        completed: u64,
        score_pct_sum: f64,
        scored: u64,
    }
    let mut lessons: BTreeMap<String, Agg> = BTreeMap::new();
    for s in &students {
        for (lesson, p) in student_lessons(r, s) {
            let a = lessons.entry(lesson).or_default();
            match p.status {
                Some(ProgressStatus::InProgress) => a.in_progress += 1,
                Some(ProgressStatus::Completed) => a.completed += 1,
                _ => {}
            }
            if let (Some(score), Some(max)) = (p.score, p.max)
                && max > 0
            {
                a.score_pct_sum += score as f64 * 100.0 / max as f64;
                a.scored += 1;
            }
        }
    }
    let n = students.len() as u64;
    let round = |x: f64| (x * 10.0).round() / 10.0;
    let total: u64 = lessons.values().map(|a| a.completed).sum();
    let slots = n * lessons.len() as u64;
    let lessons = lessons
        .into_iter()
        .map(|(lesson, a)| LessonAggregate {
            lesson,
            not_started: n.saturating_sub(a.in_progress + a.completed),
            in_progress: a.in_progress,
            completed: a.completed,
            completion_rate: if n == 0 {
                0.0
            } else {
                round(a.completed as f64 * 100.0 / n as f64)
            },
            average_score_pct: (a.scored > 0).then(|| round(a.score_pct_sum / a.scored as f64)),
        })
        .collect();
    Ok(CohortAggregates {
        cohort: cohort.clone(),
        students: n,
        lessons,
        completion_rate: if slots == 0 {
            0.0
        } else {
            round(total as f64 * 100.0 / slots as f64)
        },
    })
}

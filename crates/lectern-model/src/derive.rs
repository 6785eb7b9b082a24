//! Deriving events: which event each command's change makes, and who gets which payload.
//!
//! An event is derived from the commit's [`Envelope`] and the document's values as of the change
//! (see [`Replica`](crate::Replica)), never from a diff, so the node that applied a command and
//! every replica that receives the change tell their subscribers the same thing, and a replay
//! from any resume token yields exactly the events emitted live after it. Inbox events are the
//! inbox's (`inbox.rs`); everything else is here.

use automerge::ReadDoc;
use serde_json::{Value, json};

use crate::envelope::Envelope;
use crate::event::{Audience, Delivery};
use crate::read::Reader;
use crate::schema::{META, SESSIONS};
use crate::view::{self, Poll, Question};

/// Deliveries of a question: public ones to all, anonymous ones with the author hidden from
/// classmates, hidden ones (pending, rejected, dismissed) to staff and the author only.
fn question_deliveries(q: &Question, payload: impl Fn(bool) -> Value) -> Vec<Delivery> {
    let full = payload(true);
    if !q.public() {
        return vec![
            Delivery {
                audience: Audience::Staff,
                payload: full.clone(),
            },
            Delivery {
                audience: Audience::User(q.author.clone()),
                payload: full,
            },
        ];
    }
    let anon = payload(false);
    if anon == full {
        return Delivery::all(full);
    }
    vec![
        Delivery {
            audience: Audience::Staff,
            payload: full.clone(),
        },
        Delivery {
            audience: Audience::User(q.author.clone()),
            payload: full,
        },
        Delivery {
            audience: Audience::Students {
                except: Some(q.author.clone()),
            },
            payload: anon,
        },
    ]
}

fn poll_deliveries(p: &Poll, payload: impl Fn(bool) -> Value) -> Vec<Delivery> {
    if p.results_public() {
        Delivery::all(payload(true))
    } else {
        vec![
            Delivery {
                audience: Audience::Staff,
                payload: payload(true),
            },
            Delivery {
                audience: Audience::All,
                payload: payload(false),
            },
        ]
    }
}

/// The event name and deliveries for one envelope, read as of the reader's heads. `None` for a
/// change that names no known command or whose item no longer reads.
pub(crate) fn derive<D: ReadDoc>(
    r: &Reader<'_, D>,
    env: &Envelope,
) -> Option<(&'static str, Vec<Delivery>)> {
    let target = env.t.as_deref();
    match env.c.as_str() {
        "session.create" | "session.update" => {
            let (_, meta) = view::session_meta(r)?;
            Some(("session:updated", Delivery::all(meta)))
        }
        "qa.ask" | "qa.answer" | "qa.pin" | "qa.dismiss" | "qa.approve" | "qa.reject" => {
            let q = Question::read(r, target?)?;
            let name = if env.c == "qa.ask" {
                "qa:new"
            } else {
                "qa:updated"
            };
            Some((name, question_deliveries(&q, |reveal| q.to_json(reveal))))
        }
        "qa.upvote" | "qa.unvote" => {
            let q = Question::read(r, target?)?;
            let payload = json!({"qaId": q.id, "count": q.upvotes()});
            Some(("qa:upvoted", question_deliveries(&q, |_| payload.clone())))
        }
        "poll.create" => {
            let p = Poll::read(r, target?)?;
            Some(("poll:new", poll_deliveries(&p, |with| p.to_json(with))))
        }
        "poll.vote" | "poll.reveal" => {
            let p = Poll::read(r, target?)?;
            let payload =
                json!({"pollId": p.id, "results": p.results(), "revealed": p.results_public()});
            if p.results_public() {
                Some(("poll:results", Delivery::all(payload)))
            } else {
                let d = Delivery {
                    audience: Audience::Staff,
                    payload,
                };
                Some(("poll:results", vec![d]))
            }
        }
        "poll.close" => {
            let p = Poll::read(r, target?)?;
            let payload = |with: bool| json!({"pollId": p.id, "results": if with { p.results() } else { Value::Null }});
            Some(("poll:closed", poll_deliveries(&p, payload)))
        }
        "chat.send" => {
            let (_, deleted, m) = view::chat_message(r, target?)?;
            (!deleted).then(|| ("chat:message", Delivery::all(m)))
        }
        "chat.delete" => Some(("chat:deleted", Delivery::all(json!({"id": target?})))),
        "broadcast.send" => {
            let (_, b) = view::broadcast(r, target?)?;
            Some(("broadcast", Delivery::all(b)))
        }
        // Joins and leaves come and go with connections: an event per connection would wake
        // every subscriber of the session for each one (O(N²) at class scale). Presence reaches
        // clients as the gateway's throttled `attendance:update`; the record is in the view.
        "attendance.join" | "attendance.leave" => None,
        "cohort.create" => {
            let m = r.root_map(META)?;
            let payload = json!({
                "course": r.str(&m, "course"), "title": r.str(&m, "title"),
                "homeRegion": r.str(&m, "home_region"),
            });
            Some(("cohort:updated", Delivery::all(payload)))
        }
        "roster.add" | "roster.remove" | "leaderboard.privacy" | "join_code.redeem" => {
            let e = view::roster_entry(r, target?)?;
            Some((
                "roster:updated",
                vec![Delivery {
                    audience: Audience::Staff,
                    payload: e,
                }],
            ))
        }
        "progress.update" => {
            let student = target?;
            let lesson = env.l.as_deref()?;
            let lessons = view::student_lessons(r, student);
            let payload = lessons.get(lesson)?.to_json(student, lesson);
            Some((
                "progress",
                vec![
                    Delivery {
                        audience: Audience::Staff,
                        payload: payload.clone(),
                    },
                    Delivery {
                        audience: Audience::User(student.to_owned()),
                        payload,
                    },
                ],
            ))
        }
        "announcement.post" => {
            let a = view::announcement(r, target?)?;
            Some(("announcement", Delivery::all(a)))
        }
        "inbox.push" | "inbox.read" | "inbox.prefs" => crate::inbox::derive_inbox(r, env),
        "session.link" => {
            let s = r.root_map(SESSIONS).and_then(|s| r.map(&s, target?))?;
            let payload = json!({"id": target?, "title": r.str(&s, "title")});
            Some(("session:linked", Delivery::all(payload)))
        }
        _ => None,
    }
}

//! Notifications in the model: the `inbox/{user}` document (in-app notifications, read marks,
//! preferences), and the triggers that say which applied commands notify whom.
//!
//! A trigger is a pure function of a command that was just applied and the document after it
//! ([`crate::Replica::trigger_for`]): a quiz scored tells the student, an announcement tells
//! every cohort member, an answer tells the asker, a closed poll tells its voters. The hub asks
//! for triggers only for commands it accepted itself (never for changes a peer sent), and the
//! node's job runner turns each into durable jobs, so an event notifies once however many nodes
//! hold the document.
//!
//! The inbox is an automerge document like the others, so a user's notifications follow them to
//! any node, and its events (`notification`, `notifications:read`, `notifications:prefs`) stream
//! and resume like every other document's.

use std::collections::BTreeMap;

use automerge::transaction::Transaction;
use automerge::{Automerge, ReadDoc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::apply::{Counts, Target, check_count, put, put_map, root};
use crate::auth::Caller;
use crate::command::{Command, CommandBody};
use crate::event::{Audience, Delivery};
use crate::ids::{CohortId, CommandId, DocId, Millis, UserId};
use crate::limits::{
    ANNOUNCEMENT_LEN_MAX_CHARS, EMAIL_ADDRESS_LEN_MAX_CHARS, INBOX_ITEMS_MAX, INBOX_VIEW_ITEMS_MAX,
    TITLE_LEN_MAX_CHARS,
};
use crate::read::Reader;
use crate::reject::{RejectCode, Rejection, check_text};
use crate::replica::Envelope;
use crate::schema::{ITEMS, PREFS};
use crate::view::{self, Poll, Question};

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyKind {
    /// A quiz or assignment was scored: the grade is ready.
    Grade,
    /// An instructor posted an announcement to the cohort.
    Announcement,
    /// Staff answered my question.
    Answer,
    /// A poll I voted in closed.
    PollClosed,
}

impl NotifyKind {
    /// Every kind.
    pub const ALL: [NotifyKind; 4] = [
        NotifyKind::Grade,
        NotifyKind::Announcement,
        NotifyKind::Answer,
        NotifyKind::PollClosed,
    ];

    /// The kind's name, as in preferences and unsubscribe links.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyKind::Grade => "grade",
            NotifyKind::Announcement => "announcement",
            NotifyKind::Answer => "answer",
            NotifyKind::PollClosed => "poll_closed",
        }
    }

    /// Parses a name written by [`NotifyKind::as_str`].
    pub fn parse(s: &str) -> Option<NotifyKind> {
        NotifyKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The channel a user who never chose gets: email for what matters or is rare (grades,
    /// announcements), in-app only for what is frequent (answers, closed polls), so that
    /// nobody is flooded with mail by default.
    pub fn default_channel(self) -> Channel {
        match self {
            NotifyKind::Grade | NotifyKind::Announcement => Channel::Email,
            NotifyKind::Answer | NotifyKind::PollClosed => Channel::InApp,
        }
    }

    /// Whether its email goes to many recipients at once (bulk mail in RFC 8058's sense).
    pub fn bulk(self) -> bool {
        matches!(self, NotifyKind::Announcement)
    }
}

/// Where a kind of notification goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// The in-app inbox only.
    InApp,
    /// The inbox and an email.
    Email,
    /// Nowhere.
    Off,
}

impl Channel {
    /// The channel's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::InApp => "in_app",
            Channel::Email => "email",
            Channel::Off => "off",
        }
    }

    fn parse(s: &str) -> Option<Channel> {
        match s {
            "in_app" => Some(Channel::InApp),
            "email" => Some(Channel::Email),
            "off" => Some(Channel::Off),
            _ => None,
        }
    }
}

/// A user's notification preferences, as stored in their inbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxPrefs {
    /// Channels the user chose, per kind; other kinds use [`NotifyKind::default_channel`].
    pub kinds: BTreeMap<NotifyKind, Channel>,
    /// Batch this user's emails into one daily digest.
    pub digest: bool,
    /// The address the user gave, if any.
    pub email: Option<String>,
}

impl InboxPrefs {
    /// The channel for `kind`.
    pub fn channel(&self, kind: NotifyKind) -> Channel {
        self.kinds
            .get(&kind)
            .copied()
            .unwrap_or_else(|| kind.default_channel())
    }

    /// As JSON, every kind spelled out.
    pub fn to_json(&self) -> Value {
        let kinds: serde_json::Map<String, Value> = NotifyKind::ALL
            .iter()
            .map(|k| (k.as_str().to_owned(), json!(self.channel(*k).as_str())))
            .collect();
        json!({"kinds": kinds, "digest": self.digest, "email": self.email})
    }
}

/// A notification, as carried by jobs and pushed into inboxes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Unique over the cluster: derived from the hash of the change that triggered it.
    pub id: CommandId,
    /// What it is about.
    pub kind: NotifyKind,
    /// Title (also the email's subject).
    pub title: String,
    /// Body text.
    pub body: String,
    /// A path in the client that shows what it is about.
    pub link: String,
    /// The cohort it comes from.
    pub cohort: Option<CohortId>,
    /// When the triggering command was applied.
    pub at: Millis,
}

/// A notification and who gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    /// The notification.
    pub notification: Notification,
    /// Its recipients, without duplicates.
    pub recipients: Vec<UserId>,
}

/// The trigger of `cmd`, just applied by `caller` to `doc` (whose last local change it is).
pub(crate) fn trigger(
    doc: &Automerge,
    id: &DocId,
    caller: &Caller,
    cmd: &Command,
    at: Millis,
) -> Option<Trigger> {
    let hash = doc.get_last_local_change()?.hash();
    let hex: String = hash.0[..12].iter().map(|b| format!("{b:02x}")).collect();
    // Invariant: "n" and 24 hex digits are a valid id.
    let nid = CommandId::new(format!("n{hex}")).expect("a hex notification id is valid");
    let r = Reader::now(doc);
    let me = caller.user.as_str();
    let (kind, title, body, link, cohort, recipients): (_, String, String, String, _, Vec<String>) =
        match (&cmd.body, id) {
            (
                CommandBody::ProgressUpdate {
                    student,
                    lesson,
                    score: Some(score),
                    max_score: Some(max),
                    ..
                },
                DocId::Cohort(c),
            ) => (
                NotifyKind::Grade,
                format!("Your grade for {lesson} is ready"),
                format!("You scored {score} out of {max} on {lesson}."),
                format!("/?cohort={c}&lesson={lesson}"),
                Some(c.clone()),
                vec![student.to_string()],
            ),
            (CommandBody::AnnouncementPost { title, body }, DocId::Cohort(c)) => (
                NotifyKind::Announcement,
                title.trim().to_owned(),
                body.trim().to_owned(),
                format!("/?cohort={c}"),
                Some(c.clone()),
                view::roster(&r)
                    .into_iter()
                    .map(|e| e.user)
                    .filter(|u| u != me)
                    .collect(),
            ),
            (CommandBody::QaAnswer { question, .. }, DocId::Session(s)) => {
                let q = Question::read(&r, question.as_str())?;
                let cohort = view::session_meta(&r).map(|(c, _)| c);
                (
                    NotifyKind::Answer,
                    "Your question was answered".to_owned(),
                    format!("“{}”\n\n{}", q.text(), q.answer_text().unwrap_or_default()),
                    format!("/?session={s}&question={question}"),
                    cohort,
                    vec![q.author.clone()]
                        .into_iter()
                        .filter(|u| u != me)
                        .collect(),
                )
            }
            (CommandBody::PollClose { poll }, DocId::Session(s)) => {
                let p = Poll::read(&r, poll.as_str())?;
                let cohort = view::session_meta(&r).map(|(c, _)| c);
                (
                    NotifyKind::PollClosed,
                    format!("Poll closed: {}", p.question),
                    "A poll you voted in has closed; its results are in the session.".to_owned(),
                    format!("/?session={s}&poll={poll}"),
                    cohort,
                    p.votes.iter().map(|(u, _)| u.clone()).collect(),
                )
            }
            _ => return None,
        };
    let mut recipients: Vec<UserId> = recipients
        .into_iter()
        .filter_map(|u| UserId::new(u).ok())
        .collect();
    recipients.sort();
    recipients.dedup();
    if recipients.is_empty() {
        return None;
    }
    Some(Trigger {
        notification: Notification {
            id: nid,
            kind,
            title,
            body,
            link,
            cohort,
            at,
        },
        recipients,
    })
}

/// Only the inbox's owner (or an admin) reads or changes it.
fn owner_or_admin(caller: &Caller, owner: &UserId) -> Result<(), Rejection> {
    if &caller.user == owner || caller.role == crate::Role::Admin {
        Ok(())
    } else {
        Err(Rejection::new(
            RejectCode::Forbidden,
            "only its owner may read or change an inbox",
        ))
    }
}

/// Whether `caller` may subscribe to `owner`'s inbox.
pub(crate) fn authorize_read(caller: &Caller, owner: &UserId) -> Result<(), Rejection> {
    owner_or_admin(caller, owner)
}

/// Applies an inbox command.
pub(crate) fn apply_inbox(
    tx: &mut Transaction<'_>,
    owner: &UserId,
    caller: &Caller,
    cmd: &Command,
    now: Millis,
    counts: &Counts,
) -> Result<Target, Rejection> {
    match &cmd.body {
        CommandBody::InboxPush {
            notification,
            kind,
            title,
            body,
            link,
            cohort,
        } => {
            if caller.role != crate::Role::Admin {
                return Err(Rejection::new(
                    RejectCode::Forbidden,
                    "only the node's job runner pushes notifications",
                ));
            }
            let title = check_text("title", title, TITLE_LEN_MAX_CHARS)?;
            let body = check_text("body", body, ANNOUNCEMENT_LEN_MAX_CHARS)?;
            if link.chars().count() > TITLE_LEN_MAX_CHARS {
                return Err(Rejection::new(RejectCode::TextTooLong, "link is too long"));
            }
            check_count(counts, "inbox.push", INBOX_ITEMS_MAX, "notifications")?;
            let items = root(tx, ITEMS)?;
            if Reader::now(&*tx)
                .map(&items, notification.as_str())
                .is_some()
            {
                return Err(Rejection::new(
                    RejectCode::AlreadyExists,
                    "this notification is already in the inbox",
                ));
            }
            let n = put_map(tx, &items, notification.as_str())?;
            put(tx, &n, "kind", kind.as_str())?;
            put(tx, &n, "title", title)?;
            put(tx, &n, "body", body)?;
            put(tx, &n, "link", link.as_str())?;
            put(
                tx,
                &n,
                "cohort",
                cohort.as_ref().map(CohortId::as_str).unwrap_or(""),
            )?;
            put(tx, &n, "at", now.as_i64())?;
            put(tx, &n, "read", false)?;
            Ok(Target {
                target: Some(notification.as_str().to_owned()),
                lesson: None,
            })
        }
        CommandBody::InboxRead { notifications } => {
            owner_or_admin(caller, owner)?;
            let items = root(tx, ITEMS)?;
            let targets: Vec<automerge::ObjId> = {
                let r = Reader::now(&*tx);
                if notifications.is_empty() {
                    r.keys(&items)
                        .iter()
                        .filter_map(|k| r.map(&items, k))
                        .filter(|n| r.bool(n, "read") == Some(false))
                        .collect()
                } else {
                    let mut found = Vec::new();
                    for id in notifications {
                        let n = r
                            .map(&items, id.as_str())
                            .ok_or_else(|| Rejection::not_found("notification", id.as_str()))?;
                        found.push(n);
                    }
                    found
                }
            };
            for n in targets {
                put(tx, &n, "read", true)?;
            }
            Ok(Target::default())
        }
        CommandBody::InboxPrefs {
            kinds,
            digest,
            email,
        } => {
            owner_or_admin(caller, owner)?;
            let prefs = root(tx, PREFS)?;
            for (kind, channel) in kinds {
                put(
                    tx,
                    &prefs,
                    &format!("kind/{}", kind.as_str()),
                    channel.as_str(),
                )?;
            }
            if let Some(digest) = digest {
                put(tx, &prefs, "digest", *digest)?;
            }
            if let Some(email) = email {
                let email = email.trim();
                if !email.is_empty() {
                    check_email(email)?;
                }
                put(tx, &prefs, "email", email)?;
            }
            Ok(Target::default())
        }
        _ => Err(Rejection::new(
            RejectCode::WrongDocument,
            "this command does not apply to an inbox",
        )),
    }
}

/// A plausible address: `local@domain`, no spaces or angle brackets, within the SMTP limit.
/// (Whether it exists is for the mail server to say.)
fn check_email(email: &str) -> Result<(), Rejection> {
    let bad = |why: &str| Rejection::new(RejectCode::InvalidInput, format!("email: {why}"));
    if email.chars().count() > EMAIL_ADDRESS_LEN_MAX_CHARS {
        return Err(bad("too long"));
    }
    if email
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';' | '"'))
    {
        return Err(bad("it contains a character an address cannot hold"));
    }
    match email.split_once('@') {
        Some((local, domain))
            if !local.is_empty() && domain.contains('.') && !domain.contains('@') =>
        {
            Ok(())
        }
        _ => Err(bad("an address looks like name@example.org")),
    }
}

/// The preferences stored in an inbox.
pub(crate) fn read_prefs<D: ReadDoc>(r: &Reader<'_, D>) -> InboxPrefs {
    let Some(p) = r.root_map(PREFS) else {
        return InboxPrefs::default();
    };
    let kinds = NotifyKind::ALL
        .iter()
        .filter_map(|k| {
            let c = r.str(&p, &format!("kind/{}", k.as_str()))?;
            Some((*k, Channel::parse(&c)?))
        })
        .collect();
    InboxPrefs {
        kinds,
        digest: r.bool(&p, "digest").unwrap_or(false),
        email: r.str(&p, "email").filter(|e| !e.is_empty()),
    }
}

/// One notification as JSON.
fn item<D: ReadDoc>(r: &Reader<'_, D>, items: &automerge::ObjId, id: &str) -> Option<Value> {
    let n = r.map(items, id)?;
    Some(json!({
        "id": id,
        "kind": r.str(&n, "kind")?,
        "title": r.str(&n, "title")?,
        "body": r.str(&n, "body").unwrap_or_default(),
        "link": r.str(&n, "link").unwrap_or_default(),
        "cohort": r.str(&n, "cohort").filter(|c| !c.is_empty()),
        "at": r.int(&n, "at").unwrap_or(0),
        "read": r.bool(&n, "read").unwrap_or(false),
    }))
}

/// Unread notifications.
fn unread<D: ReadDoc>(r: &Reader<'_, D>) -> usize {
    let Some(items) = r.root_map(ITEMS) else {
        return 0;
    };
    r.keys(&items)
        .iter()
        .filter_map(|k| r.map(&items, k))
        .filter(|n| r.bool(n, "read") == Some(false))
        .count()
}

/// The inbox as its owner sees it: the newest notifications, the unread count, preferences.
pub(crate) fn inbox_view<D: ReadDoc>(
    r: &Reader<'_, D>,
    owner: &UserId,
    viewer: &Caller,
) -> Result<Value, Rejection> {
    owner_or_admin(viewer, owner)?;
    let mut items: Vec<Value> = r
        .root_map(ITEMS)
        .map(|items| {
            r.keys(&items)
                .iter()
                .filter_map(|k| item(r, &items, k))
                .collect()
        })
        .unwrap_or_default();
    items.sort_by_key(|n| {
        std::cmp::Reverse((n["at"].as_i64(), n["id"].as_str().map(str::to_owned)))
    });
    let total = items.len();
    items.truncate(INBOX_VIEW_ITEMS_MAX);
    Ok(json!({
        "user": owner.as_str(),
        "items": items,
        "total": total,
        "unread": unread(r),
        "prefs": read_prefs(r).to_json(),
    }))
}

/// The event of an inbox command (only its owner and admins can subscribe, so `All`).
pub(crate) fn derive_inbox<D: ReadDoc>(
    r: &Reader<'_, D>,
    env: &Envelope,
) -> Option<(&'static str, Vec<Delivery>)> {
    let all = |payload| {
        vec![Delivery {
            audience: Audience::All,
            payload,
        }]
    };
    match env.c.as_str() {
        "inbox.push" => {
            let items = r.root_map(ITEMS)?;
            let mut n = item(r, &items, env.t.as_deref()?)?;
            n["unread"] = json!(unread(r));
            Some(("notification", all(n)))
        }
        "inbox.read" => Some(("notifications:read", all(json!({"unread": unread(r)})))),
        "inbox.prefs" => Some(("notifications:prefs", all(read_prefs(r).to_json()))),
        _ => None,
    }
}

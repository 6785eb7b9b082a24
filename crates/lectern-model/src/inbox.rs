//! The inbox document (`inbox/{user}`): a user's in-app notifications, read marks and
//! preferences; its commands, its view and its events.
//!
//! The inbox is an automerge document like the others, so a user's notifications follow them to
//! any node, and its events (`notification`, `notifications:read`, `notifications:prefs`) stream
//! and resume like every other document's. Only its owner (or an admin) reads or changes it;
//! only the node's job runner (an admin) pushes into it. What a notification is lives in
//! `notification.rs`; which commands notify whom, in `trigger.rs`.

use automerge::ReadDoc;
use automerge::transaction::Transaction;
use serde_json::{Value, json};

use crate::auth::{Caller, Role};
use crate::command::{Command, CommandBody};
use crate::envelope::Envelope;
use crate::event::Delivery;
use crate::ids::{CohortId, Millis, UserId};
use crate::limits::{
    ANNOUNCEMENT_LEN_MAX_CHARS, EMAIL_ADDRESS_LEN_MAX_CHARS, INBOX_ITEMS_MAX, INBOX_VIEW_ITEMS_MAX,
    TITLE_LEN_MAX_CHARS,
};
use crate::notification::{Channel, InboxPrefs, NotifyKind};
use crate::read::Reader;
use crate::reject::{RejectCode, Rejection, check_text};
use crate::schema::{ITEMS, PREFS};
use crate::write::{Counts, Target, check_count, put, put_map, root};

/// Only the inbox's owner (or an admin) reads or changes it.
fn owner_or_admin(caller: &Caller, owner: &UserId) -> Result<(), Rejection> {
    if &caller.user == owner || caller.role == Role::Admin {
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
            if caller.role != Role::Admin {
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
            Ok(Target::item(notification.as_str()))
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
    let all = Delivery::all;
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

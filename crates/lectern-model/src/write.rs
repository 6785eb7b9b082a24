//! The write layer, beside [`read`](crate::read): what every command family uses to change a
//! document inside one automerge transaction, and to check the limits that guard it.
//!
//! A write never fails for a reason a client caused (automerge refuses only a broken document
//! or a bug), so every failure here is an `internal` [`Rejection`]; the transaction is rolled
//! back and the document stays as it was. [`Target`] is what a command touched, which goes into
//! the commit's [`Envelope`](crate::Envelope); [`Counts`] is how many commands of each kind a
//! document holds, so that a limit check costs a hash lookup, not a walk of the map it limits.

use std::collections::HashMap;

use automerge::transaction::{Transactable, Transaction};
use automerge::{ObjId, ObjType, ScalarValue};

use crate::auth::Caller;
use crate::ids::{CommandId, Millis};
use crate::read::Reader;
use crate::reject::{RejectCode, Rejection};

/// One command being applied: who runs it, its id, when, and the document's counts (what every
/// command family's functions need besides the command's own fields).
pub(crate) struct Ctx<'a> {
    /// Who runs it (already authorized for the command).
    pub(crate) caller: &'a Caller,
    /// The command's id: the key of the item a creating command adds.
    pub(crate) id: &'a CommandId,
    /// When it is applied.
    pub(crate) now: Millis,
    /// The document's commands by kind, for limit checks.
    pub(crate) counts: &'a Counts,
}

impl Ctx<'_> {
    /// The caller's user id.
    pub(crate) fn user(&self) -> &str {
        self.caller.user.as_str()
    }
}

/// What a command touched, recorded in its envelope so that events can be derived from the
/// commit alone (on this node and on every replica).
#[derive(Debug, Clone, Default)]
pub(crate) struct Target {
    /// The item: question, poll, message, user, student … (None for document-wide commands).
    pub(crate) target: Option<String>,
    /// The lesson, for progress.
    pub(crate) lesson: Option<String>,
}

impl Target {
    /// A command that touched one item, `id`.
    pub(crate) fn item(id: &str) -> Target {
        Target {
            target: Some(id.to_owned()),
            lesson: None,
        }
    }
}

fn internal(e: automerge::AutomergeError) -> Rejection {
    Rejection::new(RejectCode::Internal, format!("document write failed: {e}"))
}

/// Sets `obj[key]` to a scalar.
pub(crate) fn put(
    tx: &mut Transaction<'_>,
    obj: &ObjId,
    key: &str,
    value: impl Into<ScalarValue>,
) -> Result<(), Rejection> {
    tx.put(obj, key, value).map_err(internal)
}

/// Sets `obj[key]` to a new, empty map and returns it.
pub(crate) fn put_map(
    tx: &mut Transaction<'_>,
    obj: &ObjId,
    key: &str,
) -> Result<ObjId, Rejection> {
    tx.put_object(obj, key, ObjType::Map).map_err(internal)
}

/// `obj[key]` if it is a map, else a new, empty map there.
pub(crate) fn map_or_new(
    tx: &mut Transaction<'_>,
    obj: &ObjId,
    key: &str,
) -> Result<ObjId, Rejection> {
    let existing = Reader::now(&*tx).map(obj, key);
    match existing {
        Some(m) => Ok(m),
        None => put_map(tx, obj, key),
    }
}

/// A top-level map the genesis change created (its absence is a broken document).
pub(crate) fn root(tx: &Transaction<'_>, key: &str) -> Result<ObjId, Rejection> {
    Reader::now(tx).root_map(key).ok_or_else(|| {
        Rejection::new(
            RejectCode::Internal,
            format!("document has no top-level `{key}` map"),
        )
    })
}

/// The refusal of a command sent to a document of another kind.
pub(crate) fn wrong_document() -> Rejection {
    Rejection::new(
        RejectCode::WrongDocument,
        "this command does not apply to this kind of document",
    )
}

/// How many commands of each kind the document holds (from its envelopes), in all and per
/// user for the kinds with a per-user quota, kept by the replica so that a limit check costs a
/// hash lookup, not a walk of the map it limits.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    by_command: HashMap<String, usize>,
    /// `(command, user)` → count, for [`PER_USER_QUOTA_COMMANDS`] only.
    by_user: HashMap<(String, String), usize>,
}

/// The commands counted per user (each has a per-user quota in a session).
const PER_USER_QUOTA_COMMANDS: [&str; 3] = ["qa.ask", "chat.send", "attendance.join"];

impl Counts {
    /// Counts one command `cmd` by `user`.
    pub(crate) fn count(&mut self, cmd: String, user: &str) {
        if PER_USER_QUOTA_COMMANDS.contains(&cmd.as_str()) {
            *self
                .by_user
                .entry((cmd.clone(), user.to_owned()))
                .or_default() += 1;
        }
        *self.by_command.entry(cmd).or_default() += 1;
    }

    fn of(&self, cmd: &str) -> usize {
        self.by_command.get(cmd).copied().unwrap_or(0)
    }

    fn of_user(&self, cmd: &str, user: &str) -> usize {
        self.by_user
            .get(&(cmd.to_owned(), user.to_owned()))
            .copied()
            .unwrap_or(0)
    }
}

/// Refuses the next `cmd` once the document holds `max` of them (`what` names them).
pub(crate) fn check_count(
    counts: &Counts,
    cmd: &str,
    max: usize,
    what: &str,
) -> Result<(), Rejection> {
    let n = counts.of(cmd);
    if n >= max {
        return Err(Rejection::new(
            RejectCode::LimitReached,
            format!("this document already holds {n} {what}, the limit is {max}"),
        ));
    }
    Ok(())
}

/// Refuses `user`'s next `cmd` once they have `max` of them here: one person cannot use up a
/// session's shared limit (staff are not held to it).
pub(crate) fn check_user_count(
    counts: &Counts,
    cmd: &str,
    caller: &Caller,
    max: usize,
    what: &str,
) -> Result<(), Rejection> {
    if caller.role.is_staff() {
        return Ok(());
    }
    let n = counts.of_user(cmd, caller.user.as_str());
    if n >= max {
        return Err(Rejection::new(
            RejectCode::LimitReached,
            format!("you already have {n} {what} here, the limit per person is {max}"),
        ));
    }
    Ok(())
}

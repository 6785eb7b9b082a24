//! Validating, authorizing and applying one command inside one automerge transaction.
//!
//! [`apply`] runs inside `Automerge::transact_with`: it sends the command to its document's
//! code (`session.rs`, `cohort.rs`, `inbox.rs`, `course.rs`, `flags.rs`), which reads what it must check,
//! refuses with a [`Rejection`] (the transaction is then rolled back, so a refused command
//! leaves no trace) or writes through the write layer (`write.rs`) and returns the [`Target`]
//! that goes into the commit's envelope.

use automerge::transaction::Transaction;

use crate::auth::Caller;
use crate::cohort::apply_cohort;
use crate::command::Command;
use crate::course::apply_course;
use crate::flags::apply_flags;
use crate::ids::{DocId, Millis};
use crate::inbox::apply_inbox;
use crate::reject::Rejection;
use crate::session::apply_session;
use crate::write::{Counts, Target};

/// Applies `cmd` to the document behind `tx`, or refuses it.
pub(crate) fn apply(
    tx: &mut Transaction<'_>,
    doc_id: &DocId,
    caller: &Caller,
    cmd: &Command,
    now: Millis,
    counts: &Counts,
) -> Result<Target, Rejection> {
    match doc_id {
        DocId::Session(_) => apply_session(tx, caller, cmd, now, counts),
        DocId::Cohort(cohort) => apply_cohort(tx, cohort, caller, cmd, now, counts),
        DocId::Inbox(owner) => apply_inbox(tx, owner, caller, cmd, now, counts),
        DocId::Course(_) => apply_course(tx, caller, cmd, now),
        DocId::Flags => apply_flags(tx, caller, cmd),
    }
}

//! The flags document (`flags/cluster`): the cluster's feature flags, one replicated document
//! that every node holds, so that a flag set on one node reaches every node through the mesh.
//!
//! ```text
//! meta  {title}
//! flags {"*/{feature}": bool, "{cohort}/{feature}": bool}
//! ```
//! `*` cannot be part of a cohort id, so the global key never collides with a cohort's. Each
//! flag is one scalar register: two operators setting the same flag on two nodes at once end on
//! one of the two values everywhere (automerge's deterministic winner), and flags of different
//! features or cohorts never conflict. Only admins write it (`flag.set`, `flag.unset`); what a
//! set of flags means is `feature.rs`.

use automerge::ReadDoc;
use automerge::transaction::{Transactable, Transaction};

use crate::auth::{Caller, Role};
use crate::command::{Command, CommandBody};
use crate::feature::{Feature, FlagSet};
use crate::ids::CohortId;
use crate::read::Reader;
use crate::reject::{RejectCode, Rejection};
use crate::schema::{FLAGS, META};
use crate::write::{Target, put, root};

/// The key prefix of the global flags.
const GLOBAL: &str = "*";

/// The title the first `flag.set` writes, which makes the document exist.
const TITLE: &str = "feature flags";

fn key(feature: Feature, cohort: Option<&CohortId>) -> String {
    let scope = cohort.map(CohortId::as_str).unwrap_or(GLOBAL);
    format!("{scope}/{feature}")
}

/// Applies `flag.set` / `flag.unset` (admins only).
pub(crate) fn apply_flags(
    tx: &mut Transaction<'_>,
    caller: &Caller,
    cmd: &Command,
) -> Result<Target, Rejection> {
    if caller.role != Role::Admin {
        return Err(Rejection::new(
            RejectCode::Forbidden,
            "only an admin may change feature flags",
        ));
    }
    let flags = root(tx, FLAGS)?;
    match &cmd.body {
        CommandBody::FlagSet {
            feature,
            cohort,
            enabled,
        } => {
            let meta = root(tx, META)?;
            put(tx, &meta, "title", TITLE)?;
            let k = key(*feature, cohort.as_ref());
            put(tx, &flags, &k, *enabled)?;
            Ok(Target::item(&k))
        }
        CommandBody::FlagUnset { feature, cohort } => {
            let k = key(*feature, cohort.as_ref());
            if Reader::now(&*tx).bool(&flags, &k).is_some() {
                tx.delete(&flags, k.as_str()).map_err(|e| {
                    Rejection::new(RejectCode::Internal, format!("document write failed: {e}"))
                })?;
            }
            Ok(Target::item(&k))
        }
        other => Err(Rejection::new(
            RejectCode::WrongDocument,
            format!("{} does not apply to the flags document", other.name()),
        )),
    }
}

/// The flags the document holds; keys that do not parse (a newer node's feature, a foreign
/// document) are skipped, so an unknown flag never switches anything off here.
pub(crate) fn read_flags<D: ReadDoc>(r: &Reader<'_, D>) -> FlagSet {
    let mut set = FlagSet::new();
    let Some(flags) = r.root_map(FLAGS) else {
        return set;
    };
    for k in r.keys(&flags) {
        let Some((scope, name)) = k.split_once('/') else {
            continue;
        };
        let (Some(feature), Some(on)) = (Feature::parse(name), r.bool(&flags, &k)) else {
            continue;
        };
        if scope == GLOBAL {
            set.set(feature, None, on);
        } else if let Ok(cohort) = CohortId::new(scope) {
            set.set(feature, Some(&cohort), on);
        }
    }
    set
}

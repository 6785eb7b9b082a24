//! Helpers shared by the hub's unit tests: temporary directories (each test opens a real sled
//! store in its own), callers, and command builders.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use lectern_model::{Caller, Command, CommandBody, CommandId, DocId, Role, SessionId};

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty directory under the system temp dir.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("lectern-hub-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The cohort every helper caller belongs to.
pub const COHORT: &str = "c1";

/// A caller of `role` in [`COHORT`].
pub fn caller(user: &str, role: Role) -> Caller {
    Caller {
        user: user.parse().expect("valid user id"),
        name: format!("User {user}"),
        role,
        cohorts: vec![COHORT.parse().expect("valid cohort id")],
    }
}

/// A command.
pub fn cmd(id: &str, body: CommandBody) -> Command {
    Command {
        id: id.parse::<CommandId>().expect("valid command id"),
        body,
    }
}

/// The session document `session/{id}`.
pub fn session(id: &str) -> DocId {
    DocId::Session(id.parse::<SessionId>().expect("valid session id"))
}

/// `session.create` in [`COHORT`].
pub fn create_session(title: &str) -> CommandBody {
    CommandBody::SessionCreate {
        cohort: COHORT.parse().expect("valid cohort id"),
        title: title.into(),
        moderation: false,
    }
}

/// `qa.ask`.
pub fn ask(text: &str) -> CommandBody {
    CommandBody::QaAsk {
        text: text.into(),
        anonymous: false,
    }
}

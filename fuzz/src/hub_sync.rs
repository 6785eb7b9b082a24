//! A peer's automerge sync messages through `Hub::receive_sync`, on a real sled store: the
//! path a certified node's `Sync` frames take into a document's writer task.
//!
//! One hub serves every input of a run (opening a store per input would be all the run did):
//! it stores one session with a question, and knows nothing of a second. An input's first byte
//! picks the document (bit 0: the stored session or the unknown one) and the peer (bit 1: one
//! of two); the rest is the sync message.
//!
//! Invariants: nothing panics (on the writer task either: libFuzzer's panic hook aborts the
//! process), except inside automerge, whose panics the model catches and the hub answers by
//! loading the document again (see [`run`]); a message is accepted or refused as `bad_sync_message`, never a store failure,
//! an overload or a shutdown; a refused message changes no document's heads; a reply is a
//! sync message that decodes; the stored session still answers reads after every message.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use lectern_hub::{Hub, HubConfig};
use lectern_model::automerge::sync;
use lectern_model::{Caller, Command, CommandBody, DocId, Role, SessionId};
use lectern_store::Store;

/// The session the hub stores.
pub const STORED_SESSION: &str = "fuzz-stored";

/// A session the hub has never seen.
pub const UNKNOWN_SESSION: &str = "fuzz-unknown";

/// A hub on a store in a directory of its own, removed when the fixture is dropped.
pub struct Fixture {
    runtime: tokio::runtime::Runtime,
    hub: Hub,
    dir: PathBuf,
}

impl Fixture {
    /// A hub over a fresh store under the system temp dir (`TMPDIR`), holding
    /// [`STORED_SESSION`] with one question.
    pub fn new() -> Fixture {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lectern-fuzz-hub-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let store = Store::open(&dir).expect("open the store");
        let hub = {
            let _entered = runtime.enter();
            Hub::new(store, HubConfig::default())
        };
        let fixture = Fixture { runtime, hub, dir };
        let ada = caller();
        for (id, body) in [
            (
                "fuzz-create",
                CommandBody::SessionCreate {
                    cohort: "fuzz".parse().expect("a cohort id"),
                    title: "Fuzzing".into(),
                    moderation: false,
                },
            ),
            (
                "fuzz-ask",
                CommandBody::QaAsk {
                    text: "What does a sync message hold?".into(),
                    anonymous: false,
                },
            ),
        ] {
            let cmd = Command {
                id: id.parse().expect("a command id"),
                body,
            };
            fixture
                .runtime
                .block_on(
                    fixture
                        .hub
                        .execute(session(STORED_SESSION), ada.clone(), cmd),
                )
                .expect("the fixture's commands");
        }
        fixture
    }

    /// The hub.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Runs `f` on the runtime the hub's writer tasks live on (another runtime would never
    /// drive them).
    pub fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.runtime.block_on(f)
    }

    /// Runs one input on this fixture's hub.
    pub fn run(&self, data: &[u8]) {
        let Some((&first, message)) = data.split_first() else {
            return;
        };
        let doc = session(if first & 1 == 0 {
            STORED_SESSION
        } else {
            UNKNOWN_SESSION
        });
        let peer = if first & 2 == 0 { "peer-a" } else { "peer-b" };
        let hub = &self.hub;
        let heads_before = (
            hub.doc_heads(&session(STORED_SESSION)),
            hub.doc_heads(&session(UNKNOWN_SESSION)),
        );
        let result = self
            .runtime
            .block_on(hub.receive_sync(doc, peer, message.to_vec()));
        match result {
            Ok(Some(reply)) => {
                if let Err(e) = sync::Message::decode(&reply) {
                    panic!("the hub's reply does not decode: {e}");
                }
            }
            Ok(None) => {}
            Err(e) => {
                assert_eq!(e.code(), "bad_sync_message", "refused with {e:?}");
                let heads_after = (
                    hub.doc_heads(&session(STORED_SESSION)),
                    hub.doc_heads(&session(UNKNOWN_SESSION)),
                );
                assert_eq!(heads_before, heads_after, "a refused message changed heads");
            }
        }
        let token = self
            .runtime
            .block_on(hub.read(session(STORED_SESSION), |r| r.token()));
        assert!(
            token.is_ok(),
            "the stored session stopped serving: {token:?}"
        );
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture::new()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.runtime.block_on(self.hub.shutdown());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn caller() -> Caller {
    Caller {
        user: "fuzz-ada".parse().expect("a user id"),
        name: "Ada".into(),
        role: Role::Instructor,
        cohorts: vec!["fuzz".parse().expect("a cohort id")],
    }
}

/// The session document `session/{id}`.
pub fn session(id: &str) -> DocId {
    DocId::Session(id.parse::<SessionId>().expect("a session id"))
}

/// Runs one input on the process's one hub (made on first use; its directory is left for the
/// caller's `TMPDIR` cleanup, as a static is never dropped).
pub fn run(data: &[u8]) {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE
        .get_or_init(|| {
            allow_caught_automerge_panics();
            Fixture::new()
        })
        .run(data)
}

/// libFuzzer's panic hook aborts on every panic, before any unwinding. automerge 0.12's change
/// parser panics on some malformed changes; the model catches those (`SyncError::Panicked`)
/// and the hub reloads the document, which this harness checks. So a panic raised inside
/// automerge or its column codec (hexane) unwinds to that catch; any other still aborts.
/// How many caught automerge panics a run prints.
const CAUGHT_SHOWN_MAX: u64 = 20;
static CAUGHT_SHOWN: AtomicU64 = AtomicU64::new(0);

fn allow_caught_automerge_panics() {
    let abort = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let caught = info.location().is_some_and(|l| {
            let file = l.file();
            file.contains("/automerge-") || file.contains("/hexane-")
        });
        if !caught {
            abort(info);
        } else if CAUGHT_SHOWN.fetch_add(1, Ordering::Relaxed) < CAUGHT_SHOWN_MAX {
            // Where automerge panicked, for the first few: a finding whose panic unwound past
            // the model's catch shows up later as a refusal with another code, far from here.
            eprintln!("hub_sync: caught inside automerge: {info}");
        }
    }));
}

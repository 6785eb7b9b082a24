//! Blobs a node lacks, brought from its peers: on the first request for one (pull-through)
//! and ahead of time for the courses it stores (prefetch), so a classroom node that lost its
//! uplink still serves every lesson it was given.
//!
//! The store pulls only blobs it was told are **wanted** (those the courses it stores name):
//! a request for any other hash is a plain `404`, so nobody can make a node ask its peers for
//! random names, and no state is kept for them. One pull per blob runs at a time (concurrent
//! requests for it wait for that one), at most [`PULLS_AT_ONCE_MAX`] pulls run at once, and
//! every pulled blob is verified against its name twice: by the transport that received it
//! and by [`BlobStore::put_verified`] before it is written.
//!
//! The peers are behind [`BlobPeers`], which the node implements over its mesh: this crate
//! knows neither QUIC nor documents.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use tokio::sync::Semaphore;

use crate::blob::{Blob, BlobError, BlobHash, BlobStore};

/// Pulls from peers running at once on a node; more wait their turn.
pub const PULLS_AT_ONCE_MAX: usize = 8;

/// A blob a peer delivered (verified by the transport against its name; verified again
/// before it is stored).
#[derive(Debug, Clone)]
pub struct PeerBlob {
    /// The content type the peer stored it with.
    pub content_type: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// The future [`BlobPeers::fetch`] returns.
pub type FetchFuture<'a> = Pin<Box<dyn Future<Output = Option<PeerBlob>> + Send + 'a>>;

/// Where a store gets the blobs it lacks: the node's peers.
pub trait BlobPeers: Send + Sync + 'static {
    /// The blob named `hash` from some peer, at most `max_bytes` long, or `None` when no
    /// peer delivered it.
    fn fetch(&self, hash: BlobHash, max_bytes: u64) -> FetchFuture<'_>;
}

/// What a prefetch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PrefetchReport {
    /// Blobs already stored here.
    pub present: usize,
    /// Blobs brought from peers.
    pub fetched: usize,
    /// Blobs no peer delivered (to try again later).
    pub missing: usize,
    /// Bytes brought from peers.
    pub fetched_bytes: u64,
}

/// The pulling state of a [`BlobStore`].
#[derive(Default)]
pub(crate) struct Pull {
    peers: OnceLock<Arc<dyn BlobPeers>>,
    wanted: RwLock<HashSet<BlobHash>>,
    /// One gate per blob being pulled: a second request for it waits for the first pull.
    gates: Mutex<HashMap<BlobHash, Arc<tokio::sync::Mutex<()>>>>,
    places: OnceLock<Semaphore>,
    pub(crate) pulled: AtomicU64,
    pub(crate) pull_failures: AtomicU64,
}

impl std::fmt::Debug for Pull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pull")
            .field("peers", &self.peers.get().is_some())
            .field("pulled", &self.pulled)
            .finish_non_exhaustive()
    }
}

impl Pull {
    fn gate(&self, hash: BlobHash) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(gates.entry(hash).or_default())
    }

    fn release(&self, hash: BlobHash) {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        // Only the last holder removes it; a waiter still holds a clone.
        if gates.get(&hash).is_some_and(|g| Arc::strong_count(g) == 1) {
            gates.remove(&hash);
        }
    }

    fn is_wanted(&self, hash: BlobHash) -> bool {
        self.wanted
            .read()
            .map(|w| w.contains(&hash))
            .unwrap_or(false)
    }
}

impl BlobStore {
    /// Lets this store pull the blobs it lacks from `peers`. Only the first call counts.
    pub fn set_peers(&self, peers: Arc<dyn BlobPeers>) {
        let _ = self.pull.peers.set(peers);
    }

    /// The blobs this store may pull: those the courses the node stores name. Replaces the
    /// previous set.
    pub fn want(&self, hashes: impl IntoIterator<Item = BlobHash>) {
        let set: HashSet<BlobHash> = hashes.into_iter().collect();
        match self.pull.wanted.write() {
            Ok(mut w) => *w = set,
            Err(p) => *p.into_inner() = set,
        }
    }

    /// How many blobs the stored courses name, and how many of those are on this node's disk
    /// (`lectern status`: what a classroom node holds for its offline day). Checks each one's
    /// file, so it blocks for a moment.
    pub fn wanted_held(&self) -> (usize, usize) {
        let wanted: Vec<BlobHash> = self
            .pull
            .wanted
            .read()
            .map(|w| w.iter().copied().collect())
            .unwrap_or_default();
        let held = wanted.iter().filter(|h| self.contains(**h)).count();
        (wanted.len(), held)
    }

    /// The blob, verified: from memory or disk, else from a peer if it is wanted and this
    /// store has peers. `None`: absent here and not to be had.
    pub async fn get_or_pull(
        self: &Arc<Self>,
        hash: BlobHash,
    ) -> Result<Option<Arc<Blob>>, BlobError> {
        if let Some(blob) = self.cached(hash) {
            return Ok(Some(blob));
        }
        if let Some(blob) = self.get_blocking(hash).await? {
            return Ok(Some(blob));
        }
        match self.pull(hash).await? {
            Some(_) => self.get_blocking(hash).await,
            None => Ok(None),
        }
    }

    /// Brings every blob of `hashes` this store lacks from its peers, one after the other
    /// (a prefetch must not crowd out the pulls of students waiting for a lesson), and stops
    /// bringing more once `max_bytes` were brought.
    pub async fn prefetch(self: &Arc<Self>, hashes: &[BlobHash], max_bytes: u64) -> PrefetchReport {
        let mut report = PrefetchReport::default();
        for &hash in hashes {
            let store = Arc::clone(self);
            let here = tokio::task::spawn_blocking(move || store.contains(hash))
                .await
                .unwrap_or(false);
            if here {
                report.present += 1;
                continue;
            }
            if report.fetched_bytes >= max_bytes {
                report.missing += 1;
                continue;
            }
            match self.pull(hash).await {
                Ok(Some(size)) => {
                    report.fetched += 1;
                    report.fetched_bytes += size;
                }
                Ok(None) => report.missing += 1,
                Err(e) => {
                    tracing::warn!(blob = %hash, "storing a prefetched blob failed: {e}");
                    report.missing += 1;
                }
            }
        }
        report
    }

    async fn get_blocking(
        self: &Arc<Self>,
        hash: BlobHash,
    ) -> Result<Option<Arc<Blob>>, BlobError> {
        let store = Arc::clone(self);
        tokio::task::spawn_blocking(move || store.get(hash))
            .await
            .map_err(|e| BlobError::Io(std::io::Error::other(e)))?
    }

    /// Pulls `hash` from the peers if it is wanted, once whatever the number of requests, and
    /// stores it (on disk only: a prefetch must not fill the memory cache). Its size, or
    /// `None` when it is not to be had.
    async fn pull(self: &Arc<Self>, hash: BlobHash) -> Result<Option<u64>, BlobError> {
        let Some(peers) = self.pull.peers.get().cloned() else {
            return Ok(None);
        };
        if !self.pull.is_wanted(hash) {
            return Ok(None);
        }
        let gate = self.pull.gate(hash);
        let result = async {
            let _turn = gate.lock().await;
            // The pull this one waited for may have brought it.
            let store = Arc::clone(self);
            if tokio::task::spawn_blocking(move || store.contains(hash))
                .await
                .unwrap_or(false)
            {
                return Ok(Some(0));
            }
            let places = self
                .pull
                .places
                .get_or_init(|| Semaphore::new(PULLS_AT_ONCE_MAX));
            let Ok(_place) = places.acquire().await else {
                return Ok(None);
            };
            let Some(got) = peers.fetch(hash, self.limits().blob_max_bytes).await else {
                self.pull.pull_failures.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            };
            let size = got.bytes.len() as u64;
            let store = Arc::clone(self);
            tokio::task::spawn_blocking(move || {
                store.put_verified(hash, &got.bytes, &got.content_type)
            })
            .await
            .map_err(|e| BlobError::Io(std::io::Error::other(e)))??;
            self.pull.pulled.fetch_add(1, Ordering::Relaxed);
            Ok(Some(size))
        }
        .await;
        drop(gate);
        self.pull.release(hash);
        result
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::blob::BlobLimits;
    use crate::test_dir::TestDir;

    /// Peers holding `blobs`, counting what they are asked; `lie` sends other bytes.
    struct Peers {
        blobs: Vec<Vec<u8>>,
        asked: AtomicUsize,
        lie: bool,
    }

    impl BlobPeers for Peers {
        fn fetch(&self, hash: BlobHash, _max: u64) -> FetchFuture<'_> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                // Slow enough that concurrent requests overlap.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                let bytes = self.blobs.iter().find(|b| BlobHash::of(b) == hash)?;
                let bytes = if self.lie {
                    b"other bytes".to_vec()
                } else {
                    bytes.clone()
                };
                Some(PeerBlob {
                    content_type: "text/markdown".into(),
                    bytes,
                })
            })
        }
    }

    fn store_with(tag: &str, blobs: &[&[u8]], lie: bool) -> (TestDir, Arc<BlobStore>, Arc<Peers>) {
        let dir = TestDir::new(tag);
        let store = Arc::new(BlobStore::open(&dir.0, BlobLimits::default()).unwrap());
        let peers = Arc::new(Peers {
            blobs: blobs.iter().map(|b| b.to_vec()).collect(),
            asked: AtomicUsize::new(0),
            lie,
        });
        store.set_peers(peers.clone());
        (dir, store, peers)
    }

    #[tokio::test]
    async fn only_wanted_blobs_are_pulled_and_each_once_for_many_requests() {
        let lesson: &[u8] = b"# A lesson\n\nwith a body";
        let (_dir, store, peers) = store_with("pull-once", &[lesson], false);
        let hash = BlobHash::of(lesson);
        // Not named by a course: no peer is asked, however often it is requested.
        assert!(store.get_or_pull(hash).await.unwrap().is_none());
        assert_eq!(peers.asked.load(Ordering::SeqCst), 0);

        store.want([hash]);
        let many = (0..10).map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.get_or_pull(hash).await })
        });
        for got in futures_join(many).await {
            assert_eq!(&got.unwrap().unwrap().body[..], lesson);
        }
        assert_eq!(
            peers.asked.load(Ordering::SeqCst),
            1,
            "one pull for ten requests"
        );
        assert_eq!(store.stats().pulled, 1);
        assert!(store.contains(hash));
        assert!(
            store.pull.gates.lock().unwrap().is_empty(),
            "no gate is left behind"
        );
    }

    #[tokio::test]
    async fn bytes_that_do_not_match_their_name_are_never_stored() {
        let lesson: &[u8] = b"the real lesson";
        let (_dir, store, _peers) = store_with("pull-lie", &[lesson], true);
        let hash = BlobHash::of(lesson);
        store.want([hash]);
        let got = store.get_or_pull(hash).await;
        assert!(
            matches!(got, Err(BlobError::HashMismatch { .. })),
            "{got:?}"
        );
        assert!(!store.contains(hash));
        assert_eq!(store.stats().pulled, 0);
    }

    #[tokio::test]
    async fn a_prefetch_reports_what_it_brought_and_stops_at_its_byte_budget() {
        let (a, b, c): (&[u8], &[u8], &[u8]) = (b"lesson one", b"lesson two!", b"absent");
        let (_dir, store, _peers) = store_with("prefetch", &[a, b], false);
        store.put(a, "text/markdown").unwrap();
        let hashes = [BlobHash::of(a), BlobHash::of(b), BlobHash::of(c)];
        store.want(hashes);
        let report = store.prefetch(&hashes, u64::MAX).await;
        assert_eq!(
            report,
            PrefetchReport {
                present: 1,
                fetched: 1,
                missing: 1,
                fetched_bytes: b.len() as u64,
            }
        );
        assert!(store.contains(BlobHash::of(b)));
        // A budget already spent brings nothing more.
        let (_dir2, other, peers) = store_with("prefetch-budget", &[a, b], false);
        other.want(hashes);
        let report = other.prefetch(&hashes[..2], 1).await;
        assert_eq!((report.fetched, report.missing), (1, 1));
        assert_eq!(peers.asked.load(Ordering::SeqCst), 1);
    }

    async fn futures_join<T>(tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }
}

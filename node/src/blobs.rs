//! Content blobs over the mesh, glued here because only the node knows both the content store
//! and the mesh: the store serves its blobs to peers ([`StoreSource`]), asks peers for the
//! blobs it lacks ([`MeshPeers`]), and [`start`] keeps it told which blobs the courses this
//! node stores name (the only ones it may pull) and, unless `mesh.prefetch_content` is off,
//! brings them all ahead of time.
//!
//! A classroom node stores only its cohorts' courses (the share policy brings the course each
//! cohort follows), so what it prefetches is exactly what its class will read offline; a
//! region node that shares everything holds every course and prefetches them all.

use std::sync::{Arc, Weak};
use std::time::Duration;

use lectern_content::{BlobHash, BlobPeers, BlobStore, FetchFuture, PeerBlob};
use lectern_hub::Hub;
use lectern_mesh::{BlobSource, Mesh};
use lectern_model::DocId;
use tokio::sync::broadcast;
use tracing::{debug, info, warn};

/// Courses whose blobs a node tracks at most (the catalog's own bound is far below).
const COURSES_TRACKED_MAX: usize = 10_000;

/// Changes settle this long before the wanted blobs are worked out again (a publication
/// arrives as a burst of sync messages).
const SETTLE_MS: u64 = 500;

/// A prefetch that left blobs missing (no peer had them yet) tries again after this long.
const RETRY_MS: u64 = 5_000;

/// The node's blob store as its peers read it.
pub(crate) struct StoreSource(pub(crate) Arc<BlobStore>);

impl BlobSource for StoreSource {
    fn blob(&self, hash: &[u8; 32]) -> Option<(String, bytes::Bytes)> {
        match self.0.get(BlobHash::from_bytes(*hash)) {
            Ok(Some(blob)) => Some((blob.content_type.clone(), blob.body.clone())),
            Ok(None) => None,
            Err(e) => {
                warn!(blob = %BlobHash::from_bytes(*hash), "reading a blob for a peer failed: {e}");
                None
            }
        }
    }
}

/// The node's peers as its blob store asks them. Holds the mesh weakly: the mesh holds the
/// store (to serve it), and a stopped node must let go of both.
pub(crate) struct MeshPeers(pub(crate) Weak<Mesh>);

impl BlobPeers for MeshPeers {
    fn fetch(&self, hash: BlobHash, max_bytes: u64) -> FetchFuture<'_> {
        Box::pin(async move {
            let mesh = self.0.upgrade()?;
            match mesh.fetch_blob(*hash.as_bytes(), max_bytes).await {
                Ok(got) => {
                    debug!(blob = %hash, peer = %got.peer, "brought a blob from a peer");
                    Some(PeerBlob {
                        content_type: got.content_type,
                        bytes: got.bytes,
                    })
                }
                Err(e) => {
                    debug!(blob = %hash, "no peer delivered the blob: {e}");
                    None
                }
            }
        })
    }
}

/// Lets `store` pull from `mesh`'s peers and keeps its wanted blobs (and, with `prefetch`,
/// its copies) up to date with the courses `hub` stores, until the mesh stops.
pub(crate) fn start(hub: Hub, store: Arc<BlobStore>, mesh: &Arc<Mesh>, prefetch: bool) {
    store.set_peers(Arc::new(MeshPeers(Arc::downgrade(mesh))));
    let mesh = Arc::clone(mesh);
    tokio::spawn(async move {
        let mut changes = hub.changes();
        let mut peers = mesh.peer_changes();
        loop {
            let missing = refresh(&hub, &store, prefetch).await;
            // Wait for a course to change, a peer to come (it may hold what was missing), or
            // the retry time when something was missing.
            let retry = async {
                if missing > 0 {
                    tokio::time::sleep(Duration::from_millis(RETRY_MS)).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = course_changed(&mut changes) => {}
                changed = peers.changed() => if changed.is_err() { return },
                () = retry => {}
                () = mesh.stopped() => return,
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(SETTLE_MS)) => {}
                () = mesh.stopped() => return,
            }
        }
    });
}

/// Completes at the next change of a course document (or when the feed lagged and may have
/// hidden one).
async fn course_changed(changes: &mut broadcast::Receiver<lectern_hub::Change>) {
    loop {
        match changes.recv().await {
            Ok(change) if matches!(change.doc, DocId::Course(_)) => return,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

/// Tells `store` which blobs the stored courses name and, with `prefetch`, brings those it
/// lacks. Returns how many are still missing.
async fn refresh(hub: &Hub, store: &Arc<BlobStore>, prefetch: bool) -> usize {
    let mut wanted: Vec<BlobHash> = Vec::new();
    let mut per_course: Vec<(DocId, Vec<BlobHash>)> = Vec::new();
    for (doc, _) in hub.course_heads(COURSES_TRACKED_MAX) {
        let Ok(outline) = hub.read(doc.clone(), |r| r.course_outline()).await else {
            continue;
        };
        let blobs: Vec<BlobHash> = outline
            .iter()
            .flat_map(|m| &m.lessons)
            .flat_map(|l| std::iter::once(&l.body).chain(&l.html).chain(&l.assets))
            .filter_map(|h| h.parse().ok())
            .collect();
        wanted.extend(&blobs);
        per_course.push((doc, blobs));
    }
    store.want(wanted);
    if !prefetch {
        return 0;
    }
    let mut missing = 0;
    for (doc, blobs) in per_course {
        let report = store
            .prefetch(&blobs, lectern_content::package::COURSE_MAX_BYTES)
            .await;
        if report.fetched > 0 || report.missing > 0 {
            info!(
                course = %doc,
                fetched = report.fetched,
                bytes = report.fetched_bytes,
                present = report.present,
                missing = report.missing,
                "prefetched the course's content from peers"
            );
        }
        missing += report.missing;
    }
    missing
}

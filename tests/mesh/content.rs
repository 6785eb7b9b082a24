//! Course content over the mesh: a node brings the blobs of the courses it stores from its
//! peers ahead of time (a classroom node then serves every lesson with its uplink gone), pulls
//! a blob on its first request when it does not prefetch, refetches a copy that fails
//! verification, never asks its peers for a blob no course names, and refuses a peer's bytes
//! that do not match the name it asked for.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use lectern_content::BlobHash;
use lectern_hub::{Hub, HubConfig};
use lectern_mesh::{BlobFetchError, BlobSource, Mesh, MeshConfig, NodeTls, PeerAddr};
use lectern_model::DocId;
use lectern_node::{DEMO_COURSE, Node};
use lectern_testkit::Http;

use super::{Cluster, MEMBERS, eventually, eventually_ok, reserved_udp_addr, within};
use crate::support::TempDir;

/// Every blob the demo course's outline names on `node`.
async fn course_blobs(node: &Node) -> anyhow::Result<Vec<BlobHash>> {
    let course = DocId::Course(DEMO_COURSE.parse()?);
    let outline = node.hub.read(course, |r| r.course_outline()).await?;
    let blobs: BTreeSet<BlobHash> = outline
        .iter()
        .flat_map(|m| &m.lessons)
        .flat_map(|l| std::iter::once(&l.body).chain(&l.html).chain(&l.assets))
        .map(|h| h.parse())
        .collect::<Result<_, _>>()?;
    Ok(blobs.into_iter().collect())
}

/// `GET /content/{hash}` on `node`: the bytes, checked to hash to their name.
async fn read_blob(node: &Node, hash: BlobHash) -> anyhow::Result<Vec<u8>> {
    let r = Http::new(node.http_addr)
        .get(&format!("/content/{hash}"), None)
        .await?;
    anyhow::ensure!(
        r.status == 200,
        "/content/{hash}: {} {}",
        r.status,
        r.text()
    );
    anyhow::ensure!(
        BlobHash::of(&r.body) == hash,
        "/content/{hash} served other bytes"
    );
    Ok(r.body)
}

/// Kills: no prefetch (the blobs are not on the classroom's disk before the region goes),
/// the course left out of the classroom's share policy (nothing to prefetch), a corrupted copy
/// served or answered 404 instead of refetched, a blob served only while the region is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classroom_node_prefetches_its_course_refetches_a_corrupted_blob_and_serves_it_offline()
-> anyhow::Result<()> {
    within(async {
        let mut cluster = Cluster::new("mesh-content")?;
        let region = cluster.start("node-b", vec![], true).await?;
        let classroom = cluster.start_classroom("node-a", region).await?;
        let course = DocId::Course(DEMO_COURSE.parse()?);
        cluster
            .converged(&course, &[region, classroom], Duration::from_secs(20))
            .await?;
        let blobs = course_blobs(cluster.node(classroom)).await?;
        anyhow::ensure!(
            blobs.len() >= 5,
            "the demo course names {} blobs",
            blobs.len()
        );
        let store = cluster.node(classroom).content.clone();
        eventually(
            "the classroom prefetches the course",
            Duration::from_secs(30),
            // Counted once stored: both, so that the count below is final.
            || {
                blobs.iter().all(|h| store.contains(*h))
                    && store.stats().pulled >= blobs.len() as u64
            },
        )
        .await?;
        assert_eq!(store.stats().pulled, blobs.len() as u64);
        // `lectern status` says what the classroom holds for its offline day.
        let status = Http::new(cluster.node(classroom).http_addr)
            .get("/admin/status", Some("admin-token-0123456789"))
            .await?
            .json()?;
        assert_eq!(status["content"]["courseBlobs"], blobs.len());
        assert_eq!(status["content"]["held"], blobs.len());

        // A copy that no longer matches its name is refused and brought again.
        let victim = blobs[0];
        let path = cluster.dirs[classroom]
            .path()
            .join("content")
            .join(format!("{:02x}", victim.as_bytes()[0]))
            .join(victim.to_string());
        anyhow::ensure!(path.is_file(), "the blob is at {}", path.display());
        std::fs::write(&path, b"bit rot")?;
        read_blob(cluster.node(classroom), victim).await?;
        assert_eq!(store.stats().corrupt, 1);
        assert_eq!(store.stats().pulled, blobs.len() as u64 + 1);

        // The uplink goes: every lesson and asset is still served, from the classroom's disk.
        cluster.stop(region).await?;
        for hash in &blobs {
            read_blob(cluster.node(classroom), *hash).await?;
        }
        assert_eq!(store.stats().pulled, blobs.len() as u64 + 1);
        cluster.stop_all().await
    })
    .await
}

/// Kills: no pull-through (404 for a lesson the node lacks), a pull per request instead of
/// one, a node that asks its peers for any hash it is sent (an amplifier for anonymous
/// requests), a prefetch that runs although it is switched off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_is_pulled_from_a_peer_on_its_first_request_and_only_if_a_course_names_it()
-> anyhow::Result<()> {
    within(async {
        let mut cluster = Cluster::new("mesh-pull")?;
        let origin = cluster.start("node-a", vec![], true).await?;
        let peer = cluster.peer(origin);
        let edge = cluster
            .start_with("node-b", vec![peer], false, |c| {
                c.mesh.prefetch_content = false;
            })
            .await?;
        let course = DocId::Course(DEMO_COURSE.parse()?);
        cluster
            .converged(&course, &[origin, edge], Duration::from_secs(20))
            .await?;
        let origin_mesh = cluster.node(origin).mesh.clone().expect("a mesh");
        let store = cluster.node(edge).content.clone();

        // A name no course gives: a plain 404, and no peer is asked.
        let stranger = BlobHash::of(b"no course names this");
        let r = Http::new(cluster.node(edge).http_addr)
            .get(&format!("/content/{stranger}"), None)
            .await?;
        assert_eq!(r.status, 404);
        assert_eq!(store.stats().pull_failures, 0);
        assert_eq!(origin_mesh.status().blobs_sent, 0);

        // The course's image (found on the origin, which holds everything): pulled once, on
        // its first request (the edge learns which blobs its courses name shortly after the
        // course arrives).
        let blobs = course_blobs(cluster.node(edge)).await?;
        let on_origin = Http::new(cluster.node(origin).http_addr);
        let mut png = None;
        for hash in &blobs {
            let r = on_origin.get(&format!("/content/{hash}"), None).await?;
            if r.header("content-type") == Some("image/png") {
                png = Some(*hash);
            }
        }
        let png = png.ok_or_else(|| anyhow::anyhow!("the demo course has an image"))?;
        let node = cluster.node(edge);
        eventually_ok("the image is pulled", Duration::from_secs(10), || async {
            read_blob(node, png).await.map(|_| ())
        })
        .await?;
        let pulled = store.stats().pulled;
        assert_eq!(pulled, 1);
        // The sender counts a blob once the asker acknowledged every byte, a moment later.
        eventually("the origin counts its blob", Duration::from_secs(5), || {
            origin_mesh.status().blobs_sent == 1
        })
        .await?;
        read_blob(node, png).await?;
        assert_eq!(
            store.stats().pulled,
            pulled,
            "a second request pulls nothing"
        );
        assert_eq!(origin_mesh.status().blobs_sent, 1);
        // Nothing was prefetched: only what was requested is here.
        let here = blobs.iter().filter(|h| store.contains(**h)).count() as u64;
        assert_eq!(here, pulled);
        cluster.stop_all().await
    })
    .await
}

/// A blob source that answers every request with the same bytes, whatever was asked.
struct Forger;

impl BlobSource for Forger {
    fn blob(&self, _hash: &[u8; 32]) -> Option<(String, bytes::Bytes)> {
        Some(("text/markdown".into(), bytes::Bytes::from_static(b"forged")))
    }
}

/// A blob source holding one blob.
struct Holds(Vec<u8>);

impl BlobSource for Holds {
    fn blob(&self, hash: &[u8; 32]) -> Option<(String, bytes::Bytes)> {
        (BlobHash::of(&self.0).as_bytes() == hash)
            .then(|| ("text/markdown".into(), bytes::Bytes::from(self.0.clone())))
    }
}

/// A bare mesh named `name` over a fresh hub, serving `blobs`, dialling `peers`.
async fn bare_mesh(
    cluster: &Cluster,
    dir: &TempDir,
    name: &str,
    listen: std::net::SocketAddr,
    peers: Vec<PeerAddr>,
    blobs: Option<Arc<dyn BlobSource>>,
) -> anyhow::Result<Mesh> {
    let store = lectern_store::Store::open(&dir.path().join(name))?;
    let hub = Hub::new(store, HubConfig::default());
    let tls = NodeTls::load(&cluster.tls_dir(name)?)?;
    let mut config = MeshConfig::new(name, "test", listen, tls);
    config.peers = peers;
    config.accept_from = MEMBERS.iter().map(|m| (*m).to_owned()).collect();
    config.blobs = blobs;
    config.backoff_max_ms = super::RECONNECT_MAX_MS;
    Mesh::start(config, hub).await
}

/// Kills: a blob accepted without checking its bytes against its name, a forger not counted,
/// no fall-through to the next peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_sends_bytes_not_matching_the_name_is_refused_and_counted() -> anyhow::Result<()>
{
    within(async {
        let cluster = Cluster::new("mesh-blob-forger")?;
        let dir = TempDir::new("mesh-blob-forger");
        let lesson = b"# The honest lesson".to_vec();
        let hash = *BlobHash::of(&lesson).as_bytes();
        let forger = bare_mesh(
            &cluster,
            &dir,
            "a",
            "127.0.0.1:0".parse()?,
            vec![],
            Some(Arc::new(Forger)),
        )
        .await?;
        let honest_addr = reserved_udp_addr()?;
        let asker = bare_mesh(
            &cluster,
            &dir,
            "b",
            "127.0.0.1:0".parse()?,
            vec![
                PeerAddr {
                    name: "a".into(),
                    addr: forger.local_addr()?,
                },
                PeerAddr {
                    name: "c".into(),
                    addr: honest_addr,
                },
            ],
            None,
        )
        .await?;
        eventually(
            "the asker reaches the forger",
            Duration::from_secs(10),
            || asker.connected_peers() == ["a"],
        )
        .await?;
        // Only the forger is there: its bytes are refused, counted, and nothing is returned.
        let got = asker.fetch_blob(hash, 1 << 20).await;
        assert_eq!(got, Err(BlobFetchError::NotFound));
        assert_eq!(asker.status().blobs_refused, 1);
        assert_eq!(asker.status().blobs_received, 0);

        // An honest peer joins: the blob comes from it, whoever is asked first.
        let honest = bare_mesh(
            &cluster,
            &dir,
            "c",
            honest_addr,
            vec![],
            Some(Arc::new(Holds(lesson.clone()))),
        )
        .await?;
        eventually("the asker reaches both", Duration::from_secs(10), || {
            asker.connected_peers().len() == 2
        })
        .await?;
        let got = asker.fetch_blob(hash, 1 << 20).await?;
        assert_eq!((got.peer.as_str(), got.bytes), ("c", lesson));
        assert_eq!(asker.status().blobs_received, 1);
        assert!(asker.status().blobs_refused >= 1);
        // The sender counts a blob once the asker acknowledged every byte, a moment later.
        eventually(
            "the honest peer counts its blob",
            Duration::from_secs(5),
            || honest.status().blobs_sent == 1,
        )
        .await?;
        // Over the asker's limit: refused from the answer's header, nothing read.
        assert_eq!(
            asker.fetch_blob(hash, 4).await,
            Err(BlobFetchError::NotFound)
        );
        for mesh in [asker, forger, honest] {
            mesh.stop().await;
        }
        Ok(())
    })
    .await
}

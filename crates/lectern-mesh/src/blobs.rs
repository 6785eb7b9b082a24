//! Content blobs between nodes: a node asks its peers for a blob it lacks (a lesson a student
//! opened, a course it prefetches for an offline class) and serves the blobs it holds.
//!
//! Each request is a QUIC stream of its own beside the connection's frame stream (the exchange
//! is in [`lectern_wire::encode_blob_request`]), so a video in transit never holds up document
//! sync and a blob may be larger than a frame. The asker:
//!
//! * tries its connected peers nearest first (by round-trip time), moving on when one does
//!   not hold the blob, is slow, or misbehaves;
//! * refuses a blob over its size limit from the answer's header, before reading its bytes;
//! * verifies the bytes against the SHA-256 it asked for: a peer that sends other bytes is
//!   refused, counted (`MeshStatus::blobs_refused`) and logged by name, and the next peer is
//!   asked.
//!
//! The server answers at most [`BLOB_SERVES_PER_PEER_MAX`] requests of one peer at a time
//! (further streams wait in QUIC's flow control), reads blobs through a [`BlobSource`] (which
//! verifies them on its side too) and gives up on a peer that does not read. Content blobs
//! are public (`GET /content/{sha256}` serves them to anyone), so a peer may ask for any blob,
//! whatever its scope: a scope bounds documents, which are not public.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use lectern_wire::{
    BLOB_ANSWER_HEADER_MAX, BLOB_REQUEST_LEN, BlobAnswer, decode_blob_answer, decode_blob_request,
    encode_blob_answer, encode_blob_request,
};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::driver::Shared;

/// Requests of one peer served at once.
pub const BLOB_SERVES_PER_PEER_MAX: usize = 8;

/// A blob transfer must move at least this many bytes per second (beyond
/// [`BLOB_HEADER_TIMEOUT_MS`]) or it is abandoned: slow enough for a school's uplink, fast
/// enough that a peer that stops reading or sending frees its place.
pub const BLOB_TRANSFER_MIN_BYTES_PER_S: u64 = 64 * 1024;

/// Time for a request or an answer's header to arrive.
pub const BLOB_HEADER_TIMEOUT_MS: u64 = 10_000;

/// What a node serves its peers from: its content blob store.
pub trait BlobSource: Send + Sync + 'static {
    /// The blob named by `hash`, verified, with its content type, if this node holds it. May
    /// block (it reads the disk); called on a blocking thread.
    fn blob(&self, hash: &[u8; 32]) -> Option<(String, Bytes)>;
}

/// A blob a peer sent, verified against its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedBlob {
    /// The peer that sent it.
    pub peer: String,
    /// Its content type, as the peer stored it.
    pub content_type: String,
    /// Its bytes, which hash to the name asked for.
    pub bytes: Vec<u8>,
}

/// Why no peer delivered a blob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobFetchError {
    /// No peer is connected.
    #[error("no peer is connected")]
    NoPeers,
    /// Every connected peer was asked; none delivered it (none holds it, or those that said
    /// they did sent bytes that were refused).
    #[error("no connected peer delivered the blob")]
    NotFound,
}

/// How one peer's answer went.
enum Attempt {
    Got(String, Vec<u8>),
    Missing,
    TooLarge(u64),
    Failed(String),
}

/// The time a transfer of `size` bytes may take.
fn transfer_timeout(size: u64) -> Duration {
    Duration::from_millis(BLOB_HEADER_TIMEOUT_MS)
        + Duration::from_secs(size / BLOB_TRANSFER_MIN_BYTES_PER_S)
}

/// Asks the connected peers, nearest first, for `hash`; the first verified answer wins.
pub(crate) async fn fetch(
    shared: &Shared,
    hash: [u8; 32],
    max_bytes: u64,
) -> Result<FetchedBlob, BlobFetchError> {
    let peers = shared.connections_by_rtt();
    if peers.is_empty() {
        return Err(BlobFetchError::NoPeers);
    }
    for (peer, conn) in peers {
        match ask(&conn, &hash, max_bytes).await {
            Attempt::Got(content_type, bytes) => {
                if Sha256::digest(&bytes).as_slice() != hash {
                    shared.blobs_refused.fetch_add(1, Ordering::Relaxed);
                    warn!(%peer, blob = %hex(&hash), "refused a blob: its bytes do not match its name");
                    continue;
                }
                shared.blobs_received.fetch_add(1, Ordering::Relaxed);
                return Ok(FetchedBlob {
                    peer,
                    content_type,
                    bytes,
                });
            }
            Attempt::Missing => {
                debug!(%peer, blob = %hex(&hash), "the peer does not hold the blob")
            }
            Attempt::TooLarge(size) => {
                warn!(%peer, blob = %hex(&hash), size, max_bytes, "refused a blob over the size limit")
            }
            Attempt::Failed(why) => {
                debug!(%peer, blob = %hex(&hash), %why, "asking the peer for a blob failed")
            }
        }
    }
    Err(BlobFetchError::NotFound)
}

async fn ask(conn: &quinn::Connection, hash: &[u8; 32], max_bytes: u64) -> Attempt {
    let header = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&encode_blob_request(hash))
            .await
            .map_err(|e| e.to_string())?;
        let _ = send.finish();
        let mut head: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            match decode_blob_answer(&head) {
                Ok(Some((answer, len))) => {
                    let rest = head.split_off(len);
                    return Ok((answer, rest, recv));
                }
                Ok(None) if head.len() >= BLOB_ANSWER_HEADER_MAX => {
                    return Err("the answer's header is too long".to_owned());
                }
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            // Never read past the longest header here: the body goes to its own buffer.
            let room = (BLOB_ANSWER_HEADER_MAX - head.len()).min(chunk.len());
            match recv.read(&mut chunk[..room]).await {
                Ok(Some(n)) => head.extend_from_slice(&chunk[..n]),
                Ok(None) => return Err("the stream ended inside the answer's header".to_owned()),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    let header = tokio::time::timeout(Duration::from_millis(BLOB_HEADER_TIMEOUT_MS), header).await;
    let (answer, mut body, mut recv) = match header {
        Ok(Ok(h)) => h,
        Ok(Err(why)) => return Attempt::Failed(why),
        Err(_) => return Attempt::Failed("no answer in time".into()),
    };
    let (size, content_type) = match answer {
        BlobAnswer::Missing => return Attempt::Missing,
        BlobAnswer::Found { size, content_type } => (size, content_type),
    };
    if size > max_bytes {
        let _ = recv.stop(0u32.into());
        return Attempt::TooLarge(size);
    }
    let read = async {
        let mut chunk = vec![0u8; 64 * 1024];
        while (body.len() as u64) < size {
            let want = (size - body.len() as u64).min(chunk.len() as u64) as usize;
            match recv.read(&mut chunk[..want]).await {
                Ok(Some(n)) => body.extend_from_slice(&chunk[..n]),
                Ok(None) => return Err("the stream ended inside the blob"),
                Err(_) => return Err("the stream failed inside the blob"),
            }
        }
        if body.len() as u64 > size {
            return Err("more bytes than the answer announced");
        }
        Ok(())
    };
    match tokio::time::timeout(transfer_timeout(size), read).await {
        Ok(Ok(())) => Attempt::Got(content_type, body),
        Ok(Err(why)) => Attempt::Failed(why.into()),
        Err(_) => {
            let _ = recv.stop(0u32.into());
            Attempt::Failed("the transfer was too slow".into())
        }
    }
}

/// Serves `peer`'s blob requests on `conn` until the connection ends.
pub(crate) async fn serve(shared: Arc<Shared>, conn: quinn::Connection, peer: String) {
    let places = Arc::new(Semaphore::new(BLOB_SERVES_PER_PEER_MAX));
    let mut serving = JoinSet::new();
    loop {
        let Ok(place) = places.clone().acquire_owned().await else {
            break;
        };
        let Ok((send, recv)) = conn.accept_bi().await else {
            break;
        };
        let shared = shared.clone();
        let peer = peer.clone();
        serving.spawn(async move {
            serve_one(&shared, &peer, send, recv).await;
            drop(place);
        });
        while serving.try_join_next().is_some() {}
    }
    serving.abort_all();
}

async fn serve_one(
    shared: &Shared,
    peer: &str,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let request = tokio::time::timeout(
        Duration::from_millis(BLOB_HEADER_TIMEOUT_MS),
        recv.read_to_end(BLOB_REQUEST_LEN),
    )
    .await;
    let hash = match request.map(|r| r.map(|bytes| decode_blob_request(&bytes))) {
        Ok(Ok(Ok(hash))) => hash,
        _ => {
            shared.faults.fetch_add(1, Ordering::Relaxed);
            warn!(%peer, "dropped a stream that is not a blob request");
            let _ = send.reset(0u32.into());
            return;
        }
    };
    let found = match shared.config.blobs.clone() {
        Some(source) => tokio::task::spawn_blocking(move || source.blob(&hash))
            .await
            .ok()
            .flatten(),
        None => None,
    };
    let (answer, bytes) = match found {
        Some((content_type, bytes)) => (
            BlobAnswer::Found {
                size: bytes.len() as u64,
                content_type,
            },
            bytes,
        ),
        None => (BlobAnswer::Missing, Bytes::new()),
    };
    let Ok(header) = encode_blob_answer(&answer) else {
        warn!(blob = %hex(&hash), "a stored blob's content type does not fit an answer");
        let _ = send.reset(0u32.into());
        return;
    };
    let size = bytes.len() as u64;
    let write = async {
        send.write_all(&header).await?;
        send.write_chunk(bytes).await?;
        send.finish()?;
        // Wait until the peer has everything, so the count below means a delivered blob
        // (`None`: every byte acknowledged; `Some`: the peer stopped reading).
        anyhow::Ok(send.stopped().await?.is_none())
    };
    match tokio::time::timeout(transfer_timeout(size), write).await {
        Ok(Ok(delivered)) => {
            if delivered && size > 0 {
                shared.blobs_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(Err(e)) => debug!(%peer, blob = %hex(&hash), error = %e, "sending a blob failed"),
        Err(_) => {
            debug!(%peer, blob = %hex(&hash), "the peer read the blob too slowly; gave up");
            let _ = send.reset(0u32.into());
        }
    }
}

fn hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

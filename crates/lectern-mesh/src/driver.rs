//! The quinn driver of the mesh: sockets, tasks and timers around the sans-IO [`Session`].
//!
//! One QUIC endpoint per node serves incoming peers and dials the configured ones. Each
//! connection carries one bidirectional stream of length-prefixed frames. Its task feeds
//! received frames, local changes (the hub's change feed) and timer ticks into the session and
//! carries out the session's outputs: frames go to a writer task; sync steps go to a small pool
//! of workers (a document always to the same worker, so its messages stay in order) that call
//! the hub.
//!
//! Two nodes that both dial each other end up with two connections; the one dialled by the node
//! with the smaller name is kept, on both sides alike, and the other is closed. A dial loop
//! waits while its peer is connected (either way) and otherwise dials it, a new dial every
//! jittered, exponentially growing backoff while earlier ones still run (see `dial_loop`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use lectern_hub::{Hub, SyncAccess};
use lectern_model::DocId;
use lectern_wire::{FRAME_LEN_MAX_BYTES, FrameDecoder, FrameError, PeerFrame, encode_frame};
use rand::Rng;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, warn};

use crate::blobs::{BlobFetchError, BlobSource, FetchedBlob};
use crate::session::{
    Output, PeerInfo, PeerScopes, REVOCATION_LISTS_MAX, Session, SessionConfig, ShareFilter,
};
use crate::tls::NodeTls;

/// Sync workers per connection: documents sync concurrently up to this many at a time.
const SYNC_WORKERS: usize = 32;
/// Sync steps queued per worker before the connection stops reading (backpressure).
const SYNC_WORKER_QUEUE_MAX: usize = 4096;
/// Bytes read from the stream at once.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Ephemeral messages buffered for local subscribers.
const EPHEMERAL_CAPACITY: usize = 4096;

/// A configured peer: `name@host:port`, where `name` is the id its certificate was issued for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    /// The peer's cluster name (checked against its certificate).
    pub name: String,
    /// Where it listens for QUIC.
    pub addr: SocketAddr,
}

impl std::str::FromStr for PeerAddr {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<PeerAddr, anyhow::Error> {
        let (name, addr) = s
            .split_once('@')
            .with_context(|| format!("peer {s:?} must be NAME@HOST:PORT"))?;
        crate::tls::validate_node_name(name)?;
        let addr = std::net::ToSocketAddrs::to_socket_addrs(addr)
            .with_context(|| format!("resolve the address of peer {s:?}"))?
            .next()
            .with_context(|| format!("peer {s:?}: the address resolves to nothing"))?;
        Ok(PeerAddr {
            name: name.to_owned(),
            addr,
        })
    }
}

/// The mesh's settings.
#[derive(Clone)]
pub struct MeshConfig {
    /// This node's cluster name (its certificate's name).
    pub name: String,
    /// This node's region.
    pub region: String,
    /// The UDP address to listen on.
    pub listen: SocketAddr,
    /// The peers to dial.
    pub peers: Vec<PeerAddr>,
    /// This node's certificate, key and cluster CA.
    pub tls: NodeTls,
    /// Which documents to share (both ways).
    pub share: ShareFilter,
    /// Per peer, the documents it may exchange with this node on top of `share` (both ways):
    /// what a compromised peer can write here is bounded by its scope. Default none.
    pub peer_scopes: PeerScopes,
    /// Local changes are pushed at most this often. Default 10 ms.
    pub push_coalesce_ms: u64,
    /// First reconnect delay. Default 100 ms.
    pub backoff_min_ms: u64,
    /// Longest wait between two dials of a peer that is not connected (the dials overlap:
    /// see `dial_loop`), so at most this long passes between a link coming back and the dial
    /// that finds it. Default 1 s.
    pub backoff_max_ms: u64,
    /// Largest frame accepted from a peer. Default: the protocol's 16 MiB.
    pub frame_len_max_bytes: usize,
    /// A dial or handshake that takes longer than this failed (and is retried). Default 3 s.
    pub connect_timeout_ms: u64,
    /// A peer silent for this long is dead. Default [`crate::IDLE_TIMEOUT_MS`] (5 s).
    pub idle_timeout_ms: u64,
    /// Inbound connections allowed at once between their first packet and a verified hello
    /// (each holds a task for up to `connect_timeout_ms`); beyond this, new ones are refused,
    /// so a flood of handshakes costs the node a bounded amount. Default
    /// [`HANDSHAKES_MAX_DEFAULT`].
    pub handshakes_max: usize,
    /// Nodes that may connect to this node besides those in `peers` (a node that others dial
    /// but that dials nobody lists them here). Any other node, even one holding a certificate
    /// of the cluster CA, is closed at its hello, counted in `peer_faults` and logged with its
    /// name: a certificate alone is not membership. Default empty: only `peers`.
    pub accept_from: Vec<String>,
    /// The directory `tls` was loaded from: re-read every `tls_reload_ms` when its files
    /// change (a renewed certificate, a revocation list dropped in as `crl.pem`), so no restart
    /// is needed. `None`: the material never changes.
    pub tls_dir: Option<PathBuf>,
    /// How often `tls_dir` is checked for changes. Default [`TLS_RELOAD_MS_DEFAULT`].
    pub tls_reload_ms: u64,
    /// Where the revocation lists learned from peers are kept across restarts (PEM). `None`:
    /// in memory only.
    pub revocations_file: Option<PathBuf>,
    /// The content blobs this node serves its peers (see [`crate::blobs`]). `None`: it answers
    /// every blob request that it holds nothing.
    pub blobs: Option<Arc<dyn BlobSource>>,
}

/// Default of [`MeshConfig::tls_reload_ms`].
pub const TLS_RELOAD_MS_DEFAULT: u64 = 30_000;

/// Default of [`MeshConfig::handshakes_max`]: far more than a cluster's nodes redialling at
/// once, far fewer than a flood.
pub const HANDSHAKES_MAX_DEFAULT: usize = 64;

impl MeshConfig {
    /// A config with default limits, sharing everything.
    pub fn new(name: &str, region: &str, listen: SocketAddr, tls: NodeTls) -> MeshConfig {
        MeshConfig {
            name: name.to_owned(),
            region: region.to_owned(),
            listen,
            peers: Vec::new(),
            tls,
            share: crate::session::share_all(),
            peer_scopes: PeerScopes::default(),
            push_coalesce_ms: 10,
            backoff_min_ms: 100,
            backoff_max_ms: 1_000,
            frame_len_max_bytes: FRAME_LEN_MAX_BYTES,
            connect_timeout_ms: 3_000,
            idle_timeout_ms: crate::IDLE_TIMEOUT_MS,
            handshakes_max: HANDSHAKES_MAX_DEFAULT,
            accept_from: Vec::new(),
            tls_dir: None,
            tls_reload_ms: TLS_RELOAD_MS_DEFAULT,
            revocations_file: None,
            blobs: None,
        }
    }

    /// Whether a node named `name` that dialled us may stay connected: see
    /// [`MeshConfig::accept_from`].
    pub fn admits(&self, name: &str) -> bool {
        self.peers.iter().any(|p| p.name == name) || self.accept_from.iter().any(|n| n == name)
    }
}

/// An ephemeral message received from a peer.
#[derive(Debug, Clone)]
pub struct EphemeralIn {
    /// The peer's cluster name.
    pub peer: String,
    /// The document it concerns.
    pub doc: String,
    /// The payload.
    pub payload: Vec<u8>,
}

/// One peer as `lectern peers` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    /// Cluster name.
    pub name: String,
    /// `connected` or `connecting`.
    pub state: &'static str,
    /// Its node id, once known.
    pub node_id: Option<String>,
    /// Its region, once known.
    pub region: Option<String>,
    /// Its address.
    pub addr: Option<String>,
    /// Round-trip time in ms, when connected.
    pub rtt_ms: Option<f64>,
    /// Documents waiting to be pushed to it (the replication lag, in documents).
    pub lag_docs: usize,
    /// Seconds connected.
    pub connected_s: Option<u64>,
    /// The last dial error, when not connected.
    pub last_error: Option<String>,
    /// Seconds since the connection to it ended (or since this mesh started, if it never
    /// connected), when not connected: how long a classroom's uplink has been down.
    pub offline_s: Option<u64>,
}

/// The mesh as `lectern status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MeshStatus {
    /// This node's cluster name.
    pub name: String,
    /// Its region.
    pub region: String,
    /// The QUIC address it listens on.
    pub listen: String,
    /// Its peers.
    pub peers: Vec<PeerStatus>,
    /// Connections refused or dropped for a protocol fault since start.
    pub peer_faults: u64,
    /// Peers' frames dropped since start for naming a document outside the share policy or
    /// the peer's scope.
    pub frames_refused: u64,
    /// Scoped peers' sync messages that carried changes to a document they may only read (the
    /// cluster's flags), since start: the changes were not applied.
    pub writes_refused: u64,
    /// Frame bytes sent to peers since start (headers included).
    pub bytes_sent: u64,
    /// Frame bytes received from peers since start.
    pub bytes_received: u64,
    /// Certificate revocation lists in force (from `tls_dir` and from peers).
    pub revocation_lists: usize,
    /// Content blobs sent to peers since start.
    pub blobs_sent: u64,
    /// Content blobs received from peers, verified, since start.
    pub blobs_received: u64,
    /// Blobs refused since start because a peer's bytes did not hash to the name asked for.
    pub blobs_refused: u64,
}

/// The running mesh of one node.
pub struct Mesh {
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    tasks: Mutex<JoinSet<()>>,
}

struct PeerEntry {
    conn_id: u64,
    conn: quinn::Connection,
    info: PeerInfo,
    dialer: String,
    since: Instant,
    pending: Arc<AtomicUsize>,
}

pub(crate) struct Shared {
    hub: Hub,
    pub(crate) config: MeshConfig,
    endpoint: quinn::Endpoint,
    /// The TLS material in force (`config.tls` until a reload or a new revocation list).
    tls: Mutex<NodeTls>,
    /// The QUIC client config made from `tls`, for new dials.
    client_config: Mutex<quinn::ClientConfig>,
    /// Ticks when the revocation lists in force change: every connection passes them on to
    /// its peer and checks the peer's certificate again.
    revocations: watch::Sender<u64>,
    node_id: String,
    ephemeral_sender: String,
    sessions: Mutex<HashMap<String, PeerEntry>>,
    dial_errors: Mutex<HashMap<String, String>>,
    /// When each peer's last connection ended.
    disconnected_at: Mutex<HashMap<String, Instant>>,
    started: Instant,
    changed: watch::Sender<u64>,
    shutdown: watch::Sender<bool>,
    resync: watch::Sender<u64>,
    ephemeral_out: broadcast::Sender<(String, Vec<u8>)>,
    ephemeral_in: broadcast::Sender<EphemeralIn>,
    next_conn_id: AtomicU64,
    pub(crate) faults: AtomicU64,
    frames_refused: AtomicU64,
    writes_refused: AtomicU64,
    bytes_sent: Arc<AtomicU64>,
    bytes_received: AtomicU64,
    pub(crate) blobs_sent: AtomicU64,
    pub(crate) blobs_received: AtomicU64,
    pub(crate) blobs_refused: AtomicU64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Direction {
    Dialed,
    Accepted,
}

impl Mesh {
    /// Binds the endpoint, starts accepting peers and dialling the configured ones.
    pub async fn start(config: MeshConfig, hub: Hub) -> anyhow::Result<Mesh> {
        crate::tls::validate_node_name(&config.name)?;
        let tls = with_learned_crls(config.tls.clone(), config.revocations_file.as_deref());
        let server = tls.server_config(config.idle_timeout_ms)?;
        let client = tls.client_config(config.idle_timeout_ms)?;
        let mut endpoint = quinn::Endpoint::server(server, config.listen)
            .with_context(|| format!("bind QUIC on {}", config.listen))?;
        endpoint.set_default_client_config(client.clone());
        let identity = *hub.identity();
        let (ephemeral_out, _) = broadcast::channel(EPHEMERAL_CAPACITY);
        let (ephemeral_in, _) = broadcast::channel(EPHEMERAL_CAPACITY);
        let shared = Arc::new(Shared {
            endpoint: endpoint.clone(),
            tls: Mutex::new(tls),
            client_config: Mutex::new(client),
            revocations: watch::channel(0).0,
            node_id: identity.node_id.to_string(),
            ephemeral_sender: format!("{}.{}", identity.node_id, identity.boot_epoch),
            hub,
            config,
            sessions: Mutex::new(HashMap::new()),
            dial_errors: Mutex::new(HashMap::new()),
            disconnected_at: Mutex::new(HashMap::new()),
            started: Instant::now(),
            changed: watch::channel(0).0,
            shutdown: watch::channel(false).0,
            resync: watch::channel(0).0,
            ephemeral_out,
            ephemeral_in,
            next_conn_id: AtomicU64::new(1),
            faults: AtomicU64::new(0),
            frames_refused: AtomicU64::new(0),
            writes_refused: AtomicU64::new(0),
            bytes_sent: Arc::new(AtomicU64::new(0)),
            bytes_received: AtomicU64::new(0),
            blobs_sent: AtomicU64::new(0),
            blobs_received: AtomicU64::new(0),
            blobs_refused: AtomicU64::new(0),
        });
        let mut tasks = JoinSet::new();
        let span = tracing::info_span!("mesh", node = %shared.config.name);
        tasks.spawn(accept_loop(shared.clone(), endpoint.clone()).instrument(span.clone()));
        if shared.config.tls_dir.is_some() {
            tasks.spawn(tls_reload_loop(shared.clone()).instrument(span.clone()));
        }
        for peer in shared.config.peers.clone() {
            let span = tracing::info_span!(parent: &span, "dial", peer = %peer.name);
            tasks.spawn(dial_loop(shared.clone(), endpoint.clone(), peer).instrument(span));
        }
        info!(listen = %endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default(), "mesh started");
        Ok(Mesh {
            shared,
            endpoint,
            tasks: Mutex::new(tasks),
        })
    }

    /// The UDP address the mesh listens on.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.endpoint.local_addr().context("read the QUIC address")
    }

    /// Names of the peers connected now.
    pub fn connected_peers(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .shared
            .sessions
            .lock()
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// QUIC connections open on this node's endpoint now, in either direction and in any state
    /// (handshaking, established or closing): what the peer table cannot show, such as a
    /// duplicate connection to a peer that was replaced in the table but never closed.
    pub fn open_connections(&self) -> usize {
        self.endpoint.open_connections()
    }

    /// A receiver that ticks whenever the set of connected peers changes.
    pub fn peer_changes(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    /// Completes once [`Mesh::stop`] has been called.
    pub async fn stopped(&self) {
        let mut rx = self.shared.shutdown.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Runs anti-entropy again with every peer: a fresh digest tree here, and the peer asked to
    /// answer it with its root again. Call it when the share policy admits new documents.
    pub fn resync(&self) {
        self.shared.resync.send_modify(|v| *v += 1);
    }

    /// Sends an ephemeral message about `doc` to every connected peer.
    pub fn send_ephemeral(&self, doc: &str, payload: Vec<u8>) {
        let _ = self.shared.ephemeral_out.send((doc.to_owned(), payload));
    }

    /// Ephemeral messages received from peers.
    pub fn ephemeral(&self) -> broadcast::Receiver<EphemeralIn> {
        self.shared.ephemeral_in.subscribe()
    }

    /// The mesh's state for `lectern status` / `lectern peers`.
    pub fn status(&self) -> MeshStatus {
        let shared = &self.shared;
        let sessions = shared.sessions.lock();
        let errors = shared
            .dial_errors
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        let disconnected = shared
            .disconnected_at
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default();
        let mut peers: Vec<PeerStatus> = Vec::new();
        if let Ok(sessions) = &sessions {
            for (name, entry) in sessions.iter() {
                peers.push(PeerStatus {
                    name: name.clone(),
                    state: "connected",
                    node_id: Some(entry.info.node_id.clone()),
                    region: Some(entry.info.region.clone()),
                    addr: Some(entry.conn.remote_address().to_string()),
                    rtt_ms: Some(entry.conn.rtt().as_secs_f64() * 1000.0),
                    lag_docs: entry.pending.load(Ordering::Relaxed),
                    connected_s: Some(entry.since.elapsed().as_secs()),
                    last_error: None,
                    offline_s: None,
                });
            }
            for peer in &shared.config.peers {
                if !sessions.contains_key(&peer.name) {
                    peers.push(PeerStatus {
                        name: peer.name.clone(),
                        state: "connecting",
                        node_id: None,
                        region: None,
                        addr: Some(peer.addr.to_string()),
                        rtt_ms: None,
                        lag_docs: 0,
                        connected_s: None,
                        last_error: errors.get(&peer.name).cloned(),
                        offline_s: Some(
                            disconnected
                                .get(&peer.name)
                                .copied()
                                .unwrap_or(shared.started)
                                .elapsed()
                                .as_secs(),
                        ),
                    });
                }
            }
        }
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        MeshStatus {
            name: shared.config.name.clone(),
            region: shared.config.region.clone(),
            listen: self
                .endpoint
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            peers,
            peer_faults: shared.faults.load(Ordering::Relaxed),
            frames_refused: shared.frames_refused.load(Ordering::Relaxed),
            writes_refused: shared.writes_refused.load(Ordering::Relaxed),
            bytes_sent: shared.bytes_sent.load(Ordering::Relaxed),
            bytes_received: shared.bytes_received.load(Ordering::Relaxed),
            revocation_lists: shared.crl_ders().len(),
            blobs_sent: shared.blobs_sent.load(Ordering::Relaxed),
            blobs_received: shared.blobs_received.load(Ordering::Relaxed),
            blobs_refused: shared.blobs_refused.load(Ordering::Relaxed),
        }
    }

    /// Asks the connected peers, nearest first, for the content blob whose SHA-256 is `hash`,
    /// refusing one over `max_bytes` and any bytes that do not hash to `hash` (see
    /// [`crate::blobs`]).
    pub async fn fetch_blob(
        &self,
        hash: [u8; 32],
        max_bytes: u64,
    ) -> Result<FetchedBlob, BlobFetchError> {
        crate::blobs::fetch(&self.shared, hash, max_bytes).await
    }

    /// Says bye to every peer, closes the endpoint and waits for the mesh's tasks.
    pub async fn stop(&self) {
        let _ = self.shared.shutdown.send(true);
        let mut tasks = match self.tasks.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => return,
        };
        let drained = tokio::time::timeout(Duration::from_secs(2), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tasks.abort_all();
        }
        self.endpoint.close(0u32.into(), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

async fn accept_loop(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut connections = JoinSet::new();
    // One permit per inbound connection not yet past a verified hello.
    let handshakes = Arc::new(Semaphore::new(shared.config.handshakes_max.max(1)));
    let mut refused_since_log = 0u64;
    let mut last_refusal_log: Option<Instant> = None;
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let Some(incoming) = incoming else { break };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            // A flood: refuse at once (one packet, no task, no TLS work), and log a summary
            // at most once a second rather than a line per packet.
            incoming.refuse();
            shared.faults.fetch_add(1, Ordering::Relaxed);
            refused_since_log += 1;
            if last_refusal_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                warn!(
                    refused = refused_since_log,
                    limit = shared.config.handshakes_max,
                    "refusing inbound connections: too many handshakes at once"
                );
                refused_since_log = 0;
                last_refusal_log = Some(Instant::now());
            }
            continue;
        };
        let shared = shared.clone();
        let remote = incoming.remote_address();
        let span = tracing::info_span!("peer", peer = %remote);
        connections.spawn(
            async move {
                let conn = match tokio::time::timeout(
                    Duration::from_millis(shared.config.connect_timeout_ms),
                    incoming,
                )
                .await
                {
                    Ok(Ok(conn)) => conn,
                    // A dialer that got through with another of its overlapping dials drops
                    // the rest (see `dial_loop`), which QUIC reports during the handshake as
                    // an application error: not a fault.
                    Ok(Err(quinn::ConnectionError::ConnectionClosed(ref e)))
                        if e.error_code == quinn::TransportErrorCode::APPLICATION_ERROR =>
                    {
                        debug!(error = %e, "a peer gave up a handshake");
                        return;
                    }
                    Ok(Err(e)) => {
                        shared.faults.fetch_add(1, Ordering::Relaxed);
                        warn!(error = %e, "refused a peer: handshake failed");
                        return;
                    }
                    Err(_) => {
                        shared.faults.fetch_add(1, Ordering::Relaxed);
                        warn!("refused a peer: handshake timed out");
                        return;
                    }
                };
                let stream = tokio::time::timeout(
                    Duration::from_millis(shared.config.connect_timeout_ms),
                    conn.accept_bi(),
                )
                .await;
                match stream {
                    Ok(Ok((send, recv))) => {
                        let accepted = Direction::Accepted;
                        run_connection(shared, conn, send, recv, accepted, Some(permit)).await;
                    }
                    _ => debug!("peer opened no stream"),
                }
            }
            .instrument(span),
        );
        // Reap finished connection tasks as we go.
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
}

/// A dial's outcome: the connection and its stream.
type Dialed = (quinn::Connection, quinn::SendStream, quinn::RecvStream);

/// Keeps `peer` connected: while it is not (whichever side dialled), dials it.
///
/// Dials overlap: a new one starts every backoff (jittered, doubling from `backoff_min_ms` to
/// `backoff_max_ms`) while earlier ones still run, each for up to `connect_timeout_ms`. So a
/// handshake slowed by a lossy link is not cut short by the next try, and a link that comes
/// back (a partition healed, the peer restarted) is found by the next dial, at most
/// `backoff_max_ms` later, not after a handshake started during the cut has retransmitted its
/// way through a backoff grown by then (QUIC doubles its probe timeout each time). The first
/// dial to succeed wins; the others are dropped.
async fn dial_loop(shared: Arc<Shared>, endpoint: quinn::Endpoint, peer: PeerAddr) {
    let config = &shared.config;
    let mut backoff = config.backoff_min_ms.max(1);
    let mut shutdown = shared.shutdown.subscribe();
    let mut changed = shared.changed.subscribe();
    loop {
        // Wait while the peer is connected, whichever side dialled.
        while shared.is_connected(&peer.name) {
            tokio::select! {
                _ = changed.changed() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
        if *shutdown.borrow() {
            return;
        }
        let mut dials = JoinSet::new();
        let dialed = 'dialing: loop {
            dials.spawn(dial(shared.clone(), endpoint.clone(), peer.clone()));
            // Jitter in [backoff/2, backoff], so that nodes restarted together do not dial in
            // step.
            let next = rand::rng().random_range(backoff / 2..=backoff);
            let next = tokio::time::sleep(Duration::from_millis(next));
            tokio::pin!(next);
            loop {
                tokio::select! {
                    Some(done) = dials.join_next() => match done {
                        Ok(Ok(dialed)) => break 'dialing Some(dialed),
                        Ok(Err(e)) => {
                            debug!(error = e.as_str(), "dial failed");
                            if let Ok(mut errors) = shared.dial_errors.lock() {
                                errors.insert(peer.name.clone(), e);
                            }
                        }
                        // A dial task that panicked: the next one tries again.
                        Err(_) => {}
                    },
                    () = &mut next => break,
                    _ = changed.changed() => {
                        if shared.is_connected(&peer.name) {
                            break 'dialing None;
                        }
                    }
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
            backoff = (backoff * 2).min(config.backoff_max_ms.max(1));
        };
        // The dials still running are dropped: their handshakes end.
        dials.abort_all();
        drop(dials);
        if let Some((conn, send, recv)) = dialed {
            if let Ok(mut errors) = shared.dial_errors.lock() {
                errors.remove(&peer.name);
            }
            let established =
                run_connection(shared.clone(), conn, send, recv, Direction::Dialed, None).await;
            if established {
                backoff = config.backoff_min_ms.max(1);
            } else {
                // Connected, then refused before the hello was through (not a member, a
                // revoked certificate): wait before the next round, so that a peer refusing
                // us is not dialled in a tight loop.
                let pause = rand::rng().random_range(backoff / 2..=backoff);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(pause)) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(config.backoff_max_ms.max(1));
            }
        }
    }
}

/// One dial of `peer`: the QUIC/TLS handshake and the peer stream, within
/// `connect_timeout_ms`. The error is what `/admin/peers` shows.
async fn dial(
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    peer: PeerAddr,
) -> Result<Dialed, String> {
    let attempt = async {
        let connecting = endpoint
            .connect_with(shared.client_config(), peer.addr, &peer.name)
            .context("start a QUIC connection")?;
        let conn = connecting.await.context("QUIC/TLS handshake")?;
        let (send, recv) = conn.open_bi().await.context("open the peer stream")?;
        anyhow::Ok((conn, send, recv))
    };
    let timeout = Duration::from_millis(shared.config.connect_timeout_ms);
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(dialed)) => Ok(dialed),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err("timed out".into()),
    }
}

impl Shared {
    /// The client config for a new dial.
    fn client_config(&self) -> quinn::ClientConfig {
        match self.client_config.lock() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The revocation lists in force, DER.
    fn crl_ders(&self) -> Vec<Vec<u8>> {
        self.tls
            .lock()
            .map(|t| t.crls().iter().map(|c| c.as_ref().to_vec()).collect())
            .unwrap_or_default()
    }

    /// Puts `tls` in force: new handshakes (both ways) use it; if its revocation lists differ,
    /// they are kept in `revocations_file` and every connection passes them on and checks its
    /// peer again.
    fn install(&self, tls: NodeTls) -> anyhow::Result<()> {
        let server = tls.server_config(self.config.idle_timeout_ms)?;
        let client = tls.client_config(self.config.idle_timeout_ms)?;
        self.endpoint.set_server_config(Some(server));
        if let Ok(mut c) = self.client_config.lock() {
            *c = client;
        }
        let crls_changed = {
            let Ok(mut current) = self.tls.lock() else {
                return Ok(());
            };
            let changed = current.crls() != tls.crls();
            *current = tls;
            changed.then(|| current.crls().to_vec())
        };
        if let Some(crls) = crls_changed {
            if let Some(path) = &self.config.revocations_file {
                let written =
                    std::fs::write(path.with_extension("tmp"), crate::tls::crls_pem(&crls))
                        .and_then(|()| std::fs::rename(path.with_extension("tmp"), path));
                if let Err(e) = written {
                    warn!(error = %e, path = %path.display(), "could not keep the revocation lists");
                }
            }
            info!(lists = crls.len(), "revocation lists in force");
            self.revocations.send_modify(|v| *v += 1);
        }
        Ok(())
    }

    /// Revocation lists a peer sent: those the cluster CA signed and this node lacks are put
    /// in force. How many it refused (not the CA's, or past [`REVOCATION_LISTS_MAX`]).
    fn learn_crls(&self, ders: Vec<Vec<u8>>) -> usize {
        let Ok(current) = self.tls.lock().map(|t| t.clone()) else {
            return 0;
        };
        let mut refused = 0;
        let mut new = Vec::new();
        for der in ders {
            let crl = rustls::pki_types::CertificateRevocationListDer::from(der);
            if current.crls().contains(&crl) || new.contains(&crl) {
                continue;
            }
            if current.crls().len() + new.len() < REVOCATION_LISTS_MAX && current.accepts_crl(&crl)
            {
                new.push(crl);
            } else {
                refused += 1;
            }
        }
        if !new.is_empty()
            && let Err(e) = self.install(current.with_crls(new))
        {
            warn!(
                error = format!("{e:#}"),
                "could not put new revocation lists in force"
            );
        }
        refused
    }

    /// The connected peers and their connections, nearest (smallest round-trip time) first.
    pub(crate) fn connections_by_rtt(&self) -> Vec<(String, quinn::Connection)> {
        let mut peers: Vec<(Duration, String, quinn::Connection)> = match self.sessions.lock() {
            Ok(s) => s
                .iter()
                .map(|(name, e)| (e.conn.rtt(), name.clone(), e.conn.clone()))
                .collect(),
            Err(_) => Vec::new(),
        };
        peers.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        peers
            .into_iter()
            .map(|(_, name, conn)| (name, conn))
            .collect()
    }

    fn is_connected(&self, name: &str) -> bool {
        self.sessions
            .lock()
            .map(|s| s.contains_key(name))
            .unwrap_or(false)
    }

    /// Registers an established connection; false if an existing one with the same peer wins.
    fn register(&self, entry: PeerEntry) -> bool {
        let Ok(mut sessions) = self.sessions.lock() else {
            return false;
        };
        let name = entry.info.name.clone();
        if let Some(old) = sessions.get(&name) {
            let preferred_dialer = std::cmp::min(self.config.name.as_str(), name.as_str());
            let new_wins = old.dialer == entry.dialer || entry.dialer == preferred_dialer;
            if !new_wins {
                return false;
            }
            old.conn.close(0u32.into(), b"duplicate connection");
        }
        sessions.insert(name, entry);
        drop(sessions);
        self.changed.send_modify(|v| *v += 1);
        true
    }

    fn unregister(&self, name: &str, conn_id: u64) {
        let removed = match self.sessions.lock() {
            Ok(mut sessions) => {
                if sessions.get(name).is_some_and(|e| e.conn_id == conn_id) {
                    sessions.remove(name);
                    true
                } else {
                    false
                }
            }
            Err(_) => false,
        };
        if removed {
            if let Ok(mut at) = self.disconnected_at.lock() {
                at.insert(name.to_owned(), Instant::now());
            }
            self.changed.send_modify(|v| *v += 1);
        }
    }
}

/// What a sync worker does for one document.
enum Work {
    Generate(String),
    Receive(String, Vec<u8>),
}

/// The key of a peer's sync states in the hub and the store: its certificate-verified cluster
/// name and the node id it claims (a peer whose store is new gets new states).
fn sync_states_key(peer: &PeerInfo) -> String {
    format!("{}#{}", peer.name, peer.node_id)
}

/// Runs one peer connection until it ends. Returns whether the handshake completed.
/// `handshake` (an accepted connection's place among the handshakes in progress) is released
/// once the peer's hello is verified and it is registered.
async fn run_connection(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    direction: Direction,
    mut handshake: Option<OwnedSemaphorePermit>,
) -> bool {
    let conn_id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let config = &shared.config;
    let mut session_config = SessionConfig::new(&shared.node_id, &config.name, &config.region);
    session_config.push_coalesce_ms = config.push_coalesce_ms;
    let mut session = Session::new(session_config, config.share.clone(), Instant::now())
        .with_scopes(config.peer_scopes.clone());
    let mut refused_seen = 0u64;
    // Subscribed before the summary is taken, so no change falls between the two; consumed
    // only once the session is open.
    let mut feed = shared.hub.changes();
    let mut ephemeral_out = shared.ephemeral_out.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    let mut resync = shared.resync.subscribe();
    let mut revocations = shared.revocations.subscribe();
    let pending = Arc::new(AtomicUsize::new(0));

    // Unbounded on purpose, yet bounded in practice: every frame comes from a queued sync step
    // (at most SYNC_WORKERS × SYNC_WORKER_QUEUE_MAX) or from the session (hello, summaries,
    // presence). A bounded queue here would close a cycle: our reader waits for our workers,
    // our workers for our writer, our writer for the peer's reader, which waits the same way
    // for ours, and both ends could block for good.
    let (frames_tx, mut frames_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let sent = shared.bytes_sent.clone();
    let writer = tokio::spawn(async move {
        while let Some(first) = frames_rx.recv().await {
            let mut bytes = first;
            while bytes.len() < READ_CHUNK_BYTES {
                match frames_rx.try_recv() {
                    Ok(more) => bytes.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            if send.write_all(&bytes).await.is_err() {
                return;
            }
            sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        let _ = send.finish();
    });

    let mut workers: Vec<mpsc::Sender<Work>> = Vec::new();
    let mut worker_tasks = JoinSet::new();
    let mut decoder = FrameDecoder::new(config.frame_len_max_bytes);
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    let mut peer: Option<PeerInfo> = None;
    let mut registered = false;
    let mut close_reason = String::from("connection ended");
    // QUIC's own idle timeout is at least three probe timeouts, which grow with the round trips
    // measured: a peer that stalled under load for a while before it died can keep a dead
    // connection open for half a minute, while its restarted process waits to be dialled. So
    // the peer is also dead once nothing at all came from it for `idle_timeout_ms`: a live
    // peer acknowledges the keep-alives sent every third of that.
    let silence = Duration::from_millis(config.idle_timeout_ms.max(1));
    let mut watchdog = tokio::time::interval((silence / 4).max(Duration::from_millis(10)));
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = (conn.stats().udp_rx.datagrams, Instant::now());

    'conn: loop {
        // Carry out everything the session asked for.
        while let Some(output) = session.poll_output() {
            match output {
                Output::Send(frame) => match encode_frame(&frame) {
                    Ok(bytes) => {
                        if frames_tx.send(bytes).is_err() {
                            break 'conn;
                        }
                    }
                    Err(e) => warn!(error = %e, "a frame does not encode"),
                },
                Output::Established(info) => {
                    let span_peer = info.name.clone();
                    if !certificate_names(&conn, &info.name) {
                        // The TLS layer verified the certificate chain (and, when dialling, the
                        // name dialled); the name the peer claims must be its certificate's.
                        shared.faults.fetch_add(1, Ordering::Relaxed);
                        warn!(claimed = %info.name, "closing: the hello's name is not the certificate's");
                        session.close("the hello's name is not the certificate's");
                        continue;
                    }
                    if direction == Direction::Accepted && !config.admits(&info.name) {
                        // A certificate of the cluster CA alone is not membership: the node
                        // must also be one this node was configured to talk with.
                        shared.faults.fetch_add(1, Ordering::Relaxed);
                        warn!(peer = %info.name, "closing: the node is not in this node's peer list");
                        session.close("not in the peer list");
                        continue;
                    }
                    let dialer = match direction {
                        Direction::Dialed => config.name.clone(),
                        Direction::Accepted => info.name.clone(),
                    };
                    let entry = PeerEntry {
                        conn_id,
                        conn: conn.clone(),
                        info: info.clone(),
                        dialer,
                        since: Instant::now(),
                        pending: pending.clone(),
                    };
                    if !shared.register(entry) {
                        session.close("duplicate connection");
                        continue;
                    }
                    registered = true;
                    drop(handshake.take());
                    info!(peer = %span_peer, region = %info.region, ?direction, "peer connected");
                    // The sync states are kept under the certificate's name with the node id the
                    // peer claims: a node claiming another's id (the id is not in its
                    // certificate) reaches only states of its own name.
                    let states_key = sync_states_key(&info);
                    shared.hub.peer_connected(&states_key);
                    let sync_peer = SyncPeer {
                        name: info.name.clone(),
                        states_key,
                        scoped: config.peer_scopes.contains_key(&info.name),
                        warned: Arc::new(AtomicBool::new(false)),
                    };
                    for _ in 0..SYNC_WORKERS {
                        let (tx, rx) = mpsc::channel(SYNC_WORKER_QUEUE_MAX);
                        workers.push(tx);
                        worker_tasks.spawn(sync_worker(
                            shared.clone(),
                            sync_peer.clone(),
                            rx,
                            frames_tx.clone(),
                        ));
                    }
                    // Its blob requests, on streams of their own, once it is a verified member.
                    worker_tasks.spawn(crate::blobs::serve(
                        shared.clone(),
                        conn.clone(),
                        info.name.clone(),
                    ));
                    peer = Some(info);
                    session.send_summary(summary(&shared.hub));
                    session.send_revocations(shared.crl_ders());
                }
                Output::Revocations(crls) => {
                    let refused = shared.learn_crls(crls);
                    if refused > 0 {
                        shared.faults.fetch_add(1, Ordering::Relaxed);
                        let peer = session.peer().map(|p| p.name.clone()).unwrap_or_default();
                        warn!(%peer, refused, "refused revocation lists the cluster CA did not sign");
                    }
                }
                Output::GenerateSync(doc) => {
                    if !dispatch(&workers, Work::Generate(doc)).await {
                        break 'conn;
                    }
                }
                Output::ReceiveSync { doc, message } => {
                    if !dispatch(&workers, Work::Receive(doc, message)).await {
                        break 'conn;
                    }
                }
                Output::Ephemeral { doc, payload, .. } => {
                    if let Some(p) = &peer {
                        let _ = shared.ephemeral_in.send(EphemeralIn {
                            peer: p.name.clone(),
                            doc,
                            payload,
                        });
                    }
                }
                Output::Close { reason } => {
                    close_reason = reason;
                    break 'conn;
                }
            }
        }
        pending.store(session.pending_docs(), Ordering::Relaxed);

        let timeout = session.poll_timeout();
        let open = session.is_open();
        tokio::select! {
            read = recv.read(&mut buf) => match read {
                Ok(Some(n)) => {
                    shared.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                    decoder.push(&buf[..n]);
                    loop {
                        match decoder.next_frame() {
                            Ok(Some(frame)) => session.handle_frame(frame, Instant::now()),
                            Ok(None) => break,
                            Err(FrameError::Malformed { reason }) => {
                                shared.faults.fetch_add(1, Ordering::Relaxed);
                                warn!(reason, "dropped a malformed frame");
                            }
                            Err(e) => {
                                shared.faults.fetch_add(1, Ordering::Relaxed);
                                warn!(error = %e, "closing: the peer's stream is unusable");
                                session.close("frame too large");
                                break;
                            }
                        }
                    }
                    let refused = session.stats().frames_refused;
                    if refused > refused_seen {
                        shared
                            .frames_refused
                            .fetch_add(refused - refused_seen, Ordering::Relaxed);
                        // Once per connection at warn (a peer outside its scope keeps trying).
                        let peer = session.peer().map(|p| p.name.clone()).unwrap_or_default();
                        if refused_seen == 0 {
                            warn!(%peer, "refused the peer's frames for documents outside its scope or the share policy");
                        } else {
                            debug!(%peer, refused, "refused more frames outside the peer's scope");
                        }
                        refused_seen = refused;
                    }
                }
                Ok(None) => {
                    close_reason = "the peer closed its stream".into();
                    break 'conn;
                }
                Err(e) => {
                    close_reason = format!("read failed: {e}");
                    break 'conn;
                }
            },
            change = feed.recv(), if open => match change {
                Ok(change) => session.local_change(&change.doc.to_string(), Instant::now()),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    debug!(missed = n, "change feed lagged; running anti-entropy again");
                    session.send_summary(summary(&shared.hub));
                }
                Err(broadcast::error::RecvError::Closed) => break 'conn,
            },
            msg = ephemeral_out.recv(), if open => {
                if let Ok((doc, payload)) = msg {
                    let sender = shared.ephemeral_sender.clone();
                    session.send_ephemeral(&doc, &sender, payload);
                }
            },
            _ = resync.changed(), if open => session.send_summary(summary(&shared.hub)),
            _ = revocations.changed(), if open => {
                session.send_revocations(shared.crl_ders());
                if !peer_still_accepted(&shared, &conn) {
                    shared.faults.fetch_add(1, Ordering::Relaxed);
                    let peer = session.peer().map(|p| p.name.clone()).unwrap_or_default();
                    warn!(%peer, "closing: the peer's certificate is revoked");
                    session.close("certificate revoked");
                }
            },
            _ = sleep_until(timeout) => session.handle_timeout(Instant::now()),
            _ = watchdog.tick() => {
                let received = conn.stats().udp_rx.datagrams;
                if received != heard.0 {
                    heard = (received, Instant::now());
                } else if heard.1.elapsed() >= silence {
                    close_reason = format!("the peer was silent for {} ms", silence.as_millis());
                    break 'conn;
                }
            }
            _ = shutdown.wait_for(|s| *s) => session.close("shutting down"),
            e = conn.closed() => {
                close_reason = format!("connection closed: {e}");
                break 'conn;
            }
        }
    }

    // Stop the workers, let the writer flush what was queued (the bye), then close.
    drop(workers);
    worker_tasks.abort_all();
    drop(frames_tx);
    let _ = tokio::time::timeout(Duration::from_millis(500), writer).await;
    conn.close(0u32.into(), close_reason.as_bytes());
    if let Some(p) = &peer
        && registered
    {
        shared.unregister(&p.name, conn_id);
        info!(peer = %p.name, reason = %close_reason, "peer disconnected");
    } else {
        debug!(reason = %close_reason, "connection ended before the handshake");
    }
    registered
}

/// `tls` with the revocation lists kept in `file` (learned from peers before a restart),
/// each checked again as the CA's.
fn with_learned_crls(tls: NodeTls, file: Option<&std::path::Path>) -> NodeTls {
    let Some(text) = file.and_then(|f| std::fs::read_to_string(f).ok()) else {
        return tls;
    };
    let crls = crate::tls::parse_crls(&text).unwrap_or_default();
    let accepted: Vec<_> = crls.into_iter().filter(|c| tls.accepts_crl(c)).collect();
    tls.with_crls(accepted)
}

/// What identifies the state of a TLS directory's files: each one's length and change time.
fn tls_dir_state(dir: &std::path::Path) -> Vec<Option<(u64, std::time::SystemTime)>> {
    [
        crate::tls::NODE_CERT_FILE,
        crate::tls::NODE_KEY_FILE,
        crate::tls::CA_CERT_FILE,
        crate::tls::CRL_FILE,
    ]
    .iter()
    .map(|f| {
        let meta = std::fs::metadata(dir.join(f)).ok()?;
        Some((meta.len(), meta.modified().ok()?))
    })
    .collect()
}

/// Re-reads `tls_dir` whenever its files change: a renewed certificate or a new revocation
/// list goes in force without a restart (the lists learned from peers are kept).
async fn tls_reload_loop(shared: Arc<Shared>) {
    let Some(dir) = shared.config.tls_dir.clone() else {
        return;
    };
    let mut shutdown = shared.shutdown.subscribe();
    let mut seen = tls_dir_state(&dir);
    let every = Duration::from_millis(shared.config.tls_reload_ms.max(10));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let now = tls_dir_state(&dir);
        if now == seen {
            continue;
        }
        seen = now;
        let learned: Vec<_> = shared
            .tls
            .lock()
            .map(|t| t.crls().to_vec())
            .unwrap_or_default();
        match NodeTls::load(&dir) {
            Ok(tls) => {
                let tls = tls.with_crls(learned);
                match shared.install(tls) {
                    Ok(()) => info!(dir = %dir.display(), "reloaded the mesh's TLS files"),
                    Err(e) => warn!(
                        error = format!("{e:#}"),
                        "the reloaded TLS files are unusable; keeping the old ones"
                    ),
                }
            }
            // A half-copied directory: the next change (or the next check) tries again.
            Err(e) => warn!(
                error = format!("{e:#}"),
                "could not reload the mesh's TLS files; keeping the old ones"
            ),
        }
    }
}

/// The hub's heads digests with doc ids as strings: the leaves of the anti-entropy tree.
fn summary(hub: &Hub) -> Vec<(String, [u8; 32])> {
    hub.heads_summary()
        .into_iter()
        .map(|(doc, digest)| (doc.to_string(), digest))
        .collect()
}

/// Whether the peer's certificate is still accepted by the TLS material in force (not revoked
/// since the handshake).
fn peer_still_accepted(shared: &Shared, conn: &quinn::Connection) -> bool {
    let Some(certs) = conn.peer_identity().and_then(|id| {
        id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .ok()
    }) else {
        return false;
    };
    shared
        .tls
        .lock()
        .map(|t| t.accepts_peer(&certs))
        .unwrap_or(true)
}

/// Whether the peer's certificate (verified against the cluster CA during the handshake) was
/// issued for `name`.
fn certificate_names(conn: &quinn::Connection, name: &str) -> bool {
    let Some(certs) = conn.peer_identity().and_then(|id| {
        id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .ok()
    }) else {
        return false;
    };
    let Some(leaf) = certs.first() else {
        return false;
    };
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
        return false;
    };
    let Ok(server_name) = rustls::pki_types::ServerName::try_from(name) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&server_name).is_ok()
}

/// Queues work for the worker that owns its document.
async fn dispatch(workers: &[mpsc::Sender<Work>], work: Work) -> bool {
    if workers.is_empty() {
        return true;
    }
    let doc = match &work {
        Work::Generate(doc) | Work::Receive(doc, _) => doc,
    };
    let index = worker_index(doc, workers.len());
    workers[index].send(work).await.is_ok()
}

fn worker_index(doc: &str, workers: usize) -> usize {
    // FNV-1a: stable and cheap; only the spread matters.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in doc.as_bytes() {
        hash = (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    (hash % workers as u64) as usize
}

/// Who a connection's sync workers speak with.
#[derive(Clone)]
struct SyncPeer {
    /// Its cluster name (its certificate's).
    name: String,
    /// The key of its sync states in the hub (see [`sync_states_key`]).
    states_key: String,
    /// Held to a scope (`peer_scopes`): it may read the cluster's flags but not write them.
    scoped: bool,
    /// Set once a refused write of this connection was logged at warn.
    warned: Arc<AtomicBool>,
}

/// What a peer may do to `doc` through sync: a scoped peer (a classroom node) receives the
/// cluster's feature flags, which its scope admits so that a feature switched off is off there
/// too, but may not change them: a flag is set on a region node and holds for the whole
/// cluster, so a compromised classroom node must not switch a feature off (or on) everywhere.
/// Every other document its scope admits it may write.
fn peer_access(scoped: bool, doc: &DocId) -> SyncAccess {
    if scoped && *doc == DocId::Flags {
        SyncAccess::ReadOnly
    } else {
        SyncAccess::ReadWrite
    }
}

/// Whether a sync message carries changes (one that does not decode is left to the hub, which
/// refuses it).
fn carries_changes(message: &[u8]) -> bool {
    automerge::sync::Message::decode(message).is_ok_and(|m| !m.changes.is_empty())
}

/// Runs the hub's side of automerge's sync for the documents routed to this worker.
async fn sync_worker(
    shared: Arc<Shared>,
    peer: SyncPeer,
    mut rx: mpsc::Receiver<Work>,
    frames: mpsc::UnboundedSender<Vec<u8>>,
) {
    let hub = &shared.hub;
    let states_key = &peer.states_key;
    while let Some(work) = rx.recv().await {
        let (doc, result) = match work {
            Work::Generate(doc) => {
                let Ok(id) = DocId::parse(&doc) else {
                    warn!(doc, "not a document id; skipped");
                    continue;
                };
                let access = peer_access(peer.scoped, &id);
                let result = hub.generate_sync_as(id, states_key, access).await;
                (doc, result)
            }
            Work::Receive(doc, message) => {
                let Ok(id) = DocId::parse(&doc) else {
                    warn!(doc, "a sync message for a malformed document id; dropped");
                    continue;
                };
                let access = peer_access(peer.scoped, &id);
                if access == SyncAccess::ReadOnly && carries_changes(&message) {
                    // Still handed to the hub: its heads and needs keep our changes flowing to
                    // the peer; the hub's read-only sync state leaves its changes out.
                    shared.writes_refused.fetch_add(1, Ordering::Relaxed);
                    if peer.warned.swap(true, Ordering::Relaxed) {
                        debug!(peer = %peer.name, doc, "refused more changes to a document the peer may only read");
                    } else {
                        warn!(peer = %peer.name, doc, "refused the peer's changes to a document it may only read (scoped peers do not write the cluster's feature flags)");
                    }
                }
                let result = hub.receive_sync_as(id, states_key, message, access).await;
                (doc, result)
            }
        };
        match result {
            Ok(Some(message)) => {
                let frame = PeerFrame::Sync {
                    doc: doc.clone(),
                    message,
                };
                match encode_frame(&frame) {
                    Ok(bytes) => {
                        if frames.send(bytes).is_err() {
                            return;
                        }
                    }
                    Err(e) => warn!(doc, error = %e, "a sync message does not fit a frame"),
                }
            }
            Ok(None) => {}
            Err(e) => warn!(doc, code = e.code(), error = %e, "sync step failed"),
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a scoped peer, and only for the cluster's flags, is read-only. Kills: every peer
    /// read-only for the flags (a region could not set them for its peers), a scoped peer
    /// read-only for its cohort's documents.
    #[test]
    fn a_scoped_peer_may_read_but_not_write_the_cluster_flags() {
        let cohort = DocId::Cohort("c1".parse().expect("a cohort id"));
        assert_eq!(peer_access(true, &DocId::Flags), SyncAccess::ReadOnly);
        assert_eq!(peer_access(true, &cohort), SyncAccess::ReadWrite);
        assert_eq!(peer_access(false, &DocId::Flags), SyncAccess::ReadWrite);
        assert_eq!(peer_access(false, &cohort), SyncAccess::ReadWrite);
    }

    /// A node that claims another's node id under its own certificate name gets sync states of
    /// its own. Kills: states keyed by the claimed node id alone.
    #[test]
    fn sync_states_are_keyed_by_the_certificate_name_and_the_claimed_id() {
        let peer = |name: &str, node_id: &str| PeerInfo {
            node_id: node_id.into(),
            name: name.into(),
            region: "r".into(),
        };
        let real = sync_states_key(&peer("node-b", "b0b0"));
        assert_ne!(real, sync_states_key(&peer("rogue", "b0b0")));
        assert_ne!(real, sync_states_key(&peer("node-b", "fresh")));
        assert_eq!(real, sync_states_key(&peer("node-b", "b0b0")));
    }
}

//! The sans-IO core of one peer connection: handshake, anti-entropy, push coalescing and
//! ephemeral messages, as a state machine that takes frames, local events and `now`, and returns
//! [`Output`]s. It opens no socket, reads no clock and touches no document: the driver
//! (`driver.rs`) owns the QUIC stream and runs the automerge sync steps it asks for through the
//! hub, which keeps one persisted `automerge::sync::State` per (peer, document).
//!
//! A conversation:
//! 1. Each side sends `Hello` (node id, cluster name, region, protocol version) first. A peer
//!    that speaks another version, says anything else first, or is silent for
//!    `hello_timeout_ms` is closed.
//! 2. Each side then sends the root of its hash tree of document heads (`digest.rs`) over the
//!    documents its share policy lets it send, and answers the peer's nodes down to the
//!    documents that differ: it starts automerge's sync for exactly the documents whose heads
//!    differ or that only one side has. After a reconnect, documents that did not change cost
//!    nothing, and the bytes follow the differences, not the number of documents.
//! 3. Local changes mark documents dirty; dirty documents are pushed at most once per
//!    `push_coalesce_ms` (the first change after a quiet period goes out at once, so coalescing
//!    costs latency only under load).
//! 4. `Ephemeral` frames (presence) are delivered once per (sender, counter) and never stored.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lectern_wire::{DigestContent, PROTOCOL_VERSION, PeerFrame};

use crate::digest::Tree;

/// Digest nodes a peer may send before our own tree exists (they wait for it); more close the
/// connection. Each side sends one root first, so an honest peer sends one.
pub const EARLY_DIGEST_NODES_MAX: usize = 64;

/// Most revocation lists one frame may carry (and a node keeps): the CA issues a new list for
/// each revocation, each a superset of the last, so a handful are ever in force.
pub const REVOCATION_LISTS_MAX: usize = 32;

/// Which documents may cross this connection (both ways): the share policy.
pub type ShareFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Per peer (by cluster name), the documents it may exchange with this node, narrowing
/// [`ShareFilter`] for that peer only: the cohorts a classroom node serves. A peer not named
/// here is held only to the share policy.
pub type PeerScopes = Arc<HashMap<String, ShareFilter>>;

/// A filter that shares every document.
pub fn share_all() -> ShareFilter {
    Arc::new(|_| true)
}

/// Settings of a session; the defaults are safe.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// This node's id (its store's id, hex).
    pub node_id: String,
    /// This node's cluster name (its certificate's name).
    pub name: String,
    /// This node's region.
    pub region: String,
    /// Pushes of local changes are at most this often. Default 10 ms (the issue allows 20).
    pub push_coalesce_ms: u64,
    /// A peer that has not said hello after this long is closed. Default 5 s.
    pub hello_timeout_ms: u64,
}

impl SessionConfig {
    /// A config with the default limits.
    pub fn new(node_id: &str, name: &str, region: &str) -> SessionConfig {
        SessionConfig {
            node_id: node_id.to_owned(),
            name: name.to_owned(),
            region: region.to_owned(),
            push_coalesce_ms: 10,
            hello_timeout_ms: 5_000,
        }
    }
}

/// What the peer said about itself in its hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its node id (its store's id): the key of the sync states kept for it.
    pub node_id: String,
    /// Its cluster name.
    pub name: String,
    /// Its region.
    pub region: String,
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this frame.
    Send(PeerFrame),
    /// The handshake is done; the driver should answer with [`Session::send_summary`].
    Established(PeerInfo),
    /// Generate the next sync message for this document and send it, if there is one.
    GenerateSync(String),
    /// Apply this sync message from the peer and send the reply, if there is one.
    ReceiveSync {
        /// The document.
        doc: String,
        /// The encoded automerge sync message.
        message: Vec<u8>,
    },
    /// Deliver this ephemeral message locally.
    Ephemeral {
        /// The document it concerns.
        doc: String,
        /// Who sent it.
        sender: String,
        /// The opaque payload.
        payload: Vec<u8>,
    },
    /// Revocation lists from the peer (DER): the driver keeps those the cluster CA signed.
    Revocations(Vec<Vec<u8>>),
    /// Close the connection (after sending what was queued before).
    Close {
        /// Why, for the log.
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingHello,
    Open,
    Closed,
}

/// Counters of one session, for status and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Frames handled.
    pub frames_in: u64,
    /// Documents the summaries found different (sync started for them).
    pub docs_differing: u64,
    /// Documents pushed because they changed locally.
    pub docs_pushed: u64,
    /// Frames dropped for naming a document outside the share policy.
    pub frames_refused: u64,
    /// Digest nodes sent (the anti-entropy tree's; roots included).
    pub digest_nodes_sent: u64,
}

/// One peer connection's protocol state.
pub struct Session {
    config: SessionConfig,
    share: ShareFilter,
    /// Narrowed onto `share` for the peer that says hello, before any of its frames counts.
    scopes: Option<PeerScopes>,
    phase: Phase,
    peer: Option<PeerInfo>,
    hello_deadline: Instant,
    /// Our tree of the last summary; the peer's nodes that came before it (with their
    /// `resync` flag).
    tree: Option<Tree>,
    early_nodes: Vec<(Vec<u8>, DigestContent, bool)>,
    dirty: BTreeSet<String>,
    flush_at: Option<Instant>,
    last_flush: Option<Instant>,
    ephemeral_counter: u64,
    ephemeral_seen: HashMap<String, u64>,
    out: VecDeque<Output>,
    stats: SessionStats,
}

impl Session {
    /// A new session; its first output is our hello.
    pub fn new(config: SessionConfig, share: ShareFilter, now: Instant) -> Session {
        let hello = PeerFrame::Hello {
            node_id: config.node_id.clone(),
            name: config.name.clone(),
            region: config.region.clone(),
            protocol_version: PROTOCOL_VERSION,
        };
        let hello_deadline = now + Duration::from_millis(config.hello_timeout_ms);
        Session {
            config,
            share,
            scopes: None,
            phase: Phase::AwaitingHello,
            peer: None,
            hello_deadline,
            tree: None,
            early_nodes: Vec::new(),
            dirty: BTreeSet::new(),
            flush_at: None,
            last_flush: None,
            ephemeral_counter: 0,
            ephemeral_seen: HashMap::new(),
            out: VecDeque::from([Output::Send(hello)]),
            stats: SessionStats::default(),
        }
    }

    /// Holds each peer named in `scopes` to its scope as well as to the share policy, both
    /// ways, from its hello on (the frames that follow the hello in the same read included).
    pub fn with_scopes(mut self, scopes: PeerScopes) -> Session {
        self.scopes = Some(scopes);
        self
    }

    /// The peer, once it said hello.
    pub fn peer(&self) -> Option<&PeerInfo> {
        self.peer.as_ref()
    }

    /// True once the handshake is done and until the session closes.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Counters.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// Documents waiting to be pushed.
    pub fn pending_docs(&self) -> usize {
        self.dirty.len()
    }

    /// Handles one frame from the peer.
    pub fn handle_frame(&mut self, frame: PeerFrame, _now: Instant) {
        self.stats.frames_in += 1;
        match self.phase {
            Phase::Closed => {}
            Phase::AwaitingHello => match frame {
                PeerFrame::Hello {
                    node_id,
                    name,
                    region,
                    protocol_version,
                } => {
                    if protocol_version != PROTOCOL_VERSION {
                        let reason = format!(
                            "protocol version {protocol_version} is not supported (this node speaks {PROTOCOL_VERSION})"
                        );
                        self.close(&reason);
                    } else if node_id == self.config.node_id {
                        self.close("connected to itself");
                    } else {
                        if let Some(scope) =
                            self.scopes.as_ref().and_then(|s| s.get(&name)).cloned()
                        {
                            let policy = self.share.clone();
                            self.share = Arc::new(move |doc: &str| policy(doc) && scope(doc));
                        }
                        let info = PeerInfo {
                            node_id,
                            name,
                            region,
                        };
                        self.peer = Some(info.clone());
                        self.phase = Phase::Open;
                        self.out.push_back(Output::Established(info));
                    }
                }
                PeerFrame::Bye { reason } => self.closed(format!("peer said bye: {reason}")),
                _ => self.close("the first frame must be a hello"),
            },
            Phase::Open => match frame {
                PeerFrame::Hello { .. } => self.close("a second hello"),
                PeerFrame::Sync { doc, message } => {
                    if (self.share)(&doc) {
                        self.out.push_back(Output::ReceiveSync { doc, message });
                    } else {
                        self.stats.frames_refused += 1;
                    }
                }
                PeerFrame::DigestNode {
                    prefix,
                    content,
                    resync,
                } => {
                    if self.tree.is_some() {
                        self.digest_node(&prefix, &content, resync);
                    } else if self.early_nodes.len() < EARLY_DIGEST_NODES_MAX {
                        self.early_nodes.push((prefix, content, resync));
                    } else {
                        self.close("too many digest nodes before our summary");
                    }
                }
                PeerFrame::Ephemeral {
                    doc,
                    sender,
                    counter,
                    payload,
                } => {
                    if !(self.share)(&doc) {
                        self.stats.frames_refused += 1;
                        return;
                    }
                    let last = self.ephemeral_seen.entry(sender.clone()).or_insert(0);
                    if counter > *last {
                        *last = counter;
                        self.out.push_back(Output::Ephemeral {
                            doc,
                            sender,
                            payload,
                        });
                    }
                }
                PeerFrame::Revocations { crls } => {
                    if crls.len() > REVOCATION_LISTS_MAX {
                        self.close("too many revocation lists");
                    } else {
                        self.out.push_back(Output::Revocations(crls));
                    }
                }
                PeerFrame::Bye { reason } => self.closed(format!("peer said bye: {reason}")),
            },
        }
    }

    /// Sends the revocation lists this node holds (after [`Output::Established`], and whenever
    /// it learns a new one). Nothing is sent for none.
    pub fn send_revocations(&mut self, crls: Vec<Vec<u8>>) {
        if self.phase == Phase::Open && !crls.is_empty() {
            self.out
                .push_back(Output::Send(PeerFrame::Revocations { crls }));
        }
    }

    /// Sends the root of our tree of document heads (call after [`Output::Established`], and
    /// again whenever the driver lost track of local changes or the share policy changed: the
    /// peer answers the new root). Documents outside the share policy are left out.
    pub fn send_summary(&mut self, docs: Vec<(String, [u8; 32])>) {
        if self.phase != Phase::Open {
            return;
        }
        let docs: Vec<(String, [u8; 32])> = docs
            .into_iter()
            .filter(|(doc, _)| (self.share)(doc))
            .collect();
        let mut tree = Tree::new(docs);
        let (prefix, content) = tree.root();
        // The first round: both sides send their roots. A later one (a resync) asks the peer
        // for its root again, since it answered its last one already.
        let resync = self.tree.is_some();
        self.tree = Some(tree);
        self.send_node(prefix, content, resync);
        for (prefix, content, resync) in std::mem::take(&mut self.early_nodes) {
            self.digest_node(&prefix, &content, resync);
        }
    }

    /// A document changed locally (durably): push it to the peer soon.
    pub fn local_change(&mut self, doc: &str, now: Instant) {
        if self.phase != Phase::Open || !(self.share)(doc) {
            return;
        }
        self.dirty.insert(doc.to_owned());
        if self.flush_at.is_none() {
            let earliest = self
                .last_flush
                .map(|t| t + Duration::from_millis(self.config.push_coalesce_ms))
                .unwrap_or(now);
            self.flush_at = Some(earliest.max(now));
        }
    }

    /// Sends an ephemeral message about `doc` to the peer.
    pub fn send_ephemeral(&mut self, doc: &str, sender: &str, payload: Vec<u8>) {
        if self.phase != Phase::Open || !(self.share)(doc) {
            return;
        }
        self.ephemeral_counter += 1;
        self.out.push_back(Output::Send(PeerFrame::Ephemeral {
            doc: doc.to_owned(),
            sender: sender.to_owned(),
            counter: self.ephemeral_counter,
            payload,
        }));
    }

    /// When the driver must call [`Session::handle_timeout`] next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::AwaitingHello => Some(self.hello_deadline),
            Phase::Open => self.flush_at,
            Phase::Closed => None,
        }
    }

    /// Runs what is due at `now`: the hello timeout, the push of dirty documents.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::AwaitingHello if now >= self.hello_deadline => {
                self.close("no hello in time");
            }
            Phase::Open if self.flush_at.is_some_and(|at| now >= at) => {
                self.flush_at = None;
                self.last_flush = Some(now);
                let dirty = std::mem::take(&mut self.dirty);
                self.stats.docs_pushed += dirty.len() as u64;
                self.out.extend(dirty.into_iter().map(Output::GenerateSync));
            }
            _ => {}
        }
    }

    /// Says goodbye and closes.
    pub fn close(&mut self, reason: &str) {
        if self.phase == Phase::Closed {
            return;
        }
        self.out.push_back(Output::Send(PeerFrame::Bye {
            reason: reason.to_owned(),
        }));
        self.closed(reason.to_owned());
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn closed(&mut self, reason: String) {
        self.phase = Phase::Closed;
        self.dirty.clear();
        self.flush_at = None;
        self.out.push_back(Output::Close { reason });
    }

    /// Handles one of the peer's digest nodes: a resync root is answered with our root first;
    /// then the node is compared with our tree: our nodes for the children that differ go
    /// back, the documents that differ start syncing.
    fn digest_node(&mut self, prefix: &[u8], content: &DigestContent, resync: bool) {
        let Some(tree) = self.tree.as_mut() else {
            return;
        };
        if resync && prefix.is_empty() {
            let (root, ours) = tree.root();
            self.send_node(root, ours, false);
        }
        let Some(tree) = self.tree.as_mut() else {
            return;
        };
        match tree.compare(prefix, content) {
            Ok(compared) => {
                for (prefix, content) in compared.send {
                    self.send_node(prefix, content, false);
                }
                let share = self.share.clone();
                let differing: Vec<String> =
                    compared.sync.into_iter().filter(|d| share(d)).collect();
                self.stats.docs_differing += differing.len() as u64;
                self.out
                    .extend(differing.into_iter().map(Output::GenerateSync));
            }
            Err(e) => {
                self.stats.frames_refused += 1;
                self.close(&e.to_string());
            }
        }
    }

    fn send_node(&mut self, prefix: Vec<u8>, content: DigestContent, resync: bool) {
        self.stats.digest_nodes_sent += 1;
        self.out.push_back(Output::Send(PeerFrame::DigestNode {
            prefix,
            content,
            resync,
        }));
    }
}

#[cfg(test)]
mod tests;

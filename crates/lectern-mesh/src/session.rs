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
//! 2. Each side then sends a `HeadsSummary` (doc id → digest of its heads) of the documents its
//!    share policy lets it send. When a side has both summaries it starts automerge's sync for
//!    exactly the documents whose digests differ or that only one side has: after a reconnect,
//!    documents that did not change cost nothing.
//! 3. Local changes mark documents dirty; dirty documents are pushed at most once per
//!    `push_coalesce_ms` (the first change after a quiet period goes out at once, so coalescing
//!    costs latency only under load).
//! 4. `Ephemeral` frames (presence) are delivered once per (sender, counter) and never stored.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lectern_wire::{PROTOCOL_VERSION, PeerFrame};

/// Which documents may cross this connection (both ways): the share policy.
pub type ShareFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

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
}

/// One peer connection's protocol state.
pub struct Session {
    config: SessionConfig,
    share: ShareFilter,
    phase: Phase,
    peer: Option<PeerInfo>,
    hello_deadline: Instant,
    /// Our last summary, and the peer's last one (kept, so that a resync after a change of the
    /// share policy can compare again).
    local_summary: Option<HashMap<String, [u8; 32]>>,
    remote_summary: Option<Vec<(String, [u8; 32])>>,
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
            phase: Phase::AwaitingHello,
            peer: None,
            hello_deadline,
            local_summary: None,
            remote_summary: None,
            dirty: BTreeSet::new(),
            flush_at: None,
            last_flush: None,
            ephemeral_counter: 0,
            ephemeral_seen: HashMap::new(),
            out: VecDeque::from([Output::Send(hello)]),
            stats: SessionStats::default(),
        }
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
                PeerFrame::HeadsSummary { docs } => {
                    self.remote_summary = Some(docs);
                    self.compare_summaries();
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
                PeerFrame::Bye { reason } => self.closed(format!("peer said bye: {reason}")),
            },
        }
    }

    /// Sends our heads summary (call after [`Output::Established`], and again whenever the
    /// driver lost track of local changes). Documents outside the share policy are left out.
    pub fn send_summary(&mut self, docs: Vec<(String, [u8; 32])>) {
        if self.phase != Phase::Open {
            return;
        }
        let docs: Vec<(String, [u8; 32])> = docs
            .into_iter()
            .filter(|(doc, _)| (self.share)(doc))
            .collect();
        self.local_summary = Some(docs.iter().cloned().collect());
        self.out
            .push_back(Output::Send(PeerFrame::HeadsSummary { docs }));
        self.compare_summaries();
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

    /// With both summaries in hand, starts syncing every document that differs.
    fn compare_summaries(&mut self) {
        let (Some(local), Some(remote)) = (&self.local_summary, &self.remote_summary) else {
            return;
        };
        let mut differing: BTreeSet<String> = BTreeSet::new();
        let mut seen_remote: BTreeSet<&str> = BTreeSet::new();
        for (doc, digest) in remote {
            seen_remote.insert(doc.as_str());
            if local.get(doc) != Some(digest) && (self.share)(doc) {
                differing.insert(doc.clone());
            }
        }
        for doc in local.keys() {
            if !seen_remote.contains(doc.as_str()) {
                differing.insert(doc.clone());
            }
        }
        self.stats.docs_differing += differing.len() as u64;
        self.out
            .extend(differing.into_iter().map(Output::GenerateSync));
    }
}

#[cfg(test)]
mod tests;

//! Presence across nodes: the gateway knows who is connected here, the mesh carries ephemeral
//! frames; this glue (the node is the only place that knows both) relays one to the other.
//!
//! Out: when a session's local presence changes (at most every [`COALESCE_MS`]), and every
//! [`HEARTBEAT_MS`] for every session, the node sends `{"origin": name, "seq": n, "users": [...]}` as an ephemeral
//! message about `session/{id}`.
//! In: a message replaces what its origin node reported for the session, and is relayed once
//! to every peer, so presence reaches the nodes of a partial mesh (region hubs) too: a
//! message seen before (same origin, no newer `seq`) or from this node itself is dropped, so
//! the flood ends. An origin that was a direct peer and disconnects is forgotten at once; any
//! origin that stops reporting a session is forgotten after [`PRESENCE_TTL_MS`]. So a dead
//! node's students stop counting within the mesh's idle timeout (5 s by default) on its
//! neighbours, and never later than 30 s anywhere.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lectern_gateway::Gateway;
use lectern_mesh::Mesh;
use lectern_model::{DocId, SessionId};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

/// Every session's local presence is re-sent this often, in ms.
pub const HEARTBEAT_MS: u64 = 10_000;

/// A peer's report about a session expires after this long without a refresh, in ms.
pub const PRESENCE_TTL_MS: u64 = 30_000;

/// A session's changes of local presence are sent at most this often, in ms: a class of a
/// thousand joining at once costs its peers a few reports a second, not a thousand of its
/// growing user list (which would also overrun the receivers' queues and lose the last one).
pub const COALESCE_MS: u64 = 100;

/// Longest user list relayed for one session (larger lists are cut; the count is approximate
/// beyond it).
const USERS_PER_MESSAGE_MAX: usize = 5_000;

/// Starts the relay tasks; they end when the mesh is dropped.
pub(crate) fn start(gateway: Gateway, mesh: &Arc<Mesh>) {
    tokio::spawn(export(gateway.clone(), Arc::downgrade(mesh)));
    tokio::spawn(import(gateway, mesh.clone()));
}

/// This node's own reports: its name (the origin receivers count them under) and the next
/// sequence number, starting at the boot's wall-clock ms so that a restarted node's reports
/// are newer than its old ones wherever they are still relayed.
struct Origin {
    name: String,
    seq: u64,
}

impl Origin {
    fn new(name: String) -> Origin {
        let boot_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Origin { name, seq: boot_ms }
    }
}

fn send(mesh: &Mesh, origin: &mut Origin, session: &SessionId, mut users: Vec<String>) {
    users.truncate(USERS_PER_MESSAGE_MAX);
    origin.seq += 1;
    let payload = json!({ "origin": origin.name, "seq": origin.seq, "users": users })
        .to_string()
        .into_bytes();
    mesh.send_ephemeral(&DocId::Session(session.clone()).to_string(), payload);
}

/// Local presence → peers: on every change, on every new peer, and on a heartbeat.
async fn export(gateway: Gateway, mesh: std::sync::Weak<Mesh>) {
    let mut changes = gateway.presence_changes();
    let mut heartbeat = tokio::time::interval(Duration::from_millis(HEARTBEAT_MS));
    let Some(m) = mesh.upgrade() else { return };
    let mut origin = Origin::new(m.status().name);
    let mut peers = m.connected_peers();
    let mut peer_changes = m.peer_changes();
    drop(m);
    // Sessions whose presence changed since the last report, sent when `flush` fires.
    let mut dirty: HashSet<SessionId> = HashSet::new();
    let flush = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(flush);
    loop {
        let Some(m) = mesh.upgrade() else { return };
        let resend_all = tokio::select! {
            _ = m.stopped() => return,
            change = changes.recv() => match change {
                Ok(session) => {
                    if dirty.is_empty() {
                        flush
                            .as_mut()
                            .reset(tokio::time::Instant::now() + Duration::from_millis(COALESCE_MS));
                    }
                    dirty.insert(session);
                    false
                }
                Err(RecvError::Lagged(_)) => true,
                Err(RecvError::Closed) => return,
            },
            () = &mut flush, if !dirty.is_empty() => {
                for session in std::mem::take(&mut dirty) {
                    send(&m, &mut origin, &session, gateway.local_presence(&session));
                }
                false
            },
            _ = heartbeat.tick() => true,
            _ = peer_changes.changed() => {
                let now = m.connected_peers();
                let joined = now.iter().any(|p| !peers.contains(p));
                peers = now;
                joined
            }
        };
        if resend_all {
            // The changed ones first: one that emptied is not in the list of all below.
            for session in std::mem::take(&mut dirty) {
                send(&m, &mut origin, &session, gateway.local_presence(&session));
            }
            for (session, users) in gateway.local_presence_all() {
                send(&m, &mut origin, &session, users);
            }
        }
    }
}

/// Peers' presence → the gateway, with expiry, and on to the other peers.
async fn import(gateway: Gateway, mesh: Arc<Mesh>) {
    let mut incoming = mesh.ephemeral();
    let own_name = mesh.status().name;
    // (origin, session) → when last heard, and the newest sequence number heard.
    let mut seen: HashMap<(String, SessionId), (Instant, u64)> = HashMap::new();
    let mut sweep = tokio::time::interval(Duration::from_millis(PRESENCE_TTL_MS / 6));
    let mut peers: HashSet<String> = mesh.connected_peers().into_iter().collect();
    let mut peer_changes = mesh.peer_changes();
    let weak = Arc::downgrade(&mesh);
    drop(mesh);
    loop {
        let Some(mesh) = weak.upgrade() else { return };
        tokio::select! {
            _ = mesh.stopped() => return,
            msg = incoming.recv() => match msg {
                Ok(msg) => {
                    let Ok(DocId::Session(session)) = DocId::parse(&msg.doc) else { continue };
                    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&msg.payload) else {
                        tracing::debug!(peer = %msg.peer, "ignored a presence message that is not JSON");
                        continue;
                    };
                    // A report without an origin is the direct peer's own (an older node).
                    let origin = value["origin"].as_str().unwrap_or(&msg.peer).to_owned();
                    let seq = value["seq"].as_u64().unwrap_or(0);
                    if origin == own_name {
                        continue;
                    }
                    let key = (origin.clone(), session.clone());
                    if let Some((_, last)) = seen.get(&key)
                        && seq <= *last
                        && seq != 0
                    {
                        continue;
                    }
                    let users: Vec<String> = value["users"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|u| u.as_str().map(str::to_owned))
                                .take(USERS_PER_MESSAGE_MAX)
                                .collect()
                        })
                        .unwrap_or_default();
                    seen.insert(key, (Instant::now(), seq));
                    gateway.set_remote_presence(&origin, &session, users);
                    if seq != 0 {
                        // On to the other peers (and back to the sender, which drops it).
                        mesh.send_ephemeral(&msg.doc, msg.payload.clone());
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            _ = sweep.tick() => {
                let ttl = Duration::from_millis(PRESENCE_TTL_MS);
                seen.retain(|(origin, session), (at, _)| {
                    let fresh = at.elapsed() < ttl;
                    if !fresh {
                        gateway.set_remote_presence(origin, session, Vec::new());
                    }
                    fresh
                });
            }
            _ = peer_changes.changed() => {
                let now: HashSet<String> = mesh.connected_peers().into_iter().collect();
                for gone in peers.difference(&now) {
                    gateway.clear_remote_presence(gone);
                    seen.retain(|(origin, _), _| origin != gone);
                }
                peers = now;
            }
        }
    }
}

//! Presence: who is connected to which session, on this node and (as the mesh reports) on
//! its peers. The first connection of a user to a session records `attendance.join`, the last
//! one `attendance.leave`; every change sends `attendance:update {present}` to the session's
//! sockets, at most once a second, counting each user once whichever node they are on. The
//! node relays this node's changes to its peers ([`Gateway::presence_changes`]) and their
//! reports back ([`Gateway::set_remote_presence`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lectern_model::{Caller, Command, CommandBody, DocId, SessionId};
use tokio::sync::{broadcast, watch};

use crate::Gateway;
use crate::run::new_command_id;
use crate::sync::lock;
use crate::{sio, wsframe};

/// Capacity of the local-presence change feed (sessions whose local presence changed).
const PRESENCE_FEED_CAPACITY: usize = 1024;

/// The shortest time between two `attendance:update` of a session.
const ATTENDANCE_UPDATE_EVERY: Duration = Duration::from_secs(1);

/// The presence of every session on this node, and the feed of its changes.
pub(crate) struct Presence {
    sessions: Mutex<HashMap<SessionId, SessionPresence>>,
    /// Sessions whose local presence changed (the node relays them to peers).
    feed: broadcast::Sender<SessionId>,
}

impl Default for Presence {
    fn default() -> Self {
        Presence {
            sessions: Mutex::new(HashMap::new()),
            feed: broadcast::channel(PRESENCE_FEED_CAPACITY).0,
        }
    }
}

struct SessionPresence {
    users: HashMap<String, usize>,
    /// Users present on other nodes, by the node that reported them (the mesh's presence).
    remote: HashMap<String, HashSet<String>>,
    last_update: Option<Instant>,
    update_pending: bool,
    /// The latest `attendance:update` frame, for the lean WebSocket sockets that joined the
    /// session (socketioxide's sockets get it through their room). Latest wins: a socket that
    /// missed one update only needs the next.
    attendance: watch::Sender<Option<Arc<[u8]>>>,
}

impl Default for SessionPresence {
    fn default() -> Self {
        SessionPresence {
            users: HashMap::new(),
            remote: HashMap::new(),
            last_update: None,
            update_pending: false,
            attendance: watch::Sender::new(None),
        }
    }
}

impl SessionPresence {
    /// Everyone present in the session, on this node or another, each user once.
    fn present(&self) -> usize {
        let mut all: HashSet<&str> = self.users.keys().map(String::as_str).collect();
        for users in self.remote.values() {
            all.extend(users.iter().map(String::as_str));
        }
        all.len()
    }
}

impl Gateway {
    /// Sessions whose presence on this node changed (for the mesh to tell peers). A lagging
    /// receiver should resend [`Gateway::local_presence_all`].
    pub fn presence_changes(&self) -> broadcast::Receiver<SessionId> {
        self.presence().feed.subscribe()
    }

    /// The users present in `session` on this node.
    pub fn local_presence(&self, session: &SessionId) -> Vec<String> {
        let sessions = lock(&self.presence().sessions);
        let mut users: Vec<String> = sessions
            .get(session)
            .map(|sp| sp.users.keys().cloned().collect())
            .unwrap_or_default();
        users.sort();
        users
    }

    /// Every session with users present on this node, and those users.
    pub fn local_presence_all(&self) -> Vec<(SessionId, Vec<String>)> {
        let sessions = lock(&self.presence().sessions);
        sessions
            .iter()
            .filter(|(_, sp)| !sp.users.is_empty())
            .map(|(s, sp)| (s.clone(), sp.users.keys().cloned().collect()))
            .collect()
    }

    /// Records that node `source` has `users` present in `session` (replacing what it said
    /// before; an empty list removes it). `attendance:update` counts them with the local ones.
    pub fn set_remote_presence(&self, source: &str, session: &SessionId, users: Vec<String>) {
        let changed = {
            let mut sessions = lock(&self.presence().sessions);
            let sp = sessions.entry(session.clone()).or_default();
            let users: HashSet<String> = users.into_iter().collect();
            let before = sp.present();
            if users.is_empty() {
                sp.remote.remove(source);
            } else {
                sp.remote.insert(source.to_owned(), users);
            }
            sp.present() != before
        };
        if changed {
            self.schedule_attendance_update(session);
        }
    }

    /// Forgets everything node `source` reported (it disconnected or went silent).
    pub fn clear_remote_presence(&self, source: &str) {
        let reported: Vec<SessionId> = {
            let sessions = lock(&self.presence().sessions);
            sessions
                .iter()
                .filter(|(_, sp)| sp.remote.contains_key(source))
                .map(|(s, _)| s.clone())
                .collect()
        };
        for session in reported {
            self.set_remote_presence(source, &session, Vec::new());
        }
    }

    /// A user's connection to a session opened; the first one records attendance.
    pub(crate) async fn presence_join(&self, session: &SessionId, caller: &Caller) {
        let first = {
            let mut sessions = lock(&self.presence().sessions);
            let sp = sessions.entry(session.clone()).or_default();
            let n = sp.users.entry(caller.user.to_string()).or_insert(0);
            *n += 1;
            *n == 1
        };
        if first {
            let _ = self.presence().feed.send(session.clone());
            self.attendance(session, caller, CommandBody::AttendanceJoin)
                .await;
        }
        self.schedule_attendance_update(session);
    }

    /// A user's connection to a session closed; the last one records their leaving.
    pub(crate) async fn presence_leave(&self, session: &SessionId, caller: &Caller) {
        let last = {
            let mut sessions = lock(&self.presence().sessions);
            let Some(sp) = sessions.get_mut(session) else {
                return;
            };
            let user = caller.user.to_string();
            let Some(n) = sp.users.get_mut(&user) else {
                return;
            };
            *n -= 1;
            let last = *n == 0;
            if last {
                sp.users.remove(&user);
            }
            last
        };
        if last {
            let _ = self.presence().feed.send(session.clone());
        }
        if last && !self.is_shutting_down() {
            self.attendance(session, caller, CommandBody::AttendanceLeave)
                .await;
        }
        self.schedule_attendance_update(session);
    }

    /// Records `attendance.join` or `attendance.leave` of `caller` (a failure is only logged:
    /// attendance never stops a connection).
    async fn attendance(&self, session: &SessionId, caller: &Caller, body: CommandBody) {
        let cmd = Command {
            id: new_command_id(),
            body,
        };
        if let Err(e) = self
            .hub()
            .execute(DocId::Session(session.clone()), caller.clone(), cmd)
            .await
        {
            tracing::debug!(error = %e, "attendance not recorded");
        }
    }

    /// The `attendance:update` frames of `session` for a lean WebSocket socket: it sees every
    /// update sent after this call (the latest, if several pass while it is busy).
    pub(crate) fn attendance_watch(
        &self,
        session: &SessionId,
    ) -> watch::Receiver<Option<Arc<[u8]>>> {
        let mut sessions = lock(&self.presence().sessions);
        sessions
            .entry(session.clone())
            .or_default()
            .attendance
            .subscribe()
    }

    /// Emits `attendance:update {present}` to the session's sockets, at most once per
    /// [`ATTENDANCE_UPDATE_EVERY`].
    fn schedule_attendance_update(&self, session: &SessionId) {
        let delay = {
            let mut sessions = lock(&self.presence().sessions);
            let sp = sessions.entry(session.clone()).or_default();
            if sp.update_pending {
                return;
            }
            sp.update_pending = true;
            match sp.last_update {
                Some(t) => ATTENDANCE_UPDATE_EVERY.saturating_sub(t.elapsed()),
                None => Duration::ZERO,
            }
        };
        let gw = self.clone();
        let session = session.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let payload = {
                let mut sessions = lock(&gw.presence().sessions);
                let Some(sp) = sessions.get_mut(&session) else {
                    return;
                };
                sp.update_pending = false;
                sp.last_update = Some(Instant::now());
                let payload = sio::attendance_payload(&session, sp.present());
                let packet = sio::event_packet("attendance:update", &[&payload]);
                sp.attendance
                    .send_replace(Some(Arc::from(wsframe::text(packet.as_bytes()))));
                payload
            };
            gw.emit_to_session(&session, "attendance:update", &payload)
                .await;
        });
    }
}

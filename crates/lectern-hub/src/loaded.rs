//! The table of loaded documents: one writer (its inbox's sender) per document, the order in
//! which they were last used, and the users each is charged to (every user whose command or
//! join touched it while loaded: a join keeps a document followed, so charging only the user
//! whose request loaded it would let one user pin any number of documents others loaded).
//!
//! It lives under the hub's one lock: looking a writer up, starting one, sending to it,
//! evicting it and retiring it all happen under that lock, so there is never more than one
//! writer per document. A writer is evicted only when nothing sent to it is still queued or
//! being processed (`in_flight` is raised under the lock by each send and lowered by the writer
//! once the batch holding the message is done) and nobody follows its room; dropping its only
//! sender then ends its task without it touching the store again.
//!
//! The charges cost a few bytes per user, since every connected user has one: users are kept
//! as 64-bit hashes (a per-process random key, so nobody can aim two ids at one hash; a
//! collision would only make two users share one quota), documents as their writer's id, and a
//! user's usual single document inline, without an allocation.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use lectern_model::{DocId, UserId};
use tokio::sync::mpsc;

use crate::doc::Msg;

/// How many least-recently-used documents a load that finds the hub full looks at for one to
/// evict, at most. Bounds the time the hub's lock is held; documents that are busy or followed
/// are skipped, and if none of these can go the load is refused (`overloaded`).
pub(crate) const EVICTION_SCAN_MAX_DOCS: usize = 1024;

/// One running writer.
pub(crate) struct Writer {
    pub(crate) tx: mpsc::Sender<Msg>,
    /// Unique among the writers this hub started: a writer retiring checks that the entry is
    /// still its own (it may have been evicted and a successor started).
    pub(crate) id: u64,
    /// Messages sent to the writer and not yet fully processed.
    pub(crate) in_flight: Arc<AtomicUsize>,
    /// When it was last sent something (a tick of [`Loaded`]'s clock).
    used: u64,
    /// The users it is charged to (their keys).
    owners: HashSet<u64>,
}

/// The writers (ids) charged to one user: one inline, or a list (at most the per-user cap).
#[derive(Debug)]
enum Held {
    One(u64),
    Many(Vec<u64>),
}

impl Held {
    fn insert(&mut self, id: u64) {
        match self {
            Held::One(held) if *held == id => {}
            Held::One(held) => *self = Held::Many(vec![*held, id]),
            Held::Many(ids) if !ids.contains(&id) => ids.push(id),
            Held::Many(_) => {}
        }
    }

    /// Removes `id`; whether nothing is left.
    fn remove(&mut self, id: u64) -> bool {
        match self {
            Held::One(held) => *held == id,
            Held::Many(ids) => {
                ids.retain(|held| *held != id);
                if let [last] = ids[..] {
                    *self = Held::One(last);
                }
                matches!(self, Held::Many(ids) if ids.is_empty())
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Held::One(_) => 1,
            Held::Many(ids) => ids.len(),
        }
    }

    fn ids(&self) -> &[u64] {
        match self {
            Held::One(id) => std::slice::from_ref(id),
            Held::Many(ids) => ids,
        }
    }
}

/// The loaded documents.
#[derive(Default)]
pub(crate) struct Loaded {
    writers: HashMap<DocId, Writer>,
    /// Last use → document: the least recently used first.
    lru: BTreeMap<u64, DocId>,
    tick: u64,
    next_id: u64,
    /// The writers charged to each user (by the user's key).
    by_user: HashMap<u64, Held>,
    /// Each writer's document, by writer id.
    by_id: HashMap<u64, DocId>,
    /// Makes users' keys.
    users: RandomState,
}

impl Loaded {
    pub(crate) fn len(&self) -> usize {
        self.writers.len()
    }

    pub(crate) fn clear(&mut self) {
        self.writers.clear();
        self.lru.clear();
        self.by_user.clear();
        self.by_id.clear();
    }

    fn user_key(&self, user: &UserId) -> u64 {
        self.users.hash_one(user)
    }

    /// The writer of `doc`, marked as just used.
    pub(crate) fn touch(&mut self, doc: &DocId) -> Option<&Writer> {
        self.tick += 1;
        let tick = self.tick;
        let w = self.writers.get_mut(doc)?;
        self.lru.remove(&w.used);
        w.used = tick;
        self.lru.insert(tick, doc.clone());
        Some(w)
    }

    /// Records a new writer for `doc` (which has none); returns its id.
    pub(crate) fn insert(
        &mut self,
        doc: DocId,
        tx: mpsc::Sender<Msg>,
        in_flight: Arc<AtomicUsize>,
    ) -> u64 {
        self.tick += 1;
        self.next_id += 1;
        let id = self.next_id;
        self.lru.insert(self.tick, doc.clone());
        self.by_id.insert(id, doc.clone());
        self.writers.insert(
            doc,
            Writer {
                tx,
                id,
                in_flight,
                used: self.tick,
                owners: HashSet::new(),
            },
        );
        id
    }

    /// Whether `doc` is loaded and charged to `user`.
    pub(crate) fn is_charged(&self, doc: &DocId, user: &UserId) -> bool {
        let key = self.user_key(user);
        self.writers
            .get(doc)
            .is_some_and(|w| w.owners.contains(&key))
    }

    /// Charges the loaded `doc` to `user`.
    pub(crate) fn charge(&mut self, doc: &DocId, user: &UserId) {
        let key = self.user_key(user);
        if let Some(w) = self.writers.get_mut(doc)
            && w.owners.insert(key)
        {
            self.by_user
                .entry(key)
                .and_modify(|held| held.insert(w.id))
                .or_insert(Held::One(w.id));
        }
    }

    /// Forgets `doc`'s writer (dropping its sender), if it is writer `id` (any writer when
    /// `id` is `None`). Whether it was removed.
    pub(crate) fn remove(&mut self, doc: &DocId, id: Option<u64>) -> bool {
        match self.writers.get(doc) {
            Some(w) if id.is_none_or(|id| id == w.id) => {}
            _ => return false,
        }
        let Some(w) = self.writers.remove(doc) else {
            return false;
        };
        self.lru.remove(&w.used);
        self.by_id.remove(&w.id);
        for user in &w.owners {
            if let Some(held) = self.by_user.get_mut(user)
                && held.remove(w.id)
            {
                self.by_user.remove(user);
            }
        }
        true
    }

    /// How many loaded documents are charged to `user`.
    pub(crate) fn held_by(&self, user: &UserId) -> usize {
        self.by_user.get(&self.user_key(user)).map_or(0, Held::len)
    }

    /// Evicts the least recently used of `user`'s documents that may go (see
    /// [`Loaded::evict_lru`]). Whether one went.
    pub(crate) fn evict_users(&mut self, user: &UserId, followed: impl Fn(&DocId) -> bool) -> bool {
        let Some(held) = self.by_user.get(&self.user_key(user)) else {
            return false;
        };
        let victim = held
            .ids()
            .iter()
            .filter_map(|id| self.by_id.get(id))
            .filter_map(|d| self.writers.get(d).map(|w| (w.used, d)))
            .filter(|(_, d)| self.idle(d) && !followed(d))
            .min_by_key(|(used, _)| *used)
            .map(|(_, d)| d.clone());
        match victim {
            Some(doc) => self.remove(&doc, None),
            None => false,
        }
    }

    /// Evicts the least recently used document that nothing is queued for or being processed
    /// by and that nobody follows (`followed`), looking at [`EVICTION_SCAN_MAX_DOCS`] at most.
    /// Whether one went.
    pub(crate) fn evict_lru(&mut self, followed: impl Fn(&DocId) -> bool) -> bool {
        let victim = self
            .lru
            .values()
            .take(EVICTION_SCAN_MAX_DOCS)
            .find(|d| self.idle(d) && !followed(d))
            .cloned();
        match victim {
            Some(doc) => self.remove(&doc, None),
            None => false,
        }
    }

    /// Nothing sent to `doc`'s writer is queued or being processed.
    fn idle(&self, doc: &DocId) -> bool {
        self.writers
            .get(doc)
            .is_some_and(|w| w.in_flight.load(Ordering::SeqCst) == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::Held;

    #[test]
    fn a_users_holdings_grow_shrink_and_empty() {
        let mut held = Held::One(1);
        held.insert(1);
        assert_eq!(held.ids(), &[1]);
        held.insert(2);
        held.insert(3);
        held.insert(2);
        assert_eq!(held.ids(), &[1, 2, 3]);
        assert!(!held.remove(2));
        assert!(!held.remove(1));
        assert!(matches!(held, Held::One(3)), "back inline: {held:?}");
        assert!(!held.remove(9), "another id leaves it");
        assert!(held.remove(3), "empty");
    }
}

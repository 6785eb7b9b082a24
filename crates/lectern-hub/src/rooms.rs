//! Rooms: one broadcast channel of published events per document.
//!
//! A [`Published`] event carries each audience's payload serialized once, so fanning out to
//! thousands of sockets costs one `Arc` clone per socket, not one serialization. A transport
//! that wraps the payload in its own framing (a Socket.IO event frame, an SSE event) does that
//! once per event and audience too, through [`Published::encoded`], and shares the bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use lectern_model::{Audience, DocId, Event};
use tokio::sync::broadcast;

/// An event as subscribers receive it.
#[derive(Debug)]
pub struct Published {
    /// The document.
    pub doc: DocId,
    /// Client-facing name (`qa:new` …).
    pub name: &'static str,
    /// Resume token after this event (shared: every socket keeps the last one it was sent as
    /// its position, for Connection State Recovery).
    pub token: Arc<str>,
    /// Id of the command that caused it.
    pub command: String,
    /// Serialized payloads by audience; the first match wins.
    pub deliveries: Vec<(Audience, Arc<str>)>,
    /// When it was made (after its change was durable): the start of the delivery latency the
    /// gateway measures (`lectern_delivery_latency_seconds`).
    pub published_at: std::time::Instant,
    /// Each delivery in each [`Encoding`], made by the first subscriber that needs it
    /// (`deliveries.len() × ENCODINGS` slots).
    encoded: Box<[OnceLock<Arc<[u8]>>]>,
}

/// A transport's framing of an event, made once per event and audience (see
/// [`Published::encoded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The finished WebSocket frame of a Socket.IO event packet.
    SocketIoFrame,
    /// The `text/event-stream` event.
    Sse,
}

/// How many [`Encoding`]s there are.
const ENCODINGS: usize = 2;

impl Published {
    /// Serializes an event's payloads, once each.
    pub fn from_event(doc: &DocId, event: &Event) -> Published {
        Published::new(
            doc.clone(),
            event.name,
            event.token.to_string(),
            event.command.clone(),
            event
                .deliveries
                .iter()
                .map(|d| (d.audience.clone(), Arc::from(d.payload.to_string())))
                .collect(),
        )
    }

    /// An event made outside a document's writer (a board computed from documents, say), with
    /// its payloads already serialized.
    pub fn new(
        doc: DocId,
        name: &'static str,
        token: String,
        command: String,
        deliveries: Vec<(Audience, Arc<str>)>,
    ) -> Published {
        let encoded = (0..deliveries.len() * ENCODINGS)
            .map(|_| OnceLock::new())
            .collect();
        Published {
            doc,
            name,
            token: Arc::from(token),
            command,
            deliveries,
            published_at: std::time::Instant::now(),
            encoded,
        }
    }

    /// The index in `deliveries` of what a subscriber (`user`, staff or not) receives, if any.
    pub fn delivery_for(&self, user: &str, staff: bool) -> Option<usize> {
        self.deliveries
            .iter()
            .position(|(a, _)| a.matches(user, staff))
    }

    /// Delivery `delivery` in `encoding`: `make` (given the payload) runs for the first caller
    /// only; every later caller, on any thread, shares its bytes. `None` for an index past the
    /// deliveries.
    pub fn encoded(
        &self,
        delivery: usize,
        encoding: Encoding,
        make: impl FnOnce(&str) -> Vec<u8>,
    ) -> Option<Arc<[u8]>> {
        let (_, payload) = self.deliveries.get(delivery)?;
        let slot = self.encoded.get(delivery * ENCODINGS + encoding as usize)?;
        Some(slot.get_or_init(|| Arc::from(make(payload))).clone())
    }

    /// The payload a subscriber (`user`, staff or not) receives, if any.
    pub fn payload_for(&self, user: &str, staff: bool) -> Option<&Arc<str>> {
        self.deliveries
            .iter()
            .find(|(a, _)| a.matches(user, staff))
            .map(|(_, p)| p)
    }
}

pub(crate) struct Rooms {
    capacity: usize,
    /// Capacity of an inbox's room: a broadcast channel allocates every slot up front
    /// (≈ 40 B each), and a node holds one inbox room per user with an open notification
    /// stream, each with a handful of subscribers and rare events.
    inbox_capacity: usize,
    rooms: Mutex<HashMap<DocId, broadcast::Sender<Arc<Published>>>>,
}

impl Rooms {
    pub(crate) fn new(capacity: usize, inbox_capacity: usize) -> Rooms {
        Rooms {
            capacity: capacity.max(1),
            inbox_capacity: inbox_capacity.max(1),
            rooms: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn subscribe(&self, doc: &DocId) -> broadcast::Receiver<Arc<Published>> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        rooms
            .entry(doc.clone())
            .or_insert_with(|| {
                let capacity = match doc {
                    DocId::Inbox(_) => self.inbox_capacity,
                    _ => self.capacity,
                };
                broadcast::channel(capacity).0
            })
            .subscribe()
    }

    /// Whether anyone follows `doc` now. Subscribing happens on the document's writer task, so
    /// the answer holds for the whole batch that asks.
    pub(crate) fn has_subscribers(&self, doc: &DocId) -> bool {
        let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        rooms.get(doc).is_some_and(|tx| tx.receiver_count() > 0)
    }

    /// Publishes to the room; a room whose last subscriber left is removed.
    pub(crate) fn publish(&self, doc: &DocId, events: Vec<Arc<Published>>) {
        if events.is_empty() {
            return;
        }
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = rooms.get(doc) else { return };
        if tx.receiver_count() == 0 {
            rooms.remove(doc);
            return;
        }
        for e in events {
            let _ = tx.send(e);
        }
    }
}

#[cfg(test)]
#[path = "rooms_tests.rs"]
mod tests;

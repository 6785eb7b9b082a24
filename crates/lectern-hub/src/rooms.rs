//! Rooms: one broadcast channel of published events per document.
//!
//! A [`Published`] event carries each audience's payload serialized once, so fanning out to
//! thousands of sockets costs one `Arc` clone per socket, not one serialization.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lectern_model::{Audience, DocId, Event};
use tokio::sync::broadcast;

/// An event as subscribers receive it.
#[derive(Debug)]
pub struct Published {
    /// The document.
    pub doc: DocId,
    /// Client-facing name (`qa:new` …).
    pub name: &'static str,
    /// Resume token after this event.
    pub token: String,
    /// Id of the command that caused it.
    pub command: String,
    /// Serialized payloads by audience; the first match wins.
    pub deliveries: Vec<(Audience, Arc<str>)>,
}

impl Published {
    /// Serializes an event's payloads, once each.
    pub fn from_event(doc: &DocId, event: &Event) -> Published {
        Published {
            doc: doc.clone(),
            name: event.name,
            token: event.token.to_string(),
            command: event.command.clone(),
            deliveries: event
                .deliveries
                .iter()
                .map(|d| (d.audience.clone(), Arc::from(d.payload.to_string())))
                .collect(),
        }
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

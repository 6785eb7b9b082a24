//! Unit tests of the rooms and of `Published`: who receives which payload, the shared
//! encodings, and a room's life (subscribe, publish, the last subscriber leaving).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use lectern_model::{Audience, Delivery, DocId, Event, ResumeToken, SessionId, UserId};
use tokio::sync::broadcast::error::TryRecvError;

use super::{Encoding, Published, Rooms};

fn session() -> DocId {
    DocId::Session(SessionId::new("s1").expect("id"))
}

fn published(command: &str) -> Arc<Published> {
    Arc::new(Published::new(
        session(),
        "qa:new",
        "token".into(),
        command.into(),
        vec![(Audience::All, Arc::from("{}"))],
    ))
}

/// Staff, one user, and the other students each get their own payload; a delivery list
/// without a match gives nothing.
///
/// Kills `delivery_for` → `None`, `Some(0)`, `Some(1)` and `payload_for` → `None` or a fixed
/// string.
#[test]
fn each_audience_gets_its_own_delivery() {
    let p = Published::new(
        session(),
        "qa:new",
        "t".into(),
        "c".into(),
        vec![
            (Audience::Staff, Arc::from("staff")),
            (Audience::User("u1".into()), Arc::from("own")),
            (
                Audience::Students {
                    except: Some("u1".into()),
                },
                Arc::from("students"),
            ),
        ],
    );
    assert_eq!(p.delivery_for("t1", true), Some(0));
    assert_eq!(p.delivery_for("u1", false), Some(1));
    assert_eq!(p.delivery_for("u2", false), Some(2));
    assert_eq!(p.payload_for("u1", false).map(|s| &**s), Some("own"));
    assert_eq!(p.payload_for("u2", false).map(|s| &**s), Some("students"));
    let staff_only = Published::new(
        session(),
        "x",
        "t".into(),
        "c".into(),
        vec![(Audience::Staff, Arc::from("s"))],
    );
    assert_eq!(staff_only.delivery_for("u2", false), None);
    assert_eq!(staff_only.payload_for("u2", false), None);
}

/// An event's payloads are its deliveries' JSON, in order, with its name, token and command.
///
/// Kills `Published::from_event` returning anything else.
#[test]
fn an_event_is_published_with_its_payloads_serialized() {
    let event = Event {
        name: "chat:new",
        token: ResumeToken::from_heads(Vec::new()),
        command: "k1".into(),
        deliveries: vec![Delivery {
            audience: Audience::All,
            payload: serde_json::json!({"text": "hi"}),
        }],
    };
    let p = Published::from_event(&session(), &event);
    assert_eq!(p.doc, session());
    assert_eq!((p.name, p.command.as_str()), ("chat:new", "k1"));
    assert_eq!(&*p.token, event.token.to_string());
    assert_eq!(
        p.payload_for("anyone", false).map(|s| &**s),
        Some(r#"{"text":"hi"}"#)
    );
}

/// Each (delivery, encoding) has its own slot, made once from that delivery's payload and then
/// shared; an index past the deliveries gives `None`.
///
/// Kills `encoded` → `None` or fixed bytes, and `+`/`*` changed in the slot index (two
/// deliveries or encodings would share, or miss, a slot).
#[test]
fn each_delivery_and_encoding_is_encoded_once_in_its_own_slot() {
    let p = Published::new(
        session(),
        "x",
        "t".into(),
        "c".into(),
        (0..3)
            .map(|i| (Audience::All, Arc::from(format!("p{i}"))))
            .collect(),
    );
    let made = AtomicUsize::new(0);
    let encode = |d: usize, e: Encoding| {
        p.encoded(d, e, |payload| {
            made.fetch_add(1, Ordering::SeqCst);
            format!("{payload}/{e:?}").into_bytes()
        })
        .expect("a slot")
    };
    for round in 0..2 {
        for d in 0..3 {
            for e in [Encoding::SocketIoFrame, Encoding::Sse] {
                assert_eq!(
                    &*encode(d, e),
                    format!("p{d}/{e:?}").as_bytes(),
                    "round {round}"
                );
            }
        }
    }
    assert_eq!(made.load(Ordering::SeqCst), 6, "made once per slot");
    assert!(p.encoded(3, Encoding::Sse, |_| Vec::new()).is_none());
}

/// A room delivers what is published to its subscribers, in order; whether it has subscribers
/// is true only while one is there; publishing to a room whose last subscriber left removes it.
///
/// Kills `publish` → `()`, its `==` → `!=`, `has_subscribers` → `true`/`false` and its `>`
/// changed, and `subscribe` handing back a receiver of another channel.
#[test]
fn a_room_delivers_to_its_subscribers_and_is_removed_once_empty() {
    let rooms = Rooms::new(16, 16);
    let doc = session();
    assert!(!rooms.has_subscribers(&doc));
    let mut rx = rooms.subscribe(&doc);
    assert!(rooms.has_subscribers(&doc));
    rooms.publish(&doc, vec![published("a"), published("b")]);
    assert_eq!(rx.try_recv().expect("a").command, "a");
    assert_eq!(rx.try_recv().expect("b").command, "b");
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    drop(rx);
    // The room is still there, with no one in it.
    assert!(!rooms.has_subscribers(&doc));
    rooms.publish(&doc, vec![published("c")]);
    assert!(rooms.rooms.lock().expect("rooms").is_empty());
}

/// An inbox room has the inbox capacity, not the documents' one: a subscriber that falls
/// behind it lags.
///
/// Kills deleting the `DocId::Inbox` arm in `subscribe`.
#[test]
fn an_inbox_room_has_the_inbox_capacity() {
    let rooms = Rooms::new(16, 1);
    let inbox = DocId::Inbox(UserId::new("u1").expect("id"));
    let mut rx = rooms.subscribe(&inbox);
    rooms.publish(&inbox, vec![published("a"), published("b"), published("c")]);
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Lagged(_))));
    let mut session_rx = rooms.subscribe(&session());
    rooms.publish(
        &session(),
        vec![published("a"), published("b"), published("c")],
    );
    assert_eq!(session_rx.try_recv().expect("a").command, "a");
}

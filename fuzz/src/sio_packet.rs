//! Engine.IO and Socket.IO packets as the lean WebSocket takes them: each message goes to the
//! gateway's Socket.IO client core (`sio/client.rs`, which parses it with `sio/packet.rs`),
//! and each command event it dispatches is parsed into a model command as the transports
//! parse it (`commands.rs`).
//!
//! An input is a sequence of messages separated by `0x1e` (the separator of Engine.IO's
//! polling payloads): a message that is UTF-8 is a text message, one that is not is a binary
//! message, and one starting with `0x1f` moves the clock by the next byte × 500 ms (the
//! heartbeat and connect deadlines).
//!
//! Invariants: nothing panics; every packet that parses reaches the same parse again from its
//! canonical encoding; what the core sends is an Engine.IO packet; a refusal has a client
//! error status and a stable code; a command parsed survives a JSON round trip; a connection
//! once closed stays closed and answers nothing; allocation is bounded by the input's size.

use lectern_gateway::fuzzing::{SioConnection, SioOutcome, engine_packet, socketio_packet};
use lectern_model::CommandBody;

use crate::alloc;

/// Separates messages in an input.
const SEPARATOR: u8 = 0x1e;

/// Starts a message that moves the clock instead.
const CLOCK: u8 = 0x1f;

/// Runs one input.
pub fn run(data: &[u8]) {
    alloc::bounded("sio_packet", data.len(), || connection(data));
}

fn connection(data: &[u8]) {
    let mut conn = SioConnection::new();
    for message in data.split(|b| *b == SEPARATOR) {
        let was_closed = conn.is_closed();
        let outcome = match message {
            [CLOCK, rest @ ..] => {
                let ms = u64::from(rest.first().copied().unwrap_or(0)) * 500;
                conn.advance(ms)
            }
            _ => match std::str::from_utf8(message) {
                Ok(text) => {
                    packet_round_trip(text);
                    conn.on_text(text)
                }
                Err(_) => conn.on_binary(),
            },
        };
        if was_closed {
            assert!(
                matches!(outcome, SioOutcome::Nothing),
                "a closed connection answered {outcome:?}"
            );
            assert!(conn.is_closed(), "a closed connection reopened");
        }
        check(&conn, outcome);
    }
}

fn check(conn: &SioConnection, outcome: SioOutcome) {
    match outcome {
        SioOutcome::Nothing | SioOutcome::Ping | SioOutcome::Disconnected(_) => {}
        SioOutcome::Send(text) => {
            assert!(
                matches!(text.as_bytes().first(), Some(b'0'..=b'6')),
                "sent {text:?}, not an Engine.IO packet"
            );
        }
        SioOutcome::Connected(text) => {
            assert!(text.starts_with("40{"), "connected with {text:?}");
            assert!(conn.is_connected());
        }
        SioOutcome::Event(_, Ok(Some(body))) => {
            let json = serde_json::to_value(&body).expect("a command body serializes");
            let again: CommandBody = serde_json::from_value(json).expect("and deserializes");
            assert_eq!(again, body, "a command body's JSON round trip");
        }
        SioOutcome::Event(_, Ok(None)) => {}
        SioOutcome::Event(_, Err(e)) => {
            assert!(e.status.is_client_error(), "refused with {}", e.status);
            assert!(!e.code.is_empty());
        }
        SioOutcome::Close(code, reason) => {
            assert!(conn.is_closed(), "closed with {code} but still open");
            assert!((1000..=4999).contains(&code), "close code {code}");
            // Only a normal closure (the client's own) may go without a reason.
            assert!(
                code == 1000 || !reason.is_empty(),
                "close {code} without a reason"
            );
        }
    }
}

/// A packet that parses parses the same from its canonical encoding (the namespace always
/// written, so a payload starting with `/` stays a payload).
fn packet_round_trip(text: &str) {
    let Ok((kind, payload)) = engine_packet(text) else {
        return;
    };
    assert_eq!(text.as_bytes().first(), Some(&kind));
    assert!(text.ends_with(payload));
    if kind != b'4' {
        return;
    }
    let Ok(p) = socketio_packet(payload) else {
        return;
    };
    let mut canonical = String::new();
    canonical.push(char::from(p.kind));
    if matches!(p.kind, b'5' | b'6') {
        canonical.push_str(&format!("{}-", p.attachments));
    }
    canonical.push_str(p.namespace);
    canonical.push(',');
    if let Some(ack) = p.ack {
        canonical.push_str(&ack.to_string());
    }
    canonical.push_str(p.data);
    assert_eq!(
        socketio_packet(&canonical),
        Ok(p.clone()),
        "{payload:?} re-encoded as {canonical:?}"
    );
}

//! The lean WebSocket's frame decoder (the gateway's `wsframe.rs`), fed a client's bytes.
//!
//! Invariants: decoding never panics; the messages (and the fault that ends them, if any) are
//! the same whether the bytes arrive whole or a few at a time, as a socket delivers them; a
//! whole frame is reported only with a positive length within the buffer; no message is over
//! the limit and no control payload over 125 bytes; a text message is valid UTF-8 and survives
//! the server's own encoder (masked as a client masks); the decoder's allocation is bounded by
//! the input's size.

use lectern_gateway::fuzzing::{
    WsDecoder, WsMessage, ws_close_frame, ws_pong_frame, ws_text_frame,
};

use crate::alloc;

/// The message limit the harness decodes with: small, so the `1009` path is reached.
pub const MESSAGE_MAX_BYTES: usize = 1024;

/// Largest control-frame payload (RFC 6455 §5.5).
const CONTROL_PAYLOAD_MAX_BYTES: usize = 125;

/// The messages decoded and the close code and reason that ended the stream, if one did.
type Decoded = (Vec<WsMessage>, Option<(u16, &'static str)>);

/// Runs one input. The first byte picks how many bytes each simulated read delivers (1–8);
/// the rest is the client's byte stream.
pub fn run(data: &[u8]) {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let whole = alloc::bounded("ws_frame", stream.len(), || decode(stream, stream.len()));
    let step = usize::from(first % 8) + 1;
    let pieces = decode(stream, step);
    assert_eq!(whole, pieces, "whole vs {step}-byte reads");
    let (messages, fault) = whole;
    if let Some((code, reason)) = fault {
        assert!(matches!(code, 1002 | 1007 | 1009), "close code {code}");
        assert!(!reason.is_empty());
    }
    for message in messages {
        round_trip(&message);
    }
}

/// Decodes `stream` as the lean WebSocket reads it: a buffer filled `step` bytes at a time,
/// decoded after each read, whole frames removed from its front.
fn decode(stream: &[u8], step: usize) -> Decoded {
    let mut decoder = WsDecoder::new(MESSAGE_MAX_BYTES);
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut messages = Vec::new();
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some((used, message))) => {
                assert!(
                    used > 0 && used <= buf.len(),
                    "used {used} of {}",
                    buf.len()
                );
                buf.drain(..used);
                if let Some(message) = message {
                    check(&message);
                    messages.push(message);
                }
            }
            Ok(None) => {
                if fed == stream.len() {
                    return (messages, None);
                }
                let n = step.max(1).min(stream.len() - fed);
                buf.extend_from_slice(&stream[fed..fed + n]);
                fed += n;
            }
            Err(fault) => return (messages, Some(fault)),
        }
    }
}

fn check(message: &WsMessage) {
    match message {
        WsMessage::Text(text) => assert!(text.len() <= MESSAGE_MAX_BYTES),
        WsMessage::Ping(payload) => assert!(payload.len() <= CONTROL_PAYLOAD_MAX_BYTES),
        WsMessage::Binary | WsMessage::Pong | WsMessage::Close => {}
    }
}

/// The frames the server writes in answer decode, once masked, to what they carry.
fn round_trip(message: &WsMessage) {
    let (frame, expected) = match message {
        WsMessage::Text(text) => (
            ws_text_frame(text.as_bytes()),
            WsMessage::Text(text.clone()),
        ),
        WsMessage::Ping(payload) => (ws_pong_frame(payload), WsMessage::Pong),
        WsMessage::Close => (ws_close_frame(1000, "bye"), WsMessage::Close),
        WsMessage::Binary | WsMessage::Pong => return,
    };
    let mut masked = mask(&frame, [0x37, 0xfa, 0x21, 0x3d]);
    let len = masked.len();
    let mut decoder = WsDecoder::new(MESSAGE_MAX_BYTES);
    assert_eq!(
        decoder.decode(&mut masked),
        Ok(Some((len, Some(expected)))),
        "the server's frame for {message:?} does not decode to it"
    );
}

/// `frame` (a server frame: unmasked) as a client would send it, masked with `key`.
pub fn mask(frame: &[u8], key: [u8; 4]) -> Vec<u8> {
    let header_len = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
        None => return frame.to_vec(),
    };
    let (header, payload) = frame.split_at(header_len.min(frame.len()));
    let mut out = Vec::with_capacity(frame.len() + 4);
    out.extend_from_slice(header);
    if let Some(b1) = out.get_mut(1) {
        *b1 |= 0x80;
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

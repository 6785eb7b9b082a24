//! The front door's classification of a request head (`front.rs`: which bytes take the lean
//! SSE path, which the lean WebSocket, which go to hyper), fed a client's first bytes.
//!
//! Invariants: nothing panics; bytes for hyper are replayed exactly as read; a stream is a
//! `GET /api/stream/…`, a lean WebSocket a `GET /socket.io…` whose early bytes are what
//! followed the head; an incomplete head is waited for only while it is under the head limit;
//! the decision is the same when the head arrives in pieces as when it arrives whole (the
//! accept loop decides after every read); allocation is bounded by the input's size.

use lectern_gateway::fuzzing::{HeadRoute, http_head};

use crate::alloc;

/// The front door's head limit (`front.rs`'s `HEAD_MAX_BYTES`): a longer head goes to hyper.
const HEAD_MAX_BYTES: usize = 64 * 1024;

/// Runs one input. The first byte picks the size of each read (1–32 bytes); the rest is the
/// client's bytes.
pub fn run(data: &[u8]) {
    let Some((&first, bytes)) = data.split_first() else {
        return;
    };
    // httparse skips empty lines before a request line (RFC 9112 §2.2 lets a server do so).
    let request = {
        let blank = bytes
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        &bytes[blank..]
    };
    let whole = alloc::bounded("http_head", bytes.len(), || {
        let mut buf = bytes.to_vec();
        (http_head(&mut buf), buf)
    });
    match &whole {
        (None, buf) => {
            assert!(
                bytes.len() < HEAD_MAX_BYTES,
                "waited on a head over the limit"
            );
            assert_eq!(buf, bytes, "a waiting head lost bytes");
        }
        (Some(HeadRoute::Other(replay)), _) => assert_eq!(replay, bytes, "hyper's replay"),
        (Some(HeadRoute::Stream(target)), _) => {
            assert!(request.starts_with(b"GET "), "a stream that is not a GET");
            assert!(
                target.starts_with("/api/stream/"),
                "stream target {target:?}"
            );
        }
        (Some(HeadRoute::WebSocket(target, early)), _) => {
            assert!(
                request.starts_with(b"GET "),
                "a WebSocket that is not a GET"
            );
            assert!(
                target.starts_with("/socket.io"),
                "WebSocket target {target:?}"
            );
            assert!(
                bytes.ends_with(early),
                "early bytes that were not sent last"
            );
        }
    }
    let step = usize::from(first % 32) + 1;
    let pieces = in_pieces(bytes, step);
    match (&whole.0, &pieces) {
        (None, None) => {}
        (Some(HeadRoute::Stream(a)), Some(HeadRoute::Stream(b))) => assert_eq!(a, b),
        (Some(HeadRoute::WebSocket(a, _)), Some(HeadRoute::WebSocket(b, _))) => assert_eq!(a, b),
        (Some(HeadRoute::Other(_)), Some(HeadRoute::Other(_))) => {}
        (whole, pieces) => {
            panic!("whole: {whole:?}, in {step}-byte reads: {pieces:?}")
        }
    }
}

/// The first decision of the accept loop when `bytes` arrive `step` at a time.
fn in_pieces(bytes: &[u8], step: usize) -> Option<HeadRoute> {
    let mut buf = Vec::new();
    for chunk in bytes.chunks(step) {
        buf.extend_from_slice(chunk);
        if let Some(route) = http_head(&mut buf) {
            return Some(route);
        }
    }
    None
}

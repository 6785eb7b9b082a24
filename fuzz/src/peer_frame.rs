//! The peer protocol's frame decoder (`lectern_wire::FrameDecoder`), fed a peer's bytes.
//!
//! Invariants: decoding never panics; the frames and errors are the same whether the bytes
//! arrive whole or in pieces; between pushes the decoder holds at most one frame's worth
//! (limit + 4 bytes); once a length over the limit is seen every later call says so; every
//! frame decoded encodes and decodes back to itself; allocation stays within what
//! `frame.rs` documents: bincode's limit of 4 × `FRAME_LEN_MAX_BYTES` (64 MiB), which a body of
//! a few dozen bytes can reach for a moment by declaring a long string (bincode allocates a
//! string's declared length before reading it; the fuzzer found such a 45-byte body), plus the
//! usual per-input allowance.
//!
//! The same bytes also go to the blob exchange's decoders (`decode_blob_request`,
//! `decode_blob_answer`: what a peer writes on a blob stream): never a panic; an answer header
//! decoded from the input re-encodes to exactly its bytes, and every shorter prefix of it
//! still asks for more.

use lectern_wire::{
    FRAME_LEN_MAX_BYTES, FrameDecoder, FrameError, PeerFrame, decode_blob_answer,
    decode_blob_request, encode_blob_answer, encode_frame,
};

use crate::alloc;

/// The frame limit the harness decodes with: small, so the `TooLarge` path is reached.
pub const FRAME_MAX_BYTES: usize = 64 * 1024;

/// Frames and errors, in the order the decoder gave them.
type Decoded = Vec<Result<PeerFrame, FrameError>>;

/// Runs one input. The first byte picks the size of each push (1–64 bytes); the rest is the
/// peer's byte stream.
pub fn run(data: &[u8]) {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let budget = (4 * FRAME_LEN_MAX_BYTES)
        .saturating_add(alloc::ALLOC_BASE_BYTES)
        .saturating_add(alloc::ALLOC_PER_INPUT_BYTE.saturating_mul(stream.len()));
    let whole = alloc::bounded_by("peer_frame", stream.len(), budget, || {
        decode(stream, stream.len().max(1))
    });
    blob_exchange(stream);
    let step = usize::from(first % 64) + 1;
    let pieces = decode(stream, step);
    assert_eq!(whole, pieces, "whole vs {step}-byte pushes");
    for frame in whole.iter().flatten() {
        let bytes = encode_frame(frame).expect("a decoded frame encodes");
        let mut decoder = FrameDecoder::new(FRAME_MAX_BYTES);
        decoder.push(&bytes);
        assert_eq!(decoder.next_frame(), Ok(Some(frame.clone())), "round trip");
        assert_eq!(decoder.next_frame(), Ok(None));
    }
}

fn blob_exchange(bytes: &[u8]) {
    let _ = decode_blob_request(bytes);
    if let Ok(Some((answer, len))) = decode_blob_answer(bytes) {
        let header = encode_blob_answer(&answer).expect("a decoded answer encodes");
        assert_eq!(
            header,
            bytes[..len],
            "an answer header re-encodes to its bytes"
        );
        for cut in 0..len {
            assert_eq!(
                decode_blob_answer(&bytes[..cut]),
                Ok(None),
                "a prefix of {cut}"
            );
        }
    }
}

fn decode(stream: &[u8], step: usize) -> Decoded {
    let mut decoder = FrameDecoder::new(FRAME_MAX_BYTES);
    let mut out = Vec::new();
    for chunk in stream.chunks(step) {
        decoder.push(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => out.push(Ok(frame)),
                Ok(None) => break,
                Err(e @ FrameError::TooLarge { .. }) => {
                    // The stream cannot resynchronize: it stays refused.
                    decoder.push(b"more");
                    assert_eq!(decoder.next_frame(), Err(e.clone()));
                    out.push(Err(e));
                    return out;
                }
                Err(e) => out.push(Err(e)),
            }
        }
        assert!(
            decoder.buffered_len() <= FRAME_MAX_BYTES + 4,
            "{} bytes buffered between pushes",
            decoder.buffered_len()
        );
    }
    out
}

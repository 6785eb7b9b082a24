//! Unit and property tests of peer frames and framing.

use proptest::prelude::*;

use crate::{
    DigestContent, FRAME_LEN_MAX_BYTES, FrameDecoder, FrameError, PROTOCOL_VERSION, PeerFrame,
    encode_frame,
};

/// One frame of every variant, with fields that exercise multi-byte varints and non-ASCII.
fn every_variant() -> Vec<PeerFrame> {
    vec![
        PeerFrame::Hello {
            node_id: "01abff000102030405060708090a0bfe".into(),
            name: "sydney-1".into(),
            region: "eu-west".into(),
            protocol_version: PROTOCOL_VERSION,
        },
        PeerFrame::Sync {
            doc: "session/abc".into(),
            message: (0..=255).collect(),
        },
        PeerFrame::Sync {
            doc: String::new(),
            message: Vec::new(),
        },
        PeerFrame::DigestNode {
            prefix: vec![3, 255],
            content: DigestContent::Leaves(vec![
                ("session/a".into(), [7; 16]),
                ("session/ab/ü".into(), [0; 16]),
            ]),
            resync: false,
        },
        PeerFrame::DigestNode {
            prefix: Vec::new(),
            content: DigestContent::Children((0..256).map(|i| u64::MAX - i).collect()),
            resync: true,
        },
        PeerFrame::DigestNode {
            prefix: Vec::new(),
            content: DigestContent::Leaves(Vec::new()),
            resync: false,
        },
        PeerFrame::Ephemeral {
            doc: "session/abc".into(),
            sender: "client-1".into(),
            counter: u64::MAX,
            payload: vec![1, 2, 3],
        },
        PeerFrame::Bye {
            reason: "shutting down".into(),
        },
    ]
}

fn decode_all(decoder: &mut FrameDecoder) -> Vec<PeerFrame> {
    let mut frames = Vec::new();
    while let Some(frame) = decoder.next_frame().expect("valid frame") {
        frames.push(frame);
    }
    frames
}

fn stream_of(frames: &[PeerFrame]) -> Vec<u8> {
    frames
        .iter()
        .flat_map(|frame| encode_frame(frame).expect("encode"))
        .collect()
}

#[test]
fn every_variant_round_trips() {
    for frame in every_variant() {
        let bytes = encode_frame(&frame).expect("encode");
        let declared = u32::from_be_bytes(bytes[..4].try_into().expect("header")) as usize;
        assert_eq!(declared, bytes.len() - 4, "header is the body length");

        let mut decoder = FrameDecoder::new(FRAME_LEN_MAX_BYTES);
        decoder.push(&bytes);
        assert_eq!(decoder.next_frame(), Ok(Some(frame)));
        assert_eq!(decoder.next_frame(), Ok(None));
        assert_eq!(decoder.buffered_len(), 0);
    }
}

#[test]
fn frames_split_at_every_byte_boundary_decode_identically() {
    let frames = every_variant();
    let stream = stream_of(&frames);
    for split in 0..=stream.len() {
        let mut decoder = FrameDecoder::new(FRAME_LEN_MAX_BYTES);
        decoder.push(&stream[..split]);
        let mut decoded = decode_all(&mut decoder);
        decoder.push(&stream[split..]);
        decoded.extend(decode_all(&mut decoder));
        assert_eq!(decoded, frames, "split at byte {split}");
    }

    let mut decoder = FrameDecoder::new(FRAME_LEN_MAX_BYTES);
    let mut decoded = Vec::new();
    for byte in &stream {
        decoder.push(std::slice::from_ref(byte));
        decoded.extend(decode_all(&mut decoder));
    }
    assert_eq!(decoded, frames, "one byte at a time");
}

#[test]
fn too_large_length_is_rejected_from_the_header_alone() {
    let max = 1000;
    let mut decoder = FrameDecoder::new(max);
    decoder.push(&1001u32.to_be_bytes()[..3]);
    assert_eq!(
        decoder.next_frame(),
        Ok(None),
        "three header bytes are not enough to judge"
    );
    decoder.push(&1001u32.to_be_bytes()[3..]);
    assert_eq!(
        decoder.next_frame(),
        Err(FrameError::TooLarge { len: 1001, max })
    );

    // Frames before the bad header still come out; nothing after it is buffered.
    let good = encode_frame(&PeerFrame::Bye {
        reason: "ok".into(),
    })
    .expect("encode");
    let mut stream = good.clone();
    stream.extend_from_slice(&u32::MAX.to_be_bytes());
    stream.extend_from_slice(&[0xAA; 5000]);
    let mut decoder = FrameDecoder::new(max);
    decoder.push(&stream);
    assert_eq!(
        decoder.buffered_len(),
        good.len(),
        "the oversized body was not buffered"
    );
    assert_eq!(
        decoder.next_frame(),
        Ok(Some(PeerFrame::Bye {
            reason: "ok".into()
        }))
    );
    let too_large = Err(FrameError::TooLarge {
        len: u32::MAX as usize,
        max,
    });
    assert_eq!(decoder.next_frame(), too_large);
    decoder.push(&good);
    assert_eq!(decoder.next_frame(), too_large, "the stream stays failed");
    assert_eq!(decoder.buffered_len(), 0);
}

#[test]
fn the_decoder_limit_is_capped_at_the_protocol_limit() {
    let mut decoder = FrameDecoder::new(usize::MAX);
    decoder.push(&(FRAME_LEN_MAX_BYTES as u32 + 1).to_be_bytes());
    assert!(matches!(
        decoder.next_frame(),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn encoding_a_frame_over_the_limit_fails() {
    let frame = PeerFrame::Sync {
        doc: "d".into(),
        message: vec![0; FRAME_LEN_MAX_BYTES],
    };
    assert!(matches!(
        encode_frame(&frame),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn garbage_bodies_are_malformed_and_the_stream_goes_on() {
    let bodies: [&[u8]; 6] = [
        &[],
        &[200],                                                    // no such variant
        &[1, 5, b'a'],                                             // a string shorter than declared
        &[4, 253, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], // a string of u64::MAX bytes
        &[4, 1, 0xC3],                                             // invalid UTF-8
        &[3, 1, b'd', 1, b's', 251],                               // a truncated varint
    ];
    for body in bodies {
        let mut stream = (body.len() as u32).to_be_bytes().to_vec();
        stream.extend_from_slice(body);
        stream.extend(
            encode_frame(&PeerFrame::Bye {
                reason: "next".into(),
            })
            .expect("encode"),
        );
        let mut decoder = FrameDecoder::new(FRAME_LEN_MAX_BYTES);
        decoder.push(&stream);
        assert!(
            matches!(decoder.next_frame(), Err(FrameError::Malformed { .. })),
            "body {body:?}"
        );
        assert_eq!(
            decoder.next_frame(),
            Ok(Some(PeerFrame::Bye {
                reason: "next".into()
            }))
        );
    }

    // A valid frame with a trailing byte inside its declared length is malformed too.
    let mut bytes = encode_frame(&PeerFrame::Bye { reason: "x".into() }).expect("encode");
    bytes.push(0);
    let len = (bytes.len() - 4) as u32;
    bytes[..4].copy_from_slice(&len.to_be_bytes());
    let mut decoder = FrameDecoder::new(FRAME_LEN_MAX_BYTES);
    decoder.push(&bytes);
    assert!(matches!(
        decoder.next_frame(),
        Err(FrameError::Malformed { .. })
    ));
}

/// Splits `bytes` into consecutive pieces whose lengths cycle through `cuts` (0 counts as 1).
fn pieces<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut cut = cuts.iter().cycle();
    while !rest.is_empty() {
        let len = cut
            .next()
            .copied()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        let (piece, later) = rest.split_at(len);
        out.push(piece);
        rest = later;
    }
    out
}

proptest! {
    #[test]
    fn arbitrary_bytes_in_arbitrary_chunks_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        cuts in proptest::collection::vec(0usize..64, 1..16),
        max_len in 0usize..4096,
    ) {
        let mut decoder = FrameDecoder::new(max_len);
        for piece in pieces(&bytes, &cuts) {
            decoder.push(piece);
            prop_assert!(decoder.buffered_len() <= max_len + 4 + piece.len());
            // Every call consumes a frame or returns None/TooLarge, so this terminates.
            for _ in 0..=bytes.len() {
                match decoder.next_frame() {
                    Ok(Some(_)) | Err(FrameError::Malformed { .. }) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            prop_assert!(decoder.buffered_len() <= max_len + 4);
        }
    }

    #[test]
    fn valid_streams_in_arbitrary_chunks_decode_identically(
        picks in proptest::collection::vec(0usize..7, 0..12),
        cuts in proptest::collection::vec(0usize..300, 1..16),
    ) {
        let all = every_variant();
        let frames: Vec<PeerFrame> = picks.iter().map(|&i| all[i % all.len()].clone()).collect();
        let stream = stream_of(&frames);
        let mut decoder = FrameDecoder::new(FRAME_LEN_MAX_BYTES);
        let mut decoded = Vec::new();
        for piece in pieces(&stream, &cuts) {
            decoder.push(piece);
            decoded.extend(decode_all(&mut decoder));
        }
        prop_assert_eq!(decoded, frames);
        prop_assert_eq!(decoder.buffered_len(), 0);
    }

    #[test]
    fn arbitrary_bodies_behind_honest_headers_never_panic(
        bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..20),
        cuts in proptest::collection::vec(0usize..64, 1..16),
    ) {
        let mut stream = Vec::new();
        for body in &bodies {
            stream.extend_from_slice(&(body.len() as u32).to_be_bytes());
            stream.extend_from_slice(body);
        }
        let mut decoder = FrameDecoder::new(FRAME_LEN_MAX_BYTES);
        let mut outcomes = 0;
        for piece in pieces(&stream, &cuts) {
            decoder.push(piece);
            loop {
                match decoder.next_frame() {
                    Ok(Some(_)) | Err(FrameError::Malformed { .. }) => outcomes += 1,
                    Ok(None) => break,
                    Err(error) => return Err(TestCaseError::fail(format!("{error}"))),
                }
            }
        }
        prop_assert_eq!(outcomes, bodies.len(), "one outcome per frame");
        prop_assert_eq!(decoder.buffered_len(), 0);
    }
}

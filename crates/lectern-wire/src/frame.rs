//! Framing of [`PeerFrame`]s on a byte stream: a 4-byte big-endian body length, then the
//! bincode body.
//!
//! [`encode_frame`] builds one frame; [`FrameDecoder`] is a sans-IO incremental decoder that
//! accepts bytes in whatever pieces the transport delivers them and yields whole frames. The
//! decoder validates each length header as soon as its four bytes arrive, so a peer cannot
//! make it buffer more than one maximum-size frame by lying about a length.

use crate::PeerFrame;

/// The largest frame body (excluding the 4-byte header) this protocol allows: 16 MiB.
pub const FRAME_LEN_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Size of the length header in front of each frame body.
const HEADER_LEN_BYTES: usize = 4;

/// Once the decoder is empty, a buffer bigger than this is released, so that an idle connection
/// does not keep the memory of its largest frame.
const IDLE_BUFFER_CAPACITY_MAX_BYTES: usize = 64 * 1024;

/// Why a frame could not be encoded or decoded.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame body is longer than the limit. When decoding, the stream cannot be resynchronized
    /// and the connection should be closed.
    #[error("the frame body of {len} bytes is longer than the limit of {max} bytes")]
    TooLarge {
        /// The declared (decoding) or actual (encoding) body length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// A complete frame body is not a valid [`PeerFrame`]. The frame has been consumed, so the
    /// decoder can go on with the next one if the caller chooses to.
    #[error("the frame body is not a valid peer frame: {reason}")]
    Malformed {
        /// What the decoder objected to.
        reason: String,
    },
    /// The frame could not be serialized.
    #[error("the frame could not be encoded: {reason}")]
    Encode {
        /// What the encoder objected to.
        reason: String,
    },
}

/// Encodes `frame` as a 4-byte big-endian body length followed by the bincode body.
///
/// Fails with [`FrameError::TooLarge`] if the body exceeds [`FRAME_LEN_MAX_BYTES`].
pub fn encode_frame(frame: &PeerFrame) -> Result<Vec<u8>, FrameError> {
    // The body is written after a placeholder header, which saves copying it afterwards.
    let mut bytes = vec![0u8; HEADER_LEN_BYTES];
    bincode::serde::encode_into_std_write(frame, &mut bytes, bincode_config()).map_err(
        |error| FrameError::Encode {
            reason: error.to_string(),
        },
    )?;
    let len = bytes.len() - HEADER_LEN_BYTES;
    if len > FRAME_LEN_MAX_BYTES {
        return Err(FrameError::TooLarge {
            len,
            max: FRAME_LEN_MAX_BYTES,
        });
    }
    let header = u32::try_from(len).map_err(|_| FrameError::TooLarge {
        len,
        max: FRAME_LEN_MAX_BYTES,
    })?;
    bytes[..HEADER_LEN_BYTES].copy_from_slice(&header.to_be_bytes());
    Ok(bytes)
}

/// An incremental, sans-IO decoder of a stream of frames.
///
/// Feed it with [`push`](FrameDecoder::push) and drain it with
/// [`next_frame`](FrameDecoder::next_frame) until that returns `Ok(None)`. Used that way, the
/// decoder holds at most `max_len + 4` bytes between pushes: the part of one frame that has
/// arrived so far. (Within one push it holds everything pushed, as it must to accept it.)
#[derive(Debug)]
pub struct FrameDecoder {
    max_len: usize,
    /// Received bytes not yet returned as frames, starting at `start`.
    buf: Vec<u8>,
    /// Offset in `buf` of the first byte of the next frame to decode.
    start: usize,
    /// Offset in `buf` of the first frame whose header has not been validated yet. Every frame
    /// between `start` and `checked` is complete and has a valid length.
    checked: usize,
    /// Set when a header declared a length over `max_len`; `buf` ends at that header.
    too_large: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder that refuses frame bodies longer than `max_len` bytes.
    ///
    /// `max_len` is capped at [`FRAME_LEN_MAX_BYTES`], the protocol's own limit.
    pub fn new(max_len: usize) -> FrameDecoder {
        FrameDecoder {
            max_len: max_len.min(FRAME_LEN_MAX_BYTES),
            buf: Vec::new(),
            start: 0,
            checked: 0,
            too_large: None,
        }
    }

    /// Appends bytes received from the stream.
    ///
    /// A length header over the limit is detected here, as soon as its four bytes are in; the
    /// bytes after it are dropped and [`next_frame`](FrameDecoder::next_frame) reports
    /// [`FrameError::TooLarge`] once the frames before it are taken. After that the decoder
    /// ignores further input.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.too_large.is_some() {
            return;
        }
        self.compact();
        let mut rest = bytes;
        loop {
            // Bring `buf` up to the end of the header, or of the frame, at `checked`.
            let wanted_len = match self.header_at(self.checked) {
                None => self.checked + HEADER_LEN_BYTES,
                Some(len) if len > self.max_len => {
                    self.too_large = Some(FrameError::TooLarge {
                        len,
                        max: self.max_len,
                    });
                    self.buf.truncate(self.checked);
                    return;
                }
                Some(len) => {
                    let frame_end = self.checked + HEADER_LEN_BYTES + len;
                    if self.buf.len() >= frame_end {
                        self.checked = frame_end;
                        continue;
                    }
                    if len > IDLE_BUFFER_CAPACITY_MAX_BYTES {
                        // Exactly one big frame's worth, not the doubling growth of a `Vec`.
                        self.buf.reserve_exact(frame_end - self.buf.len());
                    }
                    frame_end
                }
            };
            if rest.is_empty() {
                return;
            }
            let (now, later) = rest.split_at((wanted_len - self.buf.len()).min(rest.len()));
            self.buf.extend_from_slice(now);
            rest = later;
        }
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or the reason the next
    /// frame is unusable (see [`FrameError`] for which errors end the stream).
    pub fn next_frame(&mut self) -> Result<Option<PeerFrame>, FrameError> {
        if self.start == self.checked {
            return match &self.too_large {
                Some(error) => Err(error.clone()),
                None => Ok(None),
            };
        }
        // `start < checked`, so a complete, length-checked frame starts at `start`.
        let Some(len) = self.header_at(self.start) else {
            return Ok(None);
        };
        let body_start = self.start + HEADER_LEN_BYTES;
        let body_end = body_start + len;
        let decoded = decode_body(&self.buf[body_start..body_end]);
        self.start = body_end;
        if self.start == self.buf.len() {
            self.clear();
        }
        decoded.map(Some)
    }

    /// The number of bytes received and not yet returned as frames.
    pub fn buffered_len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The length declared by the header at `offset`, if all four of its bytes are in `buf`.
    fn header_at(&self, offset: usize) -> Option<usize> {
        let header: [u8; HEADER_LEN_BYTES] = self
            .buf
            .get(offset..offset + HEADER_LEN_BYTES)?
            .try_into()
            .ok()?;
        // A u32 fits in usize on every target this crate builds for; saturate otherwise, which
        // is over any limit.
        Some(usize::try_from(u32::from_be_bytes(header)).unwrap_or(usize::MAX))
    }

    /// Drops the bytes of frames already returned.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.checked -= self.start;
            self.start = 0;
        }
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
        self.checked = 0;
        if self.buf.capacity() > IDLE_BUFFER_CAPACITY_MAX_BYTES {
            self.buf = Vec::new();
        }
    }
}

/// Decodes one frame body, which must be consumed entirely.
fn decode_body(body: &[u8]) -> Result<PeerFrame, FrameError> {
    let (frame, used) = bincode::serde::decode_from_slice::<PeerFrame, _>(body, bincode_config())
        .map_err(|error| FrameError::Malformed {
        reason: error.to_string(),
    })?;
    if used != body.len() {
        return Err(FrameError::Malformed {
            reason: format!("{} trailing bytes after the frame", body.len() - used),
        });
    }
    Ok(frame)
}

/// The bincode configuration of the peer protocol.
///
/// The limit matters for hostile input: bincode allocates a string's declared length before it
/// reads the bytes, so without a limit a 10-byte body could ask for an exabyte. bincode counts
/// in-memory sizes (a varint u64 counts 8 bytes), which for `PeerFrame` stays below twice the
/// encoded size; four times the frame limit leaves room while keeping a bogus allocation
/// bounded.
fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ 4 * FRAME_LEN_MAX_BYTES }>()
}

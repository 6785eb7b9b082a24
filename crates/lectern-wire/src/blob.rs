//! The blob exchange: how one node asks a peer for a content blob and how the peer answers,
//! on a QUIC stream of its own beside the connection's frame stream.
//!
//! A blob can be far larger than a [`crate::PeerFrame`] may be (lesson videos, up to the
//! content store's limit), and a transfer must not hold up the documents' sync frames behind
//! it, so each request opens its own bidirectional stream:
//!
//! ```text
//! request:  "LBR1" | sha256 (32 bytes)                                   then FIN
//! answer:   0x00 | size (u64, big-endian) | type length (u8) | type | the blob's bytes, FIN
//!        or 0x01                                                           (not held), FIN
//! ```
//!
//! The receiver learns the size before the bytes, so it refuses a blob over its limit without
//! reading it, and verifies the bytes against the hash it asked for before storing anything.

/// The first bytes of a blob request; anything else on a blob stream is not one.
pub const BLOB_REQUEST_MAGIC: &[u8; 4] = b"LBR1";

/// Length of a blob request: the magic and a SHA-256.
pub const BLOB_REQUEST_LEN: usize = 4 + 32;

/// The longest answer header: status, size, type length and a type of 255 bytes.
pub const BLOB_ANSWER_HEADER_MAX: usize = 1 + 8 + 1 + 255;

const FOUND: u8 = 0;
const MISSING: u8 = 1;

/// Why bytes on a blob stream are not a request or an answer header.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum BlobWireError {
    /// The request does not start with [`BLOB_REQUEST_MAGIC`] or has the wrong length.
    #[error("not a blob request")]
    NotARequest,
    /// The answer's status byte is unknown.
    #[error("unknown blob answer status {0}")]
    BadStatus(u8),
    /// The answer's content type is not printable ASCII.
    #[error("the blob's content type is not printable ASCII")]
    BadContentType,
    /// The content type is longer than 255 bytes.
    #[error("a content type of {0} bytes does not fit an answer")]
    ContentTypeTooLong(usize),
}

/// What a peer answers to a blob request (its header; a found blob's bytes follow it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobAnswer {
    /// The peer holds the blob: `size` bytes of `content_type` follow.
    Found {
        /// The blob's length in bytes.
        size: u64,
        /// The content type it was stored with.
        content_type: String,
    },
    /// The peer does not hold it (or it failed the peer's own verification).
    Missing,
}

/// The request for the blob whose SHA-256 is `hash`.
pub fn encode_blob_request(hash: &[u8; 32]) -> [u8; BLOB_REQUEST_LEN] {
    let mut out = [0u8; BLOB_REQUEST_LEN];
    out[..4].copy_from_slice(BLOB_REQUEST_MAGIC);
    out[4..].copy_from_slice(hash);
    out
}

/// The hash a request asks for.
pub fn decode_blob_request(bytes: &[u8]) -> Result<[u8; 32], BlobWireError> {
    if bytes.len() != BLOB_REQUEST_LEN || &bytes[..4] != BLOB_REQUEST_MAGIC {
        return Err(BlobWireError::NotARequest);
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&bytes[4..]);
    Ok(hash)
}

/// The header of an answer.
pub fn encode_blob_answer(answer: &BlobAnswer) -> Result<Vec<u8>, BlobWireError> {
    match answer {
        BlobAnswer::Missing => Ok(vec![MISSING]),
        BlobAnswer::Found { size, content_type } => {
            let ct = content_type.as_bytes();
            let ct_len =
                u8::try_from(ct.len()).map_err(|_| BlobWireError::ContentTypeTooLong(ct.len()))?;
            if !printable(ct) {
                return Err(BlobWireError::BadContentType);
            }
            let mut out = Vec::with_capacity(10 + ct.len());
            out.push(FOUND);
            out.extend_from_slice(&size.to_be_bytes());
            out.push(ct_len);
            out.extend_from_slice(ct);
            Ok(out)
        }
    }
}

/// Decodes an answer header from the start of `bytes`: `Ok(None)` while more bytes are needed
/// (never more than [`BLOB_ANSWER_HEADER_MAX`]), else the answer and the header's length (the
/// blob's bytes start there).
pub fn decode_blob_answer(bytes: &[u8]) -> Result<Option<(BlobAnswer, usize)>, BlobWireError> {
    let Some(&status) = bytes.first() else {
        return Ok(None);
    };
    match status {
        MISSING => Ok(Some((BlobAnswer::Missing, 1))),
        FOUND => {
            if bytes.len() < 10 {
                return Ok(None);
            }
            let mut size = [0u8; 8];
            size.copy_from_slice(&bytes[1..9]);
            let ct_len = usize::from(bytes[9]);
            let end = 10 + ct_len;
            let Some(ct) = bytes.get(10..end) else {
                return Ok(None);
            };
            if ct.is_empty() || !printable(ct) {
                return Err(BlobWireError::BadContentType);
            }
            let content_type = String::from_utf8_lossy(ct).into_owned();
            let size = u64::from_be_bytes(size);
            Ok(Some((BlobAnswer::Found { size, content_type }, end)))
        }
        other => Err(BlobWireError::BadStatus(other)),
    }
}

fn printable(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| (0x20..0x7f).contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_and_anything_else_is_refused() {
        let hash = [7u8; 32];
        let req = encode_blob_request(&hash);
        assert_eq!(decode_blob_request(&req), Ok(hash));
        assert_eq!(
            decode_blob_request(&req[..35]),
            Err(BlobWireError::NotARequest)
        );
        let mut wrong = req;
        wrong[0] = b'X';
        assert_eq!(decode_blob_request(&wrong), Err(BlobWireError::NotARequest));
    }

    #[test]
    fn an_answer_header_decodes_only_once_whole() {
        let answer = BlobAnswer::Found {
            size: 1 << 40,
            content_type: "image/png".into(),
        };
        let mut bytes = encode_blob_answer(&answer).unwrap();
        let header = bytes.len();
        bytes.extend_from_slice(b"the blob");
        for cut in 0..header {
            assert_eq!(decode_blob_answer(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(decode_blob_answer(&bytes), Ok(Some((answer, header))));
        let missing = encode_blob_answer(&BlobAnswer::Missing).unwrap();
        assert_eq!(
            decode_blob_answer(&missing),
            Ok(Some((BlobAnswer::Missing, 1)))
        );
    }

    #[test]
    fn hostile_answer_headers_are_refused() {
        assert_eq!(decode_blob_answer(&[9]), Err(BlobWireError::BadStatus(9)));
        let mut bad = vec![0u8; 10];
        bad[9] = 2;
        bad.extend_from_slice(b"a\n");
        assert_eq!(decode_blob_answer(&bad), Err(BlobWireError::BadContentType));
        let empty = [0u8; 10];
        assert_eq!(
            decode_blob_answer(&empty),
            Err(BlobWireError::BadContentType)
        );
        let long = BlobAnswer::Found {
            size: 1,
            content_type: "a".repeat(256),
        };
        assert_eq!(
            encode_blob_answer(&long),
            Err(BlobWireError::ContentTypeTooLong(256))
        );
    }
}

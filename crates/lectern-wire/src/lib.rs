//! Lectern's wire types, free of I/O: what nodes say to each other and how it is framed.
//!
//! This crate only turns values into bytes and bytes into values. It opens no socket, reads no
//! clock and draws no random number, so every protocol edge case can be tested with plain
//! byte slices; the QUIC driver in the node owns the streams and feeds them through
//! [`FrameDecoder`].
//!
//! Architecture invariant: bincode stays behind this crate. No public signature names a bincode
//! type, so the encoding can change with [`PROTOCOL_VERSION`] without touching other crates.
//!
//! Architecture invariant: no input makes this crate panic or allocate without bound; a frame
//! longer than its limit is refused from its 4-byte header, before its body is buffered.

mod blob;
mod frame;
mod peer;

pub use blob::{
    BLOB_ANSWER_HEADER_MAX, BLOB_REQUEST_LEN, BLOB_REQUEST_MAGIC, BlobAnswer, BlobWireError,
    decode_blob_answer, decode_blob_request, encode_blob_answer, encode_blob_request,
};
pub use frame::{FRAME_LEN_MAX_BYTES, FrameDecoder, FrameError, encode_frame};
pub use peer::{ALPN, DigestContent, PROTOCOL_VERSION, PeerFrame};

#[cfg(test)]
mod tests;

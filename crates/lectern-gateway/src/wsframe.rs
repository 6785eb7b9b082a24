//! The server side of WebSocket framing (RFC 6455), IO-free: a [`Decoder`] that turns the bytes
//! a client sent into messages, and the few frames a server writes.
//!
//! Why not tungstenite: the lean Socket.IO transport (`ws.rs`) wants no buffer per idle socket
//! and wants to write one finished frame, shared by every subscriber of an event, with one
//! `write` (the bare-TCP floor's cost). tungstenite keeps a read buffer and a write buffer per
//! stream (the latter keeping the capacity of the largest frame sent) and frames every message
//! per socket. What a server must decode is small: masked client frames, fragmentation, three
//! control frames, size and UTF-8 checks. No extension is negotiated, so reserved bits are
//! errors. Every fault closes the connection with the status code the RFC names; nothing read
//! from a socket panics.

/// A complete message (or control frame) from the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Message {
    /// A text message (valid UTF-8).
    Text(String),
    /// A binary message: Socket.IO attachments, which Lectern does not take.
    Binary,
    /// A ping, with its payload (to echo in the pong).
    Ping(Vec<u8>),
    /// A pong.
    Pong,
    /// The client is closing.
    Close,
}

/// Why the connection must close, with the status code of the close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// 1002: a frame the protocol forbids (unmasked, reserved bits, unknown opcode, a bad
    /// fragment sequence, an oversized or fragmented control frame).
    Protocol(&'static str),
    /// 1009: a message larger than the payload limit.
    TooBig,
    /// 1007: a text message that is not UTF-8.
    NotUtf8,
}

impl Fault {
    /// The close status code.
    pub(crate) fn code(self) -> u16 {
        match self {
            Fault::Protocol(_) => 1002,
            Fault::TooBig => 1009,
            Fault::NotUtf8 => 1007,
        }
    }

    /// A short reason for the close frame and the logs.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Fault::Protocol(why) => why,
            Fault::TooBig => "message too big",
            Fault::NotUtf8 => "text is not UTF-8",
        }
    }
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Largest payload of a control frame (RFC 6455 §5.5).
const CONTROL_PAYLOAD_MAX_BYTES: usize = 125;

/// Decodes client frames. Holds state only while a fragmented message is being received.
#[derive(Debug)]
pub(crate) struct Decoder {
    message_max_bytes: usize,
    /// The fragments so far of a fragmented data message, and whether it is text.
    partial: Option<(Vec<u8>, bool)>,
}

impl Decoder {
    /// A decoder refusing messages over `message_max_bytes`.
    pub(crate) fn new(message_max_bytes: usize) -> Decoder {
        Decoder {
            message_max_bytes,
            partial: None,
        }
    }

    /// Decodes the first frame in `buf` (unmasking it in place). `Ok(None)`: more bytes are
    /// needed. `Ok(Some((n, message)))`: the frame took `n` bytes; `message` is `None` when the
    /// frame was a fragment of a message still incomplete.
    pub(crate) fn decode(
        &mut self,
        buf: &mut [u8],
    ) -> Result<Option<(usize, Option<Message>)>, Fault> {
        let [b0, b1, ..] = *buf else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(Fault::Protocol("reserved bits set"));
        }
        let opcode = b0 & 0x0F;
        if b1 & 0x80 == 0 {
            return Err(Fault::Protocol("client frames must be masked"));
        }
        let (len, mut at) = match b1 & 0x7F {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(b);
                    (u64::from_be_bytes(n), 10)
                }
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        let control = opcode & 0x08 != 0;
        if control {
            if !fin {
                return Err(Fault::Protocol("fragmented control frame"));
            }
            if len > CONTROL_PAYLOAD_MAX_BYTES as u64 {
                return Err(Fault::Protocol("control frame too long"));
            }
        }
        // Refuse an oversized message from its header, before buffering any of it.
        let so_far = self.partial.as_ref().map_or(0, |(p, _)| p.len());
        let len = usize::try_from(len).map_err(|_| Fault::TooBig)?;
        if !control && so_far.saturating_add(len) > self.message_max_bytes {
            return Err(Fault::TooBig);
        }
        let Some(mask) = buf.get(at..at + 4).map(|m| [m[0], m[1], m[2], m[3]]) else {
            return Ok(None);
        };
        at += 4;
        let end = at.checked_add(len).ok_or(Fault::TooBig)?;
        let Some(payload) = buf.get_mut(at..end) else {
            return Ok(None);
        };
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        let payload: &[u8] = payload;
        let message = match opcode {
            OP_CLOSE => Some(Message::Close),
            OP_PING => Some(Message::Ping(payload.to_vec())),
            OP_PONG => Some(Message::Pong),
            OP_TEXT | OP_BINARY => {
                if self.partial.is_some() {
                    return Err(Fault::Protocol("a new message before the last one ended"));
                }
                let text = opcode == OP_TEXT;
                if fin {
                    Some(finish(payload.to_vec(), text)?)
                } else {
                    self.partial = Some((payload.to_vec(), text));
                    None
                }
            }
            OP_CONTINUATION => {
                let Some((mut so_far, text)) = self.partial.take() else {
                    return Err(Fault::Protocol(
                        "a continuation with no message to continue",
                    ));
                };
                so_far.extend_from_slice(payload);
                if fin {
                    Some(finish(so_far, text)?)
                } else {
                    self.partial = Some((so_far, text));
                    None
                }
            }
            _ => return Err(Fault::Protocol("unknown opcode")),
        };
        Ok(Some((end, message)))
    }
}

fn finish(payload: Vec<u8>, text: bool) -> Result<Message, Fault> {
    if !text {
        return Ok(Message::Binary);
    }
    String::from_utf8(payload)
        .map(Message::Text)
        .map_err(|_| Fault::NotUtf8)
}

/// A server frame (unmasked, final) with `opcode` and `payload`.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// A text frame carrying `text`.
pub(crate) fn text(text: &[u8]) -> Vec<u8> {
    frame(OP_TEXT, text)
}

/// The pong answering a ping with `payload`.
pub(crate) fn pong(payload: &[u8]) -> Vec<u8> {
    frame(OP_PONG, payload)
}

/// A close frame with a status `code` and a short `reason` (cut to fit a control frame).
pub(crate) fn close(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    let mut cut = reason.len().min(CONTROL_PAYLOAD_MAX_BYTES - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    frame(OP_CLOSE, &payload)
}

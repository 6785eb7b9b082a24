//! Parsing of the packets a client sends: Engine.IO v4 text packets and the Socket.IO v5
//! packets inside their `4` (message) packets. Pure functions over `&str`; a packet that is not
//! valid is an [`Invalid`] naming why, and the caller closes the connection (the Engine.IO and
//! Socket.IO specifications close the connection on a parse error).
//!
//! Engine.IO: one digit (`0` open … `6` noop) and a payload. Socket.IO:
//! `<type>[<attachments>-][/<namespace>,][<ack id>][<JSON payload>]`.

use std::fmt;

/// Why a packet is not valid Engine.IO or Socket.IO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Invalid(pub(crate) &'static str);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// An Engine.IO packet from a client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum EnginePacket<'a> {
    /// `1`: the client closes.
    Close,
    /// `2<data>`: a ping (a client probes with it), answered `3<data>`.
    Ping(&'a str),
    /// `3`: the answer to the server's ping.
    Pong,
    /// `4<Socket.IO packet>`.
    Message(&'a str),
    /// `5`: the end of an upgrade.
    Upgrade,
    /// `6`: a no-op (sent during upgrades).
    Noop,
}

/// Parses an Engine.IO text packet. `0` (open) is the server's, and unknown types are invalid.
pub(crate) fn engine(text: &str) -> Result<EnginePacket<'_>, Invalid> {
    let Some(kind) = text.as_bytes().first() else {
        return Err(Invalid("empty Engine.IO packet"));
    };
    // Empty when the first character is not one byte (the match below refuses it anyway).
    let rest = text.get(1..).unwrap_or_default();
    match kind {
        b'1' => Ok(EnginePacket::Close),
        b'2' => Ok(EnginePacket::Ping(rest)),
        b'3' => Ok(EnginePacket::Pong),
        b'4' => Ok(EnginePacket::Message(rest)),
        b'5' => Ok(EnginePacket::Upgrade),
        b'6' => Ok(EnginePacket::Noop),
        b'0' => Err(Invalid("an open packet from a client")),
        _ => Err(Invalid("unknown Engine.IO packet type")),
    }
}

/// The type of a Socket.IO packet a client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SioKind {
    /// `0`: connect a namespace.
    Connect,
    /// `1`: leave a namespace.
    Disconnect,
    /// `2`: an event.
    Event,
    /// `3`: an answer to a server's ack request.
    Ack,
    /// `5`: an event with binary attachments.
    BinaryEvent,
    /// `6`: an ack with binary attachments.
    BinaryAck,
}

/// A parsed Socket.IO packet.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SioPacket<'a> {
    /// Its type.
    pub(crate) kind: SioKind,
    /// Binary attachments that follow (binary types only, at least one).
    pub(crate) attachments: u32,
    /// The namespace (`/` when not written).
    pub(crate) namespace: &'a str,
    /// The ack id the client asked for.
    pub(crate) ack: Option<u64>,
    /// The JSON payload, unparsed (empty when there is none).
    pub(crate) data: &'a str,
}

/// Most digits of an ack id or an attachment count (ids past `u64` are not ids).
const NUMBER_DIGITS_MAX: usize = 19;

/// Parses a Socket.IO packet (the payload of an Engine.IO message).
pub(crate) fn socketio(text: &str) -> Result<SioPacket<'_>, Invalid> {
    let kind = match text.as_bytes().first() {
        Some(b'0') => SioKind::Connect,
        Some(b'1') => SioKind::Disconnect,
        Some(b'2') => SioKind::Event,
        Some(b'3') => SioKind::Ack,
        Some(b'5') => SioKind::BinaryEvent,
        Some(b'6') => SioKind::BinaryAck,
        Some(b'4') => return Err(Invalid("a CONNECT_ERROR packet from a client")),
        Some(_) => return Err(Invalid("unknown Socket.IO packet type")),
        None => return Err(Invalid("empty Socket.IO packet")),
    };
    let mut rest = &text[1..];
    let mut attachments = 0;
    if matches!(kind, SioKind::BinaryEvent | SioKind::BinaryAck) {
        let (count, after) = number(rest)?;
        let after = after
            .strip_prefix('-')
            .ok_or(Invalid("a binary packet without its attachment count"))?;
        attachments = match count.map(u32::try_from) {
            Some(Ok(n)) if n > 0 => n,
            _ => return Err(Invalid("a binary packet without attachments")),
        };
        rest = after;
    }
    let mut namespace = "/";
    if rest.starts_with('/') {
        let (ns, after) = rest.split_once(',').unwrap_or((rest, ""));
        namespace = ns;
        rest = after;
    }
    let (ack, data) = number(rest)?;
    Ok(SioPacket {
        kind,
        attachments,
        namespace,
        ack,
        data,
    })
}

/// A leading decimal number, if there is one, and what follows it.
fn number(text: &str) -> Result<(Option<u64>, &str), Invalid> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Ok((None, text));
    }
    if digits > NUMBER_DIGITS_MAX {
        return Err(Invalid("a number too long"));
    }
    let (n, after) = text.split_at(digits);
    let n = n.parse().map_err(|_| Invalid("a number too large"))?;
    Ok((Some(n), after))
}

/// What the query string of a request to `/socket.io/` says about its Engine.IO connection:
/// the one reading of it both the front door (a polling handshake to admit) and the lean
/// WebSocket (a direct `transport=websocket` open) use.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EngineQuery<'a> {
    /// `EIO=4`: the Engine.IO version this gateway speaks.
    pub(crate) eio4: bool,
    /// The `transport` parameter (`polling`, `websocket`), the last one when repeated.
    pub(crate) transport: Option<&'a str>,
    /// A `sid` parameter: the request belongs to a connection already open.
    pub(crate) has_sid: bool,
}

impl<'a> EngineQuery<'a> {
    /// Reads `query` (without the `?`); parameters it does not know are skipped.
    pub(crate) fn parse(query: &'a str) -> Self {
        let mut out = EngineQuery::default();
        for pair in query.split('&') {
            match pair.split_once('=').unwrap_or((pair, "")) {
                ("EIO", v) => out.eio4 = v == "4",
                ("transport", v) => out.transport = Some(v),
                ("sid", _) => out.has_sid = true,
                _ => {}
            }
        }
        out
    }

    /// Whether the request opens a new connection over `transport` (no `sid` yet).
    pub(crate) fn opens(&self, transport: &str) -> bool {
        !self.has_sid && self.transport == Some(transport)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_queries() {
        let q = EngineQuery::parse("EIO=4&transport=websocket&t=abc");
        assert!(q.eio4 && q.opens("websocket") && !q.opens("polling"));
        let q = EngineQuery::parse("EIO=4&transport=polling&sid=x");
        assert!(q.has_sid && !q.opens("polling"));
        let q = EngineQuery::parse("EIO=3&transport=polling");
        assert!(!q.eio4 && q.opens("polling"));
        for odd in ["", "&&", "EIO", "transport", "=4", "EIO=4=4"] {
            assert!(!EngineQuery::parse(odd).eio4, "{odd:?}");
            assert!(!EngineQuery::parse(odd).opens("websocket"), "{odd:?}");
        }
    }

    #[test]
    fn engine_packets() {
        assert_eq!(engine("1"), Ok(EnginePacket::Close));
        assert_eq!(engine("2probe"), Ok(EnginePacket::Ping("probe")));
        assert_eq!(engine("3"), Ok(EnginePacket::Pong));
        assert_eq!(engine("42[\"a\"]"), Ok(EnginePacket::Message("2[\"a\"]")));
        assert_eq!(engine("5"), Ok(EnginePacket::Upgrade));
        assert_eq!(engine("6"), Ok(EnginePacket::Noop));
        for bad in ["", "0", "0{}", "7", "9", "x", "é"] {
            assert!(engine(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn socketio_packets() {
        let p = socketio("0{\"token\":\"t\"}").unwrap();
        assert_eq!(
            (p.kind, p.namespace, p.ack, p.data),
            (SioKind::Connect, "/", None, "{\"token\":\"t\"}")
        );
        let p = socketio("2/admin,12[\"x\"]").unwrap();
        assert_eq!(
            (p.kind, p.namespace, p.ack, p.data),
            (SioKind::Event, "/admin", Some(12), "[\"x\"]")
        );
        let p = socketio("1/admin").unwrap();
        assert_eq!(
            (p.kind, p.namespace, p.data),
            (SioKind::Disconnect, "/admin", "")
        );
        let p = socketio("51-3[\"up\",{\"_placeholder\":true,\"num\":0}]").unwrap();
        assert_eq!(
            (p.kind, p.attachments, p.ack),
            (SioKind::BinaryEvent, 1, Some(3))
        );
        assert_eq!(socketio("3").unwrap().kind, SioKind::Ack);
        assert_eq!(socketio("61-[]").unwrap().kind, SioKind::BinaryAck);
    }

    #[test]
    fn invalid_socketio_packets() {
        for bad in [
            "",
            "4{}",
            "7",
            "x",
            "5[\"x\"]",
            "50-[\"x\"]",
            "5-[\"x\"]",
            "299999999999999999999[\"x\"]",
            "518446744073709551616-[]",
        ] {
            assert!(socketio(bad).is_err(), "{bad:?}");
        }
    }
}

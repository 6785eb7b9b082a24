//! Connection State Recovery (Socket.IO v5, socket.io ≥ 4.6): what a stock socket.io-client
//! needs to come back after a dropped connection with `socket.recovered === true`, its sessions
//! joined again and exactly the events it missed.
//!
//! The CONNECT reply carries a `pid` (a private session id) beside the `sid`, and every session
//! event carries an **offset** as its last argument. socket.io-client keeps the pid and the last
//! offset it received, and its next CONNECT sends both (`{token, pid, offset}`); it counts as
//! recovered when the reply names the same pid.
//!
//! An offset is where the socket stands in every session it joined, written with resume tokens:
//! `session~token`, joined by `.` when it joined several (`s1~t1.s2~t2`). It holds everything a
//! recovery needs, so any node of the mesh can recover it: the gateway joins each session again
//! from its token (membership and the rate limit checked again, the events after the token
//! replayed in order, a node behind the token waiting for the mesh first) and answers with the
//! client's pid. If any session cannot be replayed it leaves what it joined and answers with a
//! fresh pid: the client then joins as after any new connection. The pid itself holds nothing;
//! it only tells the client that it recovered.

use lectern_model::{ResumeToken, SessionId};
use serde_json::Value;

/// Most sessions one offset names (and so one recovery joins); a socket in more sessions is not
/// recovered and joins again.
pub(crate) const RECOVER_SESSIONS_MAX: usize = 8;

/// Longest offset accepted, in bytes (eight sessions of long ids with a few heads each).
pub(crate) const OFFSET_LEN_MAX_BYTES: usize = 8 * 1024;

/// Longest pid accepted back from a client, in bytes.
pub(crate) const PID_LEN_MAX_BYTES: usize = 64;

/// Separates a session from its token in an offset.
const TOKEN_SEP: char = '~';
/// Separates the sessions of an offset.
const SESSION_SEP: char = '.';

/// A CONNECT that asks to recover: the pid it was given and where it stood in each session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recovery {
    /// The pid of the connection to recover.
    pub(crate) pid: String,
    /// Each session with the token of the last event the client received from it.
    pub(crate) sessions: Vec<(SessionId, ResumeToken)>,
}

impl Recovery {
    /// The recovery a CONNECT's auth payload asks for: `None` unless it carries a well-formed
    /// `pid` and `offset` (anything else connects afresh, as socket.io does).
    pub(crate) fn from_auth(auth: Option<&Value>) -> Option<Recovery> {
        let auth = auth?;
        let pid = auth.get("pid")?.as_str()?;
        if !is_id(pid, PID_LEN_MAX_BYTES) {
            return None;
        }
        let sessions = parse_offset(auth.get("offset")?.as_str()?)?;
        Some(Recovery {
            pid: pid.to_owned(),
            sessions,
        })
    }
}

/// Whether `s` is 1 to `max` characters of `[A-Za-z0-9_-]`.
fn is_id(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The sessions and tokens of an offset; `None` if it is malformed, names a session twice or
/// names more than [`RECOVER_SESSIONS_MAX`].
pub(crate) fn parse_offset(offset: &str) -> Option<Vec<(SessionId, ResumeToken)>> {
    if offset.is_empty() || offset.len() > OFFSET_LEN_MAX_BYTES {
        return None;
    }
    let mut out: Vec<(SessionId, ResumeToken)> = Vec::new();
    for item in offset.split(SESSION_SEP) {
        if out.len() == RECOVER_SESSIONS_MAX {
            return None;
        }
        let (session, token) = item.split_once(TOKEN_SEP)?;
        let session: SessionId = session.parse().ok()?;
        let token = ResumeToken::parse(token).ok()?;
        if out.iter().any(|(s, _)| *s == session) {
            return None;
        }
        out.push((session, token));
    }
    Some(out)
}

/// Appends one session's part of an offset (`session~token`, after a `.` unless first).
pub(crate) fn push_offset(out: &mut String, session: &str, token: &str) {
    if !out.is_empty() {
        out.push(SESSION_SEP);
    }
    out.push_str(session);
    out.push(TOKEN_SEP);
    out.push_str(token);
}

/// A fresh Engine.IO / Socket.IO session id or pid: 16 URL-safe characters (96 random bits).
pub(crate) fn new_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits: u128 = rand::random();
    (0..16)
        .map(|_| {
            let c = ALPHABET[(bits & 63) as usize];
            bits >>= 6;
            char::from(c)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn token(byte: u8) -> ResumeToken {
        ResumeToken::from_heads(vec![lectern_model::automerge::ChangeHash([byte; 32])])
    }

    #[test]
    fn an_offset_round_trips_for_one_and_several_sessions() {
        let mut one = String::new();
        push_offset(&mut one, "s1", &token(1).to_string());
        let parsed = parse_offset(&one).expect("one session");
        assert_eq!(parsed, vec![("s1".parse().unwrap(), token(1))]);

        let mut two = one.clone();
        push_offset(&mut two, "s-2_b", &token(2).to_string());
        let parsed = parse_offset(&two).expect("two sessions");
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[1], ("s-2_b".parse().unwrap(), token(2)));
    }

    #[test]
    fn malformed_offsets_are_not_recovered() {
        let t = token(7).to_string();
        let too_many: Vec<String> = (0..=RECOVER_SESSIONS_MAX)
            .map(|i| format!("s{i}~{t}"))
            .collect();
        let long = format!("s~{}", "A".repeat(OFFSET_LEN_MAX_BYTES));
        for bad in [
            String::new(),
            "s1".to_owned(),
            format!("s1~{t}."),
            format!("s1~{t}.s1~{t}"),
            format!("s 1~{t}"),
            "s1~not-a-token".to_owned(),
            format!("s1~~{t}"),
            too_many.join("."),
            long,
        ] {
            assert_eq!(parse_offset(&bad), None, "{bad:?}");
        }
        assert!(parse_offset(&too_many[..RECOVER_SESSIONS_MAX].join(".")).is_some());
    }

    #[test]
    fn a_recovery_needs_a_pid_and_an_offset() {
        let offset = format!("s1~{}", token(3));
        let ok = json!({"token": "t", "pid": "abc_DEF-1", "offset": offset});
        let r = Recovery::from_auth(Some(&ok)).expect("a recovery");
        assert_eq!(r.pid, "abc_DEF-1");
        assert_eq!(r.sessions.len(), 1);
        for bad in [
            json!({"token": "t"}),
            json!({"pid": "p"}),
            json!({"offset": offset}),
            json!({"pid": "", "offset": offset}),
            json!({"pid": "a/b", "offset": offset}),
            json!({"pid": "p".repeat(PID_LEN_MAX_BYTES + 1), "offset": offset}),
            json!({"pid": 7, "offset": offset}),
            json!({"pid": "p", "offset": 7}),
        ] {
            assert_eq!(Recovery::from_auth(Some(&bad)), None, "{bad}");
        }
        assert_eq!(Recovery::from_auth(None), None);
    }

    #[test]
    fn fresh_ids_are_sixteen_url_safe_characters() {
        let (a, b) = (new_id(), new_id());
        assert!(is_id(&a, 16) && a.len() == 16, "{a}");
        assert_ne!(a, b);
    }
}

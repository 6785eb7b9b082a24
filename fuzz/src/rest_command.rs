//! A REST command body (`POST /api/sessions/{id}/commands`, or `…/{name}` with the command
//! named by the route) read into a `lectern_model::Command` as the gateway's `rest.rs` reads it.
//!
//! An input starting with `@` names the command: the name runs to the first newline, the body
//! follows it; any other input is the body of the unnamed route.
//!
//! Invariants: nothing panics; a refusal is `400 malformed_json`, `400 bad_request` or
//! `422 invalid_command`; a command read from a named route has that name; a command read
//! serializes to JSON that reads back to the same command (so what is stored and replayed is
//! what was accepted); allocation is bounded by the input's size.

use lectern_gateway::fuzzing::rest_command;

use crate::alloc;

/// Runs one input.
pub fn run(data: &[u8]) {
    let (name, body) = match data {
        [b'@', rest @ ..] => {
            let end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
            let Ok(name) = std::str::from_utf8(&rest[..end]) else {
                return;
            };
            (Some(name), rest.get(end + 1..).unwrap_or_default())
        }
        _ => (None, data),
    };
    let result = alloc::bounded("rest_command", data.len(), || rest_command(body, name));
    match result {
        Ok(cmd) => {
            let json = serde_json::to_value(&cmd).expect("a command serializes");
            if let Some(name) = name {
                assert_eq!(json["cmd"].as_str(), Some(name), "the route's name");
            }
            let bytes = serde_json::to_vec(&json).expect("JSON writes");
            let again = rest_command(&bytes, None)
                .unwrap_or_else(|e| panic!("{json} does not read back: {} {}", e.code, e.message));
            assert_eq!(again, cmd, "a command's JSON round trip");
        }
        Err(e) => {
            let expected = matches!(
                (e.status.as_u16(), e.code),
                (400, "malformed_json" | "bad_request") | (422, "invalid_command")
            );
            assert!(expected, "refused with {} {}", e.status, e.code);
        }
    }
}

//! Writes the seed inputs of every fuzz target into `fuzz/corpus/<target>/seed-*`: real
//! frames, packets, heads, commands, tokens and sync messages made by the product's own
//! encoders (and by an automerge replica for the sync messages), so fuzzing starts from what
//! clients and peers really send. `cargo run -p lectern-fuzz --bin seeds` (TESTING.md); the
//! seeds are committed, so this runs only when a target's input format changes.

use std::path::Path;

use lectern_fuzz::hub_sync::{Fixture, STORED_SESSION, session};
use lectern_fuzz::ws_frame::mask;
use lectern_gateway::auth::{self, Claims};
use lectern_gateway::fuzzing::{ws_close_frame, ws_pong_frame, ws_text_frame};
use lectern_model::automerge::sync;
use lectern_model::{Caller, Command, CommandBody, Millis, Replica, Role};
use lectern_wire::{DigestContent, PROTOCOL_VERSION, PeerFrame, encode_frame};

/// Named seed inputs of one target.
type Seeds = Vec<(&'static str, Vec<u8>)>;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let seeds: Vec<(&str, Seeds)> = vec![
        ("ws_frame", ws_frame()),
        ("sio_packet", sio_packet()),
        ("http_head", http_head()),
        ("peer_frame", peer_frame()),
        ("hub_sync", hub_sync()),
        ("rest_command", rest_command()),
        ("jwt", jwt()),
    ];
    for (target, inputs) in seeds {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("create the corpus directory");
        for (name, bytes) in inputs {
            std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write a seed");
        }
        println!("{target}: seeds written to {}", dir.display());
    }
}

const KEY: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// A client frame: the server's encoding of `payload` with `first_byte`, masked.
fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = ws_text_frame(payload);
    frame[0] = first_byte;
    mask(&frame, KEY)
}

fn ws_frame() -> Vec<(&'static str, Vec<u8>)> {
    let with_step = |step: u8, frames: Vec<Vec<u8>>| {
        let mut out = vec![step];
        for f in frames {
            out.extend(f);
        }
        out
    };
    vec![
        (
            "connect-and-join",
            with_step(
                0,
                vec![
                    client_frame(0x81, br#"40{"token":"eyJhbGciOiJIUzI1NiJ9.e30.x"}"#),
                    client_frame(0x81, br#"42["session:join","s1"]"#),
                ],
            ),
        ),
        (
            "fragmented",
            with_step(
                3,
                vec![
                    client_frame(0x01, b"42[\"qa:ask\",\"s1\","),
                    client_frame(0x89, b"ping"),
                    client_frame(0x80, b"\"How?\"]"),
                ],
            ),
        ),
        (
            "controls",
            with_step(
                7,
                vec![
                    mask(&ws_pong_frame(b"p"), KEY),
                    client_frame(0x89, b""),
                    mask(&ws_close_frame(1000, "bye"), KEY),
                ],
            ),
        ),
        (
            "binary-and-medium",
            with_step(
                1,
                vec![
                    client_frame(0x82, &[0, 1, 2, 3]),
                    client_frame(0x81, &[b'a'; 300]),
                ],
            ),
        ),
    ]
}

fn sio_packet() -> Vec<(&'static str, Vec<u8>)> {
    let messages = |list: &[&str]| list.join("\u{1e}").into_bytes();
    vec![
        (
            "session",
            messages(&[
                r#"40{"token":"t"}"#,
                r#"42["session:join","s1"]"#,
                r#"421["qa:ask","s1","How do I fuzz?",{"anonymous":true,"id":"c1"}]"#,
                r#"422["qa:upvote","s1","q1"]"#,
                r#"423["qa:answer","s1","q1","Like this."]"#,
                r#"42["poll:create","s1",{"question":"Which?","kind":"single","options":["a","b"]}]"#,
                r#"424["poll:vote","s1","p1",1]"#,
                r#"42["poll:vote","s1","p1",[0,1]]"#,
                r#"42["chat:send","s1","hello"]"#,
                r#"42["broadcast:send","s1","Break in 5"]"#,
                r#"425["session:leave","s1"]"#,
                "2probe",
                "3",
                "6",
                "41",
                "1",
            ]),
        ),
        (
            "binary-and-namespaces",
            messages(&[
                "40",
                r#"40/admin,{"token":"t"}"#,
                r#"451-7["upload",{"_placeholder":true,"num":0}]"#,
                "\u{ff}",
                "61-[]",
                r#"43["ok"]"#,
                "\u{1f}\u{50}",
                "5",
            ]),
        ),
        (
            "heartbeat",
            messages(&["40", "\u{1f}\u{32}", "3", "\u{1f}\u{64}", "\u{1f}\u{64}"]),
        ),
    ]
}

fn http_head() -> Vec<(&'static str, Vec<u8>)> {
    let with_step = |step: u8, text: &str| {
        let mut out = vec![step];
        out.extend_from_slice(text.as_bytes());
        out
    };
    vec![
        (
            "sse",
            with_step(
                4,
                "GET /api/stream/session/s1?token=abc&since=t1 HTTP/1.1\r\nHost: lectern\r\n\
                 Accept: text/event-stream\r\nLast-Event-ID: 12\r\n\r\n",
            ),
        ),
        (
            "websocket",
            with_step(
                9,
                "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: lectern\r\n\
                 Upgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
                 Origin: https://lectern.example\r\n\r\n\u{81}\u{85}",
            ),
        ),
        (
            "polling",
            with_step(
                0,
                "GET /socket.io/?EIO=4&transport=polling&sid=abc HTTP/1.1\r\nHost: lectern\r\n\r\n",
            ),
        ),
        (
            "post",
            with_step(
                31,
                "POST /api/sessions/s1/commands HTTP/1.1\r\nHost: lectern\r\n\
                 Content-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"cmd\":\"qa.ask\"}",
            ),
        ),
        (
            "stream-with-body",
            with_step(
                2,
                "GET /api/stream/session/s1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            ),
        ),
    ]
}

fn peer_frame() -> Vec<(&'static str, Vec<u8>)> {
    let frames = |step: u8, list: Vec<PeerFrame>| {
        let mut out = vec![step];
        for f in list {
            out.extend(encode_frame(&f).expect("encode a peer frame"));
        }
        out
    };
    vec![
        (
            "hello-sync-bye",
            frames(
                5,
                vec![
                    PeerFrame::Hello {
                        node_id: "0123456789abcdef0123456789abcdef".into(),
                        name: "node-a".into(),
                        region: "eu".into(),
                        protocol_version: PROTOCOL_VERSION,
                    },
                    PeerFrame::Sync {
                        doc: "session/s1".into(),
                        message: vec![0x42, 0, 1, 2],
                    },
                    PeerFrame::Bye {
                        reason: "stopping".into(),
                    },
                ],
            ),
        ),
        (
            "digests",
            frames(
                63,
                vec![
                    PeerFrame::DigestNode {
                        prefix: vec![],
                        content: DigestContent::Children((0..256u64).map(|i| i * 7919).collect()),
                        resync: true,
                    },
                    PeerFrame::DigestNode {
                        prefix: vec![3, 7],
                        content: DigestContent::Leaves(vec![("session/s1".into(), [9; 16])]),
                        resync: false,
                    },
                ],
            ),
        ),
        (
            "ephemeral",
            frames(
                0,
                vec![PeerFrame::Ephemeral {
                    doc: "session/s1".into(),
                    sender: "node-a".into(),
                    counter: 41,
                    payload: br#"{"typing":true}"#.to_vec(),
                }],
            ),
        ),
    ]
}

/// Sync messages a peer really sends about the stored session: a first message from an empty
/// replica, the hub's own answer, and a replica with changes of its own (sent whole).
fn hub_sync() -> Vec<(&'static str, Vec<u8>)> {
    let fixture = Fixture::new();
    let doc = session(STORED_SESSION);
    let stored = |m: Vec<u8>| [vec![0], m].concat();
    let unknown = |m: Vec<u8>| [vec![1], m].concat();
    let empty = Replica::new(doc.clone(), &[7; 16]);
    let hello = empty
        .generate_sync_message(&mut sync::State::new())
        .expect("a first message");
    let hub_says = fixture
        .block_on(fixture.hub().generate_sync(doc.clone(), "peer-a"))
        .expect("the hub's message")
        .expect("the hub has something to say");
    let mut other = Replica::new(doc, &[9; 16]);
    let caller = Caller {
        user: "fuzz-bob".parse().expect("a user id"),
        name: "Bob".into(),
        role: Role::Instructor,
        cohorts: vec!["fuzz".parse().expect("a cohort id")],
    };
    for (id, body) in [
        (
            "other-create",
            CommandBody::SessionCreate {
                cohort: "fuzz".parse().expect("a cohort id"),
                title: "Elsewhere".into(),
                moderation: false,
            },
        ),
        (
            "other-ask",
            CommandBody::QaAsk {
                text: "Seen from the other node?".into(),
                anonymous: true,
            },
        ),
    ] {
        let cmd = Command {
            id: id.parse().expect("a command id"),
            body,
        };
        other
            .apply(&caller, &cmd, Millis(1_800_000_000_000))
            .expect("the other replica's commands");
    }
    let mut state = sync::State::new();
    let first = other
        .generate_sync_message(&mut state)
        .expect("a first message");
    // Pretend the hub answered that it has nothing: the next message carries every change.
    let reply = empty
        .generate_sync_message(&mut sync::State::new())
        .expect("an empty replica's message");
    other
        .receive_sync_message(&mut state, &reply)
        .expect("the empty replica's message");
    let with_changes = other
        .generate_sync_message(&mut state)
        .expect("a message with changes");
    vec![
        ("empty-hello", stored(hello.clone())),
        ("empty-hello-unknown", unknown(hello)),
        ("hub-message", stored(hub_says)),
        ("other-hello", [vec![2], first].concat()),
        ("other-changes", stored(with_changes.clone())),
        ("other-changes-unknown", unknown(with_changes)),
    ]
}

fn rest_command() -> Vec<(&'static str, Vec<u8>)> {
    let text = |s: &str| s.as_bytes().to_vec();
    vec![
        (
            "ask",
            text(r#"{"cmd":"qa.ask","text":"How?","anonymous":true}"#),
        ),
        (
            "ask-with-id",
            text(r#"{"id":"c1","cmd":"qa.ask","text":"How?"}"#),
        ),
        ("named-upvote", text("@qa.upvote\n{\"question\":\"q1\"}")),
        (
            "poll",
            text(
                r#"{"cmd":"poll.create","question":"Which?","kind":"rating","options":[],"scale_max":5,"hide_results":true}"#,
            ),
        ),
        (
            "vote",
            text(r#"{"cmd":"poll.vote","poll":"p1","choice":{"multiple":[0,2]}}"#),
        ),
        (
            "named-update",
            text("@session.update\n{\"state\":\"ended\",\"title\":null}"),
        ),
        ("empty-named", text("@qa.pin\n")),
    ]
}

fn jwt() -> Vec<(&'static str, Vec<u8>)> {
    let now = lectern_fuzz::jwt::NOW_S;
    let claims = |role: &str, exp: u64| Claims {
        sub: "u1".into(),
        name: "Ada".into(),
        role: role.into(),
        cohorts: vec!["c1".into(), "c2".into()],
        exp,
        iat: now - 10,
        nbf: Some(now - 10),
    };
    let secret = lectern_fuzz::jwt::SECRET;
    let mint = |c: &Claims| auth::mint(secret, c).expect("mint").into_bytes();
    let valid = mint(&claims("student", now + 3600));
    vec![
        ("valid", valid.clone()),
        ("bearer", [b"#Bearer ".to_vec(), valid].concat()),
        ("expired", mint(&claims("ta", now - 3600))),
        ("bad-role", mint(&claims("root", now + 60))),
        (
            "claims",
            br#"{"sub":"u2","role":"instructor","exp":1800000600,"cohorts":["c1"],"aud":"lectern","iss":"x"}"#
                .to_vec(),
        ),
        (
            "alg-none",
            b"eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1MSIsInJvbGUiOiJhZG1pbiIsImV4cCI6MX0.".to_vec(),
        ),
        (
            "eddsa",
            b"eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1MSIsInJvbGUiOiJhZG1pbiIsImV4cCI6MX0.c2ln".to_vec(),
        ),
    ]
}

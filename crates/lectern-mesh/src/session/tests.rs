//! Unit tests of the session core, without sockets: two sessions wired back to back through the
//! real frame encoder and decoder, with in-memory automerge documents standing in for the hub's.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT, ReadDoc};
use lectern_wire::{FRAME_LEN_MAX_BYTES, FrameDecoder, PeerFrame, encode_frame};

use super::*;

/// One side: a session plus the documents and sync states a hub would hold.
struct Side {
    session: Session,
    docs: HashMap<String, AutoCommit>,
    states: HashMap<String, sync::State>,
    /// Documents this side sent or received a sync message for.
    synced: BTreeSet<String>,
    ephemeral: Vec<(String, String, Vec<u8>)>,
    established: Option<PeerInfo>,
    closed: Option<String>,
    revocations: Vec<Vec<Vec<u8>>>,
}

impl Side {
    fn new(id: &str, share: ShareFilter, now: Instant) -> Side {
        Side {
            session: Session::new(SessionConfig::new(id, id, "r"), share, now),
            docs: HashMap::new(),
            states: HashMap::new(),
            synced: BTreeSet::new(),
            ephemeral: Vec::new(),
            established: None,
            closed: None,
            revocations: Vec::new(),
        }
    }

    fn summary(&mut self) -> Vec<(String, [u8; 32])> {
        let mut list: Vec<_> = self
            .docs
            .iter_mut()
            .map(|(id, doc)| (id.clone(), digest(&doc.get_heads())))
            .collect();
        list.sort();
        list
    }

    /// Runs every pending output; returns the frames to send.
    fn drain(&mut self) -> Vec<PeerFrame> {
        let mut frames = Vec::new();
        while let Some(output) = self.session.poll_output() {
            match output {
                Output::Send(frame) => frames.push(frame),
                Output::Established(info) => {
                    self.established = Some(info);
                    let summary = self.summary();
                    self.session.send_summary(summary);
                }
                Output::GenerateSync(doc) => {
                    if let Some(frame) = self.generate(&doc) {
                        frames.push(frame);
                    }
                }
                Output::ReceiveSync { doc, message } => {
                    self.synced.insert(doc.clone());
                    let state = self.states.entry(doc.clone()).or_default();
                    let d = self.docs.entry(doc.clone()).or_default();
                    let message = sync::Message::decode(&message).expect("valid sync message");
                    d.sync()
                        .receive_sync_message(state, message)
                        .expect("apply sync message");
                    if let Some(frame) = self.generate(&doc) {
                        frames.push(frame);
                    }
                }
                Output::Ephemeral {
                    doc,
                    sender,
                    payload,
                } => self.ephemeral.push((doc, sender, payload)),
                Output::Revocations(crls) => self.revocations.push(crls),
                Output::Close { reason } => self.closed = Some(reason),
            }
        }
        frames
    }

    fn generate(&mut self, doc: &str) -> Option<PeerFrame> {
        let state = self.states.entry(doc.to_owned()).or_default();
        let d = self.docs.entry(doc.to_owned()).or_default();
        let message = d.sync().generate_sync_message(state)?;
        self.synced.insert(doc.to_owned());
        Some(PeerFrame::Sync {
            doc: doc.to_owned(),
            message: message.encode(),
        })
    }
}

fn digest(heads: &[automerge::ChangeHash]) -> [u8; 32] {
    let mut sorted = heads.to_vec();
    sorted.sort();
    let mut out = [0u8; 32];
    for head in sorted {
        for (o, b) in out.iter_mut().zip(head.0) {
            *o = o.rotate_left(1) ^ b;
        }
    }
    out
}

/// Passes frames both ways, through the real framing, until both sides are quiet.
fn pump(a: &mut Side, b: &mut Side, now: Instant) -> usize {
    let mut frames_moved = 0;
    for _ in 0..1000 {
        a.session.handle_timeout(now);
        b.session.handle_timeout(now);
        let to_b = a.drain();
        let to_a = b.drain();
        if to_b.is_empty() && to_a.is_empty() {
            return frames_moved;
        }
        frames_moved += to_b.len() + to_a.len();
        deliver(to_b, b, now);
        deliver(to_a, a, now);
    }
    panic!("the sessions never went quiet");
}

fn deliver(frames: Vec<PeerFrame>, to: &mut Side, now: Instant) {
    let mut decoder = FrameDecoder::new(FRAME_LEN_MAX_BYTES);
    for frame in frames {
        decoder.push(&encode_frame(&frame).expect("encode"));
        let decoded = decoder
            .next_frame()
            .expect("decode")
            .expect("a whole frame");
        to.session.handle_frame(decoded, now);
    }
}

fn doc_with(value: &str) -> AutoCommit {
    let mut doc = AutoCommit::new();
    doc.put(ROOT, "v", value).expect("put");
    doc.commit();
    doc
}

fn value(doc: &AutoCommit) -> Option<String> {
    let (v, _) = doc.get(ROOT, "v").ok()??;
    v.as_str().map(str::to_owned)
}

#[test]
fn hello_then_established_on_both_sides() {
    let now = Instant::now();
    let mut a = Side::new("aaaa", share_all(), now);
    let mut b = Side::new("bbbb", share_all(), now);
    pump(&mut a, &mut b, now);
    assert_eq!(
        a.established,
        Some(PeerInfo {
            node_id: "bbbb".into(),
            name: "bbbb".into(),
            region: "r".into()
        })
    );
    assert_eq!(
        b.established.as_ref().map(|p| p.node_id.as_str()),
        Some("aaaa")
    );
    assert!(a.session.is_open() && b.session.is_open());
    assert_eq!(a.closed, None);
}

#[test]
fn another_protocol_version_is_refused_with_bye() {
    let now = Instant::now();
    let mut a = Side::new("aaaa", share_all(), now);
    a.drain();
    a.session.handle_frame(
        PeerFrame::Hello {
            node_id: "bbbb".into(),
            name: "b".into(),
            region: "r".into(),
            protocol_version: PROTOCOL_VERSION + 1,
        },
        now,
    );
    let frames = a.drain();
    assert!(matches!(&frames[..], [PeerFrame::Bye { reason }] if reason.contains("not supported")));
    assert!(a.closed.is_some());
    assert!(!a.session.is_open());
}

#[test]
fn anything_but_hello_first_is_refused() {
    let now = Instant::now();
    let mut a = Side::new("aaaa", share_all(), now);
    a.drain();
    a.session.handle_frame(
        PeerFrame::Sync {
            doc: "session/x".into(),
            message: vec![1, 2, 3],
        },
        now,
    );
    a.drain();
    assert_eq!(a.closed.as_deref(), Some("the first frame must be a hello"));
    // Frames after the close are ignored: no sync is attempted.
    a.session.handle_frame(
        PeerFrame::Sync {
            doc: "session/x".into(),
            message: vec![],
        },
        now,
    );
    assert_eq!(a.session.poll_output(), None);
}

#[test]
fn a_silent_peer_is_closed_at_the_hello_timeout() {
    let now = Instant::now();
    let mut a = Side::new("aaaa", share_all(), now);
    a.drain();
    let deadline = a.session.poll_timeout().expect("a hello deadline");
    assert_eq!(deadline, now + Duration::from_millis(5_000));
    a.session
        .handle_timeout(deadline - Duration::from_millis(1));
    assert!(a.drain().is_empty());
    a.session.handle_timeout(deadline);
    a.drain();
    assert_eq!(a.closed.as_deref(), Some("no hello in time"));
}

#[test]
fn a_node_connected_to_itself_closes() {
    let now = Instant::now();
    let mut a = Side::new("aaaa", share_all(), now);
    let mut a2 = Side::new("aaaa", share_all(), now);
    pump(&mut a, &mut a2, now);
    assert_eq!(a.closed.as_deref(), Some("connected to itself"));
}

#[test]
fn summaries_sync_only_the_documents_that_differ() {
    // Few documents: the roots list them.
    differing_documents_are_synced_and_no_other(50);
}

#[test]
fn a_deep_tree_syncs_only_the_documents_that_differ() {
    // Many documents: the roots are sums, the differing children lists.
    let nodes = differing_documents_are_synced_and_no_other(3_000);
    assert!(
        nodes <= 2 + 2 * 5,
        "two roots and at most one node per differing document each way: {nodes}"
    );
}

/// `n` documents on both sides, three changed and one only on each side; returns the digest
/// nodes both sides sent.
fn differing_documents_are_synced_and_no_other(n: usize) -> u64 {
    let now = Instant::now();
    let mut a = Side::new("aaaa", share_all(), now);
    let mut b = Side::new("bbbb", share_all(), now);
    // Shared documents, identical on both sides.
    for i in 0..n {
        let mut doc = doc_with(&format!("same {i}"));
        let copy = doc.fork();
        a.docs.insert(format!("session/s{i}"), doc);
        b.docs.insert(format!("session/s{i}"), copy);
    }
    // Three differ: changed on A, changed on B, changed on both.
    for (i, who) in [(3, "a"), (17, "b"), (40, "ab")] {
        let key = format!("session/s{i}");
        if who.contains('a') {
            let d = a.docs.get_mut(&key).expect("doc");
            d.put(ROOT, "a", "x").expect("put");
            d.commit();
        }
        if who.contains('b') {
            let d = b.docs.get_mut(&key).expect("doc");
            d.put(ROOT, "b", "y").expect("put");
            d.commit();
        }
    }
    // One only A has, one only B has.
    a.docs.insert("cohort/only-a".into(), doc_with("a"));
    b.docs.insert("cohort/only-b".into(), doc_with("b"));

    pump(&mut a, &mut b, now);

    let expected: BTreeSet<String> = [
        "session/s3",
        "session/s17",
        "session/s40",
        "cohort/only-a",
        "cohort/only-b",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(a.synced, expected, "A synced exactly the differing docs");
    assert_eq!(b.synced, expected, "B synced exactly the differing docs");
    assert_eq!(a.session.stats().docs_differing, 5);
    assert_eq!(a.summary(), b.summary(), "identical heads everywhere");
    assert_eq!(value(&b.docs["cohort/only-a"]).as_deref(), Some("a"));
    a.session.stats().digest_nodes_sent + b.session.stats().digest_nodes_sent
}

#[test]
fn local_changes_are_pushed_at_once_then_coalesced() {
    let t0 = Instant::now();
    let mut a = Side::new("aaaa", share_all(), t0);
    let mut b = Side::new("bbbb", share_all(), t0);
    pump(&mut a, &mut b, t0);

    // The first change after a quiet period goes out immediately.
    a.docs.insert("session/x".into(), doc_with("1"));
    a.session.local_change("session/x", t0);
    assert_eq!(a.session.poll_timeout(), Some(t0));
    let moved = pump(&mut a, &mut b, t0);
    assert!(moved > 0);
    assert_eq!(value(&b.docs["session/x"]).as_deref(), Some("1"));

    // Changes within the window wait for its end, and go out together.
    let t1 = t0 + Duration::from_millis(2);
    for (i, doc) in ["session/x", "session/y", "session/x"].iter().enumerate() {
        let d = a.docs.entry((*doc).into()).or_default();
        d.put(ROOT, "v", format!("{i}").as_str()).expect("put");
        d.commit();
        a.session.local_change(doc, t1);
    }
    assert_eq!(a.session.pending_docs(), 2);
    let flush = a.session.poll_timeout().expect("a flush is scheduled");
    assert_eq!(flush, t0 + Duration::from_millis(10));
    a.session.handle_timeout(t1);
    assert!(a.drain().is_empty(), "nothing before the window ends");
    pump(&mut a, &mut b, flush);
    assert_eq!(a.session.pending_docs(), 0);
    assert_eq!(value(&b.docs["session/x"]).as_deref(), Some("2"));
    assert_eq!(value(&b.docs["session/y"]).as_deref(), Some("1"));
    assert_eq!(
        a.session.stats().docs_pushed,
        3,
        "x, then x and y once each"
    );
}

#[test]
fn ephemeral_messages_are_delivered_once_in_order() {
    let now = Instant::now();
    let mut a = Side::new("aaaa", share_all(), now);
    let mut b = Side::new("bbbb", share_all(), now);
    pump(&mut a, &mut b, now);
    a.session
        .send_ephemeral("session/x", "aaaa.1", b"one".to_vec());
    a.session
        .send_ephemeral("session/x", "aaaa.1", b"two".to_vec());
    let frames = a.drain();
    assert_eq!(frames.len(), 2);
    // Delivered, then replayed (a duplicate), then an old counter: only two get through.
    deliver(frames.clone(), &mut b, now);
    deliver(frames, &mut b, now);
    b.drain();
    assert_eq!(
        b.ephemeral,
        vec![
            ("session/x".into(), "aaaa.1".into(), b"one".to_vec()),
            ("session/x".into(), "aaaa.1".into(), b"two".to_vec()),
        ]
    );
}

#[test]
fn the_share_policy_keeps_other_documents_out_both_ways() {
    let now = Instant::now();
    let only_mine: ShareFilter = Arc::new(|doc: &str| doc.ends_with("/mine"));
    let mut a = Side::new("aaaa", only_mine, now);
    let mut b = Side::new("bbbb", share_all(), now);
    a.docs.insert("session/mine".into(), doc_with("a"));
    a.docs.insert("session/private".into(), doc_with("secret"));
    b.docs.insert("session/theirs".into(), doc_with("b"));
    pump(&mut a, &mut b, now);
    assert!(b.docs.contains_key("session/mine"));
    assert!(!b.docs.contains_key("session/private"), "not shared out");
    assert!(!a.docs.contains_key("session/theirs"), "not taken in");
    assert!(a.session.stats().frames_refused > 0);

    // Pushes of unshared docs are not even scheduled.
    a.session.local_change("session/private", now);
    assert_eq!(a.session.pending_docs(), 0);
}

/// A peer named in the scopes is held to its scope both ways, on top of the share policy,
/// and a peer not named is not. Kills: scopes never applied, applied only to what we send, or
/// applied to every peer.
#[test]
fn a_scoped_peer_exchanges_only_the_documents_of_its_scope() {
    let now = Instant::now();
    let scopes: PeerScopes = Arc::new(HashMap::from([(
        "bbbb".to_owned(),
        Arc::new(|doc: &str| doc.starts_with("session/c1-")) as ShareFilter,
    )]));
    let mut a = Side::new("aaaa", share_all(), now);
    a.session = Session::new(SessionConfig::new("aaaa", "aaaa", "r"), share_all(), now)
        .with_scopes(scopes.clone());
    let mut b = Side::new("bbbb", share_all(), now);
    a.docs.insert("session/c1-a".into(), doc_with("a"));
    a.docs.insert("session/c2-a".into(), doc_with("not for b"));
    b.docs.insert("session/c1-b".into(), doc_with("b"));
    b.docs
        .insert("session/c2-forged".into(), doc_with("forged"));
    pump(&mut a, &mut b, now);
    assert!(a.docs.contains_key("session/c1-b"), "in scope: taken in");
    assert!(b.docs.contains_key("session/c1-a"), "in scope: shared out");
    assert!(
        !a.docs.contains_key("session/c2-forged"),
        "outside its scope: refused"
    );
    assert!(
        !b.docs.contains_key("session/c2-a"),
        "outside its scope: not shared"
    );

    // Another peer is not held to bbbb's scope.
    let mut a2 = Side::new("aaaa", share_all(), now);
    a2.session =
        Session::new(SessionConfig::new("aaaa", "aaaa", "r"), share_all(), now).with_scopes(scopes);
    let mut c = Side::new("cccc", share_all(), now);
    c.docs.insert("session/c2-c".into(), doc_with("c"));
    pump(&mut a2, &mut c, now);
    assert!(a2.docs.contains_key("session/c2-c"));
}

/// Frames that follow the hello in the same read are held to the scope too: a scoped peer that
/// sends a sync message for a document outside its scope right after its hello is refused.
#[test]
fn a_sync_frame_right_after_the_hello_is_held_to_the_scope() {
    let now = Instant::now();
    let scopes: PeerScopes = Arc::new(HashMap::from([(
        "bbbb".to_owned(),
        Arc::new(|doc: &str| doc == "session/mine") as ShareFilter,
    )]));
    let mut a =
        Session::new(SessionConfig::new("aaaa", "aaaa", "r"), share_all(), now).with_scopes(scopes);
    a.handle_frame(
        PeerFrame::Hello {
            node_id: "bbbb".into(),
            name: "bbbb".into(),
            region: "r".into(),
            protocol_version: lectern_wire::PROTOCOL_VERSION,
        },
        now,
    );
    a.handle_frame(
        PeerFrame::Sync {
            doc: "session/other".into(),
            message: vec![0x42],
        },
        now,
    );
    let mut received = Vec::new();
    while let Some(o) = a.poll_output() {
        if let Output::ReceiveSync { doc, .. } = o {
            received.push(doc);
        }
    }
    assert!(received.is_empty(), "{received:?}");
    assert_eq!(a.stats().frames_refused, 1);
}

/// A frame of any variant with arbitrary fields.
fn any_frame() -> impl proptest::strategy::Strategy<Value = PeerFrame> {
    use proptest::prelude::*;
    let s = || "[a-z/]{0,12}";
    prop_oneof![
        (s(), s(), s(), 0u32..3).prop_map(|(node_id, name, region, protocol_version)| {
            PeerFrame::Hello {
                node_id,
                name,
                region,
                protocol_version,
            }
        }),
        (s(), proptest::collection::vec(any::<u8>(), 0..32))
            .prop_map(|(doc, message)| PeerFrame::Sync { doc, message }),
        (
            proptest::collection::vec(any::<u8>(), 0..6),
            proptest::collection::vec((s(), any::<[u8; 16]>()), 0..8)
        )
            .prop_map(|(prefix, docs)| PeerFrame::DigestNode {
                prefix,
                content: lectern_wire::DigestContent::Leaves(docs),
                resync: false,
            }),
        (
            proptest::collection::vec(any::<u8>(), 0..6),
            proptest::collection::vec(any::<u64>(), 250..260),
            any::<bool>()
        )
            .prop_map(|(prefix, sums, resync)| PeerFrame::DigestNode {
                prefix,
                content: lectern_wire::DigestContent::Children(sums),
                resync,
            }),
        (
            s(),
            s(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..8)
        )
            .prop_map(|(doc, sender, counter, payload)| PeerFrame::Ephemeral {
                doc,
                sender,
                counter,
                payload,
            }),
        s().prop_map(|reason| PeerFrame::Bye { reason }),
    ]
}

proptest::proptest! {
    /// Whatever a peer sends, in whatever order, the session never panics, never asks for more
    /// than one sync step per frame and summary entry, and once closed stays closed.
    #[test]
    fn any_frame_sequence_never_panics(
        frames in proptest::collection::vec(any_frame(), 0..40),
        garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
    ) {
        let now = Instant::now();
        let mut session = Session::new(SessionConfig::new("self", "self", "r"), share_all(), now);
        // Garbage through the real decoder first: whatever decodes is fed in too.
        let mut decoder = FrameDecoder::new(1024);
        decoder.push(&garbage);
        let mut inputs = Vec::new();
        for _ in 0..garbage.len() {
            match decoder.next_frame() {
                Ok(Some(f)) => inputs.push(f),
                Ok(None) | Err(lectern_wire::FrameError::TooLarge { .. }) => break,
                Err(_) => {}
            }
        }
        inputs.extend(frames);
        let mut closed = false;
        for (i, frame) in inputs.into_iter().enumerate() {
            let budget = match &frame {
                PeerFrame::DigestNode {
                    content: lectern_wire::DigestContent::Leaves(docs),
                    ..
                } => docs.len() + 2,
                _ => 3,
            };
            session.handle_frame(frame, now + Duration::from_millis(i as u64));
            if session.is_open() {
                session.send_summary(vec![("session/x".into(), [1; 32])]);
            }
            session.local_change("session/y", now);
            session.handle_timeout(now + Duration::from_secs(60));
            let mut n = 0;
            while let Some(output) = session.poll_output() {
                n += 1;
                if matches!(output, Output::Close { .. }) {
                    closed = true;
                }
            }
            // Our summary, a sync step per differing document twice (the frame's and ours),
            // the push, a bye and a close.
            proptest::prop_assert!(n <= 2 * budget + 4, "{n} outputs for one frame");
            if closed {
                proptest::prop_assert!(!session.is_open());
            }
        }
    }
}

#[test]
fn a_resync_asks_the_peer_for_a_new_round() {
    // A's share policy first keeps `session/new` out, then admits it (as a classroom node's
    // does when its cohort links a session): A's resync makes B answer with its root again, and
    // A gets the document. Without the `resync` flag B would ignore A's second root (it
    // answered one already), and A would never learn of it.
    for n in [20, 3_000] {
        let now = Instant::now();
        let admitted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let share: ShareFilter = {
            let admitted = admitted.clone();
            std::sync::Arc::new(move |doc: &str| {
                doc != "session/new" || admitted.load(std::sync::atomic::Ordering::SeqCst)
            })
        };
        let mut a = Side::new("aaaa", share, now);
        let mut b = Side::new("bbbb", share_all(), now);
        for i in 0..n {
            let doc = doc_with(&format!("same {i}"));
            b.docs.insert(format!("session/s{i}"), doc.clone());
            a.docs.insert(format!("session/s{i}"), doc);
        }
        b.docs.insert("session/new".into(), doc_with("new"));
        pump(&mut a, &mut b, now);
        assert!(!a.docs.contains_key("session/new"), "kept out at first");
        admitted.store(true, std::sync::atomic::Ordering::SeqCst);
        let summary = a.summary();
        a.session.send_summary(summary);
        pump(&mut a, &mut b, now);
        assert_eq!(
            a.docs.get("session/new").and_then(value).as_deref(),
            Some("new"),
            "{n} documents"
        );
    }
}

#[test]
fn revocation_lists_travel_once_open_and_too_many_close() {
    let now = Instant::now();
    let mut a = Side::new("aaaa", share_all(), now);
    let mut b = Side::new("bbbb", share_all(), now);
    // Before the hello nothing is sent.
    a.session.send_revocations(vec![vec![1]]);
    pump(&mut a, &mut b, now);
    assert!(b.revocations.is_empty());
    a.session.send_revocations(vec![vec![1, 2], vec![3]]);
    a.session.send_revocations(Vec::new());
    pump(&mut a, &mut b, now);
    assert_eq!(b.revocations, vec![vec![vec![1, 2], vec![3]]]);
    assert_eq!(b.closed, None);
    let too_many = vec![vec![0u8]; REVOCATION_LISTS_MAX + 1];
    b.session
        .handle_frame(PeerFrame::Revocations { crls: too_many }, now);
    b.drain();
    assert!(b.closed.is_some(), "a frame of too many lists closes");
}

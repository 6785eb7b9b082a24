//! Resume tokens and events: a client that reconnects with the token of the last event it saw
//! must get exactly the events it missed — the same names, tokens, command ids and payloads per
//! audience as were emitted live — whether those events came from local commands or from
//! changes that arrived by sync in batches (where one batch may touch the same question
//! several times, the case in which the model reads an item at historical heads). Tokens a
//! replica cannot serve (changes it has not received yet, garbage) are refused with a code
//! instead of a silent replay from zero. Finally, event payloads respect anonymity and the
//! moderation queue, since events are the path by which item contents reach other clients.

use lectern_model::automerge::ChangeHash;
use lectern_model::{
    Caller, Command, CommandBody, Event, PollChoice, PollKind, PollSpec, ProgressStatus, Replica,
    ResumeError, ResumeToken, Role, SessionId, SessionState,
};
use serde_json::Value;

use super::{
    NOW, SyncStates, admin, cid, cmd, cohort_doc, cohort_id, instructor, lid, live_session, ok,
    pid, qid, session_doc, student, sync_all, ta, uid,
};
use lectern_model::Millis;

/// One command of a scripted sequence: who sends it, its id, what it does.
type Script = Vec<(Caller, &'static str, CommandBody)>;

fn at(step: usize) -> Millis {
    Millis(NOW.0 + u64::try_from(step).expect("small step") * 1_000)
}

/// A session script touching every session command, several of them on the same items.
fn session_script() -> Script {
    use CommandBody as B;
    let (s1, s2, s3, ta, ins) = (
        student("s1"),
        student("s2"),
        student("s3"),
        ta(),
        instructor(),
    );
    vec![
        (
            ins.clone(),
            "create",
            B::SessionCreate {
                cohort: cohort_id(),
                title: "L1".into(),
                moderation: false,
            },
        ),
        (s1.clone(), "join-s1", B::AttendanceJoin),
        (s2.clone(), "join-s2", B::AttendanceJoin),
        (
            s1.clone(),
            "q1",
            B::QaAsk {
                text: "Why lifetimes?".into(),
                anonymous: true,
            },
        ),
        (
            s2.clone(),
            "up-s2",
            B::QaUpvote {
                question: qid("q1"),
            },
        ),
        (
            s3.clone(),
            "up-s3",
            B::QaUpvote {
                question: qid("q1"),
            },
        ),
        (
            s2.clone(),
            "unvote-s2",
            B::QaUnvote {
                question: qid("q1"),
            },
        ),
        (
            ta.clone(),
            "answer",
            B::QaAnswer {
                question: qid("q1"),
                text: "Borrowing.".into(),
            },
        ),
        (
            ins.clone(),
            "pin",
            B::QaPin {
                question: qid("q1"),
                pinned: true,
            },
        ),
        (
            ins.clone(),
            "p1",
            B::PollCreate(PollSpec {
                question: "Clear?".into(),
                kind: PollKind::Single,
                options: vec!["yes".into(), "no".into()],
                scale_max: None,
                hide_results: true,
            }),
        ),
        (
            s1.clone(),
            "vote-s1",
            B::PollVote {
                poll: pid("p1"),
                choice: PollChoice::Single(0),
            },
        ),
        (
            s2.clone(),
            "vote-s2",
            B::PollVote {
                poll: pid("p1"),
                choice: PollChoice::Single(1),
            },
        ),
        (ta.clone(), "reveal", B::PollReveal { poll: pid("p1") }),
        (
            s2.clone(),
            "revote-s2",
            B::PollVote {
                poll: pid("p1"),
                choice: PollChoice::Single(0),
            },
        ),
        (ins.clone(), "close", B::PollClose { poll: pid("p1") }),
        (
            s2.clone(),
            "m1",
            B::ChatSend {
                text: "hello".into(),
            },
        ),
        (
            s1.clone(),
            "m2",
            B::ChatSend {
                text: "spam".into(),
            },
        ),
        (ta.clone(), "del-m2", B::ChatDelete { message: cid("m2") }),
        (
            ins.clone(),
            "b1",
            B::BroadcastSend {
                text: "Break in 5".into(),
            },
        ),
        (
            ins.clone(),
            "mod-on",
            B::SessionUpdate {
                title: None,
                moderation: Some(true),
                state: None,
            },
        ),
        (
            s3.clone(),
            "q2",
            B::QaAsk {
                text: "Pending?".into(),
                anonymous: false,
            },
        ),
        (
            s3.clone(),
            "up-own",
            B::QaUpvote {
                question: qid("q2"),
            },
        ),
        (
            ta.clone(),
            "approve",
            B::QaApprove {
                question: qid("q2"),
            },
        ),
        (
            s2.clone(),
            "q3",
            B::QaAsk {
                text: "Off topic".into(),
                anonymous: false,
            },
        ),
        (
            ta.clone(),
            "reject",
            B::QaReject {
                question: qid("q3"),
            },
        ),
        (
            ta.clone(),
            "dismiss",
            B::QaDismiss {
                question: qid("q1"),
            },
        ),
        (s1.clone(), "leave-s1", B::AttendanceLeave),
        (
            ins.clone(),
            "end",
            B::SessionUpdate {
                title: Some("L1 (done)".into()),
                moderation: None,
                state: Some(SessionState::Ended),
            },
        ),
    ]
}

/// A cohort script: roster, progress (several updates of one student), announcements, links.
fn cohort_script() -> Script {
    use CommandBody as B;
    let progress =
        |student: &str, lesson: &str, status, score: Option<(u32, u32)>| B::ProgressUpdate {
            student: uid(student),
            lesson: lid(lesson),
            status,
            score: score.map(|s| s.0),
            max_score: score.map(|s| s.1),
        };
    let (s1, ta, ins, adm) = (student("s1"), ta(), instructor(), admin());
    vec![
        (
            adm.clone(),
            "create",
            B::CohortCreate {
                course: "Rust".into(),
                title: "Spring".into(),
                home_region: "eu".into(),
            },
        ),
        (
            ins.clone(),
            "add-s1",
            B::RosterAdd {
                user: uid("s1"),
                role: Role::Student,
                name: "One".into(),
            },
        ),
        (
            ins.clone(),
            "add-s2",
            B::RosterAdd {
                user: uid("s2"),
                role: Role::Student,
                name: "Two".into(),
            },
        ),
        (
            s1.clone(),
            "pr1",
            progress("s1", "l1", Some(ProgressStatus::InProgress), None),
        ),
        (
            s1.clone(),
            "pr2",
            progress("s1", "l1", Some(ProgressStatus::Completed), None),
        ),
        (ta.clone(), "pr3", progress("s1", "l1", None, Some((8, 10)))),
        (
            ta.clone(),
            "pr4",
            progress("s2", "l2", Some(ProgressStatus::InProgress), Some((1, 4))),
        ),
        (
            ins.clone(),
            "ann",
            B::AnnouncementPost {
                title: "Exam".into(),
                body: "Friday".into(),
            },
        ),
        (
            ins.clone(),
            "link",
            B::SessionLink {
                session: SessionId::new("s1").expect("valid"),
                title: "L1".into(),
            },
        ),
        (adm.clone(), "rm-s2", B::RosterRemove { user: uid("s2") }),
        (
            adm.clone(),
            "re-add-s2",
            B::RosterAdd {
                user: uid("s2"),
                role: Role::Ta,
                name: "Two".into(),
            },
        ),
    ]
}

/// Applies a script on `r`, returning the events and the token before each command (and the
/// final token last).
fn run(r: &mut Replica, script: &Script, first_step: usize) -> (Vec<Event>, Vec<ResumeToken>) {
    let mut events = Vec::new();
    let mut tokens = vec![r.token()];
    for (i, (who, id, body)) in script.iter().enumerate() {
        let applied = ok(r, who, &cmd(id, body.clone()), at(first_step + i));
        if is_attendance(body) {
            // Presence emits no event (the gateway reports it, throttled); replaying from
            // before or after it yields the same events, so the token before the next event
            // is the one after this command.
            assert!(applied.event.is_none(), "{id}: attendance emitted an event");
            *tokens.last_mut().expect("tokens start non-empty") = applied.token;
            continue;
        }
        let event = applied
            .event
            .unwrap_or_else(|| panic!("local command {id} emitted no event"));
        assert_eq!(
            event.token, applied.token,
            "{id}: the event's token is the new heads"
        );
        assert_eq!(event.command, *id);
        assert_eq!(applied.token, r.token());
        events.push(event);
        tokens.push(applied.token);
    }
    (events, tokens)
}

/// Attendance commands, which emit no event.
fn is_attendance(body: &CommandBody) -> bool {
    matches!(
        body,
        CommandBody::AttendanceJoin | CommandBody::AttendanceLeave
    )
}

/// For every position k, the replay from `tokens[k]` equals `events[k..]`.
#[track_caller]
fn assert_replays(r: &Replica, tokens: &[ResumeToken], events: &[Event]) {
    assert_eq!(tokens.len(), events.len() + 1);
    for (k, token) in tokens.iter().enumerate() {
        let replayed = r
            .events_since(token)
            .unwrap_or_else(|e| panic!("replay from position {k} failed: {e}"));
        assert_events_eq(
            &replayed,
            &events[k..],
            &format!("replay from position {k}"),
        );
        // A token survives its trip through a client.
        let parsed = ResumeToken::parse(&token.to_string()).expect("a printed token parses");
        assert_eq!(&parsed, token);
    }
}

#[track_caller]
fn assert_events_eq(got: &[Event], want: &[Event], what: &str) {
    let names = |e: &[Event]| {
        e.iter()
            .map(|e| format!("{}:{}", e.name, e.command))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(got), names(want), "{what}: event names and commands");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(
            g.token, w.token,
            "{what}: token of {} {}",
            w.name, w.command
        );
        assert_eq!(
            g.deliveries, w.deliveries,
            "{what}: deliveries of {} {}",
            w.name, w.command
        );
    }
    assert_eq!(got, want, "{what}");
}

#[test]
fn replay_from_any_local_token_equals_what_was_emitted_after_it() {
    let mut s = Replica::new(session_doc(), &[0xd0; 16]);
    let (events, tokens) = run(&mut s, &session_script(), 0);
    let silent = session_script()
        .iter()
        .filter(|(_, _, body)| is_attendance(body))
        .count();
    assert!(silent > 0, "the script exercises presence");
    assert_eq!(events.len(), session_script().len() - silent);
    assert_replays(&s, &tokens, &events);
    // The events carry what happened, not just the latest state: the first upvote said 1.
    let up = events
        .iter()
        .find(|e| e.command == "up-s2")
        .expect("event of up-s2");
    assert_eq!(up.name, "qa:upvoted");
    assert_eq!(up.deliveries[0].payload["count"], 1);

    let mut c = Replica::new(cohort_doc(), &[0xd1; 16]);
    let (events, tokens) = run(&mut c, &cohort_script(), 0);
    assert_replays(&c, &tokens, &events);
    let pr1 = events
        .iter()
        .find(|e| e.command == "pr1")
        .expect("event of pr1");
    assert_eq!(pr1.deliveries[0].payload["status"], "in_progress");
}

/// Splits a script into batches at the given command ids (each id starts a new batch).
fn batches(script: Script, starts: &[&str]) -> Vec<Script> {
    let mut out: Vec<Script> = vec![Vec::new()];
    for step in script {
        if starts.contains(&step.1) {
            out.push(Vec::new());
        }
        out.last_mut().expect("at least one batch").push(step);
    }
    out
}

#[test]
fn replay_on_a_receiver_equals_what_it_emitted_for_remote_batches() {
    for (doc, script, starts) in [
        (
            session_doc(),
            session_script(),
            &["q1", "reveal", "m2", "q2", "dismiss"][..],
        ),
        (cohort_doc(), cohort_script(), &["pr1", "ann"][..]),
    ] {
        let mut reps = [
            Replica::new(doc.clone(), &[0xd2; 16]),
            Replica::new(doc.clone(), &[0xd3; 16]),
        ];
        let mut links = SyncStates::new(2);
        let mut sent = Vec::new();
        let mut received = Vec::new();
        let mut received_tokens = vec![reps[1].token()];
        let mut step = 0;
        for batch in batches(script, starts) {
            // Several commands between sync rounds: B receives them as one batch, in which the
            // same question or poll is touched several times.
            let (events, _) = run(&mut reps[0], &batch, step);
            step += batch.len();
            sent.extend(events);
            let got = links.quiesce(&mut reps);
            assert!(
                got[0].is_empty(),
                "A received events though B wrote nothing"
            );
            received_tokens.extend(got[1].iter().map(|e| e.token.clone()));
            received.extend(got[1].clone());
        }
        assert_eq!(reps[0].token(), reps[1].token());
        // B has no changes of its own, so it emitted exactly what A emitted.
        assert_events_eq(&received, &sent, &format!("{doc}: events on the receiver"));
        assert_replays(&reps[1], &received_tokens, &received);
    }
}

/// Two replicas that both write and sync, recording what each emitted and the token after each
/// event.
struct Pair {
    reps: [Replica; 2],
    links: SyncStates,
    emitted: [Vec<Event>; 2],
    tokens: [Vec<ResumeToken>; 2],
    step: usize,
}

impl Pair {
    fn new() -> Pair {
        let reps = [
            Replica::new(session_doc(), &[0xd4; 16]),
            Replica::new(session_doc(), &[0xd5; 16]),
        ];
        let tokens = [vec![reps[0].token()], vec![reps[1].token()]];
        Pair {
            reps,
            links: SyncStates::new(2),
            emitted: [Vec::new(), Vec::new()],
            tokens,
            step: 0,
        }
    }

    fn local(&mut self, k: usize, who: &Caller, id: &str, body: CommandBody) {
        self.step += 1;
        let attendance = is_attendance(&body);
        let applied = ok(&mut self.reps[k], who, &cmd(id, body), at(self.step));
        if attendance {
            assert!(applied.event.is_none(), "{id}: attendance emitted an event");
            *self.tokens[k].last_mut().expect("tokens start non-empty") = applied.token;
            return;
        }
        self.tokens[k].push(applied.token);
        self.emitted[k].push(applied.event.expect("a local command emits an event"));
    }

    fn sync(&mut self) {
        let got = self.links.quiesce(&mut self.reps);
        for (k, events) in got.into_iter().enumerate() {
            self.tokens[k].extend(events.iter().map(|e| e.token.clone()));
            self.emitted[k].extend(events);
        }
    }
}

/// The receiver also writes: its own events and the ones it receives interleave, concurrent
/// upvotes of one question among them; replay still matches what it emitted, in order.
#[test]
fn replay_on_a_replica_that_writes_while_it_receives() {
    use CommandBody as B;
    let mut p = Pair::new();
    let (s1, s2, s3, ins) = (student("s1"), student("s2"), student("s3"), instructor());
    let q1 = || qid("q1");
    p.local(
        0,
        &ins,
        "create",
        B::SessionCreate {
            cohort: cohort_id(),
            title: "L".into(),
            moderation: false,
        },
    );
    p.local(
        0,
        &s1,
        "q1",
        B::QaAsk {
            text: "Q?".into(),
            anonymous: false,
        },
    );
    p.sync();
    // Concurrently: upvotes of q1 on both sides (s2 on both), an answer on A, a poll on B.
    p.local(0, &s2, "up-a", B::QaUpvote { question: q1() });
    p.local(1, &s3, "up-b", B::QaUpvote { question: q1() });
    p.local(
        0,
        &ta(),
        "answer",
        B::QaAnswer {
            question: q1(),
            text: "A.".into(),
        },
    );
    p.local(1, &s2, "up-b2", B::QaUpvote { question: q1() });
    let rating = PollSpec {
        question: "P?".into(),
        kind: PollKind::Rating,
        options: vec![],
        scale_max: Some(5),
        hide_results: false,
    };
    p.local(1, &ins, "p1", B::PollCreate(rating));
    p.local(
        1,
        &s1,
        "v1",
        B::PollVote {
            poll: pid("p1"),
            choice: PollChoice::Rating(4),
        },
    );
    p.sync();
    p.local(0, &s3, "unvote", B::QaUnvote { question: q1() });
    p.local(
        1,
        &s2,
        "v2",
        B::PollVote {
            poll: pid("p1"),
            choice: PollChoice::Rating(2),
        },
    );
    p.sync();

    assert_eq!(p.reps[0].token(), p.reps[1].token());
    for k in 0..2 {
        assert_replays(&p.reps[k], &p.tokens[k], &p.emitted[k]);
        // Each replica told its subscribers about every command, once.
        let mut ids: Vec<&str> = p.emitted[k].iter().map(|e| e.command.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(
            ids,
            [
                "answer", "create", "p1", "q1", "unvote", "up-a", "up-b", "up-b2", "v1", "v2"
            ],
            "replica {k}"
        );
        // s2 upvoted on both replicas and counts once; s3 took theirs back.
        let view = p.reps[k].session_view(&ta(), NOW).expect("view");
        assert_eq!(view["questions"][0]["upvotes"], 1, "replica {k}");
        let last = p.emitted[k]
            .iter()
            .rfind(|e| e.name == "qa:upvoted")
            .expect("an upvote event");
        assert_eq!(
            last.deliveries[0].payload["count"], 1,
            "replica {k}: last count sent"
        );
    }
}

#[test]
fn a_token_with_changes_the_replica_lacks_is_unknown_heads() {
    let mut reps = [
        super::live_session(&[0xd6; 16]),
        Replica::new(session_doc(), &[0xd7; 16]),
    ];
    super::sync_all(&mut reps);
    let ask = cmd(
        "q1",
        CommandBody::QaAsk {
            text: "?".into(),
            anonymous: false,
        },
    );
    let applied = ok(&mut reps[0], &student("s1"), &ask, NOW);
    match reps[1].events_since(&applied.token) {
        Err(e) => {
            assert_eq!(
                e,
                ResumeError::UnknownHeads(vec![applied.token.heads()[0].to_string()])
            );
            assert_eq!(e.code(), "unknown_heads");
        }
        Ok(events) => panic!(
            "replayed {} events from a token B cannot know",
            events.len()
        ),
    }
    // A token of another document is unknown too.
    let other = Replica::new(cohort_doc(), &[0xd8; 16]);
    assert!(matches!(
        other.events_since(&reps[0].token()),
        Err(ResumeError::UnknownHeads(_))
    ));
    // After a sync, the same token is served.
    super::sync_all(&mut reps);
    assert_eq!(reps[1].events_since(&applied.token).map(|e| e.len()), Ok(0));
}

#[test]
fn a_garbage_token_is_malformed() {
    let r = super::live_session(&[0xd9; 16]);
    let good = r.token().to_string();
    assert_eq!(ResumeToken::parse(&good), Ok(r.token()));
    let heads = |n: u8| ResumeToken::from_heads((0..n).map(|i| ChangeHash([i; 32])).collect());
    let most = heads(64).to_string();
    assert_eq!(ResumeToken::parse(&most), Ok(heads(64)));
    let too_many = heads(65).to_string();
    let truncated = &good[..good.len() - 1];
    let padded = format!("{good}==");
    let doubled_plus = format!("{good}{good}x");
    for garbage in [
        "",
        "   ",
        "not a token!",
        "AAAA",
        truncated,
        &padded,
        &doubled_plus,
        &too_many,
    ] {
        match ResumeToken::parse(garbage) {
            Err(e @ ResumeError::Malformed(_)) => assert_eq!(e.code(), "bad_token"),
            other => panic!("{garbage:?} parsed as {other:?}"),
        }
    }
}

/// The payload of `event` that `who` receives.
fn payload<'a>(event: &'a Event, who: &Caller) -> Option<&'a Value> {
    event.payload_for(who.user.as_str(), who.role.is_staff())
}

#[test]
fn an_anonymous_question_hides_its_author_from_classmates_only() {
    use CommandBody as B;
    let mut reps = [
        super::live_session(&[0xda; 16]),
        Replica::new(session_doc(), &[0xdb; 16]),
    ];
    let a = &mut reps[0];
    let (author, classmate, staff) = (student("s1"), student("s2"), ta());
    let asked = ok(
        a,
        &author,
        &cmd(
            "q1",
            B::QaAsk {
                text: "Dumb question?".into(),
                anonymous: true,
            },
        ),
        NOW,
    );
    let answered = ok(
        a,
        &staff,
        &cmd(
            "ans",
            B::QaAnswer {
                question: qid("q1"),
                text: "No such thing.".into(),
            },
        ),
        NOW,
    );
    let upvoted = ok(
        a,
        &classmate,
        &cmd(
            "up",
            B::QaUpvote {
                question: qid("q1"),
            },
        ),
        NOW,
    );
    let received = super::sync_all(&mut reps);
    let replayed = reps[0]
        .events_since(&Replica::new(session_doc(), &[0xdc; 16]).token())
        .expect("replay");

    let live = [
        asked.event.expect("qa:new"),
        answered.event.expect("qa:updated"),
        upvoted.event.expect("qa:upvoted"),
    ];
    for (source, events) in [
        ("live", &live[..]),
        ("received", &received[1][..]),
        ("replayed", &replayed[..]),
    ] {
        let by_id = |id: &str| {
            events
                .iter()
                .find(|e| e.command == id)
                .unwrap_or_else(|| panic!("{source}: no event for {id}"))
        };
        for id in ["q1", "ans"] {
            let e = by_id(id);
            let for_classmate =
                payload(e, &classmate).expect("a classmate sees a visible question");
            assert_eq!(
                for_classmate["author"],
                Value::Null,
                "{source} {}: the author leaks to a classmate",
                e.name
            );
            assert_eq!(for_classmate["anonymous"], true);
            assert_eq!(for_classmate["question"], "Dumb question?");
            for who in [&author, &staff, &instructor()] {
                let p = payload(e, who).expect("the author and staff see it");
                assert_eq!(
                    p["author"]["id"], "s1",
                    "{source} {}: {} does not see the author",
                    e.name, who.user
                );
            }
        }
        // A vote count says nothing about the author, to anyone.
        let up = by_id("up");
        for who in [&author, &classmate, &staff] {
            let p = payload(up, who).expect("everyone sees the count");
            assert_eq!(p, &serde_json::json!({"qaId": "q1", "count": 1}));
        }
    }
    // The joining state agrees with the events.
    for (r, name) in [(&reps[0], "a"), (&reps[1], "b")] {
        let q = |who: &Caller| {
            r.session_view(who, NOW).expect("view")["questions"][0]["author"].clone()
        };
        assert_eq!(q(&classmate), Value::Null, "{name}: classmate view");
        assert_eq!(q(&author)["id"], "s1", "{name}: author view");
        assert_eq!(q(&staff)["id"], "s1", "{name}: staff view");
    }
}

#[test]
fn a_pending_question_reaches_staff_and_its_author_only() {
    use CommandBody as B;
    let mut r = super::live_session(&[0xdd; 16]);
    let (author, classmate, staff) = (student("s1"), student("s2"), ta());
    ok(
        &mut r,
        &instructor(),
        &cmd(
            "mod",
            B::SessionUpdate {
                title: None,
                moderation: Some(true),
                state: None,
            },
        ),
        NOW,
    );
    let before = r.token();
    let asked = ok(
        &mut r,
        &author,
        &cmd(
            "q1",
            B::QaAsk {
                text: "Pending?".into(),
                anonymous: false,
            },
        ),
        NOW,
    );
    let own_vote = ok(
        &mut r,
        &author,
        &cmd(
            "up",
            B::QaUpvote {
                question: qid("q1"),
            },
        ),
        NOW,
    );
    for e in [
        asked.event.as_ref().expect("qa:new"),
        own_vote.event.as_ref().expect("qa:upvoted"),
    ] {
        assert_eq!(
            payload(e, &classmate),
            None,
            "{} reaches a classmate",
            e.name
        );
        assert_eq!(payload(e, &another_classmate()), None);
        assert!(
            payload(e, &author).is_some(),
            "{} misses its author",
            e.name
        );
        assert!(payload(e, &staff).is_some(), "{} misses staff", e.name);
        assert!(payload(e, &admin()).is_some());
    }
    assert_eq!(
        payload(asked.event.as_ref().expect("qa:new"), &staff).expect("staff")["pending"],
        true
    );
    // Same on replay.
    let replayed = r.events_since(&before).expect("replay");
    assert_eq!(payload(&replayed[0], &classmate), None);
    assert_eq!(replayed[0].name, "qa:new");
    // Once approved, everyone is told.
    let approved = ok(
        &mut r,
        &staff,
        &cmd(
            "ok",
            B::QaApprove {
                question: qid("q1"),
            },
        ),
        NOW,
    )
    .event
    .expect("qa:updated");
    assert_eq!(approved.name, "qa:updated");
    let p = payload(&approved, &classmate).expect("a classmate sees an approved question");
    assert_eq!(p["status"], "visible");
    assert_eq!(p["upvotes"], 1);
}

/// Another student of the same cohort who is not the author.
fn another_classmate() -> Caller {
    student("s9")
}

/// Regression (found by `netns::chaos`, seed 1): a client whose node died before its ack sends
/// the same command again to another node, which applies it too: two changes carry one
/// command id. The effect merges into one chat message, but each node emitted the message
/// again when the other's change arrived, and a subscriber resuming on the other node got it
/// again in the replay. One command, one event: live, and in a replay from any token.
#[test]
fn a_command_applied_on_two_nodes_before_they_met_gets_one_event() {
    let mut replicas = vec![live_session(b"node-a"), live_session(b"node-b")];
    sync_all(&mut replicas);
    let before = replicas[0].token();
    let send = cmd(
        "retried",
        CommandBody::ChatSend {
            text: "once".into(),
        },
    );
    let on_a = ok(&mut replicas[0], &student("s1"), &send, at(1));
    let on_b = ok(&mut replicas[1], &student("s1"), &send, at(2));
    assert!(
        on_a.event.is_some() && on_b.event.is_some(),
        "each node emits its own"
    );
    let token_a = on_a.token.clone();
    let merged = sync_all(&mut replicas);
    for (i, events) in merged.iter().enumerate() {
        assert!(
            events.iter().all(|e| e.command != "retried"),
            "replica {i} emitted the command again on merge: {:?}",
            events.iter().map(|e| &e.command).collect::<Vec<_>>()
        );
    }
    for (i, r) in replicas.iter().enumerate() {
        let after_a = r.events_since(&token_a).expect("both hold A's change");
        assert!(
            after_a.iter().all(|e| e.command != "retried"),
            "replica {i} replays it after A's token"
        );
        let all = r.events_since(&before).expect("both hold the start");
        assert_eq!(
            all.iter().filter(|e| e.command == "retried").count(),
            1,
            "replica {i} replays it once from before it"
        );
    }
}

/// Regression (found by `netns::chaos`, seed 16106795469005557332): the same retried `qa.ask`
/// applied on two nodes made two copies of the question's map; after the merge one copy reads,
/// and the acked upvotes given on the other copy were gone. The votes of both copies count,
/// each user once, on both replicas; a user's own `voted` too.
#[test]
fn a_question_asked_on_two_nodes_before_they_met_keeps_the_votes_of_both() {
    let mut replicas = asked_on_both([b"node-a", b"node-b"]);
    let upvote = |id: &str| {
        cmd(
            id,
            CommandBody::QaUpvote {
                question: qid("asked-twice"),
            },
        )
    };
    // Each copy holds a vote the other lacks, and s3 voted on both.
    ok(&mut replicas[0], &student("s2"), &upvote("up-s2"), at(3));
    ok(
        &mut replicas[0],
        &student("s3"),
        &upvote("up-s3-on-a"),
        at(4),
    );
    ok(
        &mut replicas[1],
        &student("s3"),
        &upvote("up-s3-on-b"),
        at(5),
    );
    ok(&mut replicas[1], &student("s4"), &upvote("up-s4"), at(6));
    sync_all(&mut replicas);
    for (i, r) in replicas.iter().enumerate() {
        for voter in ["s2", "s4"] {
            let view = r.session_view(&student(voter), NOW).expect("view");
            let questions = view["questions"].as_array().expect("questions");
            assert_eq!(questions.len(), 1, "replica {i}: one question: {view}");
            assert_eq!(
                questions[0]["upvotes"], 3,
                "replica {i}: s2, s3, s4, once each"
            );
            assert_eq!(
                questions[0]["voted"], true,
                "replica {i}: {voter}'s own vote"
            );
        }
    }
}

/// The same question asked on two nodes before they met (above), then answered on one node's
/// copy and pinned, then dismissed, on the other's: after the merge one copy reads, and what
/// was written on the other copy was lost with it. Both replicas show the answer, and the
/// moderation done last; whichever copy wins (both actor orders are tried).
#[test]
fn a_question_asked_on_two_nodes_keeps_the_answer_and_moderation_of_both_copies() {
    for actors in [[&b"node-a"[..], &b"node-b"[..]], [b"node-b", b"node-a"]] {
        let mut replicas = asked_on_both(actors);
        let question = || qid("asked-twice");
        let answer = cmd(
            "answer",
            CommandBody::QaAnswer {
                question: question(),
                text: "Because.".into(),
            },
        );
        ok(&mut replicas[0], &instructor(), &answer, at(3));
        let pin = cmd(
            "pin",
            CommandBody::QaPin {
                question: question(),
                pinned: true,
            },
        );
        ok(&mut replicas[1], &instructor(), &pin, at(4));
        sync_all(&mut replicas);
        for (i, r) in replicas.iter().enumerate() {
            let view = r.session_view(&student("s2"), NOW).expect("view");
            let q = &view["questions"][0];
            assert_eq!(q["answer"]["text"], "Because.", "replica {i}: {view}");
            assert_eq!(q["pinned"], true, "replica {i}: {view}");
        }
        // After the merge, a write goes to the copy that reads and sorts after both.
        let dismiss = cmd(
            "dismiss",
            CommandBody::QaDismiss {
                question: question(),
            },
        );
        ok(&mut replicas[0], &instructor(), &dismiss, at(5));
        sync_all(&mut replicas);
        for (i, r) in replicas.iter().enumerate() {
            let view = r.session_view(&instructor(), NOW).expect("view");
            let q = &view["questions"][0];
            assert_eq!(q["status"], "dismissed", "replica {i}: {view}");
            assert_eq!(q["pinned"], false, "replica {i}: dismissing unpins: {view}");
            let students = r.session_view(&student("s2"), NOW).expect("view");
            assert_eq!(
                students["questions"].as_array().map(Vec::len),
                Some(0),
                "replica {i}: a dismissed question is hidden from classmates: {students}"
            );
        }
    }
}

/// An answer retried on a second node after the first died with its ack is applied on both,
/// and each node's job runner notifies the asker. The notification's id was a hash of each
/// node's own change, so the asker's inbox held the notification twice. It is now made of the
/// document's and the command's ids: the same on both nodes (the inbox holds it once), and
/// another answer's differs.
#[test]
fn a_command_applied_on_two_nodes_notifies_under_one_id() {
    let mut replicas = vec![live_session(b"node-a"), live_session(b"node-b")];
    ok(&mut replicas[0], &student("s1"), &ask("q"), at(1));
    sync_all(&mut replicas);
    let answer = |id: &str, text: &str| {
        cmd(
            id,
            CommandBody::QaAnswer {
                question: qid("q"),
                text: text.into(),
            },
        )
    };
    let retried = answer("answer", "Because.");
    let mut ids = Vec::new();
    for (i, r) in replicas.iter_mut().enumerate() {
        ok(r, &instructor(), &retried, at(2 + i));
        let trigger = r
            .trigger_for(&instructor(), &retried, at(2 + i))
            .expect("an answer notifies its asker");
        assert_eq!(trigger.recipients, vec![uid("s1")], "replica {i}");
        ids.push(trigger.notification.id);
    }
    assert_eq!(
        ids[0], ids[1],
        "one command, one notification id on both nodes"
    );
    let other = answer("another-answer", "Because, really.");
    ok(&mut replicas[0], &instructor(), &other, at(5));
    let trigger = replicas[0]
        .trigger_for(&instructor(), &other, at(5))
        .expect("an answer notifies its asker");
    assert_ne!(
        trigger.notification.id, ids[0],
        "another command, another id"
    );
}

/// Two replicas of a live session, in sync, that then both apply s1's `qa.ask` of
/// `asked-twice` (at steps 1 and 2) before they meet again: two copies of one question.
fn asked_on_both(actors: [&[u8]; 2]) -> Vec<Replica> {
    let mut replicas = vec![live_session(actors[0]), live_session(actors[1])];
    sync_all(&mut replicas);
    ok(&mut replicas[0], &student("s1"), &ask("asked-twice"), at(1));
    ok(&mut replicas[1], &student("s1"), &ask("asked-twice"), at(2));
    replicas
}

/// `qa.ask` of "Why?" with command (and question) id `id`.
fn ask(id: &str) -> Command {
    cmd(
        id,
        CommandBody::QaAsk {
            text: "Why?".into(),
            anonymous: false,
        },
    )
}

//! Bad input is refused with the right stable code and leaves no trace: empty and over-long
//! texts (and exactly-at-the-limit texts accepted, counted in characters, not bytes), unknown
//! questions, polls and messages, votes that do not fit their poll, polls with too few or too
//! many options, duplicate command ids, commands for the other document kind, documents that
//! were never created and sessions that have ended.
//!
//! Every refusal is checked three ways: the code, the document's heads, and the JSON a joining
//! client would get (`session_view` / `cohort_view`), because a refused command that still
//! wrote something would surface on every replica after the next sync.

use lectern_model::limits::*;
use lectern_model::{
    Caller, Command, CommandBody, PollChoice, PollKind, PollSpec, ProgressStatus, RejectCode,
    Replica, Role, SessionId, SessionState,
};

use super::{
    NOW, admin, cid, cmd, cohort_doc, cohort_id, heads, instructor, lid, live_cohort, live_session,
    ok, pid, qid, session_doc, student, ta, uid,
};

/// A session with a question by stu1 (`q1`), a pending question by stu2 (`q-pend`), a chat
/// message (`m1`) and one poll of each kind: `single` (3 options), `multi` (3 options),
/// `rating` (1..=5), `text`, and a closed single-choice poll `closed`.
fn fixture() -> Replica {
    use CommandBody as B;
    let mut r = live_session(&[0xc0; 16]);
    let ins = instructor();
    let poll = |kind, options: &[&str], scale_max| {
        B::PollCreate(PollSpec {
            question: "Which?".into(),
            kind,
            options: options.iter().map(|o| (*o).to_owned()).collect(),
            scale_max,
            hide_results: false,
        })
    };
    let steps: Vec<(Caller, &str, CommandBody)> = vec![
        (
            student("stu1"),
            "q1",
            B::QaAsk {
                text: "What?".into(),
                anonymous: false,
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
            student("stu2"),
            "q-pend",
            B::QaAsk {
                text: "Hidden?".into(),
                anonymous: false,
            },
        ),
        (
            ins.clone(),
            "mod-off",
            B::SessionUpdate {
                title: None,
                moderation: Some(false),
                state: None,
            },
        ),
        (student("stu1"), "m1", B::ChatSend { text: "hi".into() }),
        (
            ins.clone(),
            "single",
            poll(PollKind::Single, &["a", "b", "c"], None),
        ),
        (
            ins.clone(),
            "multi",
            poll(PollKind::Multiple, &["a", "b", "c"], None),
        ),
        (ins.clone(), "rating", poll(PollKind::Rating, &[], Some(5))),
        (ins.clone(), "text", poll(PollKind::OpenText, &[], None)),
        (
            ins.clone(),
            "closed",
            poll(PollKind::Single, &["a", "b"], None),
        ),
        (
            ins.clone(),
            "close",
            B::PollClose {
                poll: pid("closed"),
            },
        ),
    ];
    for (who, id, body) in steps {
        ok(&mut r, &who, &cmd(id, body), NOW);
    }
    r
}

/// Sends `body` as `who` and checks it is refused with `code`, with heads and the instructor's
/// and the caller's views unchanged.
#[track_caller]
fn refuse(r: &mut Replica, who: &Caller, body: CommandBody, code: RejectCode) {
    refuse_cmd(r, who, &cmd("bad", body), code);
}

/// `refuse` for a command with a given id.
#[track_caller]
fn refuse_cmd(r: &mut Replica, who: &Caller, c: &Command, code: RejectCode) {
    let name = c.body.name();
    let before = heads(r);
    let applied_before = r.has_applied(&c.id);
    let views_before = views(r, who);
    match r.apply(who, c, NOW) {
        Ok(_) => panic!("{name} by {} was accepted; expected {code}", who.user),
        Err(e) => assert_eq!(e.code, code, "{name} by {}: {}", who.user, e.message),
    }
    assert_eq!(heads(r), before, "refused {name} changed the heads");
    assert_eq!(
        views(r, who),
        views_before,
        "refused {name} changed what clients see"
    );
    assert_eq!(
        r.has_applied(&c.id),
        applied_before,
        "refused {name} changed the applied-command index"
    );
}

/// Sends `body` as `who` under a fresh id and checks it is accepted.
#[track_caller]
fn accept(r: &mut Replica, who: &Caller, id: &str, body: CommandBody) {
    let before = heads(r);
    ok(r, who, &cmd(id, body), NOW);
    assert_ne!(heads(r), before);
}

/// What the instructor and `who` would be sent on joining, as JSON (errors included).
fn views(r: &Replica, who: &Caller) -> Vec<String> {
    let render = |v: Result<serde_json::Value, lectern_model::Rejection>| match v {
        Ok(v) => v.to_string(),
        Err(e) => format!("error {}", e.code),
    };
    match r.id() {
        lectern_model::DocId::Session(_) => vec![
            render(r.session_view(&instructor(), NOW)),
            render(r.session_view(who, NOW)),
        ],
        lectern_model::DocId::Cohort(_) => vec![
            render(r.cohort_view(&instructor())),
            render(r.cohort_view(who)),
        ],
        lectern_model::DocId::Inbox(_) => vec![render(r.inbox_view(who))],
        lectern_model::DocId::Course(_) => vec![render(r.course_view())],
        lectern_model::DocId::Flags => vec![format!("{:?}", r.flags())],
    }
}

fn text_of(chars: usize) -> String {
    // Two bytes per char: a limit counted in bytes would refuse the texts at the limit.
    "é".repeat(chars)
}

#[test]
fn empty_and_blank_texts_are_refused() {
    use CommandBody as B;
    let mut r = fixture();
    let stu = student("stu1");
    let ins = instructor();
    for blank in ["", "   ", "\n\t "] {
        let t = || blank.to_owned();
        refuse(
            &mut r,
            &stu,
            B::QaAsk {
                text: t(),
                anonymous: false,
            },
            RejectCode::TextEmpty,
        );
        refuse(
            &mut r,
            &stu,
            B::ChatSend { text: t() },
            RejectCode::TextEmpty,
        );
        refuse(
            &mut r,
            &ins,
            B::BroadcastSend { text: t() },
            RejectCode::TextEmpty,
        );
        refuse(
            &mut r,
            &ins,
            B::QaAnswer {
                question: qid("q1"),
                text: t(),
            },
            RejectCode::TextEmpty,
        );
        refuse(
            &mut r,
            &ins,
            B::SessionUpdate {
                title: Some(t()),
                moderation: None,
                state: None,
            },
            RejectCode::TextEmpty,
        );
        refuse(
            &mut r,
            &ins,
            B::PollCreate(PollSpec {
                question: t(),
                kind: PollKind::Single,
                options: vec!["a".into(), "b".into()],
                scale_max: None,
                hide_results: false,
            }),
            RejectCode::TextEmpty,
        );
        refuse(
            &mut r,
            &ins,
            B::PollCreate(PollSpec {
                question: "Q".into(),
                kind: PollKind::Single,
                options: vec!["a".into(), t()],
                scale_max: None,
                hide_results: false,
            }),
            RejectCode::TextEmpty,
        );
        refuse(
            &mut r,
            &stu,
            B::PollVote {
                poll: pid("text"),
                choice: PollChoice::Text(t()),
            },
            RejectCode::TextEmpty,
        );
    }
}

/// Each text field at its limit is accepted and one character more is refused.
#[test]
fn texts_are_limited_in_characters_and_the_limit_itself_is_accepted() {
    use CommandBody as B;
    let mut r = fixture();
    let stu = student("stu1");
    let ins = instructor();
    type Make = fn(String) -> CommandBody;
    let session_fields: Vec<(&str, &Caller, usize, Make)> = vec![
        ("question", &stu, QUESTION_LEN_MAX_CHARS, |t| B::QaAsk {
            text: t,
            anonymous: true,
        }),
        ("chat", &stu, CHAT_LEN_MAX_CHARS, |t| B::ChatSend {
            text: t,
        }),
        ("broadcast", &ins, BROADCAST_LEN_MAX_CHARS, |t| {
            B::BroadcastSend { text: t }
        }),
        ("answer", &ins, ANSWER_LEN_MAX_CHARS, |t| B::QaAnswer {
            question: qid("q1"),
            text: t,
        }),
        ("title", &ins, TITLE_LEN_MAX_CHARS, |t| B::SessionUpdate {
            title: Some(t),
            moderation: None,
            state: None,
        }),
        ("poll question", &ins, POLL_QUESTION_LEN_MAX_CHARS, |t| {
            B::PollCreate(PollSpec {
                question: t,
                kind: PollKind::OpenText,
                options: vec![],
                scale_max: None,
                hide_results: false,
            })
        }),
        ("poll option", &ins, POLL_OPTION_LEN_MAX_CHARS, |t| {
            B::PollCreate(PollSpec {
                question: "Q".into(),
                kind: PollKind::Multiple,
                options: vec!["a".into(), t],
                scale_max: None,
                hide_results: false,
            })
        }),
        (
            "open-text answer",
            &stu,
            OPEN_TEXT_ANSWER_LEN_MAX_CHARS,
            |t| B::PollVote {
                poll: pid("text"),
                choice: PollChoice::Text(t),
            },
        ),
    ];
    for (i, (field, who, max, make)) in session_fields.into_iter().enumerate() {
        // Shown with a failure: several fields share a command name.
        eprintln!("checking the {field} limit ({max} chars)");
        refuse(&mut r, who, make(text_of(max + 1)), RejectCode::TextTooLong);
        // Surrounding whitespace is trimmed before counting.
        accept(
            &mut r,
            who,
            &format!("at-limit-{i}"),
            make(format!("  {}\n", text_of(max))),
        );
    }

    let mut c = live_cohort(&[0xc1; 16]);
    refuse(
        &mut c,
        &ins,
        B::AnnouncementPost {
            title: "t".into(),
            body: text_of(ANNOUNCEMENT_LEN_MAX_CHARS + 1),
        },
        RejectCode::TextTooLong,
    );
    refuse(
        &mut c,
        &ins,
        B::AnnouncementPost {
            title: text_of(TITLE_LEN_MAX_CHARS + 1),
            body: "b".into(),
        },
        RejectCode::TextTooLong,
    );
    refuse(
        &mut c,
        &ins,
        B::RosterAdd {
            user: uid("new1"),
            role: Role::Student,
            name: text_of(DISPLAY_NAME_LEN_MAX_CHARS + 1),
        },
        RejectCode::TextTooLong,
    );
    accept(
        &mut c,
        &ins,
        "ann-at-limit",
        B::AnnouncementPost {
            title: text_of(TITLE_LEN_MAX_CHARS),
            body: text_of(ANNOUNCEMENT_LEN_MAX_CHARS),
        },
    );
    accept(
        &mut c,
        &ins,
        "name-at-limit",
        B::RosterAdd {
            user: uid("new1"),
            role: Role::Student,
            name: text_of(DISPLAY_NAME_LEN_MAX_CHARS),
        },
    );
}

#[test]
fn unknown_questions_polls_and_messages_are_not_found() {
    use CommandBody as B;
    let mut r = fixture();
    let stu = student("stu1");
    let ins = instructor();
    let nf = RejectCode::NotFound;
    let q = || qid("nope");
    refuse(&mut r, &stu, B::QaUpvote { question: q() }, nf);
    refuse(&mut r, &stu, B::QaUnvote { question: q() }, nf);
    refuse(
        &mut r,
        &ins,
        B::QaAnswer {
            question: q(),
            text: "a".into(),
        },
        nf,
    );
    refuse(
        &mut r,
        &ins,
        B::QaPin {
            question: q(),
            pinned: true,
        },
        nf,
    );
    refuse(&mut r, &ins, B::QaDismiss { question: q() }, nf);
    refuse(&mut r, &ins, B::QaApprove { question: q() }, nf);
    refuse(&mut r, &ins, B::QaReject { question: q() }, nf);
    // A poll id is not a question id, nor the other way round.
    refuse(
        &mut r,
        &stu,
        B::QaUpvote {
            question: qid("single"),
        },
        nf,
    );
    refuse(
        &mut r,
        &stu,
        B::PollVote {
            poll: pid("q1"),
            choice: PollChoice::Single(0),
        },
        nf,
    );
    refuse(
        &mut r,
        &stu,
        B::PollVote {
            poll: pid("nope"),
            choice: PollChoice::Single(0),
        },
        nf,
    );
    refuse(&mut r, &ins, B::PollClose { poll: pid("nope") }, nf);
    refuse(&mut r, &ins, B::PollReveal { poll: pid("nope") }, nf);
    refuse(
        &mut r,
        &ins,
        B::ChatDelete {
            message: cid("nope"),
        },
        nf,
    );
    refuse(&mut r, &ins, B::ChatDelete { message: cid("q1") }, nf);
    // A question waiting for moderation does not exist for other students.
    refuse(
        &mut r,
        &stu,
        B::QaUpvote {
            question: qid("q-pend"),
        },
        nf,
    );
    // Leaving without having joined.
    refuse(&mut r, &stu, B::AttendanceLeave, nf);

    let mut c = live_cohort(&[0xc2; 16]);
    refuse(
        &mut c,
        &ins,
        B::RosterRemove {
            user: uid("nobody"),
        },
        nf,
    );
}

#[test]
fn votes_must_fit_their_poll() {
    use CommandBody as B;
    use PollChoice::*;
    let mut r = fixture();
    let stu = student("stu1");
    let vote = |poll: &str, choice| B::PollVote {
        poll: pid(poll),
        choice,
    };
    let range = RejectCode::OptionOutOfRange;
    let shape = RejectCode::InvalidVote;

    refuse(
        &mut r,
        &stu,
        vote("closed", Single(0)),
        RejectCode::PollClosed,
    );

    refuse(&mut r, &stu, vote("single", Single(3)), range);
    refuse(&mut r, &stu, vote("single", Single(u32::MAX)), range);
    refuse(&mut r, &stu, vote("multi", Multiple(vec![0, 3])), range);
    refuse(&mut r, &stu, vote("rating", Rating(0)), range);
    refuse(&mut r, &stu, vote("rating", Rating(6)), range);

    refuse(&mut r, &stu, vote("single", Multiple(vec![0])), shape);
    refuse(&mut r, &stu, vote("single", Rating(1)), shape);
    refuse(&mut r, &stu, vote("multi", Single(0)), shape);
    refuse(&mut r, &stu, vote("multi", Multiple(vec![])), shape);
    refuse(&mut r, &stu, vote("multi", Multiple(vec![1, 1])), shape);
    refuse(&mut r, &stu, vote("rating", Single(1)), shape);
    refuse(&mut r, &stu, vote("text", Rating(1)), shape);
    refuse(&mut r, &stu, vote("text", Single(0)), shape);

    // The edges of each range are accepted.
    accept(&mut r, &stu, "v1", vote("single", Single(2)));
    accept(&mut r, &stu, "v2", vote("multi", Multiple(vec![2, 0])));
    accept(&mut r, &stu, "v3", vote("rating", Rating(1)));
    accept(&mut r, &stu, "v4", vote("rating", Rating(5)));
    accept(
        &mut r,
        &stu,
        "v5",
        vote("text", Text("borrow checker".into())),
    );
}

#[test]
fn polls_need_two_to_ten_options_and_a_sane_scale() {
    use CommandBody as B;
    let mut r = fixture();
    let ins = instructor();
    let poll = |kind, n: usize, scale_max| {
        B::PollCreate(PollSpec {
            question: "Q".into(),
            kind,
            options: (0..n).map(|i| format!("o{i}")).collect(),
            scale_max,
            hide_results: false,
        })
    };
    let bad = RejectCode::InvalidPoll;
    for kind in [PollKind::Single, PollKind::Multiple] {
        refuse(&mut r, &ins, poll(kind, 0, None), bad);
        refuse(&mut r, &ins, poll(kind, POLL_OPTIONS_MIN - 1, None), bad);
        refuse(&mut r, &ins, poll(kind, POLL_OPTIONS_MAX + 1, None), bad);
    }
    refuse(&mut r, &ins, poll(PollKind::Rating, 0, None), bad);
    refuse(
        &mut r,
        &ins,
        poll(PollKind::Rating, 0, Some(RATING_SCALE_MIN - 1)),
        bad,
    );
    refuse(
        &mut r,
        &ins,
        poll(PollKind::Rating, 0, Some(RATING_SCALE_MAX + 1)),
        bad,
    );
    refuse(&mut r, &ins, poll(PollKind::Rating, 2, Some(5)), bad);
    refuse(&mut r, &ins, poll(PollKind::OpenText, 2, None), bad);

    accept(
        &mut r,
        &ins,
        "p-min",
        poll(PollKind::Single, POLL_OPTIONS_MIN, None),
    );
    accept(
        &mut r,
        &ins,
        "p-max",
        poll(PollKind::Multiple, POLL_OPTIONS_MAX, None),
    );
    accept(
        &mut r,
        &ins,
        "p-rmin",
        poll(PollKind::Rating, 0, Some(RATING_SCALE_MIN)),
    );
    accept(
        &mut r,
        &ins,
        "p-rmax",
        poll(PollKind::Rating, 0, Some(RATING_SCALE_MAX)),
    );
}

#[test]
fn other_invalid_fields_are_invalid_input() {
    use CommandBody as B;
    let mut r = fixture();
    let ins = instructor();
    let bad = RejectCode::InvalidInput;
    refuse(
        &mut r,
        &ins,
        B::SessionUpdate {
            title: None,
            moderation: None,
            state: None,
        },
        bad,
    );
    // Only a question waiting for moderation can be approved or rejected.
    refuse(
        &mut r,
        &ins,
        B::QaApprove {
            question: qid("q1"),
        },
        bad,
    );
    refuse(
        &mut r,
        &ins,
        B::QaReject {
            question: qid("q1"),
        },
        bad,
    );

    let mut c = live_cohort(&[0xc3; 16]);
    let progress = |status, score, max_score| B::ProgressUpdate {
        student: uid("stu1"),
        lesson: lid("l1"),
        status,
        score,
        max_score,
    };
    let ta = ta();
    refuse(&mut c, &ta, progress(None, None, None), bad);
    refuse(&mut c, &ta, progress(None, Some(11), Some(10)), bad);
    refuse(&mut c, &ta, progress(None, Some(1), None), bad);
    refuse(&mut c, &ta, progress(None, None, Some(10)), bad);
    refuse(&mut c, &ta, progress(None, Some(0), Some(0)), bad);
    refuse(
        &mut c,
        &ta,
        progress(None, Some(1), Some(SCORE_MAX_POINTS + 1)),
        bad,
    );
    accept(
        &mut c,
        &ta,
        "p1",
        progress(Some(ProgressStatus::Completed), Some(10), Some(10)),
    );
    accept(
        &mut c,
        &ta,
        "p2",
        progress(None, Some(SCORE_MAX_POINTS), Some(SCORE_MAX_POINTS)),
    );
}

#[test]
fn a_command_id_is_applied_once() {
    let mut r = fixture();
    let stu = student("stu1");
    let dup = RejectCode::DuplicateCommand;
    // Same id, same body: a retry.
    let retry = cmd(
        "q1",
        CommandBody::QaAsk {
            text: "What?".into(),
            anonymous: false,
        },
    );
    refuse_cmd(&mut r, &stu, &retry, dup);
    // Same id, another body and caller: still the same command id.
    let reuse = cmd("q1", CommandBody::ChatSend { text: "x".into() });
    refuse_cmd(&mut r, &student("stu2"), &reuse, dup);
    // The check also covers the creation of the document itself.
    let again = cmd(
        "create",
        CommandBody::SessionCreate {
            cohort: cohort_id(),
            title: "Again".into(),
            moderation: false,
        },
    );
    refuse_cmd(&mut r, &instructor(), &again, dup);
}

#[test]
fn commands_go_to_their_own_kind_of_document() {
    use CommandBody as B;
    let mut s = fixture();
    let adm = admin();
    let wrong = RejectCode::WrongDocument;
    refuse(
        &mut s,
        &adm,
        B::RosterAdd {
            user: uid("x"),
            role: Role::Student,
            name: "X".into(),
        },
        wrong,
    );
    refuse(
        &mut s,
        &adm,
        B::CohortCreate {
            course: "c".into(),
            title: "t".into(),
            home_region: String::new(),
        },
        wrong,
    );
    refuse(
        &mut s,
        &adm,
        B::SessionLink {
            session: SessionId::new("s2").expect("valid id"),
            title: "t".into(),
        },
        wrong,
    );

    let mut c = live_cohort(&[0xc4; 16]);
    refuse(
        &mut c,
        &adm,
        B::QaAsk {
            text: "q".into(),
            anonymous: false,
        },
        wrong,
    );
    refuse(&mut c, &adm, B::AttendanceJoin, wrong);
    refuse(
        &mut c,
        &adm,
        B::SessionCreate {
            cohort: cohort_id(),
            title: "t".into(),
            moderation: false,
        },
        wrong,
    );
    // Views refuse the other kind too.
    assert_eq!(s.cohort_view(&adm).map_err(|e| e.code), Err(wrong));
    assert_eq!(c.session_view(&adm, NOW).map_err(|e| e.code), Err(wrong));
}

#[test]
fn documents_that_were_never_created_refuse_everything_but_their_creation() {
    use CommandBody as B;
    let mut s = Replica::new(session_doc(), &[0xc5; 16]);
    let ins = instructor();
    let stu = student("stu1");
    let missing = RejectCode::DocNotFound;
    refuse(
        &mut s,
        &stu,
        B::QaAsk {
            text: "q".into(),
            anonymous: false,
        },
        missing,
    );
    refuse(&mut s, &stu, B::AttendanceJoin, missing);
    refuse(
        &mut s,
        &ins,
        B::SessionUpdate {
            title: Some("t".into()),
            moderation: None,
            state: None,
        },
        missing,
    );
    refuse(
        &mut s,
        &stu,
        B::QaUpvote {
            question: qid("q1"),
        },
        missing,
    );
    assert!(!s.exists());
    assert_eq!(s.session_view(&ins, NOW).map_err(|e| e.code), Err(missing));

    let mut c = lectern_model::Replica::new(cohort_doc(), &[0xc6; 16]);
    refuse(
        &mut c,
        &ins,
        B::RosterAdd {
            user: uid("x"),
            role: Role::Student,
            name: "X".into(),
        },
        missing,
    );
    refuse(
        &mut c,
        &stu,
        B::ProgressUpdate {
            student: uid("stu1"),
            lesson: lid("l1"),
            status: Some(ProgressStatus::InProgress),
            score: None,
            max_score: None,
        },
        missing,
    );
    assert!(!c.exists());
    assert_eq!(c.cohort_view(&ins).map_err(|e| e.code), Err(missing));

    // Creating twice is refused.
    let mut s = live_session(&[0xc7; 16]);
    refuse(
        &mut s,
        &ins,
        B::SessionCreate {
            cohort: cohort_id(),
            title: "t".into(),
            moderation: true,
        },
        RejectCode::AlreadyExists,
    );
    let mut c = live_cohort(&[0xc8; 16]);
    refuse(
        &mut c,
        &admin(),
        B::CohortCreate {
            course: "c".into(),
            title: "t".into(),
            home_region: String::new(),
        },
        RejectCode::AlreadyExists,
    );
}

#[test]
fn an_ended_session_refuses_new_questions_votes_and_chat() {
    use CommandBody as B;
    let mut r = fixture();
    let ins = instructor();
    let stu = student("stu1");
    let end = |state| B::SessionUpdate {
        title: None,
        moderation: None,
        state: Some(state),
    };
    accept(&mut r, &ins, "end", end(SessionState::Ended));

    let ended = RejectCode::SessionEnded;
    refuse(
        &mut r,
        &stu,
        B::QaAsk {
            text: "late?".into(),
            anonymous: false,
        },
        ended,
    );
    refuse(
        &mut r,
        &stu,
        B::QaUpvote {
            question: qid("q1"),
        },
        ended,
    );
    refuse(
        &mut r,
        &stu,
        B::QaUnvote {
            question: qid("q1"),
        },
        ended,
    );
    refuse(
        &mut r,
        &stu,
        B::PollVote {
            poll: pid("single"),
            choice: PollChoice::Single(0),
        },
        ended,
    );
    refuse(&mut r, &stu, B::ChatSend { text: "bye".into() }, ended);
    refuse(
        &mut r,
        &ins,
        B::PollCreate(PollSpec {
            question: "Q".into(),
            kind: PollKind::OpenText,
            options: vec![],
            scale_max: None,
            hide_results: false,
        }),
        ended,
    );
    // Membership is still checked first: an outsider is told they are not a member.
    refuse(
        &mut r,
        &super::outsider(),
        B::ChatSend { text: "x".into() },
        RejectCode::NotMember,
    );

    // Staff can still tidy up, and reopen.
    accept(
        &mut r,
        &ins,
        "answer-late",
        B::QaAnswer {
            question: qid("q1"),
            text: "Done.".into(),
        },
    );
    accept(&mut r, &ins, "reopen", end(SessionState::Live));
    accept(
        &mut r,
        &stu,
        "ask-again",
        B::QaAsk {
            text: "Back?".into(),
            anonymous: false,
        },
    );
}

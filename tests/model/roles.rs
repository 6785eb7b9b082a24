//! The role matrix: every command kind, sent by a student, a TA, an instructor, an admin and a
//! student of another cohort, against a freshly set-up document, must have exactly the outcome
//! written in the table below: accepted, or refused with a stable code (`not_member`,
//! `forbidden`). Permissions are part of the client contract and of the security model, so the
//! table is written out by hand: any change to who may do what fails this test and has to be
//! made here too, on purpose. A refusal must leave the document unchanged (same heads).

use lectern_model::{
    Caller, CommandBody, DocId, PollChoice, PollKind, PollSpec, ProgressStatus, Replica, Role,
};

use super::{
    NOW, admin, cmd, cohort_doc, cohort_id, course_doc, heads, instructor, lid, live_cohort,
    live_session, ok, outsider, pid, qid, session_doc, student, ta, uid,
};

/// The expected outcome of one command for one caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Ok,
    Refused(&'static str),
}

const OK: Expect = Expect::Ok;
const FORBIDDEN: Expect = Expect::Refused("forbidden");
const NOT_MEMBER: Expect = Expect::Refused("not_member");

/// Which document a row runs against.
#[derive(Debug, Clone, Copy)]
enum Doc {
    /// A session that was never created (for `session.create`).
    FreshSession,
    /// The set-up session (see `session_fixture`).
    Session,
    /// A cohort that was never created (for `cohort.create`).
    FreshCohort,
    /// The set-up cohort (see `cohort_fixture`).
    Cohort,
    /// The inbox of the first caller, `stu1`.
    Inbox,
    /// A course that was never created (for `course.create`).
    FreshCourse,
    /// A course created by the instructor `ins1`.
    Course,
    /// The flags document, before any flag was set.
    Flags,
    /// The set-up cohort with every caller on its roster (even the outsider: membership comes
    /// from the token, not the roster).
    RosteredCohort,
}

struct Row {
    name: &'static str,
    doc: Doc,
    /// The command, given the caller (progress rows name the caller's own lessons).
    body: fn(&Caller) -> CommandBody,
    /// Outcome for: student, ta, instructor, admin, student of another cohort.
    expect: [Expect; 5],
}

/// The callers, in the order of `Row::expect`.
fn callers() -> [Caller; 5] {
    [student("stu1"), ta(), instructor(), admin(), outsider()]
}

/// THE permission table. One row per command (progress.update has three: own status, a score,
/// another student's status).
fn table() -> Vec<Row> {
    use CommandBody as B;
    vec![
        Row {
            name: "session.create",
            doc: Doc::FreshSession,
            body: |_| B::SessionCreate {
                cohort: cohort_id(),
                title: "Lecture".into(),
                moderation: false,
            },
            expect: [FORBIDDEN, FORBIDDEN, OK, OK, NOT_MEMBER],
        },
        Row {
            name: "session.update",
            doc: Doc::Session,
            body: |_| B::SessionUpdate {
                title: Some("Renamed".into()),
                moderation: None,
                state: None,
            },
            expect: [FORBIDDEN, FORBIDDEN, OK, OK, NOT_MEMBER],
        },
        Row {
            name: "qa.ask",
            doc: Doc::Session,
            body: |_| B::QaAsk {
                text: "Why?".into(),
                anonymous: false,
            },
            expect: [OK, OK, OK, OK, NOT_MEMBER],
        },
        Row {
            name: "qa.upvote",
            doc: Doc::Session,
            body: |_| B::QaUpvote {
                question: qid("q-vis"),
            },
            expect: [OK, OK, OK, OK, NOT_MEMBER],
        },
        Row {
            name: "qa.unvote",
            doc: Doc::Session,
            body: |_| B::QaUnvote {
                question: qid("q-vis"),
            },
            expect: [OK, OK, OK, OK, NOT_MEMBER],
        },
        Row {
            name: "qa.answer",
            doc: Doc::Session,
            body: |_| B::QaAnswer {
                question: qid("q-vis"),
                text: "Because.".into(),
            },
            expect: [FORBIDDEN, OK, OK, OK, NOT_MEMBER],
        },
        Row {
            name: "qa.pin",
            doc: Doc::Session,
            body: |_| B::QaPin {
                question: qid("q-vis"),
                pinned: true,
            },
            expect: [FORBIDDEN, OK, OK, OK, NOT_MEMBER],
        },
        Row {
            name: "qa.dismiss",
            doc: Doc::Session,
            body: |_| B::QaDismiss {
                question: qid("q-vis"),
            },
            expect: [FORBIDDEN, OK, OK, OK, NOT_MEMBER],
        },
        Row {
            name: "qa.approve",
            doc: Doc::Session,
            body: |_| B::QaApprove {
                question: qid("q-pend"),
            },
            expect: [FORBIDDEN, OK, OK, OK, NOT_MEMBER],
        },
        Row {
            name: "qa.reject",
            doc: Doc::Session,
            body: |_| B::QaReject {
                question: qid("q-pend"),
            },
            expect: [FORBIDDEN, OK, OK, OK, NOT_MEMBER],
        },
        Row {
            name: "poll.create",
            doc: Doc::Session,
            body: |_| {
                B::PollCreate(PollSpec {
                    question: "Ready?".into(),
                    kind: PollKind::Single,
                    options: vec!["yes".into(), "no".into()],
                    scale_max: None,
                    hide_results: false,
                })
            },
            expect: [FORBIDDEN, OK, OK, OK, NOT_MEMBER],
        },
        Row {
            name: "poll.vote",
            doc: Doc::Session,
            body: |_| B::PollVote {
                poll: pid("p-open"),
                choice: PollChoice::Single(1),
            },
            expect: [OK, OK, OK, OK, NOT_MEMBER],
        },
        Row {
            name: "poll.close",
            doc: Doc::Session,
            body: |_| B::PollClose {
                poll: pid("p-open"),
            },
            expect: [FORBIDDEN, OK, OK, OK, NOT_MEMBER],
        },
        Row {
            name: "poll.reveal",
            doc: Doc::Session,
            body: |_| B::PollReveal {
                poll: pid("p-open"),
            },
            expect: [FORBIDDEN, OK, OK, OK, NOT_MEMBER],
        },
        Row {
            name: "chat.send",
            doc: Doc::Session,
            body: |_| B::ChatSend {
                text: "hello".into(),
            },
            expect: [OK, OK, OK, OK, NOT_MEMBER],
        },
        Row {
            name: "chat.delete",
            doc: Doc::Session,
            body: |_| B::ChatDelete {
                message: super::cid("m1"),
            },
            expect: [FORBIDDEN, OK, OK, OK, NOT_MEMBER],
        },
        Row {
            name: "broadcast.send",
            doc: Doc::Session,
            body: |_| B::BroadcastSend {
                text: "Break!".into(),
            },
            expect: [FORBIDDEN, FORBIDDEN, OK, OK, NOT_MEMBER],
        },
        Row {
            name: "attendance.join",
            doc: Doc::Session,
            body: |_| B::AttendanceJoin,
            expect: [OK, OK, OK, OK, NOT_MEMBER],
        },
        Row {
            // Every member joined in the fixture, so every member may leave.
            name: "attendance.leave",
            doc: Doc::Session,
            body: |_| B::AttendanceLeave,
            expect: [OK, OK, OK, OK, NOT_MEMBER],
        },
        Row {
            name: "cohort.create",
            doc: Doc::FreshCohort,
            body: |_| B::CohortCreate {
                course: "Rust".into(),
                title: "Fall".into(),
                home_region: "eu".into(),
            },
            expect: [FORBIDDEN, FORBIDDEN, FORBIDDEN, OK, NOT_MEMBER],
        },
        Row {
            name: "roster.add",
            doc: Doc::Cohort,
            body: |_| B::RosterAdd {
                user: uid("new1"),
                role: Role::Student,
                name: "New".into(),
            },
            expect: [FORBIDDEN, FORBIDDEN, OK, OK, NOT_MEMBER],
        },
        Row {
            name: "roster.remove",
            doc: Doc::Cohort,
            body: |_| B::RosterRemove { user: uid("stu2") },
            expect: [FORBIDDEN, FORBIDDEN, OK, OK, NOT_MEMBER],
        },
        Row {
            name: "progress.update (own status)",
            doc: Doc::Cohort,
            body: |c| B::ProgressUpdate {
                student: c.user.clone(),
                lesson: lid("l1"),
                status: Some(ProgressStatus::Completed),
                score: None,
                max_score: None,
            },
            expect: [OK, OK, OK, OK, NOT_MEMBER],
        },
        Row {
            name: "progress.update (own score)",
            doc: Doc::Cohort,
            body: |c| B::ProgressUpdate {
                student: c.user.clone(),
                lesson: lid("l1"),
                status: None,
                score: Some(7),
                max_score: Some(10),
            },
            expect: [FORBIDDEN, OK, OK, OK, NOT_MEMBER],
        },
        Row {
            name: "progress.update (another student's status)",
            doc: Doc::Cohort,
            body: |_| B::ProgressUpdate {
                student: uid("stu2"),
                lesson: lid("l1"),
                status: Some(ProgressStatus::InProgress),
                score: None,
                max_score: None,
            },
            expect: [FORBIDDEN, OK, OK, OK, NOT_MEMBER],
        },
        Row {
            name: "announcement.post",
            doc: Doc::Cohort,
            body: |_| B::AnnouncementPost {
                title: "Exam".into(),
                body: "Friday".into(),
            },
            expect: [FORBIDDEN, FORBIDDEN, OK, OK, NOT_MEMBER],
        },
        Row {
            name: "session.link",
            doc: Doc::Cohort,
            body: |_| B::SessionLink {
                session: lectern_model::SessionId::new("s9").expect("valid id"),
                title: "Lecture 9".into(),
            },
            expect: [FORBIDDEN, FORBIDDEN, OK, OK, NOT_MEMBER],
        },
        Row {
            name: "cohort.course",
            doc: Doc::Cohort,
            body: |_| B::CohortCourse {
                course: lectern_model::CourseId::new("course-9").expect("valid id"),
            },
            expect: [FORBIDDEN, FORBIDDEN, OK, OK, NOT_MEMBER],
        },
        // A join code is made by the cohort's instructor; only the node (as an admin) redeems
        // one, for a newcomer who has no token yet.
        Row {
            name: "join_code.create",
            doc: Doc::Cohort,
            body: |_| B::JoinCodeCreate {
                key: JOIN_KEY_NEW.into(),
                session: lectern_model::SessionId::new("s1").expect("valid id"),
                role: Role::Student,
                expires_at: NOW.0 + 3_600_000,
                uses_max: 5,
            },
            expect: [FORBIDDEN, FORBIDDEN, OK, OK, NOT_MEMBER],
        },
        Row {
            name: "join_code.redeem",
            doc: Doc::Cohort,
            body: |_| B::JoinCodeRedeem {
                key: JOIN_KEY.into(),
                user: uid("newcomer1"),
                name: "New Comer".into(),
            },
            expect: [FORBIDDEN, FORBIDDEN, FORBIDDEN, OK, NOT_MEMBER],
        },
        Row {
            name: "leaderboard.privacy",
            doc: Doc::RosteredCohort,
            body: |_| B::LeaderboardPrivacy { anonymous: true },
            expect: [OK, OK, OK, OK, NOT_MEMBER],
        },
        Row {
            name: "leaderboard.privacy (not on the roster)",
            doc: Doc::Cohort,
            body: |_| B::LeaderboardPrivacy { anonymous: true },
            expect: [
                Expect::Refused("not_found"),
                Expect::Refused("not_found"),
                Expect::Refused("not_found"),
                Expect::Refused("not_found"),
                NOT_MEMBER,
            ],
        },
        // An inbox is its owner's (stu1, the first column); only the node's job runner (an
        // admin) pushes into it, and an admin may change its preferences (unsubscribe links).
        Row {
            name: "inbox.push",
            doc: Doc::Inbox,
            body: |_| B::InboxPush {
                notification: lectern_model::CommandId::new("n1").expect("valid id"),
                kind: lectern_model::NotifyKind::Grade,
                title: "Grade".into(),
                body: "8/10".into(),
                link: String::new(),
                cohort: Some(cohort_id()),
            },
            expect: [FORBIDDEN, FORBIDDEN, FORBIDDEN, OK, FORBIDDEN],
        },
        Row {
            name: "inbox.read",
            doc: Doc::Inbox,
            body: |_| B::InboxRead {
                notifications: vec![],
            },
            expect: [OK, FORBIDDEN, FORBIDDEN, OK, FORBIDDEN],
        },
        Row {
            name: "inbox.prefs",
            doc: Doc::Inbox,
            body: |_| B::InboxPrefs {
                kinds: [(
                    lectern_model::NotifyKind::Announcement,
                    lectern_model::Channel::Off,
                )]
                .into(),
                digest: Some(true),
                email: Some("stu1@example.org".into()),
            },
            expect: [OK, FORBIDDEN, FORBIDDEN, OK, FORBIDDEN],
        },
        // A course belongs to no cohort: the role in the token decides, membership does not.
        Row {
            name: "course.create",
            doc: Doc::FreshCourse,
            body: |_| B::CourseCreate {
                title: "Rust".into(),
                description: "Ownership first.".into(),
            },
            expect: [FORBIDDEN, FORBIDDEN, OK, OK, FORBIDDEN],
        },
        Row {
            name: "course.publish",
            doc: Doc::Course,
            body: |_| B::CoursePublish {
                title: None,
                description: None,
                modules: vec![lectern_model::CourseModule {
                    title: "Basics".into(),
                    lessons: vec![lectern_model::CourseLesson {
                        id: lid("l1"),
                        title: "Hello".into(),
                        body: "ab".repeat(32),
                        html: Some("cd".repeat(32)),
                        assets: Vec::new(),
                    }],
                }],
            },
            expect: [FORBIDDEN, FORBIDDEN, OK, OK, FORBIDDEN],
        },
        Row {
            name: "course.lesson",
            doc: Doc::Course,
            body: |_| B::CourseLessonPut {
                module: 0,
                module_title: Some("Basics".into()),
                lesson: Box::new(lectern_model::CourseLesson {
                    id: lid("l2"),
                    title: "Hello again".into(),
                    body: "ef".repeat(32),
                    html: None,
                    assets: Vec::new(),
                }),
            },
            expect: [FORBIDDEN, FORBIDDEN, OK, OK, FORBIDDEN],
        },
        // Feature flags are the operators': only an admin (the node's admin API) sets them.
        Row {
            name: "flag.set",
            doc: Doc::Flags,
            body: |_| B::FlagSet {
                feature: lectern_model::Feature::Chat,
                cohort: Some(cohort_id()),
                enabled: false,
            },
            expect: [FORBIDDEN, FORBIDDEN, FORBIDDEN, OK, FORBIDDEN],
        },
        Row {
            name: "flag.unset",
            doc: Doc::Flags,
            body: |_| B::FlagUnset {
                feature: lectern_model::Feature::Chat,
                cohort: None,
            },
            expect: [FORBIDDEN, FORBIDDEN, FORBIDDEN, OK, FORBIDDEN],
        },
    ]
}

/// Every variant of `CommandBody`, by position. The match has no wildcard, so a new command
/// does not compile until it is given a row (and a number) here.
fn variant(body: &CommandBody) -> usize {
    use CommandBody as B;
    match body {
        B::SessionCreate { .. } => 0,
        B::SessionUpdate { .. } => 1,
        B::QaAsk { .. } => 2,
        B::QaUpvote { .. } => 3,
        B::QaUnvote { .. } => 4,
        B::QaAnswer { .. } => 5,
        B::QaPin { .. } => 6,
        B::QaDismiss { .. } => 7,
        B::QaApprove { .. } => 8,
        B::QaReject { .. } => 9,
        B::PollCreate(_) => 10,
        B::PollVote { .. } => 11,
        B::PollClose { .. } => 12,
        B::PollReveal { .. } => 13,
        B::ChatSend { .. } => 14,
        B::ChatDelete { .. } => 15,
        B::BroadcastSend { .. } => 16,
        B::AttendanceJoin => 17,
        B::AttendanceLeave => 18,
        B::CohortCreate { .. } => 19,
        B::RosterAdd { .. } => 20,
        B::RosterRemove { .. } => 21,
        B::ProgressUpdate { .. } => 22,
        B::AnnouncementPost { .. } => 23,
        B::SessionLink { .. } => 24,
        B::InboxPush { .. } => 25,
        B::InboxRead { .. } => 26,
        B::InboxPrefs { .. } => 27,
        B::LeaderboardPrivacy { .. } => 28,
        B::CourseCreate { .. } => 29,
        B::CoursePublish { .. } => 30,
        B::FlagSet { .. } => 31,
        B::FlagUnset { .. } => 32,
        B::CohortCourse { .. } => 33,
        B::CourseLessonPut { .. } => 34,
        B::JoinCodeCreate { .. } => 35,
        B::JoinCodeRedeem { .. } => 36,
    }
}
const VARIANTS: usize = 37;

/// The key of the join code the cohort fixture holds.
const JOIN_KEY: &str = "0123456789abcdef0123456789abcdef";
/// The key of a join code no fixture holds.
const JOIN_KEY_NEW: &str = "fedcba9876543210fedcba9876543210";

/// The session every session row starts from: created by the instructor, every member present,
/// a visible question, a question waiting for moderation, an open poll and a chat message, all
/// by a second student so that no caller under test owns them.
fn session_fixture() -> Replica {
    use CommandBody as B;
    let mut r = live_session(&[0xa0; 16]);
    let stu2 = student("stu2");
    let ins = instructor();
    for (i, c) in callers().iter().take(4).enumerate() {
        ok(&mut r, c, &cmd(&format!("join{i}"), B::AttendanceJoin), NOW);
    }
    let steps = [
        (
            &stu2,
            "q-vis",
            B::QaAsk {
                text: "Visible?".into(),
                anonymous: false,
            },
        ),
        (
            &ins,
            "mod-on",
            B::SessionUpdate {
                title: None,
                moderation: Some(true),
                state: None,
            },
        ),
        (
            &stu2,
            "q-pend",
            B::QaAsk {
                text: "Pending?".into(),
                anonymous: false,
            },
        ),
        (
            &ins,
            "mod-off",
            B::SessionUpdate {
                title: None,
                moderation: Some(false),
                state: None,
            },
        ),
        (
            &ins,
            "p-open",
            B::PollCreate(PollSpec {
                question: "Pick".into(),
                kind: PollKind::Single,
                options: vec!["a".into(), "b".into()],
                scale_max: None,
                hide_results: true,
            }),
        ),
        (&stu2, "m1", B::ChatSend { text: "hi".into() }),
    ];
    for (who, id, body) in steps {
        ok(&mut r, who, &cmd(id, body), NOW);
    }
    r
}

/// The cohort every cohort row starts from: created, with a second student on the roster,
/// session `s1` listed and a join code for it.
fn cohort_fixture() -> Replica {
    let mut r = live_cohort(&[0xb0; 16]);
    let steps = [
        (
            "add-stu2",
            CommandBody::RosterAdd {
                user: uid("stu2"),
                role: Role::Student,
                name: "Student Two".into(),
            },
        ),
        (
            "link-s1",
            CommandBody::SessionLink {
                session: lectern_model::SessionId::new("s1").expect("valid id"),
                title: "Lecture 1".into(),
            },
        ),
        (
            "code-s1",
            CommandBody::JoinCodeCreate {
                key: JOIN_KEY.into(),
                session: lectern_model::SessionId::new("s1").expect("valid id"),
                role: Role::Student,
                expires_at: NOW.0 + 3_600_000,
                uses_max: 5,
            },
        ),
    ];
    for (id, body) in steps {
        ok(&mut r, &instructor(), &cmd(id, body), NOW);
    }
    r
}

/// A fresh copy of a fixture, writing as its own actor (so no two copies share a sequence).
fn copy(fixture: &Replica, id: DocId, actor: u8) -> Replica {
    Replica::load(id, &fixture.save(), &[actor; 16]).expect("a saved fixture loads")
}

#[test]
fn every_command_has_exactly_the_tabled_outcome_for_every_role() {
    let table = table();
    let callers = callers();

    let mut covered = [false; VARIANTS];
    for row in &table {
        covered[variant(&(row.body)(&callers[0]))] = true;
    }
    assert!(
        covered.iter().all(|c| *c),
        "the table lacks a row for command variants {:?}",
        (0..VARIANTS).filter(|i| !covered[*i]).collect::<Vec<_>>()
    );

    let session = session_fixture();
    let cohort = cohort_fixture();
    let mut course = Replica::new(course_doc(), &[0x71; 16]);
    ok(
        &mut course,
        &instructor(),
        &cmd(
            "course-create",
            CommandBody::CourseCreate {
                title: "Rust".into(),
                description: String::new(),
            },
        ),
        NOW,
    );
    let mut rostered = copy(&cohort, cohort_doc(), 0x70);
    for (i, c) in callers.iter().enumerate() {
        let add = cmd(
            &format!("add-all-{i}"),
            CommandBody::RosterAdd {
                user: c.user.clone(),
                role: c.role,
                name: c.name.clone(),
            },
        );
        ok(&mut rostered, &instructor(), &add, NOW);
    }
    let mut mismatches = Vec::new();
    for row in &table {
        for (col, who) in callers.iter().enumerate() {
            let actor = u8::try_from(col + 1).expect("five columns");
            let mut r = match row.doc {
                Doc::FreshSession => Replica::new(session_doc(), &[actor; 16]),
                Doc::Session => copy(&session, session_doc(), actor),
                Doc::FreshCohort => Replica::new(cohort_doc(), &[actor; 16]),
                Doc::Cohort => copy(&cohort, cohort_doc(), actor),
                Doc::Inbox => Replica::new(DocId::Inbox(uid("stu1")), &[actor; 16]),
                Doc::RosteredCohort => copy(&rostered, cohort_doc(), actor),
                Doc::FreshCourse => Replica::new(course_doc(), &[actor; 16]),
                Doc::Course => copy(&course, course_doc(), actor),
                Doc::Flags => Replica::new(DocId::Flags, &[actor; 16]),
            };
            let c = cmd("under-test", (row.body)(who));
            assert_eq!(
                c.body.name(),
                row.name
                    .split(' ')
                    .next()
                    .expect("a row name starts with the command"),
                "row {} builds the wrong command",
                row.name
            );
            let before = heads(&r);
            let got = match r.apply(who, &c, NOW) {
                Ok(applied) => {
                    assert_ne!(
                        heads(&r),
                        before,
                        "{} by {}: accepted but no change",
                        row.name,
                        who.user
                    );
                    assert_eq!(applied.token, r.token());
                    assert!(r.has_applied(&c.id));
                    Expect::Ok
                }
                Err(e) => {
                    assert_eq!(
                        heads(&r),
                        before,
                        "{} by {}: refused ({}) but the document changed",
                        row.name,
                        who.user,
                        e.code
                    );
                    assert!(!r.has_applied(&c.id));
                    Expect::Refused(e.code.as_str())
                }
            };
            if got != row.expect[col] {
                mismatches.push(format!(
                    "{} by {:?} {}: expected {:?}, got {:?}",
                    row.name, who.role, who.user, row.expect[col], got
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "the permission table does not hold:\n{}",
        mismatches.join("\n")
    );
}

/// The role checks look at the caller's cohort claim, not at the role alone: an instructor of
/// another cohort is a non-member here, and membership is checked before the role, so an
/// outsider learns nothing about what their role could have done.
#[test]
fn an_instructor_of_another_cohort_is_not_a_member() {
    let mut r = copy(&session_fixture(), session_doc(), 9);
    let foreign = super::caller("ins9", Role::Instructor, super::OTHER_COHORT);
    for body in [
        CommandBody::BroadcastSend { text: "hi".into() },
        CommandBody::QaAsk {
            text: "hi".into(),
            anonymous: false,
        },
        CommandBody::AttendanceJoin,
    ] {
        let code = super::refused(&mut r, &foreign, &cmd("foreign", body), NOW);
        assert_eq!(code.as_str(), "not_member");
    }
    assert_eq!(
        r.session_view(&foreign, NOW).map_err(|e| e.code.as_str()),
        Err("not_member"),
        "a non-member may not read the session either"
    );
}

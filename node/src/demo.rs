//! The demo class: a course, a cohort with a roster and a live session with a few questions
//! and a poll, so that a new user has something to look at. Seeding is idempotent: every
//! command has a fixed id, and a node restarted with `--demo` finds them applied already.

use lectern_hub::{Hub, HubError};
use lectern_model::{
    Caller, CohortId, Command, CommandBody, CommandId, DocId, PollKind, PollSpec, RejectCode, Role,
    SessionId, UserId,
};

/// The demo cohort's id.
pub const DEMO_COHORT: &str = "demo-cohort";
/// The demo session's id.
pub const DEMO_SESSION: &str = "demo-session";

fn id<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    // Invariant: the demo's ids are literals that satisfy the id rules.
    s.parse().expect("demo ids are valid")
}

fn caller(user: &str, name: &str, role: Role) -> Caller {
    Caller {
        user: id(user),
        name: name.to_owned(),
        role,
        cohorts: vec![id(DEMO_COHORT)],
    }
}

/// Seeds the demo class; returns the session id.
pub async fn seed_demo(hub: &Hub) -> Result<SessionId, HubError> {
    let admin = caller("admin", "Admin", Role::Admin);
    let instructor = caller("ada", "Ada (instructor)", Role::Instructor);
    let students = [
        caller("student1", "Grace", Role::Student),
        caller("student2", "Linus", Role::Student),
    ];
    let cohort = DocId::Cohort(id::<CohortId>(DEMO_COHORT));
    let session = DocId::Session(id::<SessionId>(DEMO_SESSION));
    let mut steps: Vec<(DocId, &Caller, &str, CommandBody)> = vec![
        (
            cohort.clone(),
            &admin,
            "demo-cohort-create",
            CommandBody::CohortCreate {
                course: "Distributed Systems 101".into(),
                title: "Autumn cohort".into(),
                home_region: "local".into(),
            },
        ),
        (
            cohort.clone(),
            &admin,
            "demo-roster-ada",
            CommandBody::RosterAdd {
                user: id::<UserId>("ada"),
                role: Role::Instructor,
                name: "Ada (instructor)".into(),
            },
        ),
        (
            session.clone(),
            &instructor,
            "demo-session-create",
            CommandBody::SessionCreate {
                cohort: id(DEMO_COHORT),
                title: "Week 1: clocks and ordering".into(),
                moderation: false,
            },
        ),
        (
            cohort.clone(),
            &instructor,
            "demo-session-link",
            CommandBody::SessionLink {
                session: id(DEMO_SESSION),
                title: "Week 1: clocks and ordering".into(),
            },
        ),
    ];
    for (i, s) in students.iter().enumerate() {
        steps.push((
            cohort.clone(),
            &admin,
            if i == 0 {
                "demo-roster-1"
            } else {
                "demo-roster-2"
            },
            CommandBody::RosterAdd {
                user: s.user.clone(),
                role: Role::Student,
                name: s.name.clone(),
            },
        ));
    }
    steps.extend([
        (
            session.clone(),
            &students[0],
            "demo-q1",
            CommandBody::QaAsk {
                text: "Why can't we just trust wall-clock time across nodes?".into(),
                anonymous: false,
            },
        ),
        (
            session.clone(),
            &students[1],
            "demo-q2",
            CommandBody::QaAsk {
                text: "Is a vector clock the same as a version vector?".into(),
                anonymous: true,
            },
        ),
        (
            session.clone(),
            &students[1],
            "demo-q1-up",
            CommandBody::QaUpvote {
                question: id("demo-q1"),
            },
        ),
        (
            session.clone(),
            &instructor,
            "demo-poll",
            CommandBody::PollCreate(PollSpec {
                question: "How confident are you with Lamport clocks?".into(),
                kind: PollKind::Rating,
                options: vec![],
                scale_max: Some(5),
                hide_results: true,
            }),
        ),
    ]);
    for (doc, who, cmd_id, body) in steps {
        let cmd = Command {
            id: id::<CommandId>(cmd_id),
            body,
        };
        match hub.execute(doc, who.clone(), cmd).await {
            Ok(_) => {}
            Err(HubError::Rejected(r)) if r.code == RejectCode::DuplicateCommand => {}
            Err(e) => return Err(e),
        }
    }
    Ok(id(DEMO_SESSION))
}

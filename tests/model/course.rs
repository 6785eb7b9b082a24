//! Course documents: created only by `course.create` (a read or a publish never brings one into
//! being), published as whole versions that count up, lesson bodies and assets named by
//! well-formed SHA-256 hashes, and concurrent publications on two replicas converge on one of
//! the two versions, never a mix.

use lectern_model::{CommandBody, CourseLesson, CourseModule, RejectCode, Replica};
use serde_json::Value;

use super::{NOW, SyncStates, admin, cmd, course_doc, instructor, lid, ok, refused, student};

fn create() -> CommandBody {
    CommandBody::CourseCreate {
        title: "Rust".into(),
        description: "Ownership first.".into(),
    }
}

fn outline(lesson: &str, body: &str) -> Vec<CourseModule> {
    vec![CourseModule {
        title: "Basics".into(),
        lessons: vec![CourseLesson {
            id: lid(lesson),
            title: format!("Lesson {lesson}"),
            body: body.into(),
            html: None,
            assets: vec!["cd".repeat(32)],
        }],
    }]
}

fn publish(lesson: &str, body: &str) -> CommandBody {
    CommandBody::CoursePublish {
        title: None,
        description: None,
        modules: outline(lesson, body),
    }
}

fn lessons(v: &Value) -> Vec<(String, String)> {
    v["modules"]
        .as_array()
        .expect("modules is a list")
        .iter()
        .flat_map(|m| m["lessons"].as_array().cloned().unwrap_or_default())
        .map(|l| {
            (
                l["id"].as_str().unwrap_or_default().to_owned(),
                l["body"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn an_absent_course_is_not_found_and_a_publish_does_not_create_it() {
    let mut r = Replica::new(course_doc(), &[1; 16]);
    let view = r.course_view().expect_err("no course yet");
    assert_eq!(view.code, RejectCode::DocNotFound);
    assert_eq!(
        r.authorize_read(&student("stu1"))
            .expect_err("no course")
            .code,
        RejectCode::DocNotFound
    );
    let code = refused(
        &mut r,
        &admin(),
        &cmd("p1", publish("l1", &"ab".repeat(32))),
        NOW,
    );
    assert_eq!(code, RejectCode::DocNotFound);
    assert!(!r.exists());
    // Only the genesis change: the refused publish left nothing.
    assert_eq!(r.change_count(), 1);
}

#[test]
fn each_publication_is_a_new_version_and_a_new_lesson_hash_replaces_the_reference() {
    let mut r = Replica::new(course_doc(), &[1; 16]);
    ok(&mut r, &instructor(), &cmd("c", create()), NOW);
    let v0 = r.course_view().expect("created");
    assert_eq!(v0["version"], 0);
    assert_eq!(v0["title"], "Rust");
    assert!(lessons(&v0).is_empty());
    let (h1, h2) = ("ab".repeat(32), "ef".repeat(32));
    ok(&mut r, &instructor(), &cmd("p1", publish("l1", &h1)), NOW);
    let v1 = r.course_view().expect("published");
    assert_eq!(v1["version"], 1);
    assert_eq!(lessons(&v1), vec![("l1".to_owned(), h1.clone())]);
    assert_eq!(v1["modules"][0]["lessons"][0]["assets"][0], "cd".repeat(32));
    ok(&mut r, &admin(), &cmd("p2", publish("l1", &h2)), NOW);
    let v2 = r.course_view().expect("republished");
    assert_eq!(v2["version"], 2);
    assert_eq!(lessons(&v2), vec![("l1".to_owned(), h2)]);
    // A second create is refused whoever sends it.
    let code = refused(&mut r, &admin(), &cmd("c2", create()), NOW);
    assert_eq!(code, RejectCode::AlreadyExists);
}

#[test]
fn bad_outlines_are_refused_without_a_trace() {
    let mut r = Replica::new(course_doc(), &[1; 16]);
    ok(&mut r, &instructor(), &cmd("c", create()), NOW);
    let before = r.change_count();
    let mut twice = outline("l1", &"ab".repeat(32));
    let again = twice[0].lessons[0].clone();
    twice[0].lessons.push(again);
    let mut bad_asset = outline("l1", &"ab".repeat(32));
    bad_asset[0].lessons[0].assets = vec!["../../etc/passwd".into()];
    let too_many = (0..=lectern_model::COURSE_MODULES_MAX)
        .map(|i| CourseModule {
            title: format!("m{i}"),
            lessons: Vec::new(),
        })
        .collect();
    let cases = [
        (publish("l1", "not-a-hash"), RejectCode::InvalidInput),
        (publish("l1", &"AB".repeat(32)), RejectCode::InvalidInput),
        (
            CommandBody::CoursePublish {
                title: None,
                description: None,
                modules: twice,
            },
            RejectCode::InvalidInput,
        ),
        (
            CommandBody::CoursePublish {
                title: None,
                description: None,
                modules: bad_asset,
            },
            RejectCode::InvalidInput,
        ),
        (
            CommandBody::CoursePublish {
                title: None,
                description: None,
                modules: too_many,
            },
            RejectCode::LimitReached,
        ),
        (
            CommandBody::CoursePublish {
                title: None,
                description: Some("x".repeat(lectern_model::COURSE_DESCRIPTION_LEN_MAX_CHARS + 1)),
                modules: Vec::new(),
            },
            RejectCode::TextTooLong,
        ),
    ];
    for (i, (body, code)) in cases.into_iter().enumerate() {
        let got = refused(&mut r, &instructor(), &cmd(&format!("bad{i}"), body), NOW);
        assert_eq!(got, code, "case {i}");
    }
    assert_eq!(r.change_count(), before);
    assert_eq!(r.course_view().expect("exists")["version"], 0);
}

#[test]
fn concurrent_publications_converge_on_one_whole_version() {
    let mut a = Replica::new(course_doc(), &[1; 16]);
    ok(&mut a, &instructor(), &cmd("c", create()), NOW);
    let mut b = Replica::load(course_doc(), &a.save(), &[2; 16]).expect("loads");
    let (ha, hb) = ("aa".repeat(32), "bb".repeat(32));
    ok(&mut a, &instructor(), &cmd("pa", publish("la", &ha)), NOW);
    ok(&mut b, &admin(), &cmd("pb", publish("lb", &hb)), NOW);
    let mut replicas = [a, b];
    SyncStates::new(2).quiesce(&mut replicas);
    let (va, vb) = (
        replicas[0].course_view().expect("a"),
        replicas[1].course_view().expect("b"),
    );
    assert_eq!(va, vb);
    let got = lessons(&va);
    assert!(
        got == vec![("la".to_owned(), ha)] || got == vec![("lb".to_owned(), hb)],
        "a mix of two versions: {got:?}"
    );
}

fn lesson_put(module: usize, module_title: Option<&str>, id: &str, body: &str) -> CommandBody {
    CommandBody::CourseLessonPut {
        module,
        module_title: module_title.map(str::to_owned),
        lesson: Box::new(CourseLesson {
            id: lid(id),
            title: format!("Lesson {id}"),
            body: body.into(),
            html: None,
            assets: Vec::new(),
        }),
    }
}

/// `course.lesson` adds one lesson or replaces one in place, leaving the others, each time a
/// new version; a lesson for a module that does not exist, or a new module without a title, is
/// refused without a trace; only the course's instructor or an admin may do it. Kills: a put
/// that drops the other lessons, appends a replaced lesson twice, or skips the version.
#[test]
fn one_lesson_is_added_or_replaced_in_place_as_a_new_version() {
    let mut r = Replica::new(course_doc(), &[1; 16]);
    ok(&mut r, &instructor(), &cmd("c", create()), NOW);
    let (h1, h2, h3, h4) = (
        "a1".repeat(32),
        "b2".repeat(32),
        "c3".repeat(32),
        "d4".repeat(32),
    );
    ok(&mut r, &instructor(), &cmd("p1", publish("l1", &h1)), NOW);
    // Appended to module 0, then a new module 1.
    ok(
        &mut r,
        &instructor(),
        &cmd("put2", lesson_put(0, None, "l2", &h2)),
        NOW,
    );
    ok(
        &mut r,
        &admin(),
        &cmd("put3", lesson_put(1, Some("Advanced"), "l3", &h3)),
        NOW,
    );
    // A new version of l1 replaces it where it stands, whatever module is named.
    ok(
        &mut r,
        &instructor(),
        &cmd("put1", lesson_put(1, None, "l1", &h4)),
        NOW,
    );
    let v = r.course_view().expect("published");
    assert_eq!(v["version"], 4);
    assert_eq!(
        lessons(&v),
        vec![
            ("l1".to_owned(), h4.clone()),
            ("l2".to_owned(), h2.clone()),
            ("l3".to_owned(), h3.clone())
        ]
    );
    assert_eq!(v["modules"][1]["title"], "Advanced");
    for (body, code) in [
        (
            lesson_put(3, Some("Far"), "l9", &h1),
            RejectCode::InvalidInput,
        ),
        (lesson_put(2, None, "l9", &h1), RejectCode::InvalidInput),
        (
            lesson_put(0, None, "l9", "not-a-hash"),
            RejectCode::InvalidInput,
        ),
    ] {
        assert_eq!(refused(&mut r, &admin(), &cmd("bad", body), NOW), code);
    }
    let other = lectern_model::Caller {
        user: "ins2".parse().expect("an id"),
        ..instructor()
    };
    let code = refused(
        &mut r,
        &other,
        &cmd("theirs", lesson_put(0, None, "l9", &h1)),
        NOW,
    );
    assert_eq!(code, RejectCode::Forbidden);
    assert_eq!(
        refused(
            &mut r,
            &student("stu1"),
            &cmd("stu", lesson_put(0, None, "l9", &h1)),
            NOW
        ),
        RejectCode::Forbidden
    );
}

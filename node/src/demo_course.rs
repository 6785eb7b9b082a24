//! The demo course: one Markdown lesson with an image (`node/demo-course`, compiled into the
//! binary so `--demo` works from any directory), stored as content blobs and published to the
//! course document `course/demo-course`, which the demo cohort follows. Idempotent like the rest of the demo: the blobs are
//! content-addressed (storing them again changes nothing) and the commands have fixed ids.

use lectern_content::{BlobHash, BlobStore};
use lectern_hub::{Hub, HubError};
use lectern_model::{
    Caller, Command, CommandBody, CourseLesson, CourseModule, DocId, RejectCode, Role,
};

/// The demo course's id.
pub const DEMO_COURSE: &str = "demo-course";

const LESSON_MD: &str = include_str!("../demo-course/clocks.md");
const LESSON_IMAGE: &[u8] = include_bytes!("../demo-course/clocks.png");
/// The name the lesson uses for its image.
const LESSON_IMAGE_NAME: &str = "clocks.png";

fn parse<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    // Invariant: the demo's ids are literals that satisfy the id rules.
    s.parse().expect("demo ids are valid")
}

/// Stores the demo lesson's blobs, publishes the demo course and links the demo cohort to it
/// (as the demo instructor).
pub async fn seed_demo_course(hub: &Hub, store: &BlobStore) -> anyhow::Result<()> {
    let image = store.put(LESSON_IMAGE, "image/png")?;
    let image_url = format!("/content/{image}.png");
    let html = lectern_content::markdown::render(LESSON_MD, move |url| {
        (url == LESSON_IMAGE_NAME).then(|| image_url.clone())
    });
    let body = store.put(LESSON_MD.as_bytes(), "text/markdown; charset=utf-8")?;
    let html: BlobHash = store.put(html.as_bytes(), "text/html; charset=utf-8")?;
    let instructor = Caller {
        user: parse("ada"),
        name: "Ada (instructor)".into(),
        role: Role::Instructor,
        cohorts: vec![parse(crate::demo::DEMO_COHORT)],
    };
    let doc = DocId::Course(parse(DEMO_COURSE));
    let steps = [
        (
            "demo-course-create",
            CommandBody::CourseCreate {
                title: "Distributed Systems 101".into(),
                description: "Clocks, ordering and replication, one short lesson at a time.".into(),
            },
        ),
        (
            "demo-course-publish-1",
            CommandBody::CoursePublish {
                title: None,
                description: None,
                modules: vec![CourseModule {
                    title: "Week 1: time".into(),
                    lessons: vec![CourseLesson {
                        id: parse("clocks"),
                        title: "Why wall clocks lie".into(),
                        body: body.to_string(),
                        html: Some(html.to_string()),
                        assets: vec![image.to_string()],
                    }],
                }],
            },
        ),
    ];
    // The demo cohort follows the course: its students find it on their page.
    let link = (
        DocId::Cohort(parse(crate::demo::DEMO_COHORT)),
        "demo-cohort-course",
        CommandBody::CohortCourse {
            course: parse(DEMO_COURSE),
        },
    );
    let steps = steps
        .into_iter()
        .map(|(id, body)| (doc.clone(), id, body))
        .chain([link]);
    for (doc, cmd_id, body) in steps {
        let cmd = Command {
            id: parse(cmd_id),
            body,
        };
        match hub.execute(doc, instructor.clone(), cmd).await {
            Ok(_) => {}
            Err(HubError::Rejected(r)) if r.code == RejectCode::DuplicateCommand => {}
            Err(e) => return Err(anyhow::anyhow!("publish the demo course: {e}")),
        }
    }
    Ok(())
}

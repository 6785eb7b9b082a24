//! The demo course: the course package in `node/demo-course` (three Markdown lessons over two
//! weeks, an image and a short audio clip), compiled into the binary so `--demo` works from any
//! directory, read and checked by the same package loader as `lectern content push`, stored as
//! content blobs and published to the course document `course/demo-course`, which the demo
//! cohort follows. Idempotent like the rest of the demo: the blobs are content-addressed
//! (storing them again changes nothing) and the publication is named by the outline's hash, so
//! a node restarted on its data directory publishes again only when the package changed.

use anyhow::Context;
use lectern_content::{BlobHash, BlobLimits, BlobStore};
use lectern_hub::{Hub, HubError};
use lectern_model::{
    Caller, Command, CommandBody, CourseLesson, CourseModule, DocId, RejectCode, Role,
};

/// The demo course's id.
pub const DEMO_COURSE: &str = "demo-course";

/// The package's files, by name.
const PACKAGE: &[(&str, &[u8])] = &[
    ("course.toml", include_bytes!("../demo-course/course.toml")),
    ("clocks.md", include_bytes!("../demo-course/clocks.md")),
    ("clocks.png", include_bytes!("../demo-course/clocks.png")),
    ("lamport.md", include_bytes!("../demo-course/lamport.md")),
    ("tick.wav", include_bytes!("../demo-course/tick.wav")),
    ("vectors.md", include_bytes!("../demo-course/vectors.md")),
];

fn parse<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    // Invariant: the demo's ids are literals that satisfy the id rules.
    s.parse().expect("demo ids are valid")
}

/// Reads the compiled-in package through the package loader (which reads a directory: the
/// files are written to a scratch one first).
fn load_package() -> anyhow::Result<lectern_content::Package> {
    let dir = std::env::temp_dir().join(format!(
        "lectern-demo-course-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let loaded = (|| {
        for (name, bytes) in PACKAGE {
            std::fs::write(dir.join(name), bytes)?;
        }
        lectern_content::package::load(&dir, BlobLimits::default())
            .context("the demo course package")
    })();
    let _ = std::fs::remove_dir_all(&dir);
    loaded
}

/// Stores the demo course's blobs, publishes it and links the demo cohort to it (as the demo
/// instructor).
pub async fn seed_demo_course(hub: &Hub, store: &BlobStore) -> anyhow::Result<()> {
    let package = load_package()?;
    for blob in &package.blobs {
        store.put_verified(blob.hash, &blob.bytes, blob.content_type)?;
    }
    let modules: Vec<CourseModule> = package
        .modules
        .iter()
        .map(|m| CourseModule {
            title: m.title.clone(),
            lessons: m
                .lessons
                .iter()
                .map(|l| CourseLesson {
                    id: parse(&l.id),
                    title: l.title.clone(),
                    body: l.markdown.hash.to_string(),
                    html: Some(l.html.hash.to_string()),
                    assets: l.assets.iter().map(|a| a.hash.to_string()).collect(),
                })
                .collect(),
        })
        .collect();
    let outline = serde_json::to_vec(&modules).context("the demo outline")?;
    let publication = format!(
        "demo-course-publish-{}",
        &BlobHash::of(&outline).to_string()[..16]
    );
    let instructor = Caller {
        user: parse("ada"),
        name: "Ada (instructor)".into(),
        role: Role::Instructor,
        cohorts: vec![parse(crate::demo::DEMO_COHORT)],
    };
    let course = DocId::Course(parse(DEMO_COURSE));
    let steps = [
        (
            course.clone(),
            "demo-course-create".to_owned(),
            CommandBody::CourseCreate {
                title: package.title.clone(),
                description: package.description.clone(),
            },
        ),
        (
            course,
            publication,
            CommandBody::CoursePublish {
                title: None,
                description: None,
                modules,
            },
        ),
        // The demo cohort follows the course: its students find it on their page.
        (
            DocId::Cohort(parse(crate::demo::DEMO_COHORT)),
            "demo-cohort-course".to_owned(),
            CommandBody::CohortCourse {
                course: parse(DEMO_COURSE),
            },
        ),
    ];
    for (doc, cmd_id, body) in steps {
        let cmd = Command {
            id: parse(&cmd_id),
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

//! Course documents (`course/{id}`): a course's title, description and its published outline
//! (modules, lessons in order, each lesson's Markdown body and assets named by the SHA-256 of
//! their content-addressed blobs), and the version that counts publications.
//!
//! ```text
//! meta {title, description, version, outline (JSON), created_at, created_by,
//!       published_at, published_by}
//! ```
//! The outline is one JSON register, not a tree of maps, on purpose: a publication is a whole
//! version of the course, and two instructors publishing at once on two nodes must end with one
//! of the two versions (last writer wins), never a mix of both lesson lists. Lesson bodies and
//! assets are immutable blobs referenced by hash, so a new version of a lesson is a new hash in
//! a new outline and nothing is overwritten; the blobs themselves never enter the document.
//! `course.lesson` adds or replaces one lesson: it writes a whole new outline too (the current
//! one with that lesson changed), so two of them made at once on two nodes also end with one
//! of the two outlines, and the other edit is to be made again.
//!
//! A course belongs to no cohort: `course.create` needs an instructor or admin role, and only
//! the instructor who created the course or an admin may publish to it. Its metadata is public
//! (the catalog is served to anyone, cached like a CDN origin's), so reading needs only that the
//! course exists.

use automerge::ReadDoc;
use automerge::transaction::Transaction;
use serde_json::{Value, json};

use crate::Caller;
use crate::auth::Role;
use crate::command::{Command, CommandBody};
use crate::ids::Millis;
use crate::limits::{
    COURSE_DESCRIPTION_LEN_MAX_CHARS, COURSE_LESSONS_MAX, COURSE_MODULES_MAX, LESSON_ASSETS_MAX,
    TITLE_LEN_MAX_CHARS,
};
use crate::outline::{CourseLesson, CourseModule, is_blob_hash};
use crate::read::Reader;
use crate::reject::{RejectCode, Rejection, check_text};
use crate::schema::META;
use crate::write::{Target, put, root};

fn invalid(message: impl Into<String>) -> Rejection {
    Rejection::new(RejectCode::InvalidInput, message)
}

/// Checks an outline whole: limits, titles, unique lesson ids, well-formed hashes.
fn check_outline(modules: &[CourseModule]) -> Result<Vec<CourseModule>, Rejection> {
    if modules.len() > COURSE_MODULES_MAX {
        return Err(Rejection::new(
            RejectCode::LimitReached,
            format!(
                "{} modules, the limit is {COURSE_MODULES_MAX}",
                modules.len()
            ),
        ));
    }
    let lessons: usize = modules.iter().map(|m| m.lessons.len()).sum();
    if lessons > COURSE_LESSONS_MAX {
        return Err(Rejection::new(
            RejectCode::LimitReached,
            format!("{lessons} lessons, the limit is {COURSE_LESSONS_MAX}"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(modules.len());
    for m in modules {
        let title = check_text("module title", &m.title, TITLE_LEN_MAX_CHARS)?;
        let mut ls = Vec::with_capacity(m.lessons.len());
        for l in &m.lessons {
            if !seen.insert(l.id.as_str()) {
                return Err(invalid(format!("lesson {} appears twice", l.id)));
            }
            let lt = check_text("lesson title", &l.title, TITLE_LEN_MAX_CHARS)?;
            if !is_blob_hash(&l.body) {
                return Err(invalid(format!(
                    "lesson {}: body is not a SHA-256 hash (64 lowercase hex digits)",
                    l.id
                )));
            }
            if l.html.as_deref().is_some_and(|h| !is_blob_hash(h)) {
                return Err(invalid(format!(
                    "lesson {}: html is not a SHA-256 hash",
                    l.id
                )));
            }
            if l.assets.len() > LESSON_ASSETS_MAX {
                return Err(Rejection::new(
                    RejectCode::LimitReached,
                    format!(
                        "lesson {} has {} assets, the limit is {LESSON_ASSETS_MAX}",
                        l.id,
                        l.assets.len()
                    ),
                ));
            }
            if let Some(bad) = l.assets.iter().find(|a| !is_blob_hash(a)) {
                return Err(invalid(format!(
                    "lesson {}: asset {bad:?} is not a SHA-256 hash",
                    l.id
                )));
            }
            ls.push(CourseLesson {
                id: l.id.clone(),
                title: lt,
                body: l.body.clone(),
                html: l.html.clone(),
                assets: l.assets.clone(),
            });
        }
        out.push(CourseModule { title, lessons: ls });
    }
    Ok(out)
}

fn check_description(description: &str) -> Result<String, Rejection> {
    if description.chars().count() > COURSE_DESCRIPTION_LEN_MAX_CHARS {
        return Err(Rejection::new(
            RejectCode::TextTooLong,
            format!("description is over {COURSE_DESCRIPTION_LEN_MAX_CHARS} characters"),
        ));
    }
    Ok(description.trim().to_owned())
}

fn course_exists<D: ReadDoc>(doc: &D) -> bool {
    let r = Reader::now(doc);
    r.root_map(META).and_then(|m| r.str(&m, "title")).is_some()
}

/// Applies a course command (`course.create`, `course.publish`, `course.lesson`).
pub(crate) fn apply_course(
    tx: &mut Transaction<'_>,
    caller: &Caller,
    cmd: &Command,
    now: Millis,
) -> Result<Target, Rejection> {
    match &cmd.body {
        CommandBody::CourseCreate { title, description } => {
            if course_exists(tx) {
                return Err(Rejection::new(
                    RejectCode::AlreadyExists,
                    "this course already exists",
                ));
            }
            if !caller.role.is_instructor() {
                return Err(Rejection::new(
                    RejectCode::Forbidden,
                    "only an instructor or admin may create a course",
                ));
            }
            let title = check_text("title", title, TITLE_LEN_MAX_CHARS)?;
            let description = check_description(description)?;
            let m = root(tx, META)?;
            put(tx, &m, "title", title)?;
            put(tx, &m, "description", description)?;
            put(tx, &m, "version", 0_i64)?;
            put(tx, &m, "outline", "[]")?;
            put(tx, &m, "created_at", now.as_i64())?;
            put(tx, &m, "created_by", caller.user.as_str())?;
            Ok(Target::default())
        }
        CommandBody::CoursePublish {
            title,
            description,
            modules,
        } => publish(
            tx,
            caller,
            now,
            title.as_deref(),
            description.as_deref(),
            |_| Ok(modules.clone()),
        ),
        CommandBody::CourseLessonPut {
            module,
            module_title,
            lesson,
        } => publish(tx, caller, now, None, None, |mut outline| {
            let at = outline.iter().enumerate().find_map(|(m, md)| {
                md.lessons
                    .iter()
                    .position(|l| l.id == lesson.id)
                    .map(|i| (m, i))
            });
            match at {
                Some((m, i)) => outline[m].lessons[i] = (**lesson).clone(),
                None if *module < outline.len() => {
                    outline[*module].lessons.push((**lesson).clone())
                }
                None if *module == outline.len() => outline.push(CourseModule {
                    title: module_title.clone().ok_or_else(|| {
                        invalid("a lesson that starts a new module needs its module_title")
                    })?,
                    lessons: vec![(**lesson).clone()],
                }),
                None => {
                    return Err(invalid(format!(
                        "module {module}: the outline has {} modules",
                        outline.len()
                    )));
                }
            }
            Ok(outline)
        }),
        other => Err(Rejection::new(
            RejectCode::WrongDocument,
            format!("{} does not apply to a course", other.name()),
        )),
    }
}

/// Publishes a new version: the outline `edit` makes of the current one (checked whole), and
/// a new title or description if given. Only on a created course, by its creator or an admin.
fn publish(
    tx: &mut Transaction<'_>,
    caller: &Caller,
    now: Millis,
    title: Option<&str>,
    description: Option<&str>,
    edit: impl FnOnce(Vec<CourseModule>) -> Result<Vec<CourseModule>, Rejection>,
) -> Result<Target, Rejection> {
    if !course_exists(tx) {
        return Err(Rejection::new(
            RejectCode::DocNotFound,
            "no such course (it was never created)",
        ));
    }
    let m = root(tx, META)?;
    let r = Reader::now(&*tx);
    let owner = r.str(&m, "created_by");
    let version = r.int(&m, "version").unwrap_or(0);
    let allowed = caller.role == Role::Admin
        || (caller.role.is_instructor() && owner.as_deref() == Some(caller.user.as_str()));
    if !allowed {
        return Err(Rejection::new(
            RejectCode::Forbidden,
            "only the course's instructor or an admin may publish it",
        ));
    }
    let current = course_outline(&r);
    let outline = check_outline(&edit(current)?)?;
    let title = title
        .map(|t| check_text("title", t, TITLE_LEN_MAX_CHARS))
        .transpose()?;
    let description = description.map(check_description).transpose()?;
    let outline = serde_json::to_string(&outline)
        .map_err(|e| Rejection::new(RejectCode::Internal, e.to_string()))?;
    if let Some(t) = title {
        put(tx, &m, "title", t)?;
    }
    if let Some(d) = description {
        put(tx, &m, "description", d)?;
    }
    put(tx, &m, "outline", outline)?;
    put(tx, &m, "version", version.saturating_add(1))?;
    put(tx, &m, "published_at", now.as_i64())?;
    put(tx, &m, "published_by", caller.user.as_str())?;
    Ok(Target::default())
}

/// The course as anyone sees it: `None` if it was never created.
pub(crate) fn course_view<D: ReadDoc>(r: &Reader<'_, D>, id: &str) -> Option<Value> {
    let m = r.root_map(META)?;
    let title = r.str(&m, "title")?;
    // A stored outline that does not parse (a foreign document) reads as empty rather than
    // failing the whole view.
    let modules: Vec<CourseModule> = r
        .str(&m, "outline")
        .and_then(|o| serde_json::from_str(&o).ok())
        .unwrap_or_default();
    Some(json!({
        "id": id,
        "title": title,
        "description": r.str(&m, "description").unwrap_or_default(),
        "version": r.int(&m, "version").unwrap_or(0),
        "createdBy": r.str(&m, "created_by"),
        "publishedAt": r.int(&m, "published_at"),
        "modules": modules,
    }))
}

/// The course's outline, typed (empty before the first publication).
pub(crate) fn course_outline<D: ReadDoc>(r: &Reader<'_, D>) -> Vec<CourseModule> {
    r.root_map(META)
        .and_then(|m| r.str(&m, "outline"))
        .and_then(|o| serde_json::from_str(&o).ok())
        .unwrap_or_default()
}

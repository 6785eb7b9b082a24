//! A course's outline as published: modules of lessons, each lesson's Markdown body, rendered
//! HTML and assets named by the SHA-256 of their content-addressed blobs.
//!
//! Plain data, below the `course.publish` command that carries it and the course document
//! (`course.rs`) that stores it; a node walks it to find the blobs a course needs.

use serde::{Deserialize, Serialize};

use crate::ids::LessonId;

/// A lesson as published in an outline: its Markdown body and assets, by blob hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CourseLesson {
    /// The lesson's id, unique in the course (progress is recorded against it).
    pub id: LessonId,
    /// Its title.
    pub title: String,
    /// SHA-256 (64 lowercase hex digits) of the Markdown body blob.
    pub body: String,
    /// SHA-256 of the body rendered to sanitized HTML at publication (what clients show).
    #[serde(default)]
    pub html: Option<String>,
    /// SHA-256 of every asset blob the body references.
    #[serde(default)]
    pub assets: Vec<String>,
}

/// A module of an outline: a titled, ordered group of lessons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CourseModule {
    /// Its title.
    pub title: String,
    /// Its lessons, in reading order.
    pub lessons: Vec<CourseLesson>,
}

/// Whether `s` names a blob: 64 lowercase hex digits.
pub fn is_blob_hash(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

//! A course package: a folder of Markdown lessons and their assets with a `course.toml`
//! manifest, read and checked whole before anything is published.
//!
//! ```toml
//! title = "Rust for the curious"
//! description = "Four weeks, one crate a week."
//!
//! [[modules]]
//! title = "Week 1"
//!
//! [[modules.lessons]]
//! id = "ownership"
//! title = "Ownership"
//! file = "week1/ownership.md"
//! ```
//!
//! Each lesson's Markdown may reference images, PDFs, audio and video by paths relative to
//! the lesson file; the loader finds them, checks their type (by extension, from a fixed
//! allowlist) and size, and turns every file into a blob: the Markdown itself, its rendered
//! and sanitized HTML (with asset URLs pointing at `/content/{sha256}.{ext}`), and each asset.
//! Any problem (a bad manifest, a missing asset, a path leaving the folder, an oversized file,
//! a type not on the list) is an error naming the file, and nothing is returned: a publisher
//! stores the blobs first and changes the course document last, so a failed push publishes
//! nothing.

use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::blob::{BlobHash, BlobLimits};
use crate::markdown;

/// Most lessons in one course.
pub const LESSONS_PER_COURSE_MAX: usize = 500;

/// Largest course package (every blob together), in bytes.
pub const COURSE_MAX_BYTES: u64 = 1024 * 1024 * 1024;

/// Longest title or description, in bytes.
const TEXT_LEN_MAX: usize = 2000;

/// Longest lesson id, in bytes.
const LESSON_ID_LEN_MAX: usize = 64;

/// Asset types a lesson may reference, by extension.
const ASSET_TYPES: &[(&str, &str)] = &[
    ("png", "image/png"),
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("gif", "image/gif"),
    ("webp", "image/webp"),
    ("svg", "image/svg+xml"),
    ("pdf", "application/pdf"),
    ("mp3", "audio/mpeg"),
    ("ogg", "audio/ogg"),
    ("oga", "audio/ogg"),
    ("wav", "audio/wav"),
    ("mp4", "video/mp4"),
    ("webm", "video/webm"),
    ("vtt", "text/vtt; charset=utf-8"),
];

const MARKDOWN_TYPE: &str = "text/markdown; charset=utf-8";
const HTML_TYPE: &str = "text/html; charset=utf-8";

/// What is wrong with a package; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// `course.toml` is missing or does not parse.
    #[error("{path}: {reason}")]
    Manifest {
        /// The manifest's path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A lesson or asset file cannot be used.
    #[error("{path}: {reason}")]
    File {
        /// The file, as the manifest or a lesson names it.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The whole package is over [`COURSE_MAX_BYTES`] or [`LESSONS_PER_COURSE_MAX`].
    #[error("the course is too large: {0}")]
    TooLarge(String),
}

/// A blob to store: its bytes, hash and type.
#[derive(Debug, Clone)]
pub struct PackageBlob {
    /// The SHA-256 of `bytes`.
    pub hash: BlobHash,
    /// The bytes.
    pub bytes: Vec<u8>,
    /// The content type to store it with.
    pub content_type: &'static str,
}

/// A blob as a course document references it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    /// The hash.
    pub hash: BlobHash,
    /// The URL path it is served at (`/content/{hash}.{ext}`).
    pub url: String,
}

/// One lesson of a package.
#[derive(Debug, Clone)]
pub struct Lesson {
    /// Its id, unique in the course.
    pub id: String,
    /// Its title.
    pub title: String,
    /// The Markdown source.
    pub markdown: BlobRef,
    /// The rendered, sanitized HTML.
    pub html: BlobRef,
    /// The assets it references.
    pub assets: Vec<BlobRef>,
}

/// One module (a week, a unit) of a package.
#[derive(Debug, Clone)]
pub struct Module {
    /// Its title.
    pub title: String,
    /// Its lessons, in order.
    pub lessons: Vec<Lesson>,
}

/// A checked course package, ready to publish.
#[derive(Debug, Clone)]
pub struct Package {
    /// The course's title.
    pub title: String,
    /// Its description.
    pub description: String,
    /// Its modules, in order.
    pub modules: Vec<Module>,
    /// Every blob the package needs, each once.
    pub blobs: Vec<PackageBlob>,
}

impl Package {
    /// Every lesson, in course order.
    pub fn lessons(&self) -> impl Iterator<Item = &Lesson> {
        self.modules.iter().flat_map(|m| m.lessons.iter())
    }

    /// The sum of the blobs' sizes, in bytes.
    pub fn bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.bytes.len() as u64).sum()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    title: String,
    #[serde(default)]
    description: String,
    modules: Vec<ManifestModule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestModule {
    title: String,
    lessons: Vec<ManifestLesson>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestLesson {
    id: String,
    title: String,
    file: String,
}

/// Reads and checks the package in `dir` (its `course.toml` and every file it reaches).
pub fn load(dir: &Path, limits: BlobLimits) -> Result<Package, PackageError> {
    let manifest_path = dir.join("course.toml");
    let manifest_err = |reason: String| PackageError::Manifest {
        path: manifest_path.clone(),
        reason,
    };
    let text = std::fs::read_to_string(&manifest_path).map_err(|e| manifest_err(e.to_string()))?;
    let manifest: Manifest = toml::from_str(&text).map_err(|e| manifest_err(e.to_string()))?;
    check_text("title", &manifest.title).map_err(&manifest_err)?;
    check_text("description", &manifest.description).map_err(&manifest_err)?;
    let lesson_count: usize = manifest.modules.iter().map(|m| m.lessons.len()).sum();
    if lesson_count == 0 {
        return Err(manifest_err("the course has no lessons".into()));
    }
    if lesson_count > LESSONS_PER_COURSE_MAX {
        return Err(PackageError::TooLarge(format!(
            "{lesson_count} lessons; at most {LESSONS_PER_COURSE_MAX}"
        )));
    }

    let mut builder = Builder {
        dir,
        limits,
        blobs: BTreeMap::new(),
        bytes: 0,
    };
    let mut ids = HashSet::new();
    let mut modules = Vec::with_capacity(manifest.modules.len());
    for m in manifest.modules {
        check_text("module title", &m.title).map_err(&manifest_err)?;
        let mut lessons = Vec::with_capacity(m.lessons.len());
        for l in m.lessons {
            check_lesson_id(&l.id).map_err(&manifest_err)?;
            check_text("lesson title", &l.title).map_err(&manifest_err)?;
            if !ids.insert(l.id.clone()) {
                return Err(manifest_err(format!("lesson id {:?} appears twice", l.id)));
            }
            lessons.push(builder.lesson(l)?);
        }
        modules.push(Module {
            title: m.title,
            lessons,
        });
    }
    if builder.bytes > COURSE_MAX_BYTES {
        return Err(PackageError::TooLarge(format!(
            "{} bytes; at most {COURSE_MAX_BYTES}",
            builder.bytes
        )));
    }
    Ok(Package {
        title: manifest.title,
        description: manifest.description,
        modules,
        blobs: builder.blobs.into_values().collect(),
    })
}

struct Builder<'a> {
    dir: &'a Path,
    limits: BlobLimits,
    blobs: BTreeMap<BlobHash, PackageBlob>,
    bytes: u64,
}

impl Builder<'_> {
    fn lesson(&mut self, l: ManifestLesson) -> Result<Lesson, PackageError> {
        if !l.file.ends_with(".md") {
            return Err(file_err(&l.file, "a lesson is a Markdown file (.md)"));
        }
        let path = inside(self.dir, Path::new(""), &l.file)?;
        let bytes = self.read(&l.file, &path)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| file_err(&l.file, "a lesson must be UTF-8 text"))?;
        let base = Path::new(&l.file).parent().unwrap_or(Path::new(""));

        let mut assets = Vec::new();
        let mut urls = BTreeMap::new();
        for rel in markdown::relative_urls(&text) {
            let shown = base.join(&rel).display().to_string();
            let content_type = asset_type(&rel).ok_or_else(|| {
                file_err(
                    &shown,
                    "this type of file cannot be published (images, PDF, audio, video, WebVTT)",
                )
            })?;
            let path = inside(self.dir, base, &rel)?;
            let bytes = self.read(&shown, &path)?;
            let blob = self.add(bytes, content_type, extension(&rel));
            urls.insert(rel, blob.url.clone());
            assets.push(blob);
        }
        let html = markdown::render(&text, move |url: &str| urls.get(url).cloned());
        let markdown = self.add(text.into_bytes(), MARKDOWN_TYPE, "md");
        let html = self.add(html.into_bytes(), HTML_TYPE, "html");
        Ok(Lesson {
            id: l.id,
            title: l.title,
            markdown,
            html,
            assets,
        })
    }

    fn read(&mut self, shown: &str, path: &Path) -> Result<Vec<u8>, PackageError> {
        let meta = std::fs::metadata(path).map_err(|e| file_err(shown, &e.to_string()))?;
        if !meta.is_file() {
            return Err(file_err(shown, "not a file"));
        }
        if meta.len() > self.limits.blob_max_bytes {
            return Err(file_err(
                shown,
                &format!(
                    "{} bytes; a file may have at most {}",
                    meta.len(),
                    self.limits.blob_max_bytes
                ),
            ));
        }
        std::fs::read(path).map_err(|e| file_err(shown, &e.to_string()))
    }

    fn add(&mut self, bytes: Vec<u8>, content_type: &'static str, ext: &str) -> BlobRef {
        let hash = BlobHash::of(&bytes);
        let url = format!("/content/{hash}.{ext}");
        if !self.blobs.contains_key(&hash) {
            self.bytes += bytes.len() as u64;
            self.blobs.insert(
                hash,
                PackageBlob {
                    hash,
                    bytes,
                    content_type,
                },
            );
        }
        BlobRef { hash, url }
    }
}

/// `rel` (as written in `base`'s lesson or the manifest) inside `dir`, or an error: no
/// absolute path, no `..` leaving the folder, no symlink pointing out of it.
fn inside(dir: &Path, base: &Path, rel: &str) -> Result<PathBuf, PackageError> {
    let joined = base.join(rel);
    let mut clean = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::Normal(p) => clean.push(p),
            Component::CurDir => {}
            Component::ParentDir if clean.pop() => {}
            _ => {
                return Err(file_err(
                    &joined.display().to_string(),
                    "the path leaves the course folder",
                ));
            }
        }
    }
    let path = dir.join(&clean);
    if let (Ok(real), Ok(root)) = (path.canonicalize(), dir.canonicalize())
        && !real.starts_with(&root)
    {
        return Err(file_err(
            &clean.display().to_string(),
            "the path leaves the course folder (a link)",
        ));
    }
    Ok(path)
}

fn extension(path: &str) -> &str {
    path.rsplit_once('.').map_or("", |(_, e)| e)
}

fn asset_type(path: &str) -> Option<&'static str> {
    let ext = extension(path).to_ascii_lowercase();
    ASSET_TYPES.iter().find(|(e, _)| *e == ext).map(|(_, t)| *t)
}

fn check_text(what: &str, s: &str) -> Result<(), String> {
    if s.len() > TEXT_LEN_MAX {
        return Err(format!("the {what} is longer than {TEXT_LEN_MAX} bytes"));
    }
    if s.chars().any(|c| c.is_control() && c != '\n') {
        return Err(format!("the {what} contains control characters"));
    }
    Ok(())
}

fn check_lesson_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= LESSON_ID_LEN_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "lesson id {id:?}: 1 to {LESSON_ID_LEN_MAX} of a-z, 0-9, '-', '_'"
        ))
    }
}

fn file_err(path: &str, reason: &str) -> PackageError {
    PackageError::File {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_dir::TestDir as Dir;

    impl Dir {
        fn write(&self, rel: &str, bytes: &[u8]) {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
    }

    const MANIFEST: &str = r#"
title = "Rust"
description = "A course."
[[modules]]
title = "Week 1"
[[modules.lessons]]
id = "intro"
title = "Intro"
file = "week1/intro.md"
[[modules.lessons]]
id = "more"
title = "More"
file = "week1/more.md"
"#;

    fn good(dir: &Dir) {
        dir.write("course.toml", MANIFEST.as_bytes());
        dir.write(
            "week1/intro.md",
            b"# Intro\n\n![d](img/d.png)\n\n<audio src=\"../talk.ogg\" controls></audio>",
        );
        dir.write("week1/more.md", b"# More\n\n![same](img/d.png)");
        dir.write("week1/img/d.png", b"\x89PNG fake");
        dir.write("talk.ogg", b"OggS fake");
    }

    #[test]
    fn a_package_becomes_blobs_with_rendered_lessons() {
        let dir = Dir::new("good");
        good(&dir);
        let p = load(&dir.0, BlobLimits::default()).unwrap();
        assert_eq!(p.title, "Rust");
        let lessons: Vec<&Lesson> = p.lessons().collect();
        assert_eq!(lessons.len(), 2);
        assert_eq!(lessons[0].assets.len(), 2);
        let png = BlobHash::of(b"\x89PNG fake");
        assert_eq!(lessons[0].assets[0].url, format!("/content/{png}.png"));
        let html = &p
            .blobs
            .iter()
            .find(|b| b.hash == lessons[0].html.hash)
            .unwrap();
        let html = String::from_utf8(html.bytes.clone()).unwrap();
        assert!(
            html.contains(&format!("src=\"/content/{png}.png\"")),
            "{html}"
        );
        assert!(html.contains("<audio src=\"/content/"), "{html}");
        // The image both lessons use is one blob: 2 markdown + 2 html + png + ogg.
        assert_eq!(p.blobs.len(), 6);
        assert!(p.blobs.iter().all(|b| BlobHash::of(&b.bytes) == b.hash));
    }

    #[test]
    fn problems_are_named_and_nothing_is_returned() {
        type Breaker<'a> = &'a dyn Fn(&Dir);
        let cases: &[(&str, Breaker, &str)] = &[
            (
                "no manifest",
                &|d: &Dir| std::fs::remove_file(d.0.join("course.toml")).unwrap(),
                "course.toml",
            ),
            (
                "bad toml",
                &|d: &Dir| d.write("course.toml", b"title = "),
                "course.toml",
            ),
            (
                "unknown key",
                &|d: &Dir| d.write("course.toml", format!("{MANIFEST}\nextra = 1").as_bytes()),
                "unknown field",
            ),
            (
                "missing asset",
                &|d: &Dir| std::fs::remove_file(d.0.join("talk.ogg")).unwrap(),
                "talk.ogg",
            ),
            (
                "missing lesson",
                &|d: &Dir| std::fs::remove_file(d.0.join("week1/more.md")).unwrap(),
                "week1/more.md",
            ),
            (
                "bad type",
                &|d: &Dir| d.write("week1/more.md", b"[x](run.exe)"),
                "run.exe",
            ),
            (
                "escape",
                &|d: &Dir| d.write("week1/more.md", b"![x](../../etc/passwd.png)"),
                "leaves the course folder",
            ),
            (
                "dup id",
                &|d: &Dir| {
                    d.write(
                        "course.toml",
                        MANIFEST.replace("\"more\"", "\"intro\"").as_bytes(),
                    )
                },
                "twice",
            ),
            (
                "bad id",
                &|d: &Dir| {
                    d.write(
                        "course.toml",
                        MANIFEST.replace("\"more\"", "\"More Lesson\"").as_bytes(),
                    )
                },
                "lesson id",
            ),
            (
                "not md",
                &|d: &Dir| {
                    d.write(
                        "course.toml",
                        MANIFEST.replace("more.md", "more.txt").as_bytes(),
                    )
                },
                "Markdown",
            ),
        ];
        for (name, break_it, expect) in cases {
            let dir = Dir::new("bad");
            good(&dir);
            break_it(&dir);
            let err = load(&dir.0, BlobLimits::default())
                .expect_err(name)
                .to_string();
            assert!(err.contains(expect), "{name}: {err}");
        }
    }

    #[test]
    fn an_oversized_file_is_refused() {
        let dir = Dir::new("big");
        good(&dir);
        let limits = BlobLimits {
            blob_max_bytes: 8,
            ..BlobLimits::default()
        };
        let err = load(&dir.0, limits).unwrap_err().to_string();
        assert!(err.contains("at most 8"), "{err}");
    }
}

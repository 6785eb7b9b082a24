//! `lectern content push DIR --course ID`: publishes a course package (a `course.toml` naming
//! modules and lessons, each lesson a Markdown file with its assets beside it) to a running
//! node, through its public API and an instructor's or admin's token.
//!
//! The package is read and checked whole first (`lectern_content::package::load`: Markdown
//! rendered and sanitized, asset links resolved, types and sizes checked), so a broken package
//! publishes nothing. Then every blob is uploaded (`PUT /api/content/{sha256}`; a blob the node
//! has is answered without a second copy), the course is created if the node does not know it,
//! and the outline is published as one `course.publish` whose command id is the outline's hash:
//! pushing an unchanged package again uploads nothing new and publishes nothing. A new lesson
//! version is a new hash, so students who hold the previous outline still read the previous
//! version until they revalidate.

use std::path::PathBuf;

use anyhow::Context;
use lectern_content::{BlobHash, BlobLimits};
use serde_json::{Value, json};

use crate::{Exit, exchange, failed, print_json};

/// `lectern content …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ContentCmd {
    /// Publish the course package in DIR (course.toml, lessons, assets) as course ID: upload
    /// its blobs, create the course if needed, publish the outline as a new version (nothing
    /// when it did not change).
    Push {
        /// The package's directory (holding course.toml).
        dir: PathBuf,
        /// The course's id.
        #[arg(long)]
        course: String,
        /// The node's public address (host:port).
        #[arg(long, env = "LECTERN_HTTP", default_value = "127.0.0.1:8080")]
        http: String,
        /// A token of an instructor (the course's creator) or an admin (`lectern token`).
        #[arg(long, env = "LECTERN_TOKEN", hide_env_values = true)]
        token: String,
    },
}

pub(crate) fn content(cmd: ContentCmd, json_out: bool) -> anyhow::Result<()> {
    let ContentCmd::Push {
        dir,
        course,
        http,
        token,
    } = cmd;
    let package = lectern_content::package::load(&dir, BlobLimits::default())
        .map_err(|e| failed(Exit::Failure, "bad_package", format!("{e}")))?;
    let auth = format!("Authorization: Bearer {token}\r\n");

    let (mut uploaded, mut present) = (0usize, 0usize);
    for blob in &package.blobs {
        let (status, body) = exchange(
            &http,
            "PUT",
            &format!("/api/content/{}", blob.hash),
            &format!("{auth}Content-Type: {}\r\n", blob.content_type),
            &blob.bytes,
        )?;
        match status {
            201 => uploaded += 1,
            200 => present += 1,
            _ => return Err(refused(status, &body, "upload a blob")),
        }
    }

    let (status, body) = exchange(&http, "GET", &format!("/api/courses/{course}"), "", b"")?;
    let created = match status {
        200 => false,
        404 => {
            run_command(
                &http,
                &auth,
                &course,
                json!({
                    "id": format!("push-create-{course}"),
                    "cmd": "course.create",
                    "title": package.title,
                    "description": package.description,
                }),
            )?;
            true
        }
        _ => return Err(refused(status, &body, "read the course")),
    };

    let modules: Vec<Value> = package
        .modules
        .iter()
        .map(|m| {
            json!({
                "title": m.title,
                "lessons": m.lessons.iter().map(|l| json!({
                    "id": l.id,
                    "title": l.title,
                    "body": l.markdown.hash.to_string(),
                    "html": l.html.hash.to_string(),
                    "assets": l.assets.iter().map(|a| a.hash.to_string()).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let outline = json!({
        "title": package.title,
        "description": package.description,
        "modules": modules,
    });
    // The outline's own hash names the publication: the same package twice is one version.
    let id = format!(
        "push-{}",
        &BlobHash::of(outline.to_string().as_bytes()).to_string()[..32]
    );
    let mut publish = outline;
    publish["id"] = json!(id);
    publish["cmd"] = json!("course.publish");
    let published = run_command(&http, &auth, &course, publish)?;

    let (status, body) = exchange(&http, "GET", &format!("/api/courses/{course}"), "", b"")?;
    if status != 200 {
        return Err(refused(status, &body, "read the course back"));
    }
    let view: Value = serde_json::from_str(&body).context("the course's answer is not JSON")?;
    let version = view["version"].as_i64().unwrap_or(0);
    let lessons = package.lessons().count();
    if json_out {
        print_json(&json!({
            "course": course,
            "version": version,
            "published": published,
            "created": created,
            "lessons": lessons,
            "blobs": {"uploaded": uploaded, "present": present},
        }));
    } else {
        println!(
            "{course}: {} (version {version}, {lessons} lessons); blobs: {uploaded} uploaded, \
             {present} already there{}",
            if published {
                "published"
            } else {
                "unchanged, nothing published"
            },
            if created { "; course created" } else { "" }
        );
    }
    Ok(())
}

/// Runs a course command; whether it changed anything (`false`: the same command ran before).
fn run_command(http: &str, auth: &str, course: &str, body: Value) -> anyhow::Result<bool> {
    let (status, answer) = exchange(
        http,
        "POST",
        &format!("/api/courses/{course}/commands"),
        &format!("{auth}Content-Type: application/json\r\n"),
        body.to_string().as_bytes(),
    )?;
    match status {
        200 => Ok(true),
        409 if error_code(&answer) == "duplicate_command" => Ok(false),
        _ => Err(refused(status, &answer, "run a course command")),
    }
}

fn error_code(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The failure for an answer other than the expected ones, with what to do.
fn refused(status: u16, body: &str, doing: &str) -> anyhow::Error {
    let code = error_code(body);
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.trim().to_owned());
    match status {
        401 => failed(
            Exit::Refused,
            "unauthorized",
            format!(
                "{doing}: the node refused the token ({message}): pass an instructor's or \
                 admin's token with --token or LECTERN_TOKEN (`lectern token`)"
            ),
        ),
        403 => failed(
            Exit::Refused,
            if code.is_empty() { "forbidden" } else { &code },
            format!(
                "{doing}: {message} (publishing takes the course creator's or an admin's token)"
            ),
        ),
        503 => failed(
            Exit::Unavailable,
            if code.is_empty() {
                "unavailable"
            } else {
                &code
            },
            format!("{doing}: {message}; try again in a moment or ask another node"),
        ),
        _ => failed(
            Exit::Failure,
            if code.is_empty() { "failed" } else { &code },
            format!("{doing}: the node answered {status}: {message}"),
        ),
    }
}

//! `lectern content push` against a running demo node: a course package published as a new
//! course, pushed again unchanged (nothing published), edited and pushed (a new version whose
//! old lesson body stays readable), refused for a student, and refused whole when the package
//! is broken.

use std::path::Path;

use anyhow::Context;
use serde_json::Value;

use super::{Run, lectern, within};
use crate::gateway::Demo;
use crate::support::TempDir;

/// A copy of the demo course's package (`node/demo-course`) in `dir`.
fn copy_package(dir: &Path) -> anyhow::Result<()> {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../node/demo-course");
    for entry in std::fs::read_dir(&from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), dir.join(entry.file_name()))?;
    }
    Ok(())
}

/// `GET path` of the demo node: its status and JSON body (`null` if it is not JSON).
async fn get_json(demo: &Demo, path: &str) -> anyhow::Result<(u16, Value)> {
    let r = demo.http.get(path, None).await?;
    Ok((r.status, r.json().unwrap_or(Value::Null)))
}

/// Kills: a push that publishes before every blob is up, a second push of the same package
/// that makes a new version, an edit that overwrites the previous lesson body, a student
/// allowed to publish, a broken package that publishes part of itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lectern_content_push_publishes_a_package_once_per_change() -> anyhow::Result<()> {
    within(async {
        let demo = Demo::start("ops-content").await?;
        let http = demo.node.http_addr.to_string();
        let dir = TempDir::new("ops-content-package");
        copy_package(dir.path())?;
        let package = dir.path().display().to_string();
        let ada = demo.token("ada", "instructor");
        let push = |token: String, course: &'static str, package: String| {
            let http = http.clone();
            async move {
                lectern(&[
                    "--json", "content", "push", &package, "--course", course, "--http", &http,
                    "--token", &token,
                ])
                .await
            }
        };

        let first = push(ada.clone(), "ds-push", package.clone())
            .await?
            .expect_code(0)?
            .json()?;
        assert_eq!(first["published"], true, "{first}");
        assert_eq!(first["created"], true, "{first}");
        assert_eq!(first["version"], 1, "{first}");
        assert_eq!(first["lessons"], 1, "{first}");
        let blobs = &first["blobs"];
        assert_eq!(
            blobs["uploaded"].as_u64().unwrap_or(0) + blobs["present"].as_u64().unwrap_or(0),
            3,
            "the lesson's Markdown, its HTML and its image: {first}"
        );
        let (status, course) = get_json(&demo, "/api/courses/ds-push").await?;
        assert_eq!(status, 200, "{course}");
        assert_eq!(course["title"], "Distributed Systems 101");
        let lesson = &course["modules"][0]["lessons"][0];
        let old_html = lesson["html"]
            .as_str()
            .context("a rendered lesson")?
            .to_owned();
        let (status, _) = get_json(&demo, &format!("/content/{old_html}.html")).await?;
        assert_eq!(status, 200);

        // The same package again: nothing new.
        let again = push(ada.clone(), "ds-push", package.clone())
            .await?
            .expect_code(0)?
            .json()?;
        assert_eq!(again["published"], false, "{again}");
        assert_eq!(again["version"], 1, "{again}");
        assert_eq!(again["blobs"]["uploaded"], 0, "{again}");

        // An edit is a new version; the previous body is still there.
        let md = dir.path().join("clocks.md");
        let text = std::fs::read_to_string(&md)?;
        std::fs::write(&md, format!("{text}\n\nRevised: clocks drift, too.\n"))?;
        let edited = push(ada.clone(), "ds-push", package.clone())
            .await?
            .expect_code(0)?
            .json()?;
        assert_eq!(edited["published"], true, "{edited}");
        assert_eq!(edited["version"], 2, "{edited}");
        let (_, course) = get_json(&demo, "/api/courses/ds-push").await?;
        let new_html = course["modules"][0]["lessons"][0]["html"]
            .as_str()
            .context("a rendered lesson")?;
        assert_ne!(new_html, old_html);
        for html in [new_html, old_html.as_str()] {
            let (status, _) = get_json(&demo, &format!("/content/{html}.html")).await?;
            assert_eq!(status, 200, "{html}");
        }

        // A student may not publish.
        let student: Run = push(demo.token("bo", "student"), "ds-push", package.clone()).await?;
        assert_eq!(student.code, 4, "{student:?}");
        assert_eq!(student.json()?["error"]["code"], "forbidden", "{student:?}");

        // A package naming a file that is not there publishes nothing.
        std::fs::remove_file(&md)?;
        let broken = push(ada.clone(), "ds-broken", package.clone()).await?;
        assert_eq!(broken.code, 1, "{broken:?}");
        assert_eq!(broken.json()?["error"]["code"], "bad_package", "{broken:?}");
        let (status, _) = get_json(&demo, "/api/courses/ds-broken").await?;
        assert_eq!(status, 404);
        demo.stop().await
    })
    .await
}

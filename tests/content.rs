//! Course content through a whole node started with `--demo`: the demo course is in the
//! catalog, course metadata is cached for a week and revalidated by an `ETag` made of the
//! document's heads (a `304` until a publication changes them), an unknown course is
//! `doc_not_found` and is never created by the read, and the demo lesson's sanitized HTML and
//! its image are served from `/content/{sha256}`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;

use lectern_model::{Caller, Command, CommandBody, CourseLesson, CourseModule, DocId, Role};
use lectern_node::{Config, start};
use lectern_store::Store;
use serde_json::Value;

use crate::support::TempDir;

const COURSE_CACHE_CONTROL: &str = "public, max-age=604800, stale-while-revalidate=86400";

struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// One HTTP/1.0 GET over a real socket (the connection closes after the reply).
fn get(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> Reply {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: x\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

async fn get_async(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> Reply {
    let path = path.to_owned();
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let extra: Vec<(&str, &str)> = extra
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        get(addr, &path, &extra)
    })
    .await
    .expect("the request task")
}

fn demo_config(dir: &TempDir) -> Config {
    Config {
        data_dir: dir.path().to_path_buf(),
        http: "127.0.0.1:0".parse().expect("an address"),
        demo: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn course_metadata_is_cached_for_a_week_and_revalidated_by_the_heads_etag() {
    let dir = TempDir::new("content-meta");
    let node = start(demo_config(&dir)).await.expect("start");
    let addr = node.http_addr;

    let catalog = get_async(addr, "/api/courses", &[]).await;
    assert_eq!(catalog.status, 200);
    assert_eq!(catalog.header("cache-control"), COURSE_CACHE_CONTROL);
    let courses = catalog.json()["courses"].clone();
    assert_eq!(courses[0]["id"], "demo-course", "{courses}");
    assert_eq!(courses[0]["version"], 1);
    let catalog_etag = catalog.header("etag").to_owned();
    assert!(catalog_etag.starts_with('"'), "{catalog_etag}");
    let again = get_async(addr, "/api/courses", &[("If-None-Match", &catalog_etag)]).await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());

    let course = get_async(addr, "/api/courses/demo-course", &[]).await;
    assert_eq!(course.status, 200);
    assert_eq!(course.header("cache-control"), COURSE_CACHE_CONTROL);
    let etag = course.header("etag").to_owned();
    let v = course.json();
    assert_eq!(v["title"], "Distributed Systems 101");
    assert_eq!(v["modules"][0]["lessons"][0]["id"], "clocks");
    let not_modified = get_async(
        addr,
        "/api/courses/demo-course",
        &[("If-None-Match", &etag)],
    )
    .await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.header("etag"), etag);

    // A new version changes the heads, so the old ETag no longer matches: no purge needed.
    let mut lesson = serde_json::from_value::<CourseLesson>(v["modules"][0]["lessons"][0].clone())
        .expect("a lesson");
    lesson.title = "Why wall clocks lie (revised)".into();
    let admin = Caller {
        user: "root".parse().expect("an id"),
        name: "Root".into(),
        role: Role::Admin,
        cohorts: Vec::new(),
    };
    node.hub
        .execute(
            DocId::Course("demo-course".parse().expect("an id")),
            admin,
            Command {
                id: "republish".parse().expect("an id"),
                body: CommandBody::CoursePublish {
                    title: None,
                    description: None,
                    modules: vec![CourseModule {
                        title: "Week 1: time".into(),
                        lessons: vec![lesson],
                    }],
                },
            },
        )
        .await
        .expect("republish");
    let changed = get_async(
        addr,
        "/api/courses/demo-course",
        &[("If-None-Match", &etag)],
    )
    .await;
    assert_eq!(changed.status, 200);
    assert_ne!(changed.header("etag"), etag);
    assert_eq!(changed.json()["version"], 2);
    let catalog2 = get_async(addr, "/api/courses", &[("If-None-Match", &catalog_etag)]).await;
    assert_eq!(catalog2.status, 200);
    assert_eq!(catalog2.json()["courses"][0]["version"], 2);

    // An unknown course is not found, and the read creates nothing.
    let missing = get_async(addr, "/api/courses/no-such-course", &[]).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["code"], "doc_not_found");
    let bad = get_async(addr, "/api/courses/bad%2Fid", &[]).await;
    assert_eq!(bad.status, 400);
    node.stop().await.expect("stop");
    let store = Store::open(dir.path()).expect("the store is released after stop");
    assert!(
        !store
            .doc_ids()
            .expect("doc ids")
            .iter()
            .any(|d| d == "course/no-such-course"),
        "a read created a course"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_lesson_renders_to_sanitized_html_and_its_image_loads_from_content() {
    let dir = TempDir::new("content-lesson");
    let node = start(demo_config(&dir)).await.expect("start");
    let addr = node.http_addr;
    let course = get_async(addr, "/api/courses/demo-course", &[])
        .await
        .json();
    let lesson = &course["modules"][0]["lessons"][0];
    let html_hash = lesson["html"].as_str().expect("a rendered lesson");
    let image_hash = lesson["assets"][0].as_str().expect("an asset");

    let html = get_async(addr, &format!("/content/{html_hash}.html"), &[]).await;
    assert_eq!(html.status, 200);
    assert_eq!(
        html.header("cache-control"),
        "public, max-age=2592000, immutable"
    );
    assert!(html.header("content-type").starts_with("text/html"));
    let text = String::from_utf8(html.body.clone()).expect("UTF-8 HTML");
    assert!(text.contains("<h1>Why wall clocks lie</h1>"), "{text}");
    let img_src = format!("src=\"/content/{image_hash}.png\"");
    assert!(text.contains(&img_src), "the image is not resolved: {text}");

    let image = get_async(addr, &format!("/content/{image_hash}.png"), &[]).await;
    assert_eq!(image.status, 200);
    assert_eq!(image.header("content-type"), "image/png");
    let on_disk = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../node/demo-course/clocks.png"),
    )
    .expect("the demo image");
    assert_eq!(image.body, on_disk);
    let revalidated = get_async(
        addr,
        &format!("/content/{image_hash}.png"),
        &[("If-None-Match", &format!("\"{image_hash}\""))],
    )
    .await;
    assert_eq!(revalidated.status, 304);
    node.stop().await.expect("stop");
}

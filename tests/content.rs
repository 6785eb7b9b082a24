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

const COURSE_CACHE_CONTROL: &str =
    "public, max-age=604800, s-maxage=10, stale-while-revalidate=86400";

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
    send(addr, "GET", path, extra, &[])
}

/// One HTTP/1.0 request with a body over a real socket.
fn send(addr: SocketAddr, method: &str, path: &str, extra: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: x\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method != "GET" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send");
    s.write_all(body).expect("send the body");
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

const SECRET: &str = "content tests secret of at least 32 bytes";

fn token(user: &str, role: &str) -> String {
    let claims = lectern_gateway::auth::Claims {
        sub: user.into(),
        name: user.into(),
        role: role.into(),
        cohorts: Vec::new(),
        exp: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
            + 3600,
        iat: 0,
        nbf: None,
    };
    lectern_gateway::auth::mint(SECRET.as_bytes(), &claims).expect("mint")
}

fn sha256_hex(bytes: &[u8]) -> String {
    lectern_content::BlobHash::of(bytes).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instructors_upload_verified_blobs_and_publish_versions_without_overwriting() {
    let dir = TempDir::new("content-publish");
    let mut config = demo_config(&dir);
    config.demo = false;
    config.auth.hs256_secret = Some(SECRET.into());
    let node = start(config).await.expect("start");
    let addr = node.http_addr;
    let ins = format!("Bearer {}", token("ins9", "instructor"));
    let stu = format!("Bearer {}", token("stu9", "student"));
    let req = move |method: &'static str,
                    path: String,
                    headers: Vec<(&'static str, String)>,
                    body: Vec<u8>| {
        tokio::task::spawn_blocking(move || {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            send(addr, method, &path, &h, &body)
        })
    };

    // A 100 KB asset: past the gateway's 16 KiB default body limit, under the upload limit.
    let image: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let h = sha256_hex(&image);
    let auth = |t: &str, ty: &str| {
        vec![
            ("Authorization", t.to_owned()),
            ("Content-Type", ty.to_owned()),
        ]
    };
    let r = req(
        "PUT",
        format!("/api/content/{h}"),
        auth(&stu, "image/png"),
        image.clone(),
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (403, "forbidden".into())
    );
    let r = req(
        "PUT",
        format!("/api/content/{}", "0".repeat(64)),
        auth(&ins, "image/png"),
        image.clone(),
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (422, "hash_mismatch".into())
    );
    let r = req(
        "PUT",
        format!("/api/content/{h}"),
        auth(&ins, "application/x-sh"),
        image.clone(),
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (415, "unsupported_type".into())
    );
    let raw = b"<p onclick=\"x()\">hi</p><script>x()</script>".to_vec();
    let r = req(
        "PUT",
        format!("/api/content/{}", sha256_hex(&raw)),
        auth(&ins, "text/html; charset=utf-8"),
        raw,
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (422, "unsanitized_html".into())
    );
    assert_eq!(
        get_async(addr, &format!("/content/{h}.png"), &[])
            .await
            .status,
        404,
        "a refused upload stored something"
    );
    let r = req(
        "PUT",
        format!("/api/content/{h}"),
        auth(&ins, "image/png"),
        image.clone(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let served = get_async(addr, &format!("/content/{h}.png"), &[]).await;
    assert_eq!(served.body, image);

    // Lesson v1 and v2 are two blobs; publishing v2 leaves v1 readable.
    let v1 = b"# One\n".to_vec();
    let v2 = b"# One, revised\n".to_vec();
    for body in [&v1, &v2] {
        let r = req(
            "PUT",
            format!("/api/content/{}", sha256_hex(body)),
            auth(&ins, "text/markdown; charset=utf-8"),
            body.clone(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 201);
    }
    let json_auth = |t: &str| auth(t, "application/json");
    let publish = |id: &str, body: &[u8]| {
        serde_json::to_vec(&serde_json::json!({
            "id": id, "cmd": "course.publish",
            "modules": [{"title": "M", "lessons": [{"id": "one", "title": "One", "body": sha256_hex(body), "assets": [h]}]}]
        })).unwrap()
    };
    let r = req(
        "POST",
        "/api/courses/k9/commands".into(),
        json_auth(&ins),
        publish("p0", &v1),
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (404, "doc_not_found".into())
    );
    let create =
        serde_json::to_vec(&serde_json::json!({"id": "c", "cmd": "course.create", "title": "K9"}))
            .unwrap();
    let r = req(
        "POST",
        "/api/courses/k9/commands".into(),
        json_auth(&stu),
        create.clone(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403);
    let r = req(
        "POST",
        "/api/courses/k9/commands".into(),
        json_auth(&ins),
        create,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    for (id, body) in [("p1", &v1), ("p2", &v2)] {
        let r = req(
            "POST",
            "/api/courses/k9/commands".into(),
            json_auth(&ins),
            publish(id, body),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let course = get_async(addr, "/api/courses/k9", &[]).await.json();
    assert_eq!(course["version"], 2);
    assert_eq!(course["modules"][0]["lessons"][0]["body"], sha256_hex(&v2));
    let old = get_async(addr, &format!("/content/{}.md", sha256_hex(&v1)), &[]).await;
    assert_eq!((old.status, old.body), (200, v1.clone()));
    // One lesson added through the instructor route, the other left as it was.
    let add = serde_json::to_vec(&serde_json::json!({
        "id": "put-two", "cmd": "course.lesson", "module": 0,
        "lesson": {"id": "two", "title": "Two", "body": sha256_hex(&v1)}
    }))
    .unwrap();
    let r = req(
        "POST",
        "/api/courses/k9/commands".into(),
        json_auth(&ins),
        add,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let course = get_async(addr, "/api/courses/k9", &[]).await.json();
    assert_eq!(course["version"], 3);
    let ids: Vec<&str> = course["modules"][0]["lessons"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["id"].as_str())
        .collect();
    assert_eq!(ids, ["one", "two"]);
    assert_eq!(course["modules"][0]["lessons"][0]["body"], sha256_hex(&v2));
    node.stop().await.expect("stop");
}

/// A user's enrollments and a cohort's roster are private, cached for a minute and revalidated
/// by an `ETag` made of the cohorts' heads: a `304` until the cohort changes, then the new
/// answer. The roster is for the cohort's staff. Kills: a public or uncached answer, an ETag
/// that does not move with the cohort, a roster shown to a student.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollments_and_the_roster_are_private_and_revalidated_by_etag() {
    let demo = crate::gateway::Demo::start("content-enrollments")
        .await
        .expect("start");
    let addr = demo.node.http_addr;
    let cohort = lectern_node::DEMO_COHORT;
    let student = format!("Bearer {}", demo.token("student1", "student"));
    let ada = format!("Bearer {}", demo.token("ada", "instructor"));

    let first = get_async(addr, "/api/me/enrollments", &[("Authorization", &student)]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("cache-control"), "private, max-age=60");
    let etag = first.header("etag").to_owned();
    assert!(etag.starts_with('"'), "an ETag: {etag}");
    let body = first.json();
    assert_eq!(body["user"], "student1");
    let enrolled = &body["enrollments"][0];
    assert_eq!(enrolled["cohort"], cohort, "{body}");
    assert_eq!(enrolled["courseId"], "demo-course", "{body}");
    assert_eq!(enrolled["role"], "student", "{body}");
    let again = get_async(
        addr,
        "/api/me/enrollments",
        &[("Authorization", &student), ("If-None-Match", &etag)],
    )
    .await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());

    let roster_path = format!("/api/cohorts/{cohort}/roster");
    let refused = get_async(addr, &roster_path, &[("Authorization", &student)]).await;
    assert_eq!(refused.status, 403);
    let roster = get_async(addr, &roster_path, &[("Authorization", &ada)]).await;
    assert_eq!(roster.status, 200);
    assert_eq!(roster.header("cache-control"), "private, max-age=60");
    let roster_etag = roster.header("etag").to_owned();
    assert!(
        roster.json()["roster"]
            .as_array()
            .is_some_and(|r| r.iter().any(|e| e["user"] == "student1")),
        "{}",
        String::from_utf8_lossy(&roster.body)
    );

    // A new member changes the cohort: both ETags move.
    let add = serde_json::json!({"cmd": "roster.add", "id": "enrol-1", "user": "newcomer", "role": "student", "name": "Newcomer"});
    let r = demo
        .http
        .post_json(
            &format!("/api/cohorts/{cohort}/commands"),
            Some(&demo.token("ada", "instructor")),
            &add,
        )
        .await
        .expect("roster.add");
    assert_eq!(r.status, 200, "{}", r.text());
    let after = get_async(
        addr,
        &roster_path,
        &[("Authorization", &ada), ("If-None-Match", &roster_etag)],
    )
    .await;
    assert_eq!(after.status, 200, "the roster changed");
    assert!(
        after.json()["roster"]
            .as_array()
            .is_some_and(|r| r.iter().any(|e| e["user"] == "newcomer"))
    );
    let moved = get_async(
        addr,
        "/api/me/enrollments",
        &[("Authorization", &student), ("If-None-Match", &etag)],
    )
    .await;
    assert_eq!(moved.status, 200, "the cohort changed");
    assert_ne!(moved.header("etag"), etag);
    demo.stop().await.expect("stop");
}

fn unbrotli(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::Decompressor::new(bytes, 4096)
        .read_to_end(&mut out)
        .expect("a brotli body");
    out
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("a gzip body");
    out
}

/// The catalog and a course's outline are compressed as the client allows, each coding with
/// its own strong `ETag` (`"…-br"`, `"…-gzip"`) and `Vary: accept-encoding`, and a tag of any
/// coding revalidates to a `304`. Kills: uncompressed ETag-bearing answers, one tag for
/// several byte sequences, a compressed catalog's tag that no longer revalidates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_and_a_course_are_compressed_with_an_etag_per_coding() {
    let dir = TempDir::new("content-coding");
    let node = start(demo_config(&dir)).await.expect("start");
    let addr = node.http_addr;
    // A catalog worth compressing: some courses with real descriptions.
    let admin = Caller {
        user: "root".parse().expect("an id"),
        name: "Root".into(),
        role: Role::Admin,
        cohorts: Vec::new(),
    };
    for i in 0..12 {
        node.hub
            .execute(
                DocId::Course(format!("elective-{i}").parse().expect("an id")),
                admin.clone(),
                Command {
                    id: format!("create-{i}").parse().expect("an id"),
                    body: CommandBody::CourseCreate {
                        title: format!("Elective {i}: consensus in practice"),
                        description:
                            "Raft, Paxos and the failure detectors they need, with a lab per week."
                                .into(),
                    },
                },
            )
            .await
            .expect("create a course");
    }
    for path in ["/api/courses", "/api/courses/demo-course"] {
        let plain = get_async(addr, path, &[]).await;
        assert_eq!(plain.status, 200);
        assert!(
            plain.body.len() >= 1024,
            "{path} is {} bytes",
            plain.body.len()
        );
        assert_eq!(plain.header("content-encoding"), "");
        let tag = plain.header("etag").to_owned();
        let inner = tag.trim_end_matches('"');
        for (coding, decode) in [("br", unbrotli as fn(&[u8]) -> Vec<u8>), ("gzip", gunzip)] {
            let r = get_async(addr, path, &[("Accept-Encoding", coding)]).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.header("content-encoding"), coding, "{path}");
            assert_eq!(r.header("vary"), "accept-encoding");
            assert_eq!(r.header("etag"), format!("{inner}-{coding}\""));
            assert!(r.body.len() < plain.body.len(), "{path} in {coding}");
            assert_eq!(decode(&r.body), plain.body, "{path} in {coding}");
            // The coded tag revalidates, and so does the identity one (same data).
            for held in [r.header("etag"), tag.as_str()] {
                let again = get_async(
                    addr,
                    path,
                    &[("Accept-Encoding", coding), ("If-None-Match", held)],
                )
                .await;
                assert_eq!(again.status, 304, "{path} {coding} holding {held}");
                assert_eq!(again.header("etag"), r.header("etag"));
            }
        }
    }
    node.stop().await.expect("stop");
}

//! The deploy kit (`deploy/`), run for real: the nginx edge in front of a real node, over TLS,
//! with the official Socket.IO client and Node.js's `fetch` as the browser; and the systemd
//! unit checked by `systemd-analyze verify`.
//!
//! The edge test uses the shipped `deploy/nginx/*.conf` files with only what a deployment edits
//! replaced (listen ports, certificate and cache paths, the node's address), so what is tested
//! is what operators install. nginx and systemd-analyze come from Debian's packages through
//! `scripts/setup`; without them these tests fail, saying so.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use crate::gateway::{Demo, within};
use crate::support::{TempDir, run_js};

/// How long a Node.js script may run (each has its own shorter timeout inside).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(75);

/// How long nginx may take to listen after it starts.
const NGINX_START_TIMEOUT: Duration = Duration::from_secs(20);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A free TCP port on loopback (the listener is dropped before nginx binds it).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// nginx, master and workers, running the shipped edge configuration in front of `node`.
struct Edge {
    child: Child,
    /// The edge's HTTPS base URL.
    url: String,
    _dir: TempDir,
}

impl Edge {
    fn start(node: SocketAddr) -> anyhow::Result<Edge> {
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .context("nginx is not installed: run scripts/setup (it installs Debian's nginx)")?;
        let dir = TempDir::new("edge");
        let d = dir.path();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])
            .context("make the edge's self-signed certificate")?;
        std::fs::write(d.join("tls.crt"), cert.cert.pem())?;
        std::fs::write(d.join("tls.key"), cert.signing_key.serialize_pem())?;
        // nginx's workers drop to an unprivileged user when run as root: they must be able to
        // write the cache.
        let cache = d.join("cache");
        std::fs::create_dir_all(&cache)?;
        set_mode(&cache, 0o777)?;
        set_mode(d, 0o755)?;

        let (http_port, https_port) = (free_port()?, free_port()?);
        let shipped = std::fs::read_to_string(repo().join("deploy/nginx/lectern-edge.conf"))?;
        let edge = replace_all(
            &shipped,
            &[
                ("/etc/lectern/edge/", &format!("{}/", d.display())),
                ("/var/cache/nginx/lectern", &cache.display().to_string()),
                ("listen 80;", &format!("listen 127.0.0.1:{http_port};")),
                ("listen [::]:80;", ""),
                (
                    "listen 443 ssl http2;",
                    &format!("listen 127.0.0.1:{https_port} ssl http2;"),
                ),
                ("listen [::]:443 ssl http2;", ""),
            ],
        )?;
        let shipped = std::fs::read_to_string(repo().join("deploy/nginx/lectern-upstreams.conf"))?;
        let upstreams = replace_all(
            &shipped,
            &[(
                "server 127.0.0.1:8080 max_fails=2 fail_timeout=5s;",
                &format!("server {node} max_fails=2 fail_timeout=5s;"),
            )],
        )?;
        std::fs::write(d.join("edge.conf"), edge)?;
        std::fs::write(d.join("upstreams.conf"), upstreams)?;
        std::fs::write(
            d.join("nginx.conf"),
            format!(
                "pid {d}/nginx.pid;\nerror_log {d}/error.log;\nworker_processes 1;\n\
                 events {{}}\nhttp {{\n  access_log off;\n  \
                 client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
                 include {d}/upstreams.conf;\n  include {d}/edge.conf;\n}}\n",
                d = d.display()
            ),
        )?;
        for tmp in ["body", "proxy"] {
            std::fs::create_dir_all(d.join(tmp))?;
            set_mode(&d.join(tmp), 0o777)?;
        }
        let child = Command::new(nginx)
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .arg("-p")
            .arg(d)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("start nginx")?;
        let mut edge = Edge {
            child,
            url: format!("https://localhost:{https_port}"),
            _dir: dir,
        };
        let deadline = Instant::now() + NGINX_START_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", https_port)).is_err() {
            if let Some(status) = edge.child.try_wait()? {
                let log = std::fs::read_to_string(d_log(&edge)).unwrap_or_default();
                bail!("nginx exited ({status}) before listening: {log}");
            }
            ensure!(
                Instant::now() < deadline,
                "nginx did not listen within {NGINX_START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(edge)
    }
}

fn d_log(edge: &Edge) -> PathBuf {
    edge._dir.path().join("error.log")
}

impl Drop for Edge {
    fn drop(&mut self) {
        // SIGTERM: nginx's fast shutdown, master and workers.
        signal(self.child.id(), libc::SIGTERM);
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, sig: i32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    #[allow(unsafe_code)]
    // SAFETY: kill(2) with a pid we spawned and a valid signal has no memory effects.
    unsafe {
        libc::kill(pid, sig);
    }
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Replaces each `from` (which must occur: a changed shipped file fails loudly here).
fn replace_all(text: &str, pairs: &[(&str, &str)]) -> anyhow::Result<String> {
    let mut out = text.to_owned();
    for (from, to) in pairs {
        ensure!(
            out.contains(from),
            "the shipped config no longer contains {from:?}"
        );
        out = out.replace(from, to);
    }
    Ok(out)
}

/// Runs a script of `tests/js` with Node.js, trusting the edge's self-signed certificate (as
/// an extra root, so certificate checks stay on); its last JSON line.
async fn node_script(edge: &Edge, script: &str, args: &[String]) -> anyhow::Result<Value> {
    let cert = edge._dir.path().join("tls.crt");
    let env = [("NODE_EXTRA_CA_CERTS", cert.as_os_str())];
    Ok(run_js(script, args, &env, SCRIPT_TIMEOUT).await?.0)
}

/// A whole class (join, ask, upvote, answer, polls, bad input) through the edge over TLS, on
/// the lean WebSocket and on long-polling (which needs the edge's sticky routing and
/// unbuffered long requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_runs_through_the_nginx_edge_over_websocket_and_polling() -> anyhow::Result<()> {
    within(async {
        for transport in ["websocket", "polling"] {
            let demo = Demo::start("edge-class").await?;
            let edge = Edge::start(demo.node.http_addr)?;
            let args = [
                edge.url.clone(),
                demo.session.clone(),
                transport.to_owned(),
                demo.token("student1", "student"),
                demo.token("student2", "student"),
                demo.token("ada", "instructor"),
            ];
            let summary = node_script(&edge, "class.mjs", &args).await?;
            let q = "How do I...?";
            // What class.mjs must see; `connections` reads /metrics, which the edge hides.
            let want = json!({
                "transport": transport,
                "joined": [true, true, true],
                "ask": true,
                "qaNewText": [q, q, q],
                "upvoteCounts": [1, 1, 2],
                "answerText": "Like this.",
                "revealedCounts": [1, 1],
                "stillServing": true,
            });
            for (field, value) in want.as_object().expect("an object") {
                assert_eq!(
                    summary.get(field),
                    Some(value),
                    "{transport}: field {field} of {summary}"
                );
            }
            drop(edge);
            demo.stop().await?;
        }
        Ok(())
    })
    .await
}

/// SSE through the edge arrives event by event (proxy buffering off), REST commands pass,
/// the page is revalidated while its fingerprinted module is cached by the edge (a MISS, then
/// a HIT), and `/metrics` and `/admin` stay private.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nginx_edge_streams_sse_unbuffered_and_hides_operator_endpoints() -> anyhow::Result<()>
{
    within(async {
        let demo = Demo::start("edge-sse").await?;
        let edge = Edge::start(demo.node.http_addr)?;
        let args = [
            edge.url.clone(),
            demo.session.clone(),
            demo.token("student1", "student"),
        ];
        let out = node_script(&edge, "edge.mjs", &args).await?;
        assert_eq!(out.get("error"), None, "{out}");
        assert_eq!(out["sseStatus"], 200, "{out}");
        assert_eq!(out["sseType"], "text/event-stream", "{out}");
        assert_eq!(out["firstEvent"], "state", "{out}");
        assert_eq!(out["askStatus"], 200, "{out}");
        assert_eq!(out["streamedText"], "Through the edge?", "{out}");
        assert_eq!(out["pageStatus"], 200, "{out}");
        // The page is revalidated on every load: the edge passes the node's header through.
        assert_eq!(out["pageCacheControl"], "no-cache", "{out}");
        let entry = out["entry"]
            .as_str()
            .context("the page names its entry module")?;
        assert!(
            entry.starts_with("/static/app.") && entry.len() > "/static/app..js".len(),
            "the entry module is fingerprinted: {out}"
        );
        let immutable = "public, max-age=31536000, immutable";
        assert_eq!(
            out["entryFetches"],
            json!([[200, "MISS", immutable], [200, "HIT", immutable]]),
            "{out}"
        );
        assert_eq!(out["metricsStatus"], 404, "{out}");
        assert_eq!(out["adminStatus"], 404, "{out}");
        drop(edge);
        demo.stop().await
    })
    .await
}

/// Course content through the edge as a CDN: an asset is a MISS, then a HIT; a class of 40
/// students reading the catalog, the outline and every lesson with its assets is served by the
/// edge's cache at ≥ 90 %; and a new version of a lesson published through the edge is seen by
/// the next outline read once the node's `s-maxage` runs out (the edge revalidates with the
/// ETag; nobody purges anything), its new body a MISS and then a HIT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nginx_edge_caches_course_content_and_reaches_a_new_version_without_a_purge()
-> anyhow::Result<()> {
    within(async {
        let demo = Demo::start("edge-cdn").await?;
        let edge = Edge::start(demo.node.http_addr)?;
        let args = [
            edge.url.clone(),
            "demo-course".to_owned(),
            demo.token("root", "admin"),
            "40".to_owned(),
        ];
        let out = node_script(&edge, "cdn.mjs", &args).await?;
        assert_eq!(out.get("error"), None, "{out}");
        assert_eq!(out["outlineStatus"], 200, "{out}");
        assert_eq!(
            out["assetTwice"],
            json!([[200, "MISS", true], [200, "HIT", true]]),
            "{out}"
        );
        let tally = out["classTally"].as_object().context("a tally")?;
        let total: u64 = tally.values().filter_map(Value::as_u64).sum();
        let hits = tally.get("HIT").and_then(Value::as_u64).unwrap_or(0);
        let ratio = hits as f64 / total.max(1) as f64;
        println!(
            "class workload through the edge: {hits} hits of {total} requests ({ratio:.3}): {out}"
        );
        assert!(total >= 40 * 4, "the class made its requests: {out}");
        assert!(ratio >= 0.9, "hit ratio {ratio:.3} under 0.9: {out}");
        assert_eq!(out["publishStatus"], 200, "{out}");
        assert_eq!(out["newLessonHtml"], true, "{out}");
        let shared_max_age_ms = lectern_gateway::COURSE_SHARED_MAX_AGE_S * 1000;
        let seen_after = out["newVersionSeenAfterMs"].as_u64().context("seen")?;
        assert!(
            seen_after <= shared_max_age_ms + 5_000,
            "the new version took {seen_after} ms through the edge: {out}"
        );
        assert_eq!(
            out["newLessonTwice"],
            json!([[200, "MISS", true], [200, "HIT", true]]),
            "{out}"
        );
        drop(edge);
        demo.stop().await
    })
    .await
}

/// The shipped systemd unit parses with no unknown key and names an executable command
/// (the binary path swapped for this build's, since nothing is installed here).
#[test]
fn the_systemd_unit_verifies() -> anyhow::Result<()> {
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .context("systemd-analyze is missing: run scripts/setup (Debian's systemd package)")?;
    let dir = TempDir::new("unit");
    let shipped = std::fs::read_to_string(repo().join("deploy/systemd/lectern-node.service"))?;
    let unit = replace_all(&shipped, &[("/usr/local/bin/lectern-node", "/bin/true")])?;
    let path = dir.path().join("lectern-node.service");
    std::fs::write(&path, unit)?;
    let out = Command::new(analyze).arg("verify").arg(&path).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {stderr}"
    );
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("lectern-node.service"))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze complains: {complaints:?}"
    );
    Ok(())
}

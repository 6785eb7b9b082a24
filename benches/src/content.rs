//! `content`: course content served by a node against nginx serving the same files from disk,
//! with the same client in the same run: requests per second and latency for a 100 KB asset
//! (`GET /content/{sha256}`), for its revalidation (`If-None-Match`, a `304`) and for the
//! catalog (`GET /api/courses`).
//!
//! The node is a child process (`lectern-bench serve`, the demo class and its course) whose
//! content store holds the asset, written there before it starts; nginx (Debian's package,
//! `scripts/setup` installs it) runs with one worker per core from a directory holding the
//! asset's bytes under the same path and the catalog's bytes as a file, with `sendfile` and
//! keep-alive, which is how nginx serves static files at its fastest. The client is this
//! process: `--connections` keep-alive HTTP/1.1 connections, each sending its next request when
//! the previous answer is read whole (closed loop), for `--seconds` per case. Every answer must
//! have the expected status and length, or the run fails. Cases and servers are interleaved,
//! and medians of `--runs` are reported.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::load::node::ChildServer;
use crate::util::{TempDir, median, quantile};

/// Size of the asset, in bytes (an image of a lesson).
const ASSET_BYTES: usize = 100 * 1024;

/// The asset's type (random bytes do not compress, as an image would not).
const ASSET_TYPE: &str = "image/png";

/// The longest nginx may take to listen.
const NGINX_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of `content`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep-alive connections of the client.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Seconds each case runs against each server.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Runs of every case against both servers; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// The nginx binary.
    #[arg(long, default_value = "/usr/sbin/nginx")]
    pub nginx: PathBuf,
}

/// What one case asks for, and what a right answer is.
#[derive(Clone)]
struct Case {
    name: &'static str,
    path: String,
    if_none_match: Option<String>,
    status: u16,
    body_len: usize,
}

/// One case against one server, for one run.
struct Measured {
    rps: f64,
    p50_us: u64,
    p95_us: u64,
}

/// Runs the benchmark and prints its summary (and JSON line).
pub fn run(args: &Args, json_out: bool) -> anyhow::Result<()> {
    ensure!(
        args.runs > 0 && args.connections > 0 && args.seconds > 0,
        "--runs, --connections and --seconds must be positive"
    );
    ensure!(
        args.nginx.is_file(),
        "{} is missing: scripts/setup installs nginx",
        args.nginx.display()
    );
    let scratch = TempDir::new("content-bench")?;
    let data_dir = scratch.path().join("node");
    // The asset goes into the node's content store before the node opens it.
    let asset: Vec<u8> = (0..ASSET_BYTES).map(|_| rand::random::<u8>()).collect();
    let hash = {
        let store = lectern_content::BlobStore::open(
            &data_dir.join("content"),
            lectern_content::BlobLimits::default(),
        )
        .context("open the node's content store")?;
        store.put(&asset, ASSET_TYPE).context("store the asset")?
    };
    let me = std::env::current_exe().context("find this program")?;
    let node = ChildServer::spawn(
        &me,
        &[
            "serve".to_owned(),
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
        ],
        &[],
        scratch.path(),
        "node: http://",
        Duration::from_secs(60),
    )?;
    let rt = tokio::runtime::Runtime::new().context("start the async runtime")?;
    let catalog = rt.block_on(get(node.addr, "/api/courses", None))?;
    ensure!(
        catalog.status == 200,
        "the node's catalog: {}",
        catalog.status
    );
    ensure!(
        catalog.body.len() > 2,
        "the node's catalog is empty: is the demo course there?"
    );

    let www = scratch.path().join("www");
    std::fs::create_dir_all(www.join("content"))?;
    std::fs::create_dir_all(www.join("api"))?;
    std::fs::write(www.join("content").join(hash.to_string()), &asset)?;
    std::fs::write(www.join("api").join("courses"), &catalog.body)?;
    let nginx = Nginx::start(&args.nginx, scratch.path(), &www)?;
    let nginx_etag = rt
        .block_on(get(nginx.addr, &format!("/content/{hash}"), None))?
        .etag
        .context("nginx sends an ETag for a static file")?;

    let cases = |etag: String| {
        vec![
            Case {
                name: "asset 100 KB",
                path: format!("/content/{hash}"),
                if_none_match: None,
                status: 200,
                body_len: ASSET_BYTES,
            },
            Case {
                name: "asset 304",
                path: format!("/content/{hash}"),
                if_none_match: Some(etag),
                status: 304,
                body_len: 0,
            },
            Case {
                name: "catalog",
                path: "/api/courses".to_owned(),
                if_none_match: None,
                status: 200,
                body_len: catalog.body.len(),
            },
        ]
    };
    let node_cases = cases(format!("\"{hash}\""));
    let nginx_cases = cases(nginx_etag);
    let seconds = Duration::from_secs(args.seconds);
    // [case][run] for each server.
    let mut on_node: Vec<Vec<Measured>> = node_cases.iter().map(|_| Vec::new()).collect();
    let mut on_nginx: Vec<Vec<Measured>> = node_cases.iter().map(|_| Vec::new()).collect();
    for run in 0..args.runs {
        for (i, (n, x)) in node_cases.iter().zip(&nginx_cases).enumerate() {
            // Alternate which server goes first, so neither always meets a warmer machine.
            let order: [(bool, &Case); 2] = if run % 2 == 0 {
                [(true, n), (false, x)]
            } else {
                [(false, x), (true, n)]
            };
            for (is_node, case) in order {
                let addr = if is_node { node.addr } else { nginx.addr };
                let m = rt
                    .block_on(load(addr, case, args.connections, seconds))
                    .with_context(|| {
                        format!(
                            "{} on {}",
                            case.name,
                            if is_node { "the node" } else { "nginx" }
                        )
                    })?;
                eprintln!(
                    "run {} {:<13} {:<6} {:>9.0} req/s  p50 {:>6} µs  p95 {:>6} µs",
                    run + 1,
                    case.name,
                    if is_node { "node" } else { "nginx" },
                    m.rps,
                    m.p50_us,
                    m.p95_us
                );
                if is_node {
                    on_node[i].push(m);
                } else {
                    on_nginx[i].push(m);
                }
            }
        }
    }
    drop(nginx);
    drop(node);

    println!(
        "content: {} connections, {} s per case, median of {} runs (node / nginx from disk)",
        args.connections, args.seconds, args.runs
    );
    let mut rows = Vec::new();
    for (i, case) in node_cases.iter().enumerate() {
        let med = |ms: &[Measured], f: fn(&Measured) -> f64| {
            median(&ms.iter().map(f).collect::<Vec<_>>())
        };
        let (n_rps, x_rps) = (med(&on_node[i], |m| m.rps), med(&on_nginx[i], |m| m.rps));
        let (n_p95, x_p95) = (
            med(&on_node[i], |m| m.p95_us as f64),
            med(&on_nginx[i], |m| m.p95_us as f64),
        );
        let (n_p50, x_p50) = (
            med(&on_node[i], |m| m.p50_us as f64),
            med(&on_nginx[i], |m| m.p50_us as f64),
        );
        let ratio = n_rps / x_rps;
        println!(
            "  {:<13} node {:>8.0} req/s (p50 {:.2} ms, p95 {:.2} ms)   nginx {:>8.0} req/s (p50 {:.2} ms, p95 {:.2} ms)   node/nginx {:.2}x",
            case.name,
            n_rps,
            n_p50 / 1e3,
            n_p95 / 1e3,
            x_rps,
            x_p50 / 1e3,
            x_p95 / 1e3,
            ratio
        );
        rows.push(json!({
            "case": case.name,
            "node_rps": n_rps, "node_p50_ms": n_p50 / 1e3, "node_p95_ms": n_p95 / 1e3,
            "nginx_rps": x_rps, "nginx_p50_ms": x_p50 / 1e3, "nginx_p95_ms": x_p95 / 1e3,
            "ratio": ratio,
            "node_runs": on_node[i].iter().map(|m| m.rps).collect::<Vec<_>>(),
            "nginx_runs": on_nginx[i].iter().map(|m| m.rps).collect::<Vec<_>>(),
        }));
    }
    if json_out {
        println!(
            "{}",
            json!({
                "bench": "content",
                "connections": args.connections,
                "seconds": args.seconds,
                "runs": args.runs,
                "cases": rows,
            })
        );
    }
    Ok(())
}

/// nginx serving `www`, stopped when dropped.
struct Nginx {
    child: Child,
    addr: SocketAddr,
}

impl Nginx {
    fn start(nginx: &Path, scratch: &Path, www: &Path) -> anyhow::Result<Nginx> {
        let dir = scratch.join("nginx");
        for d in ["", "body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        // nginx's workers run as an unprivileged user when started by root: the files must be
        // readable to them.
        open_up(scratch)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let conf = format!(
            "pid {d}/nginx.pid;\nerror_log {d}/error.log;\nworker_processes auto;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  \
             keepalive_requests 1000000;\n  \
             client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  \
             scgi_temp_path {d}/scgi;\n  \
             server {{\n    listen {addr};\n    root {www};\n    \
             location /content/ {{ default_type {ASSET_TYPE}; \
             add_header Cache-Control \"public, max-age=2592000, immutable\"; }}\n    \
             location = /api/courses {{ default_type application/json; \
             add_header Cache-Control \"public, max-age=604800\"; }}\n  }}\n}}\n",
            d = dir.display(),
            www = www.display(),
        );
        std::fs::write(dir.join("nginx.conf"), conf)?;
        let child = Command::new(nginx)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("start {}", nginx.display()))?;
        let mut server = Nginx { child, addr };
        let deadline = Instant::now() + NGINX_START_TIMEOUT;
        while std::net::TcpStream::connect(addr).is_err() {
            if let Some(status) = server.child.try_wait()? {
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                bail!("nginx exited ({status}) before listening: {log}");
            }
            ensure!(
                Instant::now() < deadline,
                "nginx did not listen within {NGINX_START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT, nginx's graceful stop, which ends its workers too (SIGKILL would orphan
        // them); then reap it.
        #[allow(unsafe_code)]
        // SAFETY: kill(2) with the pid of a child this process started and has not reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGQUIT);
        }
        let _ = self.child.wait();
    }
}

/// Makes `dir` and everything under it readable (and directories searchable) by anyone.
fn open_up(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(dir)?;
    let mode = if meta.is_dir() { 0o755 } else { 0o644 };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            open_up(&entry?.path())?;
        }
    }
    Ok(())
}

/// One answer, read whole.
struct Answer {
    status: u16,
    etag: Option<String>,
    body: Vec<u8>,
}

/// One request on a fresh connection.
async fn get(addr: SocketAddr, path: &str, if_none_match: Option<&str>) -> anyhow::Result<Answer> {
    let mut conn = Conn::connect(addr).await?;
    conn.send(path, if_none_match).await?;
    conn.read_answer(true).await
}

/// Runs `case` on `connections` connections for `seconds`.
async fn load(
    addr: SocketAddr,
    case: &Case,
    connections: usize,
    seconds: Duration,
) -> anyhow::Result<Measured> {
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(Conn::connect(addr).await?);
    }
    let start = Instant::now();
    let end = start + seconds;
    let mut tasks = Vec::with_capacity(connections);
    for mut conn in conns {
        let case = case.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies_us = Vec::new();
            while Instant::now() < end {
                let sent = Instant::now();
                conn.send(&case.path, case.if_none_match.as_deref()).await?;
                let answer = conn.read_answer(false).await?;
                ensure!(
                    answer.status == case.status,
                    "status {} (expected {})",
                    answer.status,
                    case.status
                );
                ensure!(
                    conn.last_body_len == case.body_len,
                    "a body of {} bytes (expected {})",
                    conn.last_body_len,
                    case.body_len
                );
                latencies_us.push(sent.elapsed().as_micros() as u64);
            }
            anyhow::Ok(latencies_us)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.context("a client task")??);
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    Ok(Measured {
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        p50_us: quantile(&all, 0.5),
        p95_us: quantile(&all, 0.95),
    })
}

/// A keep-alive HTTP/1.1 connection of the client.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes of `buf` holding data not yet consumed.
    filled: usize,
    last_body_len: usize,
}

impl Conn {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: vec![0; 256 * 1024],
            filled: 0,
            last_body_len: 0,
        })
    }

    async fn send(&mut self, path: &str, if_none_match: Option<&str>) -> anyhow::Result<()> {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n");
        if let Some(tag) = if_none_match {
            req.push_str(&format!("If-None-Match: {tag}\r\n"));
        }
        req.push_str("\r\n");
        self.stream.write_all(req.as_bytes()).await?;
        Ok(())
    }

    /// Reads one answer; keeps its body only if `keep_body`.
    async fn read_answer(&mut self, keep_body: bool) -> anyhow::Result<Answer> {
        // The head.
        let head_end = loop {
            if let Some(i) = self.buf[..self.filled]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
            {
                break i + 4;
            }
            ensure!(self.filled < self.buf.len(), "a head over the buffer");
            let n = self.stream.read(&mut self.buf[self.filled..]).await?;
            ensure!(n > 0, "the server closed the connection");
            self.filled += n;
        };
        let head =
            std::str::from_utf8(&self.buf[..head_end]).context("a head that is not UTF-8")?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("a head without a status")?;
        let mut len = 0usize;
        let mut etag = None;
        for line in head.split("\r\n").skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                len = value.parse().context("a bad Content-Length")?;
            } else if name.eq_ignore_ascii_case("etag") {
                etag = Some(value.to_owned());
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                bail!("a chunked answer (this client reads Content-Length only)");
            }
        }
        if status == 304 {
            len = 0;
        }
        // The body: what the buffer holds past the head, then the rest from the socket.
        let mut body = Vec::new();
        let buffered = (self.filled - head_end).min(len);
        if keep_body {
            body.extend_from_slice(&self.buf[head_end..head_end + buffered]);
        }
        let mut left = len - buffered;
        let consumed = head_end + buffered;
        self.buf.copy_within(consumed..self.filled, 0);
        self.filled -= consumed;
        while left > 0 {
            let want = left.min(self.buf.len());
            let n = self.stream.read(&mut self.buf[..want]).await?;
            ensure!(n > 0, "the server closed the connection mid-body");
            if keep_body {
                body.extend_from_slice(&self.buf[..n]);
            }
            left -= n;
        }
        self.last_body_len = len;
        Ok(Answer { status, etag, body })
    }
}

//! `notify`: an announcement to a cohort of N students (default 5,000), each connected to
//! `/api/stream/notifications`. Measures, per announcement: the time from the POST until each
//! student's SSE stream shows the `notification` event (p50/p95/max), the time until every
//! email was accepted by the SMTP server, and the node's memory before and after. The baseline
//! in the same run: a grade notification to ONE connected student (the shortest path through
//! the same machinery), repeated.
//!
//! The node is a child process (`lectern-bench serve`, configured through `LECTERN_*`), so its
//! memory is read from `/proc/<pid>` apart from the clients'; the SMTP server is the test kit's
//! (real SMTP over TCP, in this process). Every student is a roster entry added over REST and
//! has their own token; emails go to `{user}@bench.test`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lectern_gateway::auth::{Claims, mint};
use lectern_testkit::{Http, SmtpServer};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};

use crate::load::node::{ChildServer, memory};
use crate::util::{TempDir, median, quantile};

/// Options of the `notify` benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Students in the cohort, each with an SSE stream open.
    #[arg(long, default_value_t = 5_000)]
    pub students: usize,
    /// Announcements measured (the figures are medians over them).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Grades measured for the single-student baseline.
    #[arg(long, default_value_t = 20)]
    pub baseline: usize,
    /// The node's job workers (`[notify] workers`); default: the node's default.
    #[arg(long)]
    pub workers: Option<usize>,
}

const SECRET: &str = "lectern-bench-notify-secret-0123456789";
const COHORT: &str = "demo-cohort";

fn token(user: &str, role: &str) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = Claims {
        sub: user.into(),
        name: user.into(),
        role: role.into(),
        cohorts: vec![COHORT.into()],
        exp: now + 24 * 3600,
        iat: now,
        nbf: None,
    };
    mint(SECRET.as_bytes(), &claims).context("mint a token")
}

/// Runs the benchmark.
pub fn run(args: &Args, json_out: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("start the async runtime")?;
    rt.block_on(run_async(args, json_out))
}

async fn run_async(args: &Args, json_out: bool) -> anyhow::Result<()> {
    crate::load::node::check_open_files(args.students as u64 + 200)?;
    let smtp = SmtpServer::start().await?;
    let dir = TempDir::new("notify")?;
    let exe = std::env::current_exe().context("find lectern-bench")?;
    let data = dir.path().join("data");
    if let Some(w) = args.workers {
        // The child reads ./lectern.toml from its working directory, the scratch directory.
        std::fs::write(
            dir.path().join("lectern.toml"),
            format!("[notify]\nworkers = {w}\n"),
        )
        .context("write the node's lectern.toml")?;
    }
    let env: Vec<(String, String)> = [
        ("LECTERN_AUTH_SECRET", SECRET.to_owned()),
        ("LECTERN_SMTP_HOST", "127.0.0.1".to_owned()),
        ("LECTERN_SMTP_PORT", smtp.addr().port().to_string()),
        ("LECTERN_SMTP_TLS", "none".to_owned()),
        ("LECTERN_EMAIL_DOMAIN", "bench.test".to_owned()),
        ("LECTERN_RATE_COMMANDS_PER_S", "1000000".to_owned()),
        ("LECTERN_RATE_COMMAND_BURST", "1000000".to_owned()),
        ("LECTERN_CONNS_MAX", "20000".to_owned()),
        // Every simulated client comes from 127.0.0.1 at once.
        ("LECTERN_PREAUTH_MAX", "20000".to_owned()),
        ("LECTERN_PREAUTH_PER_ADDRESS_MAX", "20000".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let node = ChildServer::spawn(
        &exe,
        &[
            "serve".into(),
            "--data-dir".into(),
            data.display().to_string(),
        ],
        &env,
        dir.path(),
        "node: http://",
        Duration::from_secs(60),
    )?;
    let http = Http::new(node.addr);
    let admin = token("bench-admin", "admin")?;
    let ada = token("ada", "instructor")?;

    // The roster, over REST, 64 requests at a time.
    let started = Instant::now();
    let users: Vec<String> = (0..args.students).map(|i| format!("b{i:05}")).collect();
    let gate = Arc::new(Semaphore::new(64));
    let mut adds = Vec::new();
    for u in &users {
        let permit = gate.clone().acquire_owned().await?;
        let body = json!({"cmd": "roster.add", "user": u, "role": "student", "name": format!("Student {u}")});
        let admin = admin.clone();
        adds.push(tokio::spawn(async move {
            let _permit = permit;
            let r = http
                .post_json(
                    &format!("/api/cohorts/{COHORT}/commands"),
                    Some(&admin),
                    &body,
                )
                .await?;
            anyhow::ensure!(r.status == 200, "roster.add: {} {}", r.status, r.text());
            anyhow::Ok(())
        }));
    }
    for a in adds {
        a.await??;
    }
    eprintln!(
        "notify: roster of {} in {:.1} s",
        args.students,
        started.elapsed().as_secs_f64()
    );

    // Every student's notification stream.
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    let gate = Arc::new(Semaphore::new(256));
    let mut opening = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let permit = gate.clone().acquire_owned().await?;
        let t = token(u, "student")?;
        let tx = seen_tx.clone();
        let addr = node.addr;
        opening.push(tokio::spawn(async move {
            let stream = open_stream(addr, &t).await;
            drop(permit);
            let stream = stream?;
            tokio::spawn(listen(stream, i, tx));
            anyhow::Ok(())
        }));
    }
    for o in opening {
        o.await??;
    }
    eprintln!("notify: {} streams open", args.students);

    // Baseline: one student's grade, `baseline` times, on its own stream.
    let mut single = open_stream(node.addr, &token("student1", "student")?).await?;
    let mut baseline_ms = Vec::new();
    for k in 0..args.baseline {
        let t0 = Instant::now();
        let r = http
            .post_json(
                &format!("/api/cohorts/{COHORT}/commands"),
                Some(&ada),
                &json!({"cmd": "progress.update", "student": "student1", "lesson": format!("quiz{k}"),
                        "score": 5, "max_score": 10}),
            )
            .await?;
        anyhow::ensure!(r.status == 200, "grade: {}", r.text());
        wait_for(&mut single, b"event: notification").await?;
        baseline_ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let mails_base = smtp
        .wait_for_mails(args.baseline, Duration::from_secs(60))
        .await?
        .len();

    let before = memory(node.pid)?;
    let mut runs = Vec::new();
    for run in 0..args.runs {
        // Drain arrivals of earlier runs.
        while seen_rx.try_recv().is_ok() {}
        let mails_before = smtp.mails().len();
        let t0 = Instant::now();
        let r = http
            .post_json(
                &format!("/api/cohorts/{COHORT}/commands"),
                Some(&ada),
                &json!({"cmd": "announcement.post", "title": format!("Announcement {run}"),
                        "body": "The exam moves to Friday, room 101."}),
            )
            .await?;
        anyhow::ensure!(r.status == 200, "announcement: {}", r.text());
        let acked_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut lat_us: Vec<u64> = Vec::with_capacity(args.students);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while lat_us.len() < args.students {
            match tokio::time::timeout_at(deadline, seen_rx.recv()).await {
                Ok(Some((_, at))) => lat_us.push(at.duration_since(t0).as_micros() as u64),
                Ok(None) => bail!("every stream ended"),
                Err(_) => bail!(
                    "only {} of {} streams showed the announcement within 120 s",
                    lat_us.len(),
                    args.students
                ),
            }
        }
        let sse_all_ms = t0.elapsed().as_secs_f64() * 1e3;
        // student1 and student2 of the demo are in the cohort too.
        let expected = mails_before + args.students + 2;
        smtp.wait_for_mails(expected, Duration::from_secs(600))
            .await?;
        let email_all_ms = t0.elapsed().as_secs_f64() * 1e3;
        lat_us.sort_unstable();
        let r = json!({
            "ackMs": acked_ms,
            "sseP50Ms": quantile(&lat_us, 0.50) as f64 / 1e3,
            "sseP95Ms": quantile(&lat_us, 0.95) as f64 / 1e3,
            "sseMaxMs": quantile(&lat_us, 1.0) as f64 / 1e3,
            "sseAllMs": sse_all_ms,
            "emailsAllMs": email_all_ms,
        });
        eprintln!("notify: run {run}: {r}");
        runs.push(r);
    }
    let after = memory(node.pid)?;
    let med = |k: &str| {
        median(
            &runs
                .iter()
                .filter_map(|r| r[k].as_f64())
                .collect::<Vec<_>>(),
        )
    };
    let mut b = baseline_ms.clone();
    b.sort_by(f64::total_cmp);
    let base_p95 = b[((b.len() as f64 * 0.95).ceil() as usize)
        .saturating_sub(1)
        .min(b.len() - 1)];
    println!(
        "notify: announcement to {} connected students, median of {} runs",
        args.students, args.runs
    );
    println!("  POST acked            {:>9.1} ms", med("ackMs"));
    println!(
        "  SSE shows it  p50     {:>9.1} ms   p95 {:.1} ms   max {:.1} ms   all {:.1} ms",
        med("sseP50Ms"),
        med("sseP95Ms"),
        med("sseMaxMs"),
        med("sseAllMs")
    );
    println!(
        "  every email accepted  {:>9.1} ms   ({} emails)",
        med("emailsAllMs"),
        args.students + 2
    );
    println!(
        "  baseline: one student's grade  median {:.1} ms   p95 {:.1} ms   ({} grades, {} emails)",
        median(&baseline_ms),
        base_p95,
        args.baseline,
        mails_base
    );
    println!(
        "  node RSS  before {:.1} MiB   after {:.1} MiB   (anon {:.1} → {:.1} MiB)",
        before.rss as f64 / 1048576.0,
        after.rss as f64 / 1048576.0,
        before.anon as f64 / 1048576.0,
        after.anon as f64 / 1048576.0
    );
    if json_out {
        println!(
            "{}",
            json!({
                "bench": "notify", "students": args.students, "runs": runs,
                "baselineMedianMs": median(&baseline_ms), "baselineP95Ms": base_p95,
                "rssBeforeBytes": before.rss, "rssAfterBytes": after.rss,
            })
        );
    }
    drop(node);
    Ok(())
}

/// Opens `/api/stream/notifications` and reads past the response head and the first event.
async fn open_stream(addr: SocketAddr, token: &str) -> anyhow::Result<tokio::net::TcpStream> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    s.set_nodelay(true)?;
    let req = format!(
        "GET /api/stream/notifications?access_token={token} HTTP/1.1\r\nHost: {addr}\r\n\
         Accept: text/event-stream\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            bail!("the node closed the stream");
        }
        head.extend_from_slice(&buf[..n]);
        if head.starts_with(b"HTTP/1.1 ") && !head.starts_with(b"HTTP/1.1 200") {
            bail!("refused: {}", String::from_utf8_lossy(&head));
        }
        // The first event (`state`) has arrived once its blank line has.
        if let Some(at) = find(&head, b"event: state")
            && find(&head[at..], b"\n\n").is_some()
        {
            return Ok(s);
        }
    }
}

/// Reads until `needle` shows up.
async fn wait_for(s: &mut tokio::net::TcpStream, needle: &[u8]) -> anyhow::Result<()> {
    let mut window: Vec<u8> = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            bail!("the stream ended");
        }
        window.extend_from_slice(&buf[..n]);
        if find(&window, needle).is_some() {
            return Ok(());
        }
        let keep = window.len().saturating_sub(needle.len());
        window.drain(..keep);
    }
}

/// Reports every `notification` event of stream `i`.
async fn listen(
    mut s: tokio::net::TcpStream,
    i: usize,
    tx: mpsc::UnboundedSender<(usize, Instant)>,
) {
    loop {
        if wait_for(&mut s, b"event: notification").await.is_err() {
            return;
        }
        if tx.send((i, Instant::now())).is_err() {
            return;
        }
    }
}

/// Where `needle` starts in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

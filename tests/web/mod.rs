//! The browser client (lectern-web) in a real browser: `tests/js/web.mjs` drives Debian's
//! Chromium with playwright-core against a real node, and this module checks what it reports
//! and, above all, what the node itself holds afterwards.
//!
//! * `a_student_and_an_instructor_run_a_class_in_chromium`: two browser contexts and a
//!   projector; ask, upvote, answer, pin, poll, vote, close, reveal, broadcast.
//! * `notifications_the_leaderboard_and_the_dashboard_in_chromium`: a grade and an announcement
//!   reach the student's notifications panel (2 unread, announced), marked read one and then
//!   all (the node's inbox agrees); the leaderboard with the student's own rank and an opted-out
//!   classmate anonymized; the instructor dashboard's values as text.
//! * `a_student_reads_a_lesson_of_the_cohorts_course_and_marks_it_complete_in_chromium`: the
//!   course the demo cohort follows, a lesson opened with its image from `/content/`, "Mark
//!   complete" shown by the progress stream and recorded by the node.
//! * `a_feature_switched_off_is_hidden_by_the_page_and_shown_again_when_on`: `lectern flags
//!   set chat off` hides the open page's chat panel (polls stay), and `unset` shows it again.
//! * `with_websocket_blocked_the_page_falls_back_to_sse_then_long_polling`.
//! * `the_page_recovers_from_a_node_restart_and_sends_its_queue_exactly_once` (and `on_sse_…`,
//!   the same with the page on SSE + POST): an ack lost on the wire is retried under its command
//!   id; the node runs as a child process on a fixed port and data directory; the test
//!   SIGKILLs it and starts it again while the student acts.
//!
//! * `failover::the_page_fails_over_to_another_node_and_comes_home`: three node processes;
//!   the page's node SIGKILLed mid-class, the page live on the next node within 5 s, its queued
//!   action sent once, an event made on the third node meanwhile shown once, and home again
//!   once its node is back.
//!
//! * `classroom::the_instructor_page_follows_the_uplink_and_lets_a_newcomer_in_with_a_join_code_in_chromium`:
//!   a region and a classroom node over a cuttable link; the instructor page says in sync,
//!   offline since the cut, in sync after the heal; it makes a join code, a page with no token
//!   joins with it and asks; the instructor's 30-second token is renewed by the page.
//!
//! Screenshots of every view go to `target/web-screenshots/{scenario}/` (printed by each test).
//! Chromium and the npm package are installed by `scripts/setup`; without them these tests fail
//! (they do not skip), saying so.

mod classroom;
mod failover;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use lectern_gateway::auth::mint;
use lectern_node::DEMO_COHORT;
use lectern_testkit::Http;
use serde_json::Value;

use crate::gateway::{Demo, claims, unix_now_s};
use crate::support::{TempDir, Watchdog};

/// The Chromium the scripts drive (Debian's package).
const CHROMIUM: &str = "/usr/bin/chromium";

/// How long one browser scenario may run before it fails as hung (the script has its own,
/// shorter deadline).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);

/// One Chromium at a time: three browsers at once on two cores would only make each slower.
pub(crate) static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// `target/web-screenshots/{scenario}`, fresh.
fn shots_dir(scenario: &str) -> anyhow::Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
            tests.parent().unwrap_or(tests).join("target")
        });
    let dir = target.join("web-screenshots").join(scenario);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    println!("screenshots: {}", dir.display());
    Ok(dir)
}

fn check_installed() -> anyhow::Result<()> {
    let dir = js_dir();
    ensure!(
        dir.join("node_modules/playwright-core/package.json")
            .is_file(),
        "{} has no playwright-core: run scripts/setup before the tests",
        dir.join("node_modules").display()
    );
    ensure!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: run scripts/setup (it installs Debian's chromium)"
    );
    Ok(())
}

/// Runs `web.mjs scenario` against `base`; `on_step` answers the steps the script asks for
/// (`kill`, `restart`). Returns the script's summary. Blocking: call from `spawn_blocking`.
/// (`tests/netns/` runs the `offline-class` scenario against a classroom node with it.)
pub(crate) fn run_script(
    scenario: &str,
    base: &str,
    session: &str,
    tokens: [&str; 2],
    mut on_step: impl FnMut(&str) -> anyhow::Result<String>,
) -> anyhow::Result<Value> {
    check_installed()?;
    let shots = shots_dir(scenario)?;
    let mut child = Command::new("node")
        .arg(js_dir().join("web.mjs"))
        .args([scenario, base, session])
        .arg(&shots)
        .args(tokens)
        .current_dir(js_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run `node` (Node.js 20 must be on PATH; see scripts/setup)")?;
    let pid = child.id();
    let killer = Watchdog::arm(pid, SCRIPT_TIMEOUT);
    let mut stdin = child.stdin.take().context("the script's stdin")?;
    let stdout = BufReader::new(child.stdout.take().context("the script's stdout")?);
    let mut stderr = child.stderr.take().context("the script's stderr")?;
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let mut summary = None;
    for line in stdout.lines() {
        let line = line.context("read the script's output")?;
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Some(step) = v["step"].as_str() {
            let reply = on_step(step)?;
            writeln!(stdin, "{reply}").context("answer the script")?;
            stdin.flush().context("answer the script")?;
        } else if v.get("summary").is_some() {
            summary = Some(v["summary"].clone());
        }
    }
    let status = child.wait().context("wait for the script")?;
    drop(killer);
    let stderr = err_reader.join().unwrap_or_default();
    let summary = summary.with_context(|| {
        format!("web.mjs {scenario} printed no summary ({status}); stderr:\n{stderr}")
    })?;
    if !status.success() || summary.get("error").is_some() {
        bail!("web.mjs {scenario} failed ({status}): {summary:#}\nstderr:\n{stderr}");
    }
    for shot in summary["screenshots"].as_array().into_iter().flatten() {
        let path = shot.as_str().unwrap_or_default();
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        ensure!(len > 1000, "screenshot {path} is missing or empty");
    }
    Ok(summary)
}

fn kill(pid: u32, signal: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        #[allow(unsafe_code)]
        // SAFETY: kill(2) with a pid we spawned and a valid signal has no memory effects.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Runs `web.mjs scenario` against the demo node `demo` as student1 and the instructor ada (for
/// scenarios that ask for no steps).
async fn run_demo_script(demo: &Demo, scenario: &'static str) -> anyhow::Result<Value> {
    let base = format!("http://{}", demo.node.http_addr);
    let (session, s, i) = (
        demo.session.clone(),
        demo.token("student1", "student"),
        demo.token("ada", "instructor"),
    );
    tokio::task::spawn_blocking(move || run_script(scenario, &base, &session, [&s, &i], no_steps))
        .await?
}

fn no_steps(step: &str) -> anyhow::Result<String> {
    bail!("this scenario asks for no step, got {step}")
}

/// The student reads the course the demo cohort follows: its lesson listed with the student's
/// status, opened in place with its image loaded from `/content/`, no script in it, marked
/// complete, and the node's progress record agrees. Kills: a page that never shows the course,
/// a lesson body that does not render or whose image does not load, a "Mark complete" that the
/// node does not record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_student_reads_a_lesson_of_the_cohorts_course_and_marks_it_complete_in_chromium()
-> anyhow::Result<()> {
    let _one = BROWSER.lock().await;
    let demo = Demo::start("web-lesson").await?;
    let summary = run_demo_script(&demo, "lesson").await?;
    assert_eq!(
        summary["courseHeading"], "Course: Distributed Systems 101",
        "{summary}"
    );
    assert_eq!(summary["lessonTitle"], "Why wall clocks lie", "{summary}");
    assert_eq!(summary["statusBefore"], "not started", "{summary}");
    assert_eq!(summary["lessonHeading"], "Why wall clocks lie", "{summary}");
    let src = summary["imageSrc"].as_str().unwrap_or_default();
    assert!(
        src.starts_with("/content/") && src.ends_with(".png"),
        "{summary}"
    );
    assert_eq!(summary["scriptsInLesson"], 0, "{summary}");
    assert_eq!(summary["statusAfter"], "completed", "{summary}");
    assert_eq!(summary["a11y"], serde_json::json!([]), "{summary}");
    // The node holds the student's completion.
    let token = demo.token("student1", "student");
    let progress = demo
        .http
        .get(
            &format!("/api/cohorts/{DEMO_COHORT}/progress/student1"),
            Some(&token),
        )
        .await?;
    ensure!(progress.status == 200, "progress: {}", progress.text());
    let lessons = progress.json()?;
    let clocks = lessons["lessons"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["lesson"] == "clocks"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(clocks["status"], "completed", "{lessons}");
    demo.stop().await
}

/// How many questions of `view` have `text`.
fn questions_with(view: &Value, text: &str) -> usize {
    view["questions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|q| q["question"] == text)
        .count()
}

fn question<'a>(view: &'a Value, text: &str) -> &'a Value {
    view["questions"]
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["question"].as_str() == Some(text)))
        .unwrap_or(&Value::Null)
}

fn poll<'a>(view: &'a Value, text: &str) -> &'a Value {
    view["polls"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["question"].as_str() == Some(text)))
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_student_and_an_instructor_run_a_class_in_chromium() -> anyhow::Result<()> {
    let _one = BROWSER.lock().await;
    let demo = Demo::start("web-class").await?;
    let summary = run_demo_script(&demo, "class").await?;
    println!("time to live (ms since navigation): {}", summary["liveMs"]);

    assert_eq!(summary["askedSeenByInstructor"], 1, "{summary}");
    // Every module and the stylesheet came by its fingerprinted (immutable) name.
    assert_eq!(summary["plainStatic"], serde_json::json!([]), "{summary}");
    assert_eq!(
        summary["announced"], true,
        "new question announced: {summary}"
    );
    assert_eq!(summary["upvotePressed"], "true", "{summary}");
    assert!(
        summary["focusAfterAnswer"]
            .as_str()
            .is_some_and(|k| k.starts_with("answer:")),
        "focus returns to the Answer button: {summary}"
    );
    assert_eq!(summary["hiddenBeforeReveal"], true, "{summary}");
    assert_eq!(summary["revealedToStudent"], true, "{summary}");
    assert_eq!(summary["revealedOnProjector"], true, "{summary}");
    assert_eq!(summary["broadcastAnnounced"], true, "{summary}");
    assert_eq!(summary["screenshots"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        summary["progressSeen"], true,
        "own progress over SSE: {summary}"
    );
    for view in ["student", "instructor", "projector"] {
        assert_eq!(
            summary["a11y"][view],
            serde_json::json!([]),
            "axe-core finds WCAG 2.1 AA violations in the {view} view"
        );
    }

    // What the browsers did is what the node holds.
    let view = demo.session_view().await?;
    let q = summary["question"].as_str().context("question")?;
    assert_eq!(questions_with(&view, q), 1, "asked once: {view}");
    let asked = question(&view, q);
    assert_eq!(asked["author"]["id"], "student1");
    assert_eq!(asked["pinned"], true);
    assert_eq!(
        asked["answer"]["text"],
        "One that counts events, not seconds."
    );
    let demo_q = question(
        &view,
        "Why can't we just trust wall-clock time across nodes?",
    );
    assert_eq!(demo_q["upvotes"], 2, "the student's upvote counted once");
    assert_eq!(demo_q["status"], "dismissed");
    let held = summary["held"].as_str().context("held")?;
    assert_eq!(question(&view, held)["status"], "visible", "approved");
    let waiting = summary["waiting"].as_str().context("waiting")?;
    assert_eq!(
        question(&view, waiting)["status"],
        "pending",
        "still waiting"
    );
    let p = poll(&view, summary["poll"].as_str().context("poll")?);
    assert_eq!(p["state"], "closed");
    assert_eq!(p["revealed"], true);
    assert_eq!(p["results"]["counts"], serde_json::json!([0, 1, 0]));
    assert!(
        view["broadcasts"]
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b["text"] == "Break in five minutes")),
        "{view}"
    );
    demo.stop().await
}

/// The board intervals of the boards scenario's node: short, so that the test is quick.
const BOARD_INTERVAL_MS: u64 = 200;

/// Rows of a table the script read, as lists of cell texts.
fn rows(v: &Value) -> Vec<Vec<String>> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            r.as_array()
                .into_iter()
                .flatten()
                .map(|c| c.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_the_leaderboard_and_the_dashboard_in_chromium() -> anyhow::Result<()> {
    let _one = BROWSER.lock().await;
    let demo = Demo::start_with("web-boards", |c| {
        c.notify.leaderboard_interval_ms = BOARD_INTERVAL_MS;
        c.notify.dashboard_interval_ms = BOARD_INTERVAL_MS;
    })
    .await?;
    // student2 (Linus) hides their name from classmates.
    let s2 = demo.token("student2", "student");
    let r = demo
        .http
        .post_json(
            &format!("/api/cohorts/{DEMO_COHORT}/commands"),
            Some(&s2),
            &serde_json::json!({"cmd": "leaderboard.privacy", "anonymous": true}),
        )
        .await?;
    ensure!(
        r.status == 200,
        "leaderboard.privacy: {} {}",
        r.status,
        r.text()
    );
    let student_token = demo.token("student1", "student");
    let summary = run_demo_script(&demo, "boards").await?;

    // Notifications: the grade and the announcement, 2 unread, announced; one marked read,
    // then all.
    assert_eq!(summary["unreadBefore"], "(0 unread)", "{summary}");
    assert_eq!(summary["unreadText"], "(2 unread)", "{summary}");
    let title = summary["announcement"].as_str().context("announcement")?;
    let notes = summary["notes"].as_array().context("notes")?;
    assert_eq!(notes.len(), 2, "{summary}");
    let note = |t: &str| notes.iter().find(|n| n["title"] == t).cloned();
    let grade = note("Your grade for quiz-1 is ready").context("the grade notification")?;
    assert_eq!(grade["body"], "You scored 8 out of 10 on quiz-1.");
    assert!(
        grade["meta"]
            .as_str()
            .is_some_and(|m| m.contains("Grade") && m.ends_with("unread")),
        "{grade}"
    );
    assert_eq!(grade["badge"], true);
    let ann = note(title).context("the announcement")?;
    assert_eq!(ann["body"], "Bring your notes on vector clocks.");
    assert!(
        ann["meta"]
            .as_str()
            .is_some_and(|m| m.contains("Announcement")),
        "{ann}"
    );
    assert_eq!(
        summary["notesAnnounced"],
        serde_json::json!(["Your grade for quiz-1 is ready", title]),
        "each new notification said in the live region: {summary}"
    );
    assert_eq!(summary["announcerPolite"], "polite");
    assert_eq!(summary["unreadAfterOne"], "(1 unread)", "{summary}");
    assert_eq!(summary["gradeItemRead"], 1, "{summary}");
    assert!(
        summary["focusAfterMark"]
            .as_str()
            .is_some_and(|k| k.starts_with("note:")),
        "focus stays on the notification marked read: {summary}"
    );
    assert_eq!(summary["unreadAfterAll"], "(0 unread)", "{summary}");
    assert_eq!(summary["unreadItemsAfterAll"], 0, "{summary}");
    // The node's inbox agrees.
    let r = demo
        .http
        .get("/api/notifications", Some(&student_token))
        .await?;
    ensure!(r.status == 200, "inbox: {} {}", r.status, r.text());
    let inbox = r.json()?;
    assert_eq!(inbox["unread"], 0, "{inbox}");
    assert_eq!(inbox["total"], 2, "{inbox}");
    assert!(
        inbox["items"]
            .as_array()
            .is_some_and(|items| items.iter().all(|n| n["read"] == true)
                && items
                    .iter()
                    .any(|n| n["title"] == title && n["kind"] == "announcement")),
        "{inbox}"
    );

    // Leaderboard: Grace (student1) first with 8/10, highlighted; Linus anonymized for
    // classmates, named for staff.
    assert_eq!(
        rows(&summary["lbStudent"]),
        vec![
            vec!["1", "Grace (you)", "8 / 10", "1"],
            vec!["2", "Anonymous", "0", "0"],
        ],
        "{summary}"
    );
    assert_eq!(summary["lbMine"], "Your rank: 1 of 2");
    assert_eq!(summary["lbMeRow"], "1 | Grace (you) | 8 / 10 | 1");
    assert_eq!(
        summary["lbMeWeight"], "700",
        "the own row stands out: {summary}"
    );
    assert_eq!(
        rows(&summary["lbInstructor"]),
        vec![
            vec!["1", "Grace", "8 / 10", "1"],
            vec!["2", "Linus (anonymous to classmates)", "0", "0"],
        ],
        "{summary}"
    );
    // Grace hides her name: her row is "Anonymous" and still hers on her page; staff see both
    // choices.
    assert_eq!(summary["showNameBefore"], true, "{summary}");
    assert_eq!(summary["showNameAfter"], false, "{summary}");
    assert_eq!(summary["lbMeAnonRow"], "1 | Anonymous (you) | 8 / 10 | 1");
    assert_eq!(
        summary["lbMineAnon"],
        "Your rank: 1 of 2 (classmates see you as Anonymous)"
    );
    assert_eq!(
        summary["privacyStatus"],
        "Classmates now see you as Anonymous."
    );
    assert_eq!(
        rows(&summary["lbInstructorAnon"]),
        vec![
            vec!["1", "Grace (anonymous to classmates)", "8 / 10", "1"],
            vec!["2", "Linus (anonymous to classmates)", "0", "0"],
        ],
        "{summary}"
    );

    // Dashboard: what the node computed, as text.
    let dash = &summary["dash"];
    // The student's page is in the session; the instructor's counts apart, as staff.
    assert_eq!(dash["online"], "1", "{dash}");
    assert_eq!(dash["onlineNames"], "User student1", "{dash}");
    assert_eq!(dash["onlineStaff"], "and 1 staff", "{dash}");
    assert_eq!(summary["completionBefore"], "0%", "{summary}");
    assert_eq!(
        dash["completion"], "50%",
        "one of two students completed quiz-1"
    );
    assert_eq!(dash["students"], "2");
    assert_eq!(
        dash["openQuestions"], "2",
        "the demo's two questions: {dash}"
    );
    assert_eq!(
        rows(&dash["lessons"]),
        vec![vec!["quiz-1", "1", "0", "1", "50%", "80%", ""]],
        "{dash}"
    );
    assert_eq!(
        rows(&dash["polls"]),
        vec![vec![
            "How confident are you with Lamport clocks?",
            "open",
            "1",
            "50%"
        ]],
        "{dash}"
    );
    assert_eq!(dash["inactiveHeading"], "Inactive for 7 days or more (1)");
    assert!(
        dash["inactive"]
            .as_array()
            .is_some_and(|l| l.len() == 1 && l[0] == "Linus no activity yet"),
        "{dash}"
    );
    assert_eq!(
        summary["clippedForms"],
        serde_json::json!({"student": [], "instructor": []}),
        "{summary}"
    );
    assert_eq!(
        summary["missingHidden"],
        serde_json::json!({"notes": true, "leaderboard": true, "dashboard": true}),
        "a stream the node lacks hides its section: {summary}"
    );
    assert_eq!(summary["progressWithoutBoards"], true);
    assert_eq!(summary["screenshots"].as_array().map(Vec::len), Some(5));
    for view in ["student", "instructor"] {
        assert_eq!(
            summary["a11y"][view],
            serde_json::json!([]),
            "axe-core finds WCAG 2.1 AA violations in the {view} view"
        );
    }
    demo.stop().await
}

/// The admin token of the flags scenario's node (the `lectern` binary's, too).
const FLAGS_ADMIN_TOKEN: &str = "web-flags-admin-token-0123";

/// Runs the `lectern` binary (built by [`crate::ops::lectern_bin`]) with `args` against
/// `http`; its stdout if it exits 0. Blocking.
fn lectern_blocking(http: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(crate::ops::lectern_bin()?)
        .args(args)
        .args(["--http", http, "--admin-token", FLAGS_ADMIN_TOKEN])
        .env_remove("LECTERN_ADMIN_TOKEN")
        .env_remove("LECTERN_ADMIN_HTTP")
        .output()
        .context("run lectern")?;
    ensure!(
        out.status.success(),
        "lectern {args:?}: {:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The page hides a feature switched off with `lectern flags set` (the open page, at its next
/// reading of `/api/flags`, no reload) and shows the others; switched on again, a reload shows
/// it. Kills: a page that ignores the flags, one that hides every panel, one that keeps a
/// panel hidden once its feature is back on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feature_switched_off_is_hidden_by_the_page_and_shown_again_when_on() -> anyhow::Result<()>
{
    let _one = BROWSER.lock().await;
    // Built before the browser starts (a build on a loaded machine takes minutes).
    tokio::task::spawn_blocking(crate::ops::lectern_bin).await??;
    let demo = Demo::start_with("web-flags", |c| {
        c.admin_token = Some(FLAGS_ADMIN_TOKEN.into());
    })
    .await?;
    let base = format!("http://{}", demo.node.http_addr);
    let http = demo.node.http_addr.to_string();
    let (session, s, i) = (
        demo.session.clone(),
        demo.token("student1", "student"),
        demo.token("ada", "instructor"),
    );
    let summary = tokio::task::spawn_blocking(move || {
        run_script("flags", &base, &session, [&s, &i], |step| match step {
            "chat-off" => {
                lectern_blocking(&http, &["flags", "set", "chat", "off"])?;
                Ok("off".into())
            }
            "chat-on" => {
                lectern_blocking(&http, &["flags", "unset", "chat"])?;
                Ok("on".into())
            }
            other => bail!("unknown step {other}"),
        })
    })
    .await??;
    println!(
        "chat panel hidden {} ms after `lectern flags set chat off` returned (the page rereads \
         the flags every 15 s)",
        summary["hiddenAfterMs"]
    );
    let shown = |chat: bool, polls: bool| serde_json::json!({"chat": chat, "polls": polls});
    assert_eq!(summary["before"], shown(true, true), "{summary}");
    assert_eq!(summary["off"], shown(false, true), "{summary}");
    assert_eq!(summary["flagsAfterReload"]["chat"], true, "{summary}");
    assert_eq!(summary["on"], shown(true, true), "{summary}");
    assert_eq!(summary["screenshots"].as_array().map(Vec::len), Some(2));
    // The node agrees: nothing is left set.
    assert_eq!(
        *demo.node.hub.flags(),
        lectern_model::FlagSet::new(),
        "the flags after unset"
    );
    demo.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_websocket_blocked_the_page_falls_back_to_sse_then_long_polling() -> anyhow::Result<()>
{
    let _one = BROWSER.lock().await;
    let demo = Demo::start("web-fallback").await?;
    let summary = run_demo_script(&demo, "fallback").await?;
    println!("time to live (ms since navigation): {}", summary["liveMs"]);

    assert_eq!(summary["sseTransport"], "sse", "{summary}");
    assert!(
        summary["sseStatusText"]
            .as_str()
            .is_some_and(|t| t.starts_with("Live") && t.contains("server-sent events")),
        "the page says how it is connected: {summary}"
    );
    assert_eq!(summary["sseAnswerSeen"], true);
    assert_eq!(summary["lpTransport"], "longpoll", "{summary}");
    assert_eq!(summary["lpBroadcastSeen"], true);
    assert_eq!(
        summary["joinedByCode"], "student",
        "joined by code: {summary}"
    );

    let view = demo.session_view().await?;
    for field in ["sseQuestion", "lpQuestion"] {
        let q = summary[field].as_str().context("question")?;
        assert_eq!(questions_with(&view, q), 1, "{field} asked once: {view}");
        assert_eq!(question(&view, q)["author"]["id"], "student1");
    }
    let p = poll(&view, "How confident are you with Lamport clocks?");
    assert_eq!(
        p["results"]["counts"],
        serde_json::json!([0, 0, 0, 1, 0]),
        "the vote POSTed under SSE counted once: {p}"
    );
    demo.stop().await
}

// ---------------------------------------------------------------------------------------------
// A node as a child process, killed and restarted on the same port and data directory.
// ---------------------------------------------------------------------------------------------

/// Environment of the node child: its data directory, HTTP address and secret.
const CHILD_DIR: &str = "LECTERN_TEST_WEB_NODE_DIR";
const CHILD_ADDR: &str = "LECTERN_TEST_WEB_NODE_ADDR";
const CHILD_SECRET: &str = "LECTERN_TEST_WEB_NODE_SECRET";

/// Not a test of its own: the entry point of the node child the restart test starts (this
/// test binary, re-executed). Without its environment it returns at once.
#[test]
fn web_node_child() {
    let (Ok(dir), Ok(addr), Ok(secret)) = (
        std::env::var(CHILD_DIR),
        std::env::var(CHILD_ADDR),
        std::env::var(CHILD_SECRET),
    ) else {
        return;
    };
    let rt = crate::support::child_runtime();
    rt.block_on(async move {
        let mut config = lectern_node::Config {
            data_dir: dir.into(),
            http: addr.parse().expect("child address"),
            demo: true,
            ..Default::default()
        };
        config.auth.hs256_secret = Some(secret);
        let node = lectern_node::start(config).await.expect("start node");
        println!("READY {}", node.http_addr);
        // Runs until the parent kills it.
        std::future::pending::<()>().await;
    });
}

struct NodeChild {
    child: Child,
    _watchdog: Watchdog,
}

impl NodeChild {
    /// Starts the node child and waits for its READY line.
    fn start(dir: &Path, addr: SocketAddr, secret: &str) -> anyhow::Result<NodeChild> {
        NodeChild::spawn(
            "web::web_node_child",
            &[
                (CHILD_DIR, dir.display().to_string()),
                (CHILD_ADDR, addr.to_string()),
                (CHILD_SECRET, secret.to_owned()),
            ],
        )
    }

    /// Runs the test `entry` of this binary as a child with `env`, and waits for its READY line.
    fn spawn(entry: &str, env: &[(&str, String)]) -> anyhow::Result<NodeChild> {
        let exe = std::env::current_exe().context("the test binary's path")?;
        let mut child = Command::new(exe)
            .args(["--exact", entry, "--nocapture", "--test-threads=1"])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("LECTERN_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn the node child")?;
        let watchdog = Watchdog::arm(child.id(), SCRIPT_TIMEOUT);
        let stdout = child.stdout.take().context("the child's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                // The harness prints `test … ... ` before the line on the same row.
                Some(Ok(l)) if l.contains("READY ") => break,
                Some(Ok(_)) => continue,
                _ => bail!("the node child ended before it was ready"),
            }
        }
        // Keep draining its stdout so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(NodeChild {
            child,
            _watchdog: watchdog,
        })
    }

    fn sigkill(mut self) -> anyhow::Result<()> {
        kill(self.child.id(), libc::SIGKILL);
        self.child.wait().context("reap the killed node")?;
        Ok(())
    }
}

impl Drop for NodeChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            kill(self.child.id(), libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// A loopback address with a port that was free a moment ago (the child binds it; the port
/// must stay the same across the restart, so it cannot be `:0`). The port is taken below the
/// kernel's ephemeral range (32768 and up), so that no outgoing connection of another test can
/// borrow it while the node is down.
fn free_addr() -> anyhow::Result<SocketAddr> {
    for _ in 0..100 {
        let port = 20_000 + rand::random::<u16>() % 12_000;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().context("read the port");
        }
    }
    bail!("no free port found below the ephemeral range")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_recovers_from_a_node_restart_and_sends_its_queue_exactly_once()
-> anyhow::Result<()> {
    restart("restart", "websocket").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sse_the_page_recovers_from_a_node_restart_and_sends_its_queue_exactly_once()
-> anyhow::Result<()> {
    restart("restart-sse", "sse").await
}

/// The restart scenario with the page on `transport`: an ack lost on the wire, then the node
/// SIGKILLed and restarted while the student acts; the restarted node must hold every action
/// exactly once.
async fn restart(scenario: &'static str, transport: &str) -> anyhow::Result<()> {
    let _one = BROWSER.lock().await;
    let dir = TempDir::new("web-restart");
    let addr = free_addr()?;
    let secret = format!("web-restart-secret-{:032x}", rand::random::<u128>());
    let token = |user: &str, role: &str| {
        mint(
            secret.as_bytes(),
            &claims(user, role, &[DEMO_COHORT], unix_now_s() + 3600),
        )
        .context("mint a token")
    };
    let (s, i) = (token("student1", "student")?, token("ada", "instructor")?);
    let node = NodeChild::start(dir.path(), addr, &secret)?;
    let base = format!("http://{addr}");
    let (path, sec, inst) = (dir.path().to_path_buf(), secret.clone(), i.clone());
    let summary = tokio::task::spawn_blocking(move || {
        let mut node = Some(node);
        run_script(
            scenario,
            &base,
            lectern_node::DEMO_SESSION,
            [&s, &inst],
            |step| match step {
                "kill" => {
                    node.take().context("a running node")?.sigkill()?;
                    Ok("killed".into())
                }
                "restart" => {
                    node = Some(NodeChild::start(&path, addr, &sec)?);
                    Ok("restarted".into())
                }
                other => bail!("unknown step {other}"),
            },
        )
        .map(|summary| (summary, node))
    })
    .await??;
    let (summary, node) = summary;
    ensure!(node.is_some(), "the node was restarted");

    assert_eq!(summary["droppedAcks"], 1, "one ack was lost: {summary}");
    assert_eq!(summary["lostAckShownOnce"], 1, "{summary}");
    assert_ne!(summary["stateWhileDown"], "live", "{summary}");
    assert_eq!(summary["queuedWhileDown"], 4, "{summary}");
    assert!(
        summary["statusWhileDown"]
            .as_str()
            .is_some_and(|t| t.contains("4 actions waiting")),
        "the page says what is waiting: {summary}"
    );
    assert_eq!(
        summary["outboxListed"], 4,
        "the page lists what waits: {summary}"
    );
    assert_eq!(summary["transportAfter"], transport);
    assert_eq!(
        summary["snapshots"], 1,
        "reconnects resumed by token: {summary}"
    );
    assert_eq!(summary["offlineShownOnce"], 1);
    assert_eq!(summary["afterReload"], serde_json::json!([1, 1]));

    // The restarted node's own view: each action applied exactly once.
    let http = Http::new(addr);
    let resp = http
        .get(
            &format!("/api/sessions/{}", lectern_node::DEMO_SESSION),
            Some(&i),
        )
        .await?;
    ensure!(resp.status == 200, "session view: {}", resp.status);
    let view = resp.json()?;
    for field in ["lost", "offline"] {
        let q = summary[field].as_str().context("question")?;
        assert_eq!(questions_with(&view, q), 1, "{field} applied once: {view}");
    }
    let q2 = question(&view, "Is a vector clock the same as a version vector?");
    assert_eq!(q2["upvotes"], 1, "the queued upvote counted once: {q2}");
    let p = poll(&view, "How confident are you with Lamport clocks?");
    assert_eq!(p["results"]["counts"], serde_json::json!([0, 1, 0, 0, 0]));
    let chats = view["chat"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["text"] == "Sent while the node was down")
        .count();
    assert_eq!(chats, 1, "the queued chat message sent once: {view}");
    drop(node);
    Ok(())
}

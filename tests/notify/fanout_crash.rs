//! A node process that dies in the middle of an announcement's fan-out, and again, if the step
//! were not one batch, between a step and its follow-up jobs: after the restarts every student
//! has the notification in their inbox once and every email went out once (none lost, none
//! twice, nothing dead-lettered).
//!
//! The moments of death are made certain by the state on disk, not raced: the child node
//! (this test binary, re-executed) installs a [`CommitHook`] that looks at the store before
//! every batch and aborts the process (`std::process::abort`: no destructor, no flush, no
//! graceful stop) when the state matches.
//!
//! 1. First child, `pushes`: it posts the announcement; its one fan-out job pushes into the
//!    inboxes; once half of them hold it, the store is fsynced (so exactly those pushes are on
//!    disk) and the process aborts before the next batch. The fan-out's completion and its
//!    email jobs are not on disk: the fan-out must run again from the start, meeting inboxes
//!    that already hold the notification.
//! 2. Second child, `step`, on the same directory: the fan-out runs again. Its completion and
//!    its email follow-ups are one batch, so no batch ever starts while the fan-out is still
//!    queued and some email job exists, or while it is finished and some recipient's email job
//!    is missing. Should either state exist (the step split in two batches), the child aborts
//!    right there, which is the crash "between a step and its follow-ups". Otherwise it runs
//!    every job to the end and is SIGKILLed once idle.
//! 3. This process restarts the node on the directory and checks the result.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lectern_model::{Caller, Command, CommandBody, DocId, Role};
use lectern_node::DEMO_COHORT;
use lectern_store::{CommitHook, Store};
use lectern_testkit::{Http, SmtpServer};
use tokio::sync::mpsc::UnboundedReceiver;

use super::{NotifyNode, add_students};
use crate::gateway::within;
use crate::support::{KillOnDrop, TempDir, Watchdog};

const CHILD_ENV: &str = "LECTERN_TEST_FANOUT_CRASH_CHILD";
const DIR_ENV: &str = "LECTERN_TEST_FANOUT_CRASH_DIR";
const SMTP_ENV: &str = "LECTERN_TEST_FANOUT_CRASH_SMTP_PORT";
/// Students added to the demo cohort (more than `fanout_inline_max`, 16: one fan-out job).
const STUDENTS: usize = 40;
/// The announcement's command id.
const ANNOUNCEMENT: &str = "fanout-crash-announcement";
/// How long a child may live before the watchdog kills it.
const CHILD_LIFE_MAX: Duration = Duration::from_secs(120);
/// How long the test waits for a child's word (it dies or reports idle within a few seconds).
const CHILD_WORD_WAIT: Duration = Duration::from_secs(40);

/// Everyone the announcement goes to: the demo's two students and the added ones.
fn recipients() -> Vec<String> {
    let mut users = vec!["student1".to_owned(), "student2".to_owned()];
    users.extend((0..STUDENTS).map(|i| format!("s{i:04}")));
    users
}

/// The id of `user`'s email job of notification `nid` (`lectern_jobs::email_id`).
fn email_job(nid: &str, user: &str) -> String {
    format!("{nid}/{user}/email")
}

/// The queued fan-out jobs (a fan-out's id is its notification's, without a `/`).
fn queued_fanouts(store: &Store) -> Vec<String> {
    store
        .pending_jobs()
        .map(|jobs| {
            jobs.into_iter()
                .map(|(id, _)| id)
                .filter(|id| !id.contains('/'))
                .collect()
        })
        .unwrap_or_default()
}

fn inbox_docs(store: &Store) -> usize {
    store
        .doc_ids()
        .map(|ids| ids.iter().filter(|d| d.starts_with("inbox/")).count())
        .unwrap_or(0)
}

/// Prints `line` for the parent and aborts the process at once.
fn die(line: &str) -> ! {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    std::process::abort();
}

/// When the child dies (see the module docs).
enum CrashAt {
    /// Once `half` inboxes more than `baseline` exist while the fan-out is queued.
    MidFanOut { baseline: usize, half: usize },
    /// At any state between the step of fan-out (and notification) `nid` and its follow-ups.
    BetweenStepAndFollowUps { nid: String },
}

struct Crash {
    store: Store,
    at: CrashAt,
}

impl CommitHook for Crash {
    fn before_apply(&self) -> bool {
        let store = &self.store;
        match &self.at {
            CrashAt::MidFanOut { baseline, half } => {
                let new = inbox_docs(store).saturating_sub(*baseline);
                if new >= *half && !queued_fanouts(store).is_empty() {
                    // Exactly the pushes applied so far reach the disk, as if the kill came
                    // right after their round's fsync.
                    let _ = store.flush();
                    die(&format!("ABORT mid-fan-out inboxes={new}"));
                }
            }
            CrashAt::BetweenStepAndFollowUps { nid } => {
                let users = recipients();
                let has_email = |u: &String| {
                    let id = email_job(nid, u);
                    store.job_pending(&id).unwrap_or(false) || store.job_done(&id).unwrap_or(false)
                };
                let fanout_queued = store.job_pending(nid).unwrap_or(false);
                let fanout_done = store.job_done(nid).unwrap_or(false);
                if fanout_queued && users.iter().any(has_email) {
                    let _ = store.flush();
                    die("ABORT follow-ups on disk before their step's completion");
                }
                if fanout_done && !users.iter().all(has_email) {
                    let _ = store.flush();
                    die("ABORT step completed before its follow-ups");
                }
            }
        }
        true
    }
}

/// The configuration of a child node on `dir`, mailing to the parent's server on `port`.
fn child_config(dir: &Path, port: u16) -> lectern_node::Config {
    let mut c = lectern_node::Config {
        data_dir: dir.to_path_buf(),
        http: "127.0.0.1:0".parse().expect("an address"),
        demo: true,
        ..Default::default()
    };
    c.notify.smtp = Some(lectern_node::config::SmtpSettings {
        host: "127.0.0.1".to_owned(),
        port,
        tls: lectern_jobs::TlsMode::None,
        username: None,
        password: None,
        timeout_ms: 5_000,
    });
    c.notify.email_domain = Some(super::EMAIL_DOMAIN.to_owned());
    c.notify.from = "Lectern <no-reply@lectern.test>".to_owned();
    c.notify.backoff_base_ms = 50;
    c
}

/// Not a test of its own: the child node of the test below (`pushes` or `step`). Without the
/// child environment variable it returns at once.
#[test]
fn child_entrypoint() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(std::env::var(DIR_ENV).expect("the data directory"));
    let port: u16 = std::env::var(SMTP_ENV)
        .expect("the smtp port")
        .parse()
        .expect("a port");
    let rt = crate::support::child_runtime();
    rt.block_on(async move {
        if mode == "pushes" {
            let node = lectern_node::start(child_config(&dir, port))
                .await
                .expect("start the child node");
            let store = node.hub.store().clone();
            add_students(&node.hub, STUDENTS).await.expect("roster");
            let at = CrashAt::MidFanOut {
                baseline: inbox_docs(&store),
                half: recipients().len() / 2,
            };
            store.set_commit_hook(Some(Arc::new(Crash {
                store: store.clone(),
                at,
            })));
            let ada = Caller {
                user: "ada".parse().expect("an id"),
                name: "Ada".into(),
                role: Role::Instructor,
                cohorts: vec![DEMO_COHORT.parse().expect("an id")],
            };
            node.hub
                .execute(
                    DocId::Cohort(DEMO_COHORT.parse().expect("an id")),
                    ada,
                    Command {
                        id: ANNOUNCEMENT.parse().expect("an id"),
                        body: CommandBody::AnnouncementPost {
                            title: "Room change".into(),
                            body: "Room 4 from Monday.".into(),
                        },
                    },
                )
                .await
                .expect("post");
            println!("POSTED");
            // The hook aborts the process during the fan-out; the node lives until then.
            std::future::pending::<()>().await;
            drop(node);
        } else {
            // The hook is in place before the node starts: its job runner runs the queued
            // fan-out at once.
            let store = Store::open(&dir).expect("open the store");
            let mut fanouts = queued_fanouts(&store);
            assert_eq!(fanouts.len(), 1, "one fan-out queued: {fanouts:?}");
            let nid = fanouts.remove(0);
            store.set_commit_hook(Some(Arc::new(Crash {
                store: store.clone(),
                at: CrashAt::BetweenStepAndFollowUps { nid },
            })));
            let node = lectern_node::start_on(child_config(&dir, port), store)
                .await
                .expect("start the child node");
            let node = NotifyNode {
                http: Http::new(node.http_addr),
                node,
                dir: None,
            };
            node.jobs_idle().await.expect("the jobs run to the end");
            println!("IDLE");
            // Dies by SIGKILL; never drops the node.
            std::future::pending::<()>().await;
            drop(node);
        }
    });
}

/// Starts a child in `mode`; its stdout lines arrive on the receiver, which closes when the
/// child's stdout ends.
fn spawn_child(
    mode: &str,
    dir: &Path,
    smtp: &SmtpServer,
) -> anyhow::Result<(KillOnDrop, Watchdog, UnboundedReceiver<String>)> {
    let child = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "notify::fanout_crash::child_entrypoint",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, mode)
        .env(DIR_ENV, dir)
        .env(SMTP_ENV, smtp.addr().port().to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()?;
    let watchdog = Watchdog::arm(child.id(), CHILD_LIFE_MAX);
    let mut child = KillOnDrop(child);
    let stdout = child.stdout.take().context("piped stdout")?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    Ok((child, watchdog, rx))
}

/// The first line from the child that contains one of `markers` (the harness may print
/// `test … ... ` in front of it), or `None` once its stdout ended without one.
async fn next_marker(
    rx: &mut UnboundedReceiver<String>,
    markers: &[&str],
) -> anyhow::Result<Option<String>> {
    let read = async {
        while let Some(line) = rx.recv().await {
            if let Some(at) = markers.iter().filter_map(|m| line.find(m)).min() {
                return Some(line[at..].trim_end().to_owned());
            }
        }
        None
    };
    tokio::time::timeout(CHILD_WORD_WAIT, read)
        .await
        .with_context(|| format!("no word from the child ({markers:?}) within {CHILD_WORD_WAIT:?}"))
}

/// Reaps `child` off the runtime's workers; its exit status.
async fn reap(mut child: KillOnDrop) -> anyhow::Result<std::process::ExitStatus> {
    tokio::task::spawn_blocking(move || child.wait())
        .await
        .context("join the reaping task")?
        .context("wait for the child")
}

/// Kills: a fan-out that counts an inbox already holding its notification as a failure (the
/// `DuplicateCommand` arm of `deliver_inapp` made never to match: the rerun dead-letters those
/// users' deliveries, and their emails never go); a step's completion committed in a batch
/// before its follow-ups (the second child dies between them: every email is lost); its
/// follow-ups committed before its completion (the second child dies between them, which the
/// last assertion names; also with `enqueue_job` ignoring the finished marker). `enqueue_job`
/// ignoring the finished marker alone passes: while a step and its follow-ups are one batch,
/// nothing ever enqueues a finished id again, and `lectern-store`'s
/// `jobs_enqueue_once_by_id_complete_and_dead_letter_durably` guards the check itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_the_middle_of_a_fan_out_delivers_every_notification_and_email_once() {
    within(async {
        let smtp = SmtpServer::start().await?;
        let dir = TempDir::new("notify-fanout-crash");
        let users = recipients();

        // 1. Dies in the middle of the fan-out's pushes.
        let (child, _watchdog, mut lines) = spawn_child("pushes", dir.path(), &smtp)?;
        let marker = next_marker(&mut lines, &["ABORT"]).await?;
        let status = reap(child).await?;
        let marker = marker.context("the first child ended without aborting")?;
        anyhow::ensure!(
            status.signal() == Some(libc::SIGABRT),
            "the first child did not abort: {status:?}"
        );
        let half = users.len() / 2;
        assert_eq!(marker, format!("ABORT mid-fan-out inboxes={half}"));
        let store_dir = dir.path().to_path_buf();
        let (fanout_queued, inboxes, emails_queued) = tokio::task::spawn_blocking(move || {
            let store = Store::open(&store_dir)?;
            let queued = store.pending_jobs()?;
            anyhow::Ok((
                queued_fanouts(&store).len(),
                inbox_docs(&store),
                queued
                    .iter()
                    .filter(|(id, _)| id.ends_with("/email"))
                    .count(),
            ))
        })
        .await??;
        assert_eq!(
            fanout_queued, 1,
            "the fan-out was still queued at the crash"
        );
        assert!(
            inboxes >= half && inboxes < users.len(),
            "{inboxes} inboxes on disk: the crash was not in the middle of the fan-out"
        );
        assert_eq!(emails_queued, 0, "no email job before the fan-out's step");
        assert!(
            smtp.mails().is_empty(),
            "an email before the fan-out's step"
        );

        // 2. Runs the fan-out again; dies if its step and follow-ups are ever apart.
        let (mut child, _watchdog, mut lines) = spawn_child("step", dir.path(), &smtp)?;
        let marker = next_marker(&mut lines, &["IDLE", "ABORT"]).await?;
        if marker.as_deref() == Some("IDLE") {
            child.0.kill().context("SIGKILL the second child")?;
        }
        reap(child).await?;
        let second = marker.context("the second child ended without a word")?;

        // 3. Restarts here and checks that everything happened exactly once.
        let node = NotifyNode::restart(dir, &smtp, |_| {}).await?;
        node.jobs_idle().await?;
        let mails = smtp.mails();
        let mut per_rcpt: HashMap<String, Vec<String>> = HashMap::new();
        for m in &mails {
            for r in &m.rcpt_to {
                per_rcpt
                    .entry(r.clone())
                    .or_default()
                    .push(m.header("Message-ID").unwrap_or_default());
            }
        }
        for user in &users {
            let rcpt = format!("{user}@{}", super::EMAIL_DOMAIN);
            let got = per_rcpt.get(&rcpt).map_or(0, Vec::len);
            assert_eq!(got, 1, "{rcpt} got {got} emails: {:?}", per_rcpt.get(&rcpt));
        }
        assert_eq!(
            mails.len(),
            users.len(),
            "one email per recipient, no other"
        );
        let store = node.hub().store().clone();
        let (dead, queued) = tokio::task::spawn_blocking(move || {
            anyhow::Ok((store.dead_jobs()?, store.pending_jobs()?))
        })
        .await??;
        assert!(dead.is_empty(), "dead letters: {dead:?}");
        assert!(queued.is_empty(), "still queued: {queued:?}");
        for user in &users {
            let owner: lectern_model::UserId = user.parse()?;
            let viewer = Caller {
                user: owner.clone(),
                name: String::new(),
                role: Role::Student,
                cohorts: vec![],
            };
            let view = node
                .hub()
                .read(DocId::Inbox(owner), move |r| r.inbox_view(&viewer))
                .await?
                .map_err(|r| anyhow::anyhow!("{r}"))?;
            assert_eq!(view["total"], 1, "{user}: {view}");
        }
        eprintln!(
            "fanout_crash: the first child died with {inboxes} of {} inboxes on disk; the \
             second: {second}; {} emails",
            users.len(),
            mails.len()
        );
        assert_eq!(
            second, "IDLE",
            "the second child died between the fan-out's step and its follow-ups"
        );
        node.stop().await?;
        Ok(())
    })
    .await
    .unwrap();
}

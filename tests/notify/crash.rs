//! A node killed with SIGKILL in the middle of an announcement's 302 notification jobs: after a
//! restart every student has the notification in their inbox exactly once, every email went
//! out, and an email sent twice (handed to SMTP just before the kill, its completion not yet on
//! disk) carries the same Message-ID both times, so the copy can be dropped; there are at most
//! as many such copies as jobs that were running.
//!
//! The kill's moment is made certain, not raced: the mail server accepts [`BEFORE_KILL`] emails,
//! then holds the next ones unanswered until every worker is in the middle of one, and takes
//! those without ever answering (it has them; the child never learns it). So at the kill
//! exactly [`WORKERS`] emails are with the server and not completed on disk: each must come
//! again, with its Message-ID, and nothing else twice.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::time::Duration;

use lectern_model::{Command, CommandBody, DocId, Role};
use lectern_node::DEMO_COHORT;
use lectern_testkit::SmtpServer;

use super::{NotifyNode, add_students};
use crate::gateway::within;
use crate::support::TempDir;

const CHILD_ENV: &str = "LECTERN_TEST_NOTIFY_CHILD";
const STUDENTS: usize = 300;
const WORKERS: usize = 32;
/// Emails the server accepts (and answers) before it holds the rest.
const BEFORE_KILL: usize = 40;

/// Not a test of its own: the child process of the test below. Without the child environment
/// variable it returns at once.
#[test]
fn child_entrypoint() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let port: u16 = std::env::var("LECTERN_TEST_SMTP_PORT")
        .expect("smtp port")
        .parse()
        .expect("a port");
    let rt = crate::support::child_runtime();
    rt.block_on(async move {
        let smtp_addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut c = config_for(std::path::Path::new(&dir), smtp_addr);
        c.notify.workers = WORKERS;
        let node = lectern_node::start(c).await.expect("start the child node");
        add_students(&node.hub, STUDENTS).await.expect("roster");
        let ada = lectern_model::Caller {
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
                    id: "crash-announcement".parse().expect("an id"),
                    body: CommandBody::AnnouncementPost {
                        title: "Fire drill".into(),
                        body: "At noon.".into(),
                    },
                },
            )
            .await
            .expect("post");
        println!("POSTED");
        std::future::pending::<()>().await;
    });
}

/// The notify test configuration for a directory given as a path.
fn config_for(dir: &std::path::Path, smtp: std::net::SocketAddr) -> lectern_node::Config {
    let mut c = lectern_node::Config {
        data_dir: dir.to_path_buf(),
        http: "127.0.0.1:0".parse().expect("an address"),
        demo: true,
        ..Default::default()
    };
    c.notify.smtp = Some(lectern_node::config::SmtpSettings {
        host: smtp.ip().to_string(),
        port: smtp.port(),
        tls: lectern_jobs::TlsMode::None,
        username: None,
        password: None,
        // Held emails wait for the test, never for a timeout.
        timeout_ms: 120_000,
    });
    c.notify.email_domain = Some(super::EMAIL_DOMAIN.to_owned());
    c.notify.from = "Lectern <no-reply@lectern.test>".to_owned();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_mid_announcement_loses_nothing_and_duplicates_only_in_flight_emails() {
    within(async {
        let smtp = SmtpServer::start().await?;
        smtp.pause_after(BEFORE_KILL);
        let dir = TempDir::new("notify-crash");
        let exe = std::env::current_exe()?;
        let mut child = std::process::Command::new(exe)
            .args([
                "--exact",
                "notify::crash::child_entrypoint",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .env("LECTERN_TEST_SMTP_PORT", smtp.addr().port().to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped stdout");
        let posted = tokio::task::spawn_blocking(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                // libtest prints `test … ... ` before the child's first line.
                .any(|l| l.trim_end().ends_with("POSTED"))
        });
        anyhow::ensure!(posted.await?, "the child never posted");
        smtp.wait_for_held(WORKERS, Duration::from_secs(60)).await?;
        let unanswered = smtp.take_held_unanswered();
        child.kill()?; // SIGKILL
        child.wait()?;
        let at_kill = smtp.mails();
        let expected = STUDENTS + 2;
        assert_eq!(unanswered, WORKERS);
        assert_eq!(at_kill.len(), BEFORE_KILL + unanswered);
        // Those the child never heard back about.
        let mut unconfirmed: Vec<String> = at_kill[BEFORE_KILL..]
            .iter()
            .flat_map(|m| m.rcpt_to.clone())
            .collect();
        unconfirmed.sort();
        smtp.resume();

        // The restart, in this process, on the same directory.
        let node = NotifyNode::restart(dir, &smtp, |c| c.notify.workers = WORKERS).await?;
        node.jobs_idle().await?;
        let mails = smtp.mails();
        let mut ids: HashMap<String, Vec<String>> = HashMap::new();
        for m in &mails {
            for r in &m.rcpt_to {
                ids.entry(r.clone())
                    .or_default()
                    .push(m.header("Message-ID").unwrap_or_default());
            }
        }
        assert_eq!(ids.len(), expected, "every recipient got the email");
        for (rcpt, list) in &ids {
            assert!(
                list.iter().all(|id| id == &list[0]),
                "{rcpt} got different messages: {list:?}"
            );
        }
        let mut twice: Vec<String> = ids
            .iter()
            .filter(|(_, list)| list.len() > 1)
            .map(|(rcpt, list)| {
                assert_eq!(list.len(), 2, "{rcpt}: {list:?}");
                rcpt.clone()
            })
            .collect();
        twice.sort();
        assert_eq!(
            twice, unconfirmed,
            "exactly the emails whose sending was not confirmed before the kill come again"
        );
        let copies = mails.len() - expected;
        assert!(
            copies <= WORKERS,
            "{copies} copies; at most the {WORKERS} running jobs may be sent again"
        );
        let store = node.hub().store().clone();
        let dead = tokio::task::spawn_blocking(move || store.dead_jobs()).await??;
        assert!(dead.is_empty(), "{dead:?}");
        for i in 0..STUDENTS {
            let owner: lectern_model::UserId = format!("s{i:04}").parse()?;
            let viewer = lectern_model::Caller {
                user: owner.clone(),
                name: String::new(),
                role: Role::Student,
                cohorts: vec![],
            };
            let view = node
                .hub()
                .read(DocId::Inbox(owner.clone()), move |r| r.inbox_view(&viewer))
                .await?
                .map_err(|r| anyhow::anyhow!("{r}"))?;
            assert_eq!(view["total"], 1, "{owner}: {view}");
        }
        eprintln!(
            "crash: {} emails before the kill, {copies} sent twice",
            at_kill.len()
        );
        node.stop().await?;
        Ok(())
    })
    .await
    .unwrap();
}

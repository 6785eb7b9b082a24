//! A node stopped in the middle of 1,000 notification jobs delivers each exactly once after it
//! starts again: every student gets one email (one Message-ID each, none twice) and one inbox
//! entry.
//!
//! "In the middle" is made certain, not raced: the mail server holds every email after the
//! first [`BEFORE_STOP`], so the stop comes with that many sent, [`WORKERS`] in flight (read by
//! the server, not answered) and the rest queued.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use lectern_model::DocId;
use lectern_store::Store;
use lectern_testkit::SmtpServer;
use serde_json::json;

use super::{NotifyNode, add_students};
use crate::gateway::within;

const STUDENTS: usize = 1_000;
/// Emails the server accepts before it holds the rest.
const BEFORE_STOP: usize = 100;
/// Jobs the node runs at once.
const WORKERS: usize = 32;

/// Waits until nothing listens on `addr` any more (the node stopped serving HTTP). Gives up
/// quietly after a while: what follows is correct either way (see the caller).
async fn until_refused(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_the_middle_of_1000_notifications_delivers_each_exactly_once() {
    within(async {
        let smtp = SmtpServer::start().await?;
        smtp.pause_after(BEFORE_STOP);
        let node = NotifyNode::start_with("notify-restart", &smtp, |c| {
            c.notify.workers = WORKERS;
            // Held emails wait for the test, never for a timeout.
            if let Some(s) = c.notify.smtp.as_mut() {
                s.timeout_ms = 120_000;
            }
        })
        .await?;
        let students = add_students(node.hub(), STUDENTS).await?;
        let ada = node.token("ada", "instructor");
        node.cohort_command(
            &ada,
            json!({"cmd": "announcement.post", "title": "Exam moved", "body": "The exam is on Friday."}),
        )
        .await?;
        // student1 and student2 of the demo are in the cohort too.
        let expected = STUDENTS + 2;
        // Stop with BEFORE_STOP emails sent and every worker in the middle of one.
        smtp.wait_for_held(WORKERS, Duration::from_secs(60)).await?;
        assert_eq!(smtp.mails().len(), BEFORE_STOP);
        let http = node.node.http_addr;
        let stopping = tokio::spawn(node.stop());
        // The node stops serving HTTP, then stops its job runner, which starts nothing new and
        // lets the running jobs finish: answer their emails then.
        until_refused(http).await;
        let in_flight = smtp.release_held();
        let dir = stopping.await??;
        // Had the answers come before the runner heard of the stop, it would have started more
        // emails, held in turn until its drain timeout abandoned them (they stay queued for
        // the restart). The server never accepts those: every count below is the same either
        // way, only the stop is slower.
        let abandoned = smtp.drop_held();
        if abandoned > 0 {
            eprintln!("restart: {abandoned} held emails abandoned at the drain timeout");
        }
        let sent_before = smtp.mails().len();
        assert_eq!(in_flight, WORKERS);
        assert_eq!(
            sent_before,
            BEFORE_STOP + in_flight,
            "the running emails finished during the stop, and no other was sent"
        );
        // Every email not sent waits in the store for the restart.
        let store_dir = dir.path().to_path_buf();
        let queued = tokio::task::spawn_blocking(move || {
            let store = Store::open(&store_dir)?;
            anyhow::Ok(store.pending_jobs()?.len())
        })
        .await??;
        assert_eq!(
            queued,
            expected - sent_before,
            "the jobs queued across the restart are the emails not sent"
        );

        smtp.resume();
        let node = NotifyNode::restart(dir, &smtp, |c| c.notify.workers = WORKERS).await?;
        smtp.wait_for_mails(expected, Duration::from_secs(60)).await?;
        node.jobs_idle().await?;
        let mails = smtp.mails();
        assert_eq!(mails.len(), expected, "one email per student, none twice");
        let mut per_rcpt: HashMap<String, usize> = HashMap::new();
        let mut per_id: HashMap<String, usize> = HashMap::new();
        for m in &mails {
            for r in &m.rcpt_to {
                *per_rcpt.entry(r.clone()).or_default() += 1;
            }
            *per_id
                .entry(m.header("Message-ID").unwrap_or_default())
                .or_default() += 1;
        }
        assert_eq!(per_rcpt.len(), expected);
        assert!(per_rcpt.values().all(|n| *n == 1));
        assert_eq!(per_id.len(), expected);
        for s in &students {
            assert_eq!(per_rcpt.get(&format!("{s}@example.test")), Some(&1), "{s}");
        }
        // In-app: exactly one entry in every inbox.
        for s in &students {
            let owner = s.clone();
            let caller = lectern_model::Caller {
                user: owner.clone(),
                name: String::new(),
                role: lectern_model::Role::Student,
                cohorts: vec![],
            };
            let view = node
                .hub()
                .read(DocId::Inbox(owner), move |r| r.inbox_view(&caller))
                .await?
                .map_err(|r| anyhow::anyhow!("{r}"))?;
            assert_eq!(view["total"], 1, "{s}: {view}");
        }
        let store = node.hub().store().clone();
        let dead = tokio::task::spawn_blocking(move || store.dead_jobs()).await??;
        assert!(dead.is_empty(), "{dead:?}");
        node.stop().await?;
        Ok(())
    })
    .await
    .unwrap();
}

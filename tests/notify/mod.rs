//! Notification tests: whole nodes in-process, pointed at the test kit's SMTP server (real SMTP
//! over TCP), driven over HTTP and SSE with the test kit's clients.
//!
//! * `email`: a graded quiz gives exactly one email with the right headers, also when the
//!   cohort is replicated to two more nodes; the one-click unsubscribe link works; preferences
//!   and the daily digest.
//! * `restart`: a node stopped in the middle of 1,000 notification jobs delivers each exactly
//!   once after it starts again.
//! * `smtp_down`: retries with backoff, then a dead letter with the reason; in-app delivery is
//!   unaffected.
//! * `inbox`: the notifications SSE stream with unread counts, mark read, resume.
//! * `boards`: the leaderboard and instructor dashboard streams.
//! * `crash`: a SIGKILL in the middle of an announcement's emails.
//! * `fanout_crash`: a process that dies in the middle of an announcement's fan-out (and would
//!   die between a step and its follow-ups, were they two batches): every notification and
//!   email once.
//! * `smtp_hold`: the test SMTP server's hold, which `restart` and `crash` stop or kill a node
//!   by, at a known point instead of a raced one.
//!
//! Replication between nodes goes through `Hub::receive_sync`, the entry point the QUIC mesh
//! will feed: a test that applies a peer's changes through it is the honest stand-in for
//! "three nodes replicate the cohort" until the mesh lands.

mod boards;
mod config;
mod crash;
mod email;
mod fanout_crash;
mod inbox;
mod markers;
mod restart;
mod smtp_down;
mod smtp_hold;

use std::time::Duration;

use anyhow::Context;
use lectern_hub::Hub;
use lectern_jobs::JobStats;
use lectern_model::{Caller, Command, CommandBody, CommandId, DocId, Role, UserId};
use lectern_node::{Config, DEMO_COHORT, Node};
use lectern_testkit::{Http, SmtpServer};
use serde_json::{Value, json};

use crate::gateway::{claims, unix_now_s};
use crate::support::TempDir;

/// The domain test users' addresses are in (`{user}@example.test`).
pub const EMAIL_DOMAIN: &str = "example.test";

/// A demo node whose email goes to `smtp`.
pub struct NotifyNode {
    /// The node.
    pub node: Node,
    /// Its HTTP client.
    pub http: Http,
    dir: Option<TempDir>,
}

/// The configuration of a node in `dir` mailing to `smtp` (plain SMTP, fast retries).
pub fn config(dir: &TempDir, smtp: &SmtpServer) -> Config {
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        http: "127.0.0.1:0".parse().expect("an address"),
        demo: true,
        ..Default::default()
    };
    mail_to(&mut config, smtp);
    config.notify.from = "Lectern <no-reply@lectern.test>".to_owned();
    config.notify.backoff_base_ms = 50;
    config
}

/// Points `config`'s email at `smtp` (plain SMTP), users at `{user}@`[`EMAIL_DOMAIN`].
pub fn mail_to(config: &mut Config, smtp: &SmtpServer) {
    config.notify.smtp = Some(lectern_node::config::SmtpSettings {
        host: smtp.addr().ip().to_string(),
        port: smtp.addr().port(),
        tls: lectern_jobs::TlsMode::None,
        username: None,
        password: None,
        timeout_ms: 5_000,
    });
    config.notify.email_domain = Some(EMAIL_DOMAIN.to_owned());
}

impl NotifyNode {
    /// Starts a demo node in a fresh directory, mailing to `smtp`.
    pub async fn start(tag: &str, smtp: &SmtpServer) -> anyhow::Result<NotifyNode> {
        Self::start_with(tag, smtp, |_| {}).await
    }

    /// Starts one after `edit` adjusts its configuration.
    pub async fn start_with(
        tag: &str,
        smtp: &SmtpServer,
        edit: impl FnOnce(&mut Config),
    ) -> anyhow::Result<NotifyNode> {
        let dir = TempDir::new(tag);
        let mut c = config(&dir, smtp);
        edit(&mut c);
        let node = lectern_node::start(c).await.context("start a node")?;
        Ok(NotifyNode {
            http: Http::new(node.http_addr),
            node,
            dir: Some(dir),
        })
    }

    /// Starts a node on an existing directory (a restart).
    pub async fn restart(
        dir: TempDir,
        smtp: &SmtpServer,
        edit: impl FnOnce(&mut Config),
    ) -> anyhow::Result<NotifyNode> {
        let mut c = config(&dir, smtp);
        edit(&mut c);
        let node = lectern_node::start(c).await.context("restart a node")?;
        Ok(NotifyNode {
            http: Http::new(node.http_addr),
            node,
            dir: Some(dir),
        })
    }

    /// A token for `user` with `role` in the demo cohort.
    pub fn token(&self, user: &str, role: &str) -> String {
        lectern_gateway::auth::mint(
            &self.node.secret,
            &claims(user, role, &[DEMO_COHORT], unix_now_s() + 3600),
        )
        .expect("mint a token")
    }

    /// The hub.
    pub fn hub(&self) -> &Hub {
        &self.node.hub
    }

    /// Posts a cohort command as `token`'s holder; it must succeed.
    pub async fn cohort_command(&self, token: &str, cmd: Value) -> anyhow::Result<Value> {
        let resp = self
            .http
            .post_json(
                &format!("/api/cohorts/{DEMO_COHORT}/commands"),
                Some(token),
                &cmd,
            )
            .await?;
        anyhow::ensure!(resp.status == 200, "{cmd}: {} {}", resp.status, resp.text());
        resp.json()
    }

    /// Grades `student` on `lesson` as the demo instructor.
    pub async fn grade(&self, student: &str, lesson: &str, score: u32) -> anyhow::Result<Value> {
        let ada = self.token("ada", "instructor");
        self.cohort_command(
            &ada,
            json!({"cmd": "progress.update", "student": student, "lesson": lesson,
                   "status": "completed", "score": score, "max_score": 10}),
        )
        .await
    }

    /// Waits until every job in the store has run and the runner has nothing pending or
    /// running. The runner's counters alone are not enough: a job is committed with its
    /// command before the ack, but reaches the runner a moment later, so right after a command
    /// the runner can still report idle with the job waiting in the store.
    pub async fn jobs_idle(&self) -> anyhow::Result<JobStats> {
        let idle = |s: &JobStats| s.pending == 0 && s.running == 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            wait_jobs(&self.node, idle).await?;
            let store = self.hub().store().clone();
            let queued = tokio::task::spawn_blocking(move || store.pending_jobs()).await??;
            if queued.is_empty() {
                // Every outcome is committed; wait for the runner to count the last of them.
                return wait_jobs(&self.node, idle).await;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{} jobs stay queued in the store",
                queued.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the node; returns its directory for a restart.
    pub async fn stop(mut self) -> anyhow::Result<TempDir> {
        let dir = self.dir.take().context("a node has its directory")?;
        self.node.stop().await?;
        Ok(dir)
    }
}

/// Waits (on the runner's own change notifications, no polling) until `done` holds.
pub async fn wait_jobs(node: &Node, done: impl Fn(&JobStats) -> bool) -> anyhow::Result<JobStats> {
    let mut watch = node.jobs.watch();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stats = *watch.borrow_and_update();
        if done(&stats) {
            return Ok(stats);
        }
        tokio::time::timeout_at(deadline, watch.changed())
            .await
            .with_context(|| format!("jobs did not settle; last stats {stats:?}"))?
            .context("the job runner stopped")?;
    }
}

/// An admin caller (for seeding large rosters straight through the hub).
pub fn admin() -> Caller {
    Caller {
        user: "admin".parse().expect("an id"),
        name: "Admin".into(),
        role: Role::Admin,
        cohorts: vec![],
    }
}

/// Adds `n` students `s0000…` to the demo cohort.
pub async fn add_students(hub: &Hub, n: usize) -> anyhow::Result<Vec<UserId>> {
    let cohort = DocId::Cohort(DEMO_COHORT.parse()?);
    let mut users = Vec::with_capacity(n);
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        let user: UserId = format!("s{i:04}").parse()?;
        let cmd = Command {
            id: format!("roster-{user}").parse::<CommandId>()?,
            body: CommandBody::RosterAdd {
                user: user.clone(),
                role: Role::Student,
                name: format!("Student {i}"),
            },
        };
        let hub = hub.clone();
        let doc = cohort.clone();
        pending.push(tokio::spawn(
            async move { hub.execute(doc, admin(), cmd).await },
        ));
        users.push(user);
    }
    for p in pending {
        p.await?.map_err(|e| anyhow::anyhow!("roster.add: {e}"))?;
    }
    Ok(users)
}

/// Replicates `doc` between two hubs through `receive_sync` until neither has anything to say.
pub async fn sync_pair(a: (&Hub, &str), b: (&Hub, &str), doc: &DocId) -> anyhow::Result<()> {
    for _ in 0..100 {
        let mut quiet = true;
        for (first, second) in [(a, b), (b, a)] {
            // A conversation: every reply is delivered, until one side has nothing to say
            // (a reply dropped on the floor would leave the sender believing it was sent).
            let mut message = first.0.generate_sync(doc.clone(), second.1).await?;
            let (mut from, mut to) = (first, second);
            while let Some(m) = message {
                quiet = false;
                message = to.0.receive_sync(doc.clone(), from.1, m).await?;
                std::mem::swap(&mut from, &mut to);
            }
        }
        if quiet {
            return Ok(());
        }
    }
    anyhow::bail!("{doc} did not converge in 100 rounds")
}

/// The inbox of `user` as its owner sees it.
pub async fn inbox(node: &NotifyNode, user: &str) -> anyhow::Result<Value> {
    let token = node.token(user, "student");
    let resp = node.http.get("/api/notifications", Some(&token)).await?;
    anyhow::ensure!(resp.status == 200, "inbox: {} {}", resp.status, resp.text());
    resp.json()
}

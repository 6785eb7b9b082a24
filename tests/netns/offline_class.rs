//! The offline classroom with real processes: a region node and a classroom node, each a
//! `lectern-node` process in its own network namespace with certificates from `lectern cluster
//! init/issue-node`, joined by an uplink that the test cuts (`ip link set … down`) and brings
//! back.
//!
//! * `a_class_runs_offline_on_the_classroom_node_and_merges_when_the_uplink_returns`: 40
//!   students (Socket.IO over WebSocket for the session, REST for their progress) and one
//!   student's page in Chromium run a class on the classroom node while the uplink is down
//!   (questions, upvotes, a poll, chat, answers, progress and graded progress; a newcomer let
//!   in with a join code; every student's token extended by the classroom), and the region
//!   posts an announcement and takes a question meanwhile; the classroom's mail server is
//!   reachable only through the uplink, so its emails park. When the link is back: every
//!   acknowledged command of either side is on both, the heads are identical within 1 s of
//!   the peers reconnecting, every notification is once in each inbox on both nodes, every
//!   email went out once (the classroom's only after the link came back), and every
//!   student's connection (the page's too) and token kept working throughout.
//! * `a_classroom_node_started_with_its_uplink_down_serves_what_it_pulled_before`: a classroom
//!   node that pulled its cohort once is restarted with the uplink cut: a student joins, reads
//!   the session and a lesson, and asks a question, which reaches the region once the link is
//!   back.
//!
//! Not covered here: quizzes as such (they do not exist; a graded `progress.update` is what a
//! quiz's score is today), a token that ends during the outage (the tokens here live an hour;
//! the extension is asked for explicitly, and `mesh::classroom` checks its bounds), and the
//! instructor page's "offline since / syncing / in sync" (`web::classroom` checks it in
//! Chromium over a cut link, with in-process nodes).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context;
use lectern_gateway::auth::mint;
use lectern_node::{DEMO_COHORT, DEMO_SESSION};
use lectern_testkit::{Client, Http, ReceivedMail, SmtpServer, Transport};
use serde_json::{Value, json};

use super::{ADMIN_TOKEN, HTTP_PORT, Lab, NodeProcess, QUIC_PORT, Trust, admin, doc_heads};
use crate::gateway::{claims, unix_now_s};
use crate::support::TempDir;

/// Students in the class (added to the demo cohort's roster as `p01` … `p40`).
const CLASS: usize = 40;

/// Students whose question the instructor answers.
const ANSWERED: usize = 10;

/// Upvotes each student gives (to the next students' questions).
const UPVOTES_EACH: usize = 5;

/// How long the uplink stays down at least, in seconds of the classroom's own reckoning
/// (`offlineS`): a school's day without uplink, compressed.
const OFFLINE_S_MIN: u64 = 10;

/// The longest the heads may take to agree once the peers are connected again.
const CONVERGENCE_MAX: Duration = Duration::from_secs(1);

/// Generous limit for one awaited condition on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(30);

/// The longest a test of this module may run.
const TEST_MAX: Duration = Duration::from_secs(150);

/// Lines of each node's log a failure shows.
const LOG_LINES: usize = 40;

/// The mail domain of every user (`{user}@example.test`).
const EMAIL_DOMAIN: &str = "example.test";

/// Builds both binaries outside the limit (a build on a loaded machine takes minutes), then
/// runs `body` within [`TEST_MAX`].
async fn within<T>(
    body: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(|| {
        crate::ops::node_bin()?;
        crate::ops::lectern_bin()
    })
    .await??;
    tokio::time::timeout(TEST_MAX, body)
        .await
        .with_context(|| format!("the test did not finish within {TEST_MAX:?}"))?
}

/// A pupil's user id.
fn pupil(i: usize) -> String {
    format!("p{:02}", i + 1)
}

/// The configuration file of a lab node.
fn config(
    name: &str,
    dir: &std::path::Path,
    http: IpAddr,
    trust: &Trust,
    smtp: SocketAddr,
    tail: &str,
) -> String {
    format!(
        r#"data_dir = "{data}"
http = "{http}:{HTTP_PORT}"
admin_token = "{ADMIN_TOKEN}"
{top}

[limits]
# One instructor grades the whole class in a burst.
commands_per_s = 1000.0
command_burst = 1000

[notify]
from = "Lectern <no-reply@lectern.test>"
email_domain = "{EMAIL_DOMAIN}"
backoff_base_ms = 100
park_probe_max_ms = 250

[notify.smtp]
host = "{smtp_host}"
port = {smtp_port}
tls = "none"
timeout_ms = 3000

[mesh]
name = "{name}"
region = "region-{name}"
tls_dir = "{tls}"
listen = "0.0.0.0:{QUIC_PORT}"
reconnect_max_ms = 200
peer_idle_timeout_ms = 3000
connect_timeout_ms = 700
{tail}
"#,
        data = dir.join("data").display(),
        top = if name == "region" { "demo = true" } else { "" },
        smtp_host = smtp.ip(),
        smtp_port = smtp.port(),
        tls = trust.tls_dir(name).display(),
    )
}

/// The region's mesh keys: it lets the classroom in, held to the demo cohort.
const REGION_MESH: &str = r#"accept_from = ["classroom"]
peer_cohorts = ["classroom=demo-cohort"]"#;

/// The lab: namespaces, trust, the two mail catchers and the nodes' directories.
struct Setup {
    lab: Lab,
    trust: Trust,
    region_dir: TempDir,
    classroom_dir: TempDir,
    region_smtp: SmtpServer,
    classroom_smtp: SmtpServer,
}

impl Setup {
    async fn new(tag: &str) -> anyhow::Result<Setup> {
        let lab = Lab::region_and_classroom()?;
        let trust = Trust::new(&["region", "classroom"]).await?;
        // Both catchers listen on the root namespace's end of the region's link: the region
        // reaches them directly, the classroom only through the uplink.
        let on = SocketAddr::new(lab.addrs.root_to_region().into(), 0);
        Ok(Setup {
            region_smtp: SmtpServer::start_on(on).await?,
            classroom_smtp: SmtpServer::start_on(on).await?,
            region_dir: TempDir::new(&format!("{tag}-region")),
            classroom_dir: TempDir::new(&format!("{tag}-classroom")),
            lab,
            trust,
        })
    }

    fn region_http(&self) -> SocketAddr {
        SocketAddr::new(self.lab.addrs.region().into(), HTTP_PORT)
    }

    fn classroom_http(&self) -> SocketAddr {
        SocketAddr::new(self.lab.addrs.classroom().into(), HTTP_PORT)
    }

    async fn start_region(&self) -> anyhow::Result<NodeProcess> {
        let toml = config(
            "region",
            self.region_dir.path(),
            self.lab.addrs.region().into(),
            &self.trust,
            self.region_smtp.addr(),
            REGION_MESH,
        );
        NodeProcess::start(
            self.lab.region_ns(),
            self.region_dir.path(),
            &toml,
            self.region_http(),
        )
        .await
        .context("start the region node")
    }

    async fn start_classroom(&self) -> anyhow::Result<NodeProcess> {
        let classroom = format!(
            "\n[classroom]\nupstream = \"region@{}:{QUIC_PORT}\"\ncohorts = [\"{DEMO_COHORT}\"]",
            self.lab.addrs.region_uplink()
        );
        let toml = config(
            "classroom",
            self.classroom_dir.path(),
            self.lab.addrs.classroom().into(),
            &self.trust,
            self.classroom_smtp.addr(),
            &classroom,
        );
        NodeProcess::start(
            self.lab.classroom_ns(),
            self.classroom_dir.path(),
            &toml,
            self.classroom_http(),
        )
        .await
        .context("start the classroom node")
    }

    /// The last lines of both nodes' logs, for a failure's message.
    fn log_tails(&self) -> String {
        let tail = |dir: &TempDir| {
            let text = std::fs::read_to_string(dir.path().join("node.log")).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_LINES)..].join("\n")
        };
        format!(
            "the region's log ends:\n{}\nthe classroom's log ends:\n{}",
            tail(&self.region_dir),
            tail(&self.classroom_dir)
        )
    }

    /// A token of the cluster for `user` with `role` in the demo cohort, valid for an hour.
    fn token(&self, user: &str, role: &str) -> String {
        mint(
            &self.trust.secret,
            &claims(user, role, &[DEMO_COHORT], unix_now_s() + 3600),
        )
        .expect("mint with the cluster's key")
    }
}

/// The classroom's uplink as its `/admin/status` reports it.
async fn uplink(classroom: SocketAddr) -> anyhow::Result<Value> {
    Ok(admin(classroom, "/admin/status").await?["classroom"].clone())
}

/// Whether the region has the classroom as a connected peer.
async fn region_sees_classroom(region: SocketAddr) -> anyhow::Result<bool> {
    let peers = admin(region, "/admin/peers").await?;
    Ok(peers["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p["name"] == "classroom" && p["state"] == "connected"))
}

/// Waits until `check` passes, retrying every 20 ms within `limit`; how long it took.
async fn until<F, Fut>(what: &str, limit: Duration, check: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    crate::mesh::eventually_ok(what, limit, check).await
}

/// Waits until every document the classroom stores is on the region with the same heads and
/// the region's inboxes are all on the classroom (the cohort's members' are all it has).
async fn heads_agree(region: SocketAddr, classroom: SocketAddr) -> anyhow::Result<usize> {
    let (r, c) = (doc_heads(region).await?, doc_heads(classroom).await?);
    for (doc, heads) in &c {
        anyhow::ensure!(
            r.get(doc) == Some(heads),
            "{doc}: classroom {heads}, region {:?}",
            r.get(doc)
        );
    }
    for doc in r.keys().filter(|d| d.starts_with("inbox/")) {
        anyhow::ensure!(c.contains_key(doc), "{doc} is not on the classroom");
    }
    Ok(c.len())
}

/// A REST command on the cohort as the holder of `token`; it must be acknowledged.
async fn cohort_command(http: SocketAddr, token: &str, cmd: Value) -> anyhow::Result<Value> {
    let r = Http::new(http)
        .post_json(
            &format!("/api/cohorts/{DEMO_COHORT}/commands"),
            Some(token),
            &cmd,
        )
        .await?;
    anyhow::ensure!(r.status == 200, "{cmd}: {} {}", r.status, r.text());
    let ack = r.json()?;
    anyhow::ensure!(ack["ok"] == true, "{cmd}: {ack}");
    Ok(ack)
}

/// A POST of `body` (as the holder of `token`, if any) that must answer 200; its JSON.
async fn post_ok(
    http: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> anyhow::Result<Value> {
    let r = Http::new(http).post_json(path, token, &body).await?;
    anyhow::ensure!(r.status == 200, "{path} {body}: {} {}", r.status, r.text());
    r.json()
}

/// A GET as the holder of `token`; its JSON.
async fn get(http: SocketAddr, path: &str, token: &str) -> anyhow::Result<Value> {
    let r = Http::new(http).get(path, Some(token)).await?;
    anyhow::ensure!(r.status == 200, "{path}: {} {}", r.status, r.text());
    r.json()
}

/// A Socket.IO call that must be acknowledged; its ack.
async fn call_ok(client: &mut Client, event: &str, args: Vec<Value>) -> anyhow::Result<Value> {
    let ack = client.call(event, args.clone()).await?;
    anyhow::ensure!(ack["ok"] == true, "{event} {args:?}: {ack}");
    Ok(ack)
}

/// The ids of a session view's `list` (`questions`, `chat`).
fn ids(view: &Value, list: &str) -> BTreeSet<String> {
    view[list]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["id"].as_str().map(str::to_owned))
        .collect()
}

/// The notification ids of an inbox view, failing on a duplicate.
fn inbox_ids(user: &str, view: &Value) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in view["items"].as_array().into_iter().flatten() {
        let id = item["id"].as_str().context("a notification id")?.to_owned();
        let kind = item["kind"].as_str().unwrap_or_default().to_owned();
        anyhow::ensure!(
            out.insert(id.clone(), kind).is_none(),
            "{user} holds {id} twice: {view}"
        );
    }
    anyhow::ensure!(
        view["total"].as_u64() == Some(out.len() as u64),
        "{user}: total does not match its items: {view}"
    );
    Ok(out)
}

/// The recipients of `mails` with the subject line starting `subject`, sorted, with repeats.
fn recipients(mails: &[ReceivedMail], subject: &str) -> Vec<String> {
    let mut to: Vec<String> = mails
        .iter()
        .filter(|m| m.header("subject").is_some_and(|s| s.starts_with(subject)))
        .flat_map(|m| m.rcpt_to.clone())
        .collect();
    to.sort();
    to
}

/// Waits until a node's job runner has nothing queued, parked or running.
async fn jobs_settled(http: SocketAddr) -> anyhow::Result<()> {
    until("the jobs settle", WAIT, || async move {
        let jobs = admin(http, "/admin/jobs").await?;
        let counts = &jobs["counts"];
        anyhow::ensure!(
            counts["queued"] == 0 && counts["parked"] == 0 && counts["dead"] == 0,
            "{counts}"
        );
        Ok(())
    })
    .await
    .map(|_| ())
}

/// A step the page asks the test for, with where to answer.
type Step = (String, std::sync::mpsc::Sender<String>);

/// Waits for the page to ask for step `want`; where to answer it. A page that ends first
/// fails the test with its summary.
async fn page_step(
    steps: &mut tokio::sync::mpsc::UnboundedReceiver<Step>,
    page: &mut tokio::task::JoinHandle<anyhow::Result<Value>>,
    want: &str,
) -> anyhow::Result<std::sync::mpsc::Sender<String>> {
    let next = tokio::time::timeout(TEST_MAX, steps.recv())
        .await
        .with_context(|| format!("the page did not ask for {want}"))?;
    match next {
        Some((step, reply)) if step == want => Ok(reply),
        Some((step, _)) => anyhow::bail!("the page asked for {step}, not {want}"),
        None => {
            let summary = page.await??;
            anyhow::bail!("the page ended before asking for {want}: {summary}")
        }
    }
}

/// Kills: the classroom not serving its class with the uplink down (a command refused or
/// lost), a side's acked command missing on the other after the merge, a notification
/// delivered twice or on one node only (inboxes outside the share policy, a trigger run again
/// for a peer's change), an email dead-lettered instead of parked, sent twice or by both
/// nodes, a slow catch-up (over 1 s), a student's connection dropped or token refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_runs_offline_on_the_classroom_node_and_merges_when_the_uplink_returns()
-> anyhow::Result<()> {
    within(async {
        let s = Setup::new("netns-offline").await?;
        let started = Instant::now();
        let result = async {
        let region = s.start_region().await?;
        let (rh, ch) = (s.region_http(), s.classroom_http());
        let admin_token = s.token("admin", "admin");
        let ada = s.token("ada", "instructor");
        let pupils: Vec<String> = (0..CLASS).map(pupil).collect();
        for (i, p) in pupils.iter().enumerate() {
            cohort_command(
                rh,
                &admin_token,
                json!({"cmd": "roster.add", "user": p, "role": "student", "name": format!("Pupil {}", i + 1)}),
            )
            .await?;
        }
        let roster: Vec<String> = ["ada", "student1", "student2"]
            .iter()
            .map(|u| (*u).to_owned())
            .chain(pupils.iter().cloned())
            .collect();

        // The classroom pulls its cohort while the uplink is up.
        let classroom = s.start_classroom().await?;
        until("the classroom pulls its cohort", WAIT, || async {
            let c = doc_heads(ch).await?;
            for doc in [
                format!("cohort/{DEMO_COHORT}"),
                format!("session/{DEMO_SESSION}"),
            ] {
                anyhow::ensure!(c.contains_key(&doc), "{doc} not pulled: {c:?}");
            }
            heads_agree(rh, ch).await.map(|_| ())
        })
        .await?;
        anyhow::ensure!(uplink(ch).await?["uplink"] == "up");

        // The class connects to the classroom node.
        let mut students = Vec::with_capacity(CLASS);
        for p in &pupils {
            let mut c = Client::connect(
                ch,
                Transport::WebSocket,
                json!({"token": s.token(p, "student")}),
                p,
            )
            .await?;
            call_ok(&mut c, "session:join", vec![json!(DEMO_SESSION)]).await?;
            students.push(c);
        }
        let mut teacher = Client::connect(ch, Transport::WebSocket, json!({"token": ada}), "ada")
            .await?;
        call_ok(&mut teacher, "session:join", vec![json!(DEMO_SESSION)]).await?;
        // And one student, student1, in Chromium (tests/js/web.mjs `offline-class`).
        let _one_browser = crate::web::BROWSER.lock().await;
        let (step_tx, mut steps) = tokio::sync::mpsc::unbounded_channel::<Step>();
        let mut page = {
            let base = format!("http://{ch}");
            let tokens = (s.token("student1", "student"), ada.clone());
            tokio::task::spawn_blocking(move || {
                crate::web::run_script(
                    "offline-class",
                    &base,
                    DEMO_SESSION,
                    [&tokens.0, &tokens.1],
                    |step| {
                        let (tx, rx) = std::sync::mpsc::channel();
                        step_tx
                            .send((step.to_owned(), tx))
                            .map_err(|_| anyhow::anyhow!("the test stopped answering"))?;
                        rx.recv_timeout(TEST_MAX)
                            .context("the test's answer to the page")
                    },
                )
            })
        };
        let offline = page_step(&mut steps, &mut page, "offline").await?;

        // The uplink goes down, and both sides notice.
        s.lab.uplink_down()?;
        let cut = Instant::now();
        until("the classroom reports its uplink down", WAIT, || async {
            let u = uplink(ch).await?;
            anyhow::ensure!(u["uplink"] == "down", "{u}");
            Ok(())
        })
        .await?;
        until("the region loses the classroom", WAIT, || async {
            anyhow::ensure!(!region_sees_classroom(rh).await?);
            Ok(())
        })
        .await?;

        // The offline class. A poll first, then every student asks, chats and votes at once
        // (the page too).
        let poll_question = "Which clock orders events?";
        let poll = call_ok(
            &mut teacher,
            "poll:create",
            vec![
                json!(DEMO_SESSION),
                json!({"question": poll_question, "kind": "single",
                       "options": ["Lamport", "Wall", "Sundial"]}),
            ],
        )
        .await?["id"]
            .as_str()
            .context("a poll id")?
            .to_owned();
        offline.send(poll_question.to_owned())?;
        let mut tasks = Vec::new();
        for (i, mut c) in students.into_iter().enumerate() {
            let (poll, p) = (poll.clone(), pupil(i));
            tasks.push(tokio::spawn(async move {
                let q = call_ok(
                    &mut c,
                    "qa:ask",
                    vec![json!(DEMO_SESSION), json!(format!("Offline question from {p}"))],
                )
                .await?["id"]
                    .as_str()
                    .context("a question id")?
                    .to_owned();
                let chat = call_ok(
                    &mut c,
                    "chat:send",
                    vec![json!(DEMO_SESSION), json!(format!("{p} is here"))],
                )
                .await?["id"]
                    .as_str()
                    .context("a chat id")?
                    .to_owned();
                call_ok(
                    &mut c,
                    "poll:vote",
                    vec![json!(DEMO_SESSION), json!(poll), json!(i % 3)],
                )
                .await?;
                anyhow::Ok((c, q, chat))
            }));
        }
        let mut students = Vec::with_capacity(CLASS);
        let (mut questions, mut chats) = (Vec::new(), Vec::new());
        for t in tasks {
            let (c, q, chat) = t.await??;
            students.push(c);
            questions.push(q);
            chats.push(chat);
        }
        // Upvotes (each student the next ones' questions) and progress over REST.
        let mut tasks = Vec::new();
        for (i, mut c) in students.into_iter().enumerate() {
            let targets: Vec<String> = (1..=UPVOTES_EACH)
                .map(|k| questions[(i + k) % CLASS].clone())
                .collect();
            let token = s.token(&pupil(i), "student");
            tasks.push(tokio::spawn(async move {
                for q in targets {
                    call_ok(&mut c, "qa:upvote", vec![json!(DEMO_SESSION), json!(q)]).await?;
                }
                let r = Http::new(ch)
                    .post_json(
                        "/api/progress",
                        Some(&token),
                        &json!({"lesson": "lesson-1", "status": "completed"}),
                    )
                    .await?;
                anyhow::ensure!(r.status == 200, "progress: {} {}", r.status, r.text());
                anyhow::Ok(c)
            }));
        }
        let mut students = Vec::with_capacity(CLASS);
        for t in tasks {
            students.push(t.await??);
        }
        // Once the page has asked, voted and chatted, the instructor answers, closes the poll
        // and grades the quiz.
        let acted = page_step(&mut steps, &mut page, "acted").await?;
        for q in &questions[..ANSWERED] {
            call_ok(
                &mut teacher,
                "qa:answer",
                vec![json!(DEMO_SESSION), json!(q), json!("Lamport clocks order them.")],
            )
            .await?;
        }
        call_ok(&mut teacher, "poll:close", vec![json!(DEMO_SESSION), json!(poll)]).await?;
        for p in &pupils {
            cohort_command(
                ch,
                &ada,
                json!({"cmd": "progress.update", "student": p, "lesson": "quiz-1",
                       "status": "completed", "score": 7, "max_score": 10}),
            )
            .await?;
        }
        // A student who arrives during the outage: the teacher makes a join code on the
        // classroom node, the newcomer joins the cohort with it and asks.
        let made = post_ok(
            ch,
            &format!("/api/sessions/{DEMO_SESSION}/join-codes"),
            Some(&ada),
            json!({"role": "student", "minutes": 30, "uses": 1}),
        )
        .await?;
        let code = made["code"].as_str().context("a join code")?;
        let joined = post_ok(
            ch,
            "/api/join",
            None,
            json!({"session": DEMO_SESSION, "code": code, "name": "Hedy"}),
        )
        .await?;
        let newcomer = joined["user"].as_str().context("the newcomer's id")?.to_owned();
        let newcomer_token = joined["token"].as_str().context("a token")?.to_owned();
        let mut late = Client::connect(
            ch,
            Transport::WebSocket,
            json!({"token": newcomer_token}),
            "newcomer",
        )
        .await?;
        call_ok(&mut late, "session:join", vec![json!(DEMO_SESSION)]).await?;
        let newcomer_question = call_ok(
            &mut late,
            "qa:ask",
            vec![json!(DEMO_SESSION), json!("I just arrived: what did I miss?")],
        )
        .await?["id"]
            .as_str()
            .context("a question id")?
            .to_owned();
        // Every student's token extended by the classroom node, offline.
        let mut extended = Vec::with_capacity(CLASS);
        for p in &pupils {
            let renewed = post_ok(
                ch,
                "/api/token/refresh",
                Some(&s.token(p, "student")),
                json!({}),
            )
            .await?;
            extended.push(renewed["token"].as_str().context("a token")?.to_owned());
        }

        // Meanwhile the region: an announcement to the cohort and a question in the session.
        let announcement = cohort_command(
            rh,
            &admin_token,
            json!({"cmd": "announcement.post", "title": "Field trip moved",
                   "body": "The trip is on Friday now."}),
        )
        .await?["id"]
            .as_str()
            .context("an announcement id")?
            .to_owned();
        let region_question = {
            let r = Http::new(rh)
                .post_json(
                    &format!("/api/sessions/{DEMO_SESSION}/commands/qa.ask"),
                    Some(&s.token("student1", "student")),
                    &json!({"text": "Asked on the region while the classroom is offline"}),
                )
                .await?;
            anyhow::ensure!(r.status == 200, "qa.ask on the region: {}", r.text());
            r.json()?["id"].as_str().context("an id")?.to_owned()
        };

        // The classroom parks its 40 grade emails; nothing reaches its mail server, while
        // the region's announcement emails go out at once. The outage lasts its stretch.
        until("the classroom parks its emails", WAIT, || async {
            let jobs = admin(ch, "/admin/jobs").await?;
            anyhow::ensure!(jobs["counts"]["parked"] == CLASS, "{}", jobs["counts"]);
            anyhow::ensure!(jobs["counts"]["dead"] == 0, "{}", jobs["counts"]);
            Ok(())
        })
        .await?;
        s.region_smtp
            .wait_for_mails(roster.len(), WAIT)
            .await
            .context("the region's announcement emails")?;
        until("the uplink stays down for its stretch", WAIT, || async {
            let u = uplink(ch).await?;
            anyhow::ensure!(u["uplink"] == "down", "{u}");
            anyhow::ensure!(u["offlineS"].as_u64() >= Some(OFFLINE_S_MIN), "{u}");
            // Still parked, none dead-lettered, after many failed probes.
            let jobs = admin(ch, "/admin/jobs").await?;
            anyhow::ensure!(jobs["counts"]["parked"] == CLASS, "{}", jobs["counts"]);
            anyhow::ensure!(jobs["counts"]["dead"] == 0, "{}", jobs["counts"]);
            Ok(())
        })
        .await?;
        anyhow::ensure!(
            s.classroom_smtp.attempts().is_empty(),
            "the classroom reached its mail server with the uplink down"
        );
        // What the school's IT person sees.
        let upstream = SocketAddr::new(s.lab.addrs.region_uplink().into(), QUIC_PORT);
        let status = crate::ops::lectern(&[
            "status",
            "--http",
            &ch.to_string(),
            "--admin-token",
            ADMIN_TOKEN,
        ])
        .await?
        .expect_code(0)?;
        anyhow::ensure!(
            status
                .stdout
                .contains(&format!("uplink:    region@{upstream} DOWN for")),
            "lectern status: {}",
            status.stdout
        );
        let metrics = Http::new(ch).get("/metrics", None).await?.text();
        let unreachable: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("lectern_email_failures_total{reason=\"unreachable\"} "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        anyhow::ensure!(
            unreachable >= 2,
            "the parked emails probed the unreachable server again and again: {unreachable}"
        );
        let offline_for = cut.elapsed();

        // The link comes back.
        s.lab.uplink_up()?;
        let up = Instant::now();
        let reconnected = until("the peers reconnect", WAIT, || async {
            anyhow::ensure!(uplink(ch).await?["uplink"] == "up");
            anyhow::ensure!(region_sees_classroom(rh).await?);
            Ok(())
        })
        .await?;
        let since_reconnect = Instant::now();
        let converged = until("identical heads on both", WAIT, || async {
            heads_agree(rh, ch).await.map(|_| ())
        })
        .await?;
        let docs = heads_agree(rh, ch).await?;
        eprintln!(
            "offline class: uplink down {offline_for:?}; after link-up the peers reconnected in \
             {reconnected:?} and {docs} documents had identical heads {converged:?} later \
             ({:?} after link-up)",
            since_reconnect.duration_since(up) + converged
        );
        anyhow::ensure!(
            converged <= CONVERGENCE_MAX,
            "identical heads {converged:?} after the peers reconnected (at most {CONVERGENCE_MAX:?})"
        );

        // Every email once: the grades from the classroom, after the link returned; the
        // announcement from the region; none from both.
        s.classroom_smtp.wait_for_mails(CLASS, WAIT).await?;
        jobs_settled(ch).await?;
        jobs_settled(rh).await?;
        let class_mails = s.classroom_smtp.mails();
        anyhow::ensure!(
            s.classroom_smtp.attempts().iter().all(|t| *t >= up),
            "the classroom sent mail before the link was back"
        );
        let want = |users: &[String]| -> Vec<String> {
            let mut v: Vec<String> = users.iter().map(|u| format!("{u}@{EMAIL_DOMAIN}")).collect();
            v.sort();
            v
        };
        let region_mails = s.region_smtp.mails();
        assert_eq!(recipients(&class_mails, "Your grade"), want(&pupils));
        assert_eq!(class_mails.len(), CLASS, "only the grades, once each");
        assert_eq!(recipients(&region_mails, "Field trip moved"), want(&roster));
        assert_eq!(region_mails.len(), roster.len(), "only the announcement, once each");
        let message_ids: BTreeSet<String> = class_mails
            .iter()
            .chain(&region_mails)
            .filter_map(|m| m.header("message-id"))
            .collect();
        assert_eq!(message_ids.len(), CLASS + roster.len(), "one Message-ID per email");

        // Every acked command on both nodes: the session and the cohort read the same there.
        let session_path = format!("/api/sessions/{DEMO_SESSION}");
        let on = |http| get(http, &session_path, &ada);
        let (rv, cv) = (on(rh).await?, on(ch).await?);
        for field in ["questions", "polls", "chat", "broadcasts"] {
            assert_eq!(rv[field], cv[field], "{field} differ");
        }
        let qs = ids(&cv, "questions");
        for q in questions
            .iter()
            .chain([&region_question, &newcomer_question])
        {
            assert!(qs.contains(q), "question {q} is missing");
        }
        let chat_ids = ids(&cv, "chat");
        for c in &chats {
            assert!(chat_ids.contains(c), "chat message {c} is missing");
        }
        for (i, q) in questions.iter().enumerate() {
            let view = cv["questions"]
                .as_array()
                .and_then(|qs| qs.iter().find(|x| x["id"] == q.as_str()))
                .context("the question")?;
            assert_eq!(view["upvotes"], UPVOTES_EACH, "{view}");
            assert_eq!(view["answered"], i < ANSWERED, "{view}");
        }
        let pv = cv["polls"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["id"] == poll.as_str()))
            .context("the poll")?;
        assert_eq!(pv["state"], "closed", "{pv}");
        // The pupils' votes (i % 3) and the page's for Lamport.
        assert_eq!(pv["results"]["counts"], json!([15, 13, 13]), "{pv}");
        let cohort_path = format!("/api/cohorts/{DEMO_COHORT}");
        let cohort = |http| get(http, &cohort_path, &ada);
        let (rc, cc) = (cohort(rh).await?, cohort(ch).await?);
        assert_eq!(rc, cc, "the cohort reads the same on both");
        // The region sees who let the newcomer in, where.
        let entry = rc["roster"]
            .as_array()
            .and_then(|r| r.iter().find(|m| m["user"] == newcomer.as_str()))
            .with_context(|| format!("the newcomer on the region's roster: {rc}"))?;
        assert_eq!(entry["joined"]["by"], "ada", "{entry}");
        assert_eq!(entry["joined"]["session"], DEMO_SESSION, "{entry}");
        assert!(
            cc["announcements"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|a| a["id"] == announcement.as_str()),
            "{cc}"
        );
        for p in &pupils {
            let path = format!("/api/cohorts/{DEMO_COHORT}/progress/{p}");
            let (a, b) = (get(rh, &path, &ada).await?, get(ch, &path, &ada).await?);
            assert_eq!(a, b, "{p}'s progress differs");
            let text = a.to_string();
            assert!(text.contains("lesson-1") && text.contains("quiz-1"), "{a}");
        }

        // The page: live throughout, its question and chat on both nodes, the region's
        // announcement and its poll's closing shown after the merge.
        acted.send("online".to_owned())?;
        let summary = page.await??;
        assert_eq!(summary["stateOffline"], "live", "{summary}");
        assert_eq!(summary["stateAfter"], "live", "{summary}");
        assert_eq!(summary["snapshots"], 1, "resumed, never joined afresh: {summary}");
        let notes: Vec<&str> = summary["notes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        assert!(notes.contains(&"Field trip moved"), "{summary}");
        assert!(
            notes.contains(&format!("Poll closed: {poll_question}").as_str()),
            "{summary}"
        );
        let texts = |view: &Value, list: &str, field: &str, text: &Value| {
            view[list]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|i| &i[field] == text)
                .count()
        };
        for v in [&rv, &cv] {
            assert_eq!(texts(v, "questions", "question", &summary["asked"]), 1, "{summary}");
            assert_eq!(texts(v, "chat", "text", &summary["said"]), 1, "{summary}");
        }

        // Every notification once in each inbox, the same on both nodes.
        for user in &roster {
            let token = s.token(user, if user == "ada" { "instructor" } else { "student" });
            let r = inbox_ids(user, &get(rh, "/api/notifications", &token).await?)?;
            let c = inbox_ids(user, &get(ch, "/api/notifications", &token).await?)?;
            assert_eq!(r, c, "{user}'s inbox differs between the nodes");
            let mut kinds: Vec<&str> = c.values().map(String::as_str).collect();
            kinds.sort_unstable();
            let want: Vec<&str> = match pupils.iter().position(|p| p == user) {
                Some(i) if i < ANSWERED => vec!["announcement", "answer", "grade", "poll_closed"],
                Some(_) => vec!["announcement", "grade", "poll_closed"],
                // The page's student voted too.
                None if user == "student1" => vec!["announcement", "poll_closed"],
                None => vec!["announcement"],
            };
            assert_eq!(kinds, want, "{user}'s inbox");
        }

        // No student was logged out: every connection is the one opened before the outage,
        // and it still works; every token still works on both nodes.
        for (i, c) in students.iter_mut().enumerate() {
            assert!(!c.is_closed(), "{} was disconnected", pupil(i));
            assert!(
                !c.seen().iter().any(|e| e.name == "server:error"),
                "{} was told {:?}",
                pupil(i),
                c.seen().iter().find(|e| e.name == "server:error")
            );
            call_ok(
                c,
                "chat:send",
                vec![json!(DEMO_SESSION), json!("back online")],
            )
            .await?;
            // The token it signed in with and the one the classroom extended offline.
            for token in [&s.token(&pupil(i), "student"), &extended[i]] {
                get(rh, &format!("/api/sessions/{DEMO_SESSION}"), token).await?;
            }
        }
        assert!(!late.is_closed(), "the newcomer was disconnected");
        get(
            rh,
            &format!("/api/sessions/{DEMO_SESSION}"),
            &newcomer_token,
        )
        .await
        .context("the newcomer's token on the region")?;
        assert!(!teacher.is_closed(), "the instructor was disconnected");
        drop(region);
        drop(classroom);
        anyhow::Ok(())
        }
        .await;
        eprintln!("offline class: the test took {:?}", started.elapsed());
        result.with_context(|| s.log_tails())
    })
    .await
}

/// Kills: a classroom node that needs its upstream to start or to serve (the cohort, the
/// session or the course not read from its own store), its content not prefetched, or a
/// question asked offline that never reaches the region.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classroom_node_started_with_its_uplink_down_serves_what_it_pulled_before()
-> anyhow::Result<()> {
    within(async {
        let s = Setup::new("netns-cold").await?;
        let started = Instant::now();
        let result = async {
            let _region = s.start_region().await?;
            let (rh, ch) = (s.region_http(), s.classroom_http());
            let classroom = s.start_classroom().await?;
            let course = lectern_node::DEMO_COURSE;
            until(
                "the classroom pulls its cohort and course",
                WAIT,
                || async {
                    let c = doc_heads(ch).await?;
                    for doc in [
                        format!("cohort/{DEMO_COHORT}"),
                        format!("session/{DEMO_SESSION}"),
                        format!("course/{course}"),
                    ] {
                        anyhow::ensure!(c.contains_key(&doc), "{doc} not pulled: {c:?}");
                    }
                    heads_agree(rh, ch).await.map(|_| ())
                },
            )
            .await?;
            let outline = get(
                ch,
                &format!("/api/courses/{course}"),
                &s.token("student1", "student"),
            )
            .await?;
            // Every blob the outline names: the lessons' Markdown, HTML and assets.
            let blobs: BTreeSet<String> = outline["modules"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|m| m["lessons"].as_array().into_iter().flatten())
                .flat_map(|l| {
                    let assets = l["assets"].as_array().into_iter().flatten();
                    [&l["body"], &l["html"]].into_iter().chain(assets)
                })
                .filter_map(|h| h.as_str().map(str::to_owned))
                .collect();
            anyhow::ensure!(!blobs.is_empty(), "no lessons: {outline}");
            until("the classroom prefetches the lessons", WAIT, || async {
                let metrics = Http::new(ch)
                    .get("/metrics", Some(ADMIN_TOKEN))
                    .await?
                    .text();
                let pulled: u64 = metrics
                    .lines()
                    .find_map(|l| l.strip_prefix("lectern_content_pulled_total "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                anyhow::ensure!(pulled >= blobs.len() as u64, "{pulled} blobs pulled");
                Ok(())
            })
            .await?;

            // Stopped, the uplink cut, started again: it has never seen its upstream since.
            classroom.stop().await?;
            s.lab.uplink_down()?;
            let _classroom = s.start_classroom().await?;
            let u = uplink(ch).await?;
            anyhow::ensure!(u["uplink"] == "down", "{u}");

            let token = s.token("student1", "student");
            let mut student = Client::connect(
                ch,
                Transport::WebSocket,
                json!({"token": token}),
                "student1",
            )
            .await?;
            let joined = call_ok(&mut student, "session:join", vec![json!(DEMO_SESSION)]).await?;
            anyhow::ensure!(
                joined["state"]["questions"]
                    .as_array()
                    .is_some_and(|q| !q.is_empty()),
                "the session the classroom pulled, with its questions: {joined}"
            );
            let asked = call_ok(
                &mut student,
                "qa:ask",
                vec![
                    json!(DEMO_SESSION),
                    json!("Asked on a classroom node that never saw its uplink"),
                ],
            )
            .await?["id"]
                .as_str()
                .context("a question id")?
                .to_owned();
            let view = get(ch, &format!("/api/sessions/{DEMO_SESSION}"), &token).await?;
            anyhow::ensure!(ids(&view, "questions").contains(&asked), "{view}");
            get(ch, &format!("/api/cohorts/{DEMO_COHORT}"), &token).await?;
            for hash in &blobs {
                let r = Http::new(ch).get(&format!("/content/{hash}"), None).await?;
                anyhow::ensure!(r.status == 200, "lesson {hash} offline: {}", r.status);
            }

            // The link comes back: the question reaches the region.
            s.lab.uplink_up()?;
            until("the offline question reaches the region", WAIT, || async {
                let v = get(rh, &format!("/api/sessions/{DEMO_SESSION}"), &token).await?;
                anyhow::ensure!(ids(&v, "questions").contains(&asked));
                heads_agree(rh, ch).await.map(|_| ())
            })
            .await?;
            anyhow::Ok(())
        }
        .await;
        eprintln!("cold start: the test took {:?}", started.elapsed());
        result.with_context(|| s.log_tails())
    })
    .await
}

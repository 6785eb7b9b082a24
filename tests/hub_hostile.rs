//! Hostile requests against the hub's document lifecycle through a real node: random
//! sessions and cohorts asked for over real HTTP, SSE and Socket.IO answer `doc_not_found` and
//! write nothing, also on a real two-node cluster; the per-user cap of loaded documents over
//! Socket.IO; votes on unknown sessions. (The same on a bare hub, and the hub's loaded-document
//! limits, are unit tests of `lectern-hub`.)

use std::collections::BTreeSet;
use std::time::Duration;

use lectern_hub::Hub;
use lectern_model::{CommandBody, Role};
use lectern_testkit::Transport;
use serde_json::json;
use tokio::sync::broadcast::error::TryRecvError;

use crate::support::{cmd, session};

mod node {
    //! The same on a real node, over real HTTP, SSE and Socket.IO.

    use super::*;
    use crate::gateway::{Demo, ack_code, claims, unix_now_s, within};

    /// Every document the node stores, and every heads digest it keeps.
    pub(super) fn stored(hub: &Hub) -> (Vec<String>, BTreeSet<String>) {
        let docs = hub.store().doc_ids().expect("doc ids");
        let heads = hub
            .heads_summary()
            .into_iter()
            .map(|(d, _)| d.to_string())
            .collect();
        (docs, heads)
    }

    /// Asks for `n` random sessions and cohorts in every way a client can; each answer must
    /// be 404 / `doc_not_found`. Returns the ids asked for.
    pub(super) async fn hostile_requests(
        node: &lectern_node::Node,
        http: &lectern_testkit::Http,
        token: &str,
        cohort_token: &str,
        n: usize,
    ) -> anyhow::Result<Vec<String>> {
        let mut asked = Vec::new();
        let mut sio = lectern_testkit::Client::connect(
            node.http_addr,
            Transport::WebSocket,
            json!({ "token": token }),
            "ghost",
        )
        .await?;
        for i in 0..n {
            let id = format!("ghost{i}x{}", unix_now_s() % 1000);
            asked.push(format!("session/{id}"));
            for path in [
                format!("/api/sessions/{id}"),
                format!("/api/sessions/{id}/events?wait=1"),
            ] {
                let r = http.get(&path, Some(token)).await?;
                anyhow::ensure!(
                    r.status == 404 && r.error_code().as_deref() == Some("doc_not_found"),
                    "GET {path}: {} {}",
                    r.status,
                    r.text()
                );
            }
            let r = http
                .post_json(
                    &format!("/api/sessions/{id}/commands/qa.ask"),
                    Some(token),
                    &json!({"text": "hello?"}),
                )
                .await?;
            anyhow::ensure!(
                r.status == 404 && r.error_code().as_deref() == Some("doc_not_found"),
                "POST qa.ask: {} {}",
                r.status,
                r.text()
            );
            let auth = format!("Bearer {token}");
            match http
                .sse(
                    &format!("/api/stream/sessions/{id}"),
                    &[("authorization", &auth)],
                )
                .await?
            {
                Ok(_) => anyhow::bail!("a stream of a session that does not exist opened"),
                Err(r) => anyhow::ensure!(r.status == 404, "SSE: {} {}", r.status, r.text()),
            }
            let ack = sio.call("session:join", vec![json!(id)]).await?;
            anyhow::ensure!(ack_code(&ack) == "doc_not_found", "join: {ack}");
            let ack = sio
                .call("poll:vote", vec![json!(id), json!("p1"), json!(0)])
                .await?;
            anyhow::ensure!(ack_code(&ack) == "doc_not_found", "vote: {ack}");
            let ack = sio.call("qa:ask", vec![json!(id), json!("hi?")]).await?;
            anyhow::ensure!(ack_code(&ack) == "doc_not_found", "ask: {ack}");
            let cohort = format!("gc{i}");
            asked.push(format!("cohort/{cohort}"));
            for path in [
                format!("/api/cohorts/{cohort}"),
                format!("/api/cohorts/{cohort}/aggregates"),
            ] {
                let r = http.get(&path, Some(cohort_token)).await?;
                anyhow::ensure!(
                    r.status == 404 && r.error_code().as_deref() == Some("doc_not_found"),
                    "GET {path}: {} {}",
                    r.status,
                    r.text()
                );
            }
            let auth = format!("Bearer {cohort_token}");
            for path in [
                format!("/api/stream/leaderboard/{cohort}"),
                format!("/api/stream/instructor/{cohort}"),
                format!("/api/stream/progress/eve?cohort={cohort}"),
            ] {
                match http.sse(&path, &[("authorization", &auth)]).await? {
                    Ok(_) => anyhow::bail!("{path} opened for a cohort that does not exist"),
                    Err(r) => anyhow::ensure!(r.status == 404, "{path}: {} {}", r.status, r.text()),
                }
            }
        }
        sio.disconnect().await;
        Ok(asked)
    }

    /// A token of an instructor of the random cohorts `gc0`…`gc{n-1}` (so the gateway's own
    /// membership check lets the request reach the hub).
    pub(super) fn cohort_claims(n: usize) -> lectern_gateway::auth::Claims {
        let cohorts: Vec<String> = (0..n).map(|i| format!("gc{i}")).collect();
        let refs: Vec<&str> = cohorts.iter().map(String::as_str).collect();
        claims("eve", "instructor", &refs, unix_now_s() + 3600)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn random_ids_over_http_sse_and_socketio_answer_not_found_and_write_nothing()
    -> anyhow::Result<()> {
        within(async {
            let demo = Demo::start_with("ghost-node", |c| {
                c.limits.command_burst = 1_000;
            })
            .await?;
            let hub = demo.node.hub.clone();
            let before = stored(&hub);
            let mut feed = hub.changes();
            let token = demo.token("student1", "student");
            let n = 5;
            let cohort_token = demo.mint(&cohort_claims(n));
            let asked = hostile_requests(&demo.node, &demo.http, &token, &cohort_token, n).await?;
            anyhow::ensure!(stored(&hub) == before, "the store is unchanged");
            loop {
                match feed.try_recv() {
                    Ok(change) => anyhow::ensure!(
                        !asked.contains(&change.doc.to_string()),
                        "{} was announced on the change feed",
                        change.doc
                    ),
                    Err(TryRecvError::Lagged(_)) => continue,
                    Err(_) => break,
                }
            }
            demo.stop().await
        })
        .await
    }
}

mod node_limits {
    //! The per-user cap on a real node over Socket.IO: one student joining more sessions than
    //! one user may hold is refused `too_many_documents` past the cap, alone; another student
    //! joins a session nobody has loaded; `/metrics` counts the refusals.

    use super::*;
    use crate::gateway::{Demo, ack_code, within};

    /// The node's default `docs_loaded_per_user_max`.
    const PER_USER_MAX: usize = 64;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_student_joining_many_sessions_is_capped_alone() -> anyhow::Result<()> {
        within(async {
            let demo = Demo::start_with("ghost-per-user", |c| {
                c.limits.command_burst = 1_000;
            })
            .await?;
            let hub = demo.node.hub.clone();
            let n = PER_USER_MAX + 6;
            for i in 0..=n {
                hub.execute(
                    session(&format!("many{i}")),
                    crate::mesh::demo_caller("root", Role::Admin),
                    cmd(
                        &format!("create-many{i}"),
                        CommandBody::SessionCreate {
                            cohort: lectern_node::DEMO_COHORT.parse()?,
                            title: format!("session {i}"),
                            moderation: false,
                        },
                    ),
                )
                .await?;
            }
            let mut mal = demo
                .sio(
                    Transport::WebSocket,
                    &demo.token("student1", "student"),
                    "mal",
                )
                .await?;
            let mut codes = Vec::new();
            for i in 0..n {
                let ack = mal
                    .call("session:join", vec![json!(format!("many{i}"))])
                    .await?;
                codes.push(if ack["ok"] == true {
                    "ok".to_owned()
                } else {
                    ack_code(&ack)
                });
            }
            let expected: Vec<String> = (0..n)
                .map(|i| {
                    if i < PER_USER_MAX {
                        "ok".to_owned()
                    } else {
                        "too_many_documents".to_owned()
                    }
                })
                .collect();
            anyhow::ensure!(codes == expected, "joins answered {codes:?}");
            // Another student joins the one session nobody has loaded yet.
            let mut other = demo
                .sio(
                    Transport::WebSocket,
                    &demo.token("student2", "student"),
                    "other",
                )
                .await?;
            let ack = other
                .call("session:join", vec![json!(format!("many{n}"))])
                .await?;
            anyhow::ensure!(ack["ok"] == true, "the other student's join: {ack}");
            let metrics = demo.http.get("/metrics", None).await?.text();
            anyhow::ensure!(
                metrics.contains(&format!(
                    "lectern_hub_loads_refused_total{{reason=\"per_user\"}} {}",
                    n - PER_USER_MAX
                )),
                "the refusals are counted: {metrics}"
            );
            anyhow::ensure!(
                metrics.contains("lectern_hub_loads_refused_total{reason=\"full\"} 0"),
                "nothing was refused for a full hub"
            );
            mal.disconnect().await;
            other.disconnect().await;
            demo.stop().await
        })
        .await
    }
}

mod votes {
    //! `poll:vote` spends the sender's rate token before it reads the poll, and shows another
    //! cohort's poll as it shows a session that does not exist.

    use super::*;
    use crate::gateway::{Demo, ack_code, within};

    /// The burst the test node allows.
    const BURST: usize = 8;

    /// Kills: reading the poll before taking the rate token (a flood of votes on random
    /// sessions is never rate limited), and answering a non-member about another cohort's
    /// poll (`not_found` for a missing poll, an error about the choice for an existing one).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn votes_on_unknown_sessions_spend_tokens_and_reveal_nothing() -> anyhow::Result<()> {
        within(async {
            let demo = Demo::start_with("ghost-votes", |c| {
                c.limits.command_burst = BURST as u32;
                c.limits.commands_per_s = 0.01;
            })
            .await?;
            // Another cohort's session with a poll.
            let hub = demo.node.hub.clone();
            let root = crate::mesh::demo_caller("root", Role::Admin);
            hub.execute(
                session("elsewhere"),
                root.clone(),
                cmd(
                    "create-elsewhere",
                    CommandBody::SessionCreate {
                        cohort: "other-cohort".parse()?,
                        title: "Elsewhere".into(),
                        moderation: false,
                    },
                ),
            )
            .await?;
            let mut mal = demo
                .sio(
                    Transport::WebSocket,
                    &demo.token("student1", "student"),
                    "mal",
                )
                .await?;
            let poll = lectern_model::PollSpec {
                question: "?".into(),
                kind: lectern_model::PollKind::Single,
                options: vec!["a".into(), "b".into()],
                scale_max: None,
                hide_results: false,
            };
            hub.execute(
                session("elsewhere"),
                root,
                cmd("poll-elsewhere", CommandBody::PollCreate(poll)),
            )
            .await?;
            let other = mal
                .call(
                    "poll:vote",
                    vec![json!("elsewhere"), json!("poll-elsewhere"), json!(0)],
                )
                .await?;
            anyhow::ensure!(
                ack_code(&other) == "doc_not_found",
                "another cohort's poll: {other}"
            );
            let mut codes = Vec::new();
            for i in 0..BURST + 4 {
                let ack = mal
                    .call(
                        "poll:vote",
                        vec![json!(format!("ghost-vote-{i}")), json!("p1"), json!(0)],
                    )
                    .await?;
                codes.push(ack_code(&ack));
            }
            // One token went on the vote above; the rest of the burst on these.
            let expected: Vec<String> = (0..BURST + 4)
                .map(|i| {
                    if i + 1 < BURST {
                        "doc_not_found"
                    } else {
                        "rate_limited"
                    }
                    .to_owned()
                })
                .collect();
            anyhow::ensure!(codes == expected, "votes answered {codes:?}");
            mal.disconnect().await;
            demo.stop().await
        })
        .await
    }
}

mod cluster {
    //! On a real two-node cluster: hostile requests on A create no document on B.

    use super::node::{cohort_claims, hostile_requests, stored};
    use super::*;
    use crate::mesh::{Cluster, demo_caller, eventually, within};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn random_ids_on_one_node_create_no_document_on_its_peer() -> anyhow::Result<()> {
        within(async {
            let mut cluster = Cluster::new("ghost-mesh")?;
            let a = cluster
                .start_with("a", vec![], true, |c| c.limits.command_burst = 1_000)
                .await?;
            let b = cluster.start("b", vec![cluster.peer(a)], false).await?;
            cluster.connected(b, 1).await?;
            let node_a = cluster.node(a);
            let n = 5;
            let http = lectern_testkit::Http::new(node_a.http_addr);
            let token = crate::mesh::token("student1", "student");
            let cohort_token =
                lectern_gateway::auth::mint(crate::mesh::SECRET.as_bytes(), &cohort_claims(n))?;
            let asked = hostile_requests(node_a, &http, &token, &cohort_token, n).await?;
            // A marker made after the requests: once B has it, and every document A stores,
            // anything the requests had made would have reached B too.
            let marker = session("marker");
            node_a
                .hub
                .execute(
                    marker.clone(),
                    demo_caller("ada", Role::Instructor),
                    cmd(
                        "marker",
                        CommandBody::SessionCreate {
                            cohort: lectern_node::DEMO_COHORT.parse()?,
                            title: "marker".into(),
                            moderation: false,
                        },
                    ),
                )
                .await?;
            cluster
                .converged(&marker, &[a, b], Duration::from_secs(30))
                .await?;
            let (hub_a, hub_b) = (cluster.node(a).hub.clone(), cluster.node(b).hub.clone());
            eventually(
                "B holds every document A holds",
                Duration::from_secs(30),
                || stored(&hub_a).1 == stored(&hub_b).1,
            )
            .await?;
            for hub in [&hub_a, &hub_b] {
                let (docs, heads) = stored(hub);
                for ghost in &asked {
                    anyhow::ensure!(!docs.contains(ghost), "{ghost} was stored");
                    anyhow::ensure!(!heads.contains(ghost), "{ghost} has a heads digest");
                }
            }
            cluster.stop_all().await
        })
        .await
    }
}

//! Browser failover between nodes: three node processes in one mesh, the page on the first;
//! the first is SIGKILLed mid-class and the page carries on on the next node of
//! `GET /api/nodes` within seconds, with its queued action sent once and no event missed (one
//! made on the third node while the page moves); once the first node is back, the page goes
//! home again.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, bail, ensure};
use lectern_gateway::auth::mint;
use lectern_node::{DEMO_COHORT, DEMO_SESSION};
use lectern_testkit::Http;
use serde_json::json;

use super::{BROWSER, NodeChild, free_addr, questions_with, run_script};
use crate::gateway::{claims, unix_now_s};
use crate::support::TempDir;

/// The child's configuration file (the node loads it like `lectern-node --config`).
const CHILD_CONFIG: &str = "LECTERN_TEST_WEB_CLUSTER_CONFIG";

/// The longest a page may take to be live on another node after its node was killed.
const FAILOVER_MAX_MS: u64 = 5_000;

/// Not a test of its own: the entry point of a cluster node child (this test binary,
/// re-executed). Without its environment it returns at once.
#[test]
fn web_cluster_child() {
    let Ok(file) = std::env::var(CHILD_CONFIG) else {
        return;
    };
    let rt = crate::support::child_runtime();
    rt.block_on(async move {
        let overrides = lectern_node::config::Overrides {
            config_file: Some(file.into()),
            ..Default::default()
        };
        let config =
            lectern_node::Config::load(overrides, &|_| None).expect("the child's configuration");
        let node = lectern_node::start(config).await.expect("start node");
        println!("READY {}", node.http_addr);
        std::future::pending::<()>().await;
    });
}

/// One node of the test cluster: its configuration file and address.
struct Member {
    config: std::path::PathBuf,
    http: SocketAddr,
}

impl Member {
    fn start(&self) -> anyhow::Result<NodeChild> {
        NodeChild::spawn(
            "web::failover::web_cluster_child",
            &[(CHILD_CONFIG, self.config.display().to_string())],
        )
    }
}

/// Writes the three nodes' certificates and configurations: every node peers with the other
/// two and lists their URLs (in the order of the names) for the page's failover.
fn cluster(dir: &Path, secret: &str) -> anyhow::Result<Vec<Member>> {
    let names = ["n0", "n1", "n2"];
    let ca = lectern_mesh::ClusterCa::generate()?;
    let http: Vec<SocketAddr> = names
        .iter()
        .map(|_| free_addr())
        .collect::<Result<_, _>>()?;
    let quic: Vec<SocketAddr> = names
        .iter()
        .map(|_| crate::mesh::reserved_udp_addr())
        .collect::<Result<_, _>>()?;
    let mut members = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let tls = dir.join(format!("{name}-tls"));
        ca.issue_node(name, lectern_mesh::tls::NODE_CERT_VALIDITY_DEFAULT)?
            .write(&tls)?;
        let others = |f: &dyn Fn(usize) -> String| -> Vec<String> {
            (0..names.len()).filter(|j| *j != i).map(f).collect()
        };
        let list = |v: Vec<String>| format!("{v:?}");
        let config = format!(
            "data_dir = {data:?}\nhttp = \"{http}\"\npublic_url = \"http://{http}\"\n\
             cluster_urls = {urls}\n\
             # The first node seeds the demo class; the others receive it over the mesh.\n\
             demo = {demo}\n\
             [auth]\nhs256_secret = \"{secret}\"\n\
             [mesh]\nname = \"{name}\"\nlisten = \"{listen}\"\ntls_dir = {tls:?}\npeers = {peers}\n",
            data = dir.join(format!("{name}-data")).display().to_string(),
            http = http[i],
            urls = list(others(&|j| format!("http://{}", http[j]))),
            demo = i == 0,
            listen = quic[i],
            tls = tls.display().to_string(),
            peers = list(others(&|j| format!("{}@{}", names[j], quic[j]))),
        );
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(&file, config)?;
        members.push(Member {
            config: file,
            http: http[i],
        });
    }
    Ok(members)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_fails_over_to_another_node_and_comes_home() -> anyhow::Result<()> {
    let _one = BROWSER.lock().await;
    let dir = TempDir::new("web-failover");
    let secret = format!("web-failover-secret-{:032x}", rand::random::<u128>());
    let token = |user: &str, role: &str| {
        mint(
            secret.as_bytes(),
            &claims(user, role, &[DEMO_COHORT], unix_now_s() + 3600),
        )
        .context("mint a token")
    };
    let (student, instructor, other) = (
        token("student1", "student")?,
        token("ada", "instructor")?,
        token("student2", "student")?,
    );
    let members = cluster(dir.path(), &secret)?;
    let mut nodes = Vec::new();
    for m in &members {
        nodes.push(Some(m.start()?));
    }
    // The demo session has reached every node before the class starts.
    for m in &members {
        let http = Http::new(m.http);
        let path = format!("/api/sessions/{DEMO_SESSION}");
        let mut tries = 0;
        while http.get(&path, Some(&instructor)).await?.status != 200 {
            tries += 1;
            ensure!(tries < 200, "the demo session never reached {}", m.http);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    let base = format!("http://{}", members[0].http);
    let elsewhere = "Asked on the third node while the page moved";
    let third = members[2].http;
    let summary = tokio::task::spawn_blocking({
        let (student, instructor, other) = (student.clone(), instructor.clone(), other.clone());
        move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let summary = run_script(
                "failover",
                &base,
                DEMO_SESSION,
                [&student, &instructor],
                |step| match step {
                    "kill" => {
                        nodes[0].take().context("the home node runs")?.sigkill()?;
                        // An event made elsewhere while the page is between nodes.
                        let posted = rt.block_on(Http::new(third).post_json(
                            &format!("/api/sessions/{DEMO_SESSION}/commands"),
                            Some(&other),
                            &json!({"id": "failover-elsewhere", "cmd": "qa.ask", "text": elsewhere}),
                        ))?;
                        ensure!(posted.status == 200, "ask on the third node: {}", posted.status);
                        Ok(elsewhere.to_owned())
                    }
                    "restart" => {
                        nodes[0] = Some(members[0].start()?);
                        Ok("restarted".into())
                    }
                    other => bail!("unknown step {other}"),
                },
            )?;
            anyhow::Ok((summary, nodes, members))
        }
    })
    .await??;
    let (summary, _nodes, members) = summary;

    let failover_ms = summary["failoverMs"].as_u64().context("failoverMs")?;
    println!("failover: live on the next node {failover_ms} ms after the kill");
    assert!(
        failover_ms <= FAILOVER_MAX_MS,
        "live elsewhere after {failover_ms} ms: {summary}"
    );
    assert_eq!(
        summary["homeNode"],
        format!("http://{}", members[0].http),
        "{summary}"
    );
    assert_eq!(
        summary["awayNode"],
        format!("http://{}", members[1].http),
        "the next node in order: {summary}"
    );
    assert_eq!(
        summary["backNode"], summary["homeNode"],
        "the page went home: {summary}"
    );
    assert_eq!(
        summary["shown"],
        json!([1, 1, 1, 1]),
        "every question shown once: {summary}"
    );
    // Each node holds each action once (the queued one was sent once, to the second node),
    // the restarted home node too once the mesh has caught it up.
    let texts: Vec<String> = summary["texts"]
        .as_array()
        .context("texts")?
        .iter()
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect();
    ensure!(texts.len() == 4, "{summary}");
    for m in &members {
        let http = Http::new(m.http);
        let mut tries = 0;
        loop {
            let view = http
                .get(&format!("/api/sessions/{DEMO_SESSION}"), Some(&instructor))
                .await?
                .json()?;
            let counts: Vec<usize> = texts.iter().map(|t| questions_with(&view, t)).collect();
            if counts == [1, 1, 1, 1] {
                break;
            }
            ensure!(
                counts.iter().all(|c| *c <= 1),
                "an action applied twice on {}: {counts:?}",
                m.http
            );
            tries += 1;
            ensure!(tries < 100, "{} holds {counts:?} of {texts:?}", m.http);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

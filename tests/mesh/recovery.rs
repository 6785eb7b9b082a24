//! Connection State Recovery across the mesh, with the official socket.io-client
//! (`tests/js/recovery.mjs`): a student's socket reaches a two-node cluster through a proxy
//! that drops it twice while another student asks questions. It comes back first to the same
//! node, then to the other node, each time with `socket.recovered === true`, its session
//! joined again and each missed question exactly once; live events follow. A forged pid and
//! offset connect afresh. Over the lean WebSocket and over polling (socketioxide).

use std::time::Duration;

use anyhow::bail;
use serde_json::{Value, json};

use super::{Cluster, DEMO_SESSION, demo_session, token};
use crate::support::run_js;

/// How long the script may run (it has its own 80 s timeout inside).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(100);

/// Runs the script against a fresh two-node cluster over `transport`; its summary.
async fn recover_over(transport: &str) -> anyhow::Result<Value> {
    let mut cluster = Cluster::new(&format!("mesh-recovery-{transport}"))?;
    let a = cluster.start("node-a", vec![], true).await?;
    let b = cluster
        .start("node-b", vec![cluster.peer(a)], false)
        .await?;
    for i in [a, b] {
        cluster.connected(i, 1).await?;
    }
    cluster
        .converged(&demo_session(), &[a, b], Duration::from_secs(10))
        .await?;
    let args = [
        format!("http://{}", cluster.node(a).http_addr),
        format!("http://{}", cluster.node(b).http_addr),
        DEMO_SESSION.to_owned(),
        transport.to_owned(),
        token("student1", "student"),
        token("student2", "student"),
    ];
    let ran = run_js("recovery.mjs", &args, &[], SCRIPT_TIMEOUT).await;
    cluster.stop_all().await?;
    let (summary, ok) = ran?;
    if !ok {
        bail!("recovery.mjs failed: {summary}");
    }
    Ok(summary)
}

fn expected(transport: &str) -> Value {
    json!({
        "transport": transport,
        // The first connect is new; both reconnects recovered, under the first pid.
        "recovered": [false, true, true],
        "samePid": true,
        "offsetIsLastString": true,
        // One question before the drops, two missed per drop, one live after.
        "asked": 6,
        "receivedEach": [1, 1, 1, 1, 1, 1],
        // The recovered socket is in its session again.
        "rejoin": "already_joined",
        "forgedRecovered": false,
        "forgedPidEchoed": false,
        "forgedJoin": true,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_client_recovers_on_the_same_and_another_node_over_websocket() -> anyhow::Result<()>
{
    let summary = recover_over("websocket").await?;
    assert_eq!(summary, expected("websocket"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_client_recovers_on_the_same_and_another_node_over_polling() -> anyhow::Result<()> {
    let summary = recover_over("polling").await?;
    assert_eq!(summary, expected("polling"));
    Ok(())
}

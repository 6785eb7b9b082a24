//! `lectern flags set|unset|list` against a real cluster: a flag set with the binary on node A
//! is in force on node B (and on a classroom node restricted to the demo cohort) within 2 s,
//! over REST and Socket.IO, with the stable `feature_disabled` code; `GET /api/flags` tells
//! the page; a cohort flag wins over the global one; unset (on another node) restores it.

use std::time::{Duration, Instant};

use lectern_model::{CohortId, Feature};
use lectern_node::{DEMO_COHORT, DEMO_SESSION};
use lectern_testkit::{Client, Http, Transport};
use serde_json::{Value, json};

use super::{lectern, within};
use crate::mesh::{Cluster, demo_session, eventually_ok, token};

/// The most a flag may take from one node to every other (the requirement).
const PROPAGATION_MAX: Duration = Duration::from_secs(2);

const ADMIN_TOKEN: &str = "admin-token-0123456789";

/// A chat message sent over REST to `http` as student1; the response's status and code.
async fn chat(http: &Http, text: &str) -> anyhow::Result<(u16, Option<String>)> {
    let r = http
        .post_json(
            &format!("/api/sessions/{DEMO_SESSION}/commands/chat.send"),
            Some(&token("student1", "student")),
            &json!({ "text": text }),
        )
        .await?;
    Ok((r.status, r.error_code()))
}

/// Kills: a flag that stays on the node where it was set (the mesh does not carry the flags
/// document, or a node does not reread it), a classroom node's share policy that keeps the
/// flags document out, a disabled command that still runs on one transport, a code other
/// than `feature_disabled` (403), a cohort flag that does not win over the global one, an
/// unset that does not restore the feature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_set_on_one_node_switches_the_feature_off_everywhere_within_two_seconds() {
    within(async {
        let mut cluster = Cluster::new("ops-flags")?;
        let a = cluster.start("a", vec![], true).await?;
        let b = cluster.start("b", vec![cluster.peer(a)], false).await?;
        // A classroom node: only the demo cohort's documents (and the flags) reach it.
        let c = cluster
            .start_with("c", vec![cluster.peer(a)], false, |config| {
                config.mesh.share_cohorts = Some(vec![DEMO_COHORT.into()]);
            })
            .await?;
        cluster
            .converged(&demo_session(), &[a, b, c], Duration::from_secs(20))
            .await?;
        let (http_a, http_b) = (
            Http::new(cluster.node(a).http_addr),
            Http::new(cluster.node(b).http_addr),
        );
        assert_eq!(chat(&http_b, "before").await?, (200, None));

        let addr_a = cluster.node(a).http_addr.to_string();
        let addr_b = cluster.node(b).http_addr.to_string();
        let admin_a = ["--http", &addr_a, "--admin-token", ADMIN_TOKEN];
        let admin_b = ["--http", &addr_b, "--admin-token", ADMIN_TOKEN];

        // A wrong token is refused with the admin exit code, and nothing is set.
        lectern(&[
            "flags",
            "set",
            "chat",
            "off",
            "--http",
            &addr_a,
            "--admin-token",
            "wrong",
        ])
        .await?
        .expect_code(4)?;
        assert!(cluster.node(a).hub.flags().enabled(Feature::Chat, None));

        let started = Instant::now();
        let set = lectern(&[&["--json", "flags", "set", "chat", "off"][..], &admin_a].concat())
            .await?
            .expect_code(0)?;
        assert_eq!(set.json()?["flags"]["global"]["chat"], false, "{set:?}");
        // In force on A when the command returns.
        let (status, code) = chat(&http_a, "on a").await?;
        assert_eq!((status, code.as_deref()), (403, Some("feature_disabled")));

        // On B, over REST, within the limit.
        let on_b = eventually_ok("chat refused on B", PROPAGATION_MAX, || async {
            let (status, code) = chat(&http_b, "racing the flag").await?;
            anyhow::ensure!(status == 403, "chat answered {status}");
            anyhow::ensure!(code.as_deref() == Some("feature_disabled"), "code {code:?}");
            Ok(())
        })
        .await?;
        let total = started.elapsed();
        println!(
            "flag propagation: chat refused on node B {} ms after `lectern flags set` returned \
             ({} ms after the command started)",
            on_b.as_millis(),
            total.as_millis()
        );
        assert!(on_b <= PROPAGATION_MAX, "{on_b:?}");
        let cohort: CohortId = DEMO_COHORT.parse()?;
        eventually_ok("chat off on the classroom node", PROPAGATION_MAX, || {
            let flags = cluster.node(c).hub.flags();
            async move {
                anyhow::ensure!(!flags.enabled(Feature::Chat, None), "still on");
                Ok(())
            }
        })
        .await?;
        assert!(
            !cluster
                .node(c)
                .hub
                .flags()
                .enabled(Feature::Chat, Some(&cohort))
        );

        // Socket.IO on B: the same code in the ack.
        let mut client = Client::connect(
            cluster.node(b).http_addr,
            Transport::WebSocket,
            json!({ "token": token("student1", "student") }),
            "student1",
        )
        .await?;
        let joined = client
            .call("session:join", vec![json!(DEMO_SESSION)])
            .await?;
        assert_eq!(joined["ok"], true, "{joined}");
        let ack = client
            .call(
                "chat:send",
                vec![json!(DEMO_SESSION), json!("over socket.io")],
            )
            .await?;
        assert_eq!(ack["ok"], false, "{ack}");
        assert_eq!(ack["error"]["code"], "feature_disabled", "{ack}");
        // Other features are untouched.
        let ask = client
            .call("qa:ask", vec![json!(DEMO_SESSION), json!("still asking?")])
            .await?;
        assert_eq!(ask["ok"], true, "{ask}");

        // The page learns it from /api/flags.
        let page: Value = http_b
            .get(
                &format!("/api/flags?cohort={DEMO_COHORT}"),
                Some(&token("student1", "student")),
            )
            .await?
            .json()?;
        assert_eq!(page["chat"], false, "{page}");
        assert_eq!(page["polls"], true, "{page}");
        assert_eq!(page["copilot"], true, "{page}");

        // A cohort flag wins over the global one: chat back on for the demo cohort only.
        lectern(
            &[
                &["flags", "set", "chat", "on", "--cohort", DEMO_COHORT][..],
                &admin_a,
            ]
            .concat(),
        )
        .await?
        .expect_code(0)?;
        eventually_ok(
            "chat on again for the cohort on B",
            PROPAGATION_MAX,
            || async {
                anyhow::ensure!(chat(&http_b, "cohort on").await?.0 == 200, "still refused");
                Ok(())
            },
        )
        .await?;
        let listed = lectern(&[&["--json", "flags", "list"][..], &admin_b].concat())
            .await?
            .expect_code(0)?
            .json()?;
        assert_eq!(
            listed["flags"],
            json!({"global": {"chat": false}, "cohorts": {DEMO_COHORT: {"chat": true}}})
        );

        // Unset both on B: A follows.
        for args in [
            &["flags", "unset", "chat", "--cohort", DEMO_COHORT][..],
            &["flags", "unset", "chat"][..],
        ] {
            lectern(&[args, &admin_b].concat()).await?.expect_code(0)?;
        }
        eventually_ok("the flags are gone on A", PROPAGATION_MAX, || {
            let flags = cluster.node(a).hub.flags();
            async move {
                anyhow::ensure!(*flags == lectern_model::FlagSet::new(), "{flags:?}");
                Ok(())
            }
        })
        .await?;
        assert_eq!(chat(&http_a, "after").await?, (200, None));
        let human = lectern(&[&["flags", "list"][..], &admin_a].concat())
            .await?
            .expect_code(0)?;
        assert!(human.stdout.contains("every feature is on"), "{human:?}");

        // An unknown feature is bad usage, refused before the node is asked.
        lectern(&[&["flags", "set", "teleport", "off"][..], &admin_a].concat())
            .await?
            .expect_code(2)?;

        drop(client);
        cluster.stop_all().await
    })
    .await
    .unwrap();
}

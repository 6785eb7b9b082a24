//! `lectern flags set|unset|list` against a real cluster: a flag set with the binary on node A
//! is in force on node B (and on a classroom node restricted to the demo cohort) within 2 s,
//! over REST and Socket.IO, with the stable `feature_disabled` code; `GET /api/flags` tells
//! the page; a cohort flag wins over the global one; unset (on another node) restores it. A
//! classroom node held to a scope receives the flags but cannot change them.

use std::time::{Duration, Instant};

use anyhow::Context;
use lectern_mesh::NodeTls;
use lectern_model::{CohortId, CommandBody, DocId, Feature, Millis, Replica, Role};
use lectern_node::{DEMO_COHORT, DEMO_SESSION};
use lectern_testkit::{Client, Http, Transport};
use lectern_wire::{PROTOCOL_VERSION, PeerFrame, encode_frame};
use serde_json::{Value, json};

use super::{lectern, within};
use crate::mesh::{Cluster, demo_session, eventually_ok, token};
use crate::support::{caller, cmd};

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

/// A sync message for the flags document from a replica that switched `email` off, carrying
/// that change: what a compromised classroom node that ignores the region's read-only flag
/// would send. Made by running automerge's sync against a blank replica until the rogue's
/// message holds changes.
fn rogue_flags_message() -> anyhow::Result<Vec<u8>> {
    use automerge::sync;
    let mut rogue = Replica::new(DocId::Flags, &[0xbb; 16]);
    rogue
        .apply(
            &caller("admin", Role::Admin),
            &cmd(
                "rogue-email-off",
                CommandBody::FlagSet {
                    feature: Feature::Email,
                    cohort: None,
                    enabled: false,
                },
            ),
            Millis(0),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut blank = Replica::new(DocId::Flags, &[0xcc; 16]);
    let (mut rogue_state, mut blank_state) = (sync::State::new(), sync::State::new());
    for _ in 0..10 {
        let m = rogue
            .generate_sync_message(&mut rogue_state)
            .context("the rogue has something to say")?;
        if sync::Message::decode(&m).is_ok_and(|m| !m.changes.is_empty()) {
            return Ok(m);
        }
        blank.receive_sync_message(&mut blank_state, &m)?;
        if let Some(reply) = blank.generate_sync_message(&mut blank_state) {
            rogue.receive_sync_message(&mut rogue_state, &reply)?;
        }
    }
    anyhow::bail!("the rogue never sent its change")
}

/// B's `lectern_mesh_frames_refused_total{reason="read_only"}`.
fn read_only_refused(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("lectern_mesh_frames_refused_total{reason=\"read_only\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// A classroom node held to a scope by its region (`mesh.peer_cohorts`) receives the cluster's
/// flags but cannot change them: its own node refuses `lectern flags set|unset`
/// (`flags_read_only`), a flag written on it anyway (a compromised node, straight into its
/// hub) never reaches the region, a peer that sends such a change regardless of the region's
/// read-only sync is refused and counted, and meanwhile the region's flag changes and the
/// class's documents keep flowing to it. Kills: scoped peers' flag changes applied (one
/// classroom switching a feature off cluster-wide); the flags no longer reaching a scoped peer;
/// its other documents stopped with them; the refusal not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_classroom_node_receives_the_flags_but_cannot_change_them() {
    within(async {
        let mut cluster = Cluster::new("ops-flags-scope")?;
        let region = cluster
            .start_with("node-b", vec![], true, |config| {
                config.mesh.peer_cohorts = vec![("node-c".into(), vec![DEMO_COHORT.into()])];
            })
            .await?;
        let classroom = cluster
            .start_with("node-c", vec![cluster.peer(region)], false, |config| {
                config.mesh.share_cohorts = Some(vec![DEMO_COHORT.into()]);
            })
            .await?;
        cluster
            .converged(
                &demo_session(),
                &[region, classroom],
                Duration::from_secs(20),
            )
            .await?;
        let (hub_r, hub_c) = (
            cluster.node(region).hub.clone(),
            cluster.node(classroom).hub.clone(),
        );
        let addr_r = cluster.node(region).http_addr.to_string();
        let addr_c = cluster.node(classroom).http_addr.to_string();
        let admin_r = ["--http", &addr_r, "--admin-token", ADMIN_TOKEN];
        let admin_c = ["--http", &addr_c, "--admin-token", ADMIN_TOKEN];

        // The classroom node's operator is told to go to a region node.
        for args in [
            &["--json", "flags", "set", "chat", "off"][..],
            &["--json", "flags", "unset", "chat"][..],
        ] {
            let refused = lectern(&[args, &admin_c].concat()).await?.expect_code(1)?;
            assert_eq!(
                refused.json()?["error"]["code"],
                "flags_read_only",
                "{refused:?}"
            );
        }
        assert!(hub_c.flags().enabled(Feature::Chat, None));

        // Set on the region: it reaches the classroom.
        lectern(&[&["flags", "set", "chat", "off"][..], &admin_r].concat())
            .await?
            .expect_code(0)?;
        eventually_ok("chat off on the classroom node", PROPAGATION_MAX, || {
            let flags = hub_c.flags();
            async move {
                anyhow::ensure!(!flags.enabled(Feature::Chat, None), "still on");
                Ok(())
            }
        })
        .await?;

        // The compromised classroom node writes the flags straight into its hub.
        hub_c
            .execute(
                DocId::Flags,
                caller("admin", Role::Admin),
                cmd(
                    "classroom-polls-off",
                    CommandBody::FlagSet {
                        feature: Feature::Polls,
                        cohort: None,
                        enabled: false,
                    },
                ),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        assert!(!hub_c.flags().enabled(Feature::Polls, None));
        // Meanwhile the class goes on there, and the region switches another feature off.
        hub_c
            .execute(
                demo_session(),
                crate::mesh::demo_caller("student1", Role::Student),
                cmd(
                    "classroom-ask",
                    crate::support::ask("does this reach the region?"),
                ),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        lectern(&[&["flags", "set", "leaderboard", "off"][..], &admin_r].concat())
            .await?
            .expect_code(0)?;
        eventually_ok(
            "leaderboard off on the classroom node",
            PROPAGATION_MAX,
            || {
                let flags = hub_c.flags();
                async move {
                    anyhow::ensure!(!flags.enabled(Feature::Leaderboard, None), "still on");
                    Ok(())
                }
            },
        )
        .await?;
        cluster
            .converged(
                &demo_session(),
                &[region, classroom],
                Duration::from_secs(10),
            )
            .await?;
        assert!(
            hub_r.flags().enabled(Feature::Polls, None),
            "the classroom node switched polls off on the region"
        );
        // The flags document differs for good: the region's copy lacks the classroom's change.
        assert_ne!(
            hub_r.doc_heads(&DocId::Flags),
            hub_c.doc_heads(&DocId::Flags)
        );

        // A peer that ignores the region's read-only sync and sends its change anyway (a raw
        // QUIC connection with node-c's certificate, once the real node-c is gone): refused,
        // counted under `read_only`, and the region's flags are unchanged.
        cluster.stop(classroom).await?;
        let metrics = || cluster.node(region).gateway.metrics_text();
        let before = read_only_refused(&metrics());
        let tls = NodeTls::from_pem(
            &std::fs::read_to_string(
                cluster
                    .tls_dir("node-c")?
                    .join(lectern_mesh::tls::NODE_CERT_FILE),
            )?,
            &std::fs::read_to_string(
                cluster
                    .tls_dir("node-c")?
                    .join(lectern_mesh::tls::NODE_KEY_FILE),
            )?,
            &cluster.ca.cert_pem,
        )?;
        let mut frames = encode_frame(&PeerFrame::Hello {
            node_id: "000000000000000000000000000000cc".into(),
            name: "node-c".into(),
            region: "classroom".into(),
            protocol_version: PROTOCOL_VERSION,
        })?;
        frames.extend(encode_frame(&PeerFrame::Sync {
            doc: DocId::Flags.to_string(),
            message: rogue_flags_message()?,
        })?);
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        endpoint.set_default_client_config(tls.client_config(5_000)?);
        let conn = endpoint.connect(cluster.quic(region), "node-b")?.await?;
        let (mut send, _recv) = conn.open_bi().await?;
        send.write_all(&frames).await?;
        // The connection stays open until the region has handled the message.
        eventually_ok(
            "the rogue change is refused and counted",
            Duration::from_secs(10),
            || {
                let n = read_only_refused(&metrics());
                async move {
                    anyhow::ensure!(n > before, "{n} refused");
                    Ok(())
                }
            },
        )
        .await?;
        assert!(
            hub_r.flags().enabled(Feature::Email, None),
            "the rogue's change was taken"
        );
        assert!(hub_r.flags().enabled(Feature::Polls, None));
        assert!(!hub_r.flags().enabled(Feature::Chat, None));
        endpoint.close(0u32.into(), b"done");
        cluster.stop_all().await
    })
    .await
    .unwrap();
}

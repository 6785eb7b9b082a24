//! The classroom profile (`[classroom] upstream, cohorts`): a node configured with nothing but
//! its upstream region node and its cohorts dials the region, pulls those cohorts' documents,
//! shows its uplink in `/admin/status` (`lectern status`), keeps serving its class when the
//! region goes away, and says since when the uplink is down; and extends the tokens of its
//! cohorts' members while offline, within its cap, across a restart.

use std::time::Duration;

use anyhow::Context;
use lectern_gateway::auth::{Claims, mint, mint_extension};
use lectern_model::{CommandBody, DocId, Role};
use lectern_node::DEMO_COHORT;
use lectern_testkit::Http;

use super::{Cluster, SECRET, demo_caller, demo_session, eventually_ok, within};
use crate::support::{ask, cmd};

/// The admin status of node `i`.
async fn status(cluster: &Cluster, i: usize) -> anyhow::Result<serde_json::Value> {
    let r = Http::new(cluster.node(i).http_addr)
        .get("/admin/status", Some("admin-token-0123456789"))
        .await?;
    anyhow::ensure!(r.status == 200, "status: {} {}", r.status, r.text());
    r.json()
}

/// Kills: the upstream not dialled (nothing arrives), the cohorts not made the share policy
/// (the other cohort's session arrives), the uplink not reported, or reported up once down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classroom_node_pulls_its_cohorts_and_reports_its_uplink() -> anyhow::Result<()> {
    within(async {
        let mut cluster = Cluster::new("mesh-classroom")?;
        let region = cluster.start("node-b", vec![], true).await?;
        // A session of another cohort on the region: it must not reach the classroom.
        let other = DocId::Session("other-cohort-session".parse()?);
        cluster
            .node(region)
            .hub
            .execute(
                other.clone(),
                demo_caller("admin", Role::Admin),
                cmd(
                    "other",
                    CommandBody::SessionCreate {
                        cohort: "another-cohort".parse()?,
                        title: "Elsewhere".into(),
                        moderation: false,
                    },
                ),
            )
            .await?;
        let upstream = cluster.peer(region);
        let classroom = cluster
            .start_with("node-a", vec![], false, |c| {
                c.classroom.upstream = Some(upstream);
                c.classroom.cohorts = Some(vec![DEMO_COHORT.into()]);
            })
            .await?;
        let cohort = DocId::Cohort(DEMO_COHORT.parse()?);
        cluster
            .converged(&cohort, &[region, classroom], Duration::from_secs(15))
            .await?;
        cluster
            .converged(
                &demo_session(),
                &[region, classroom],
                Duration::from_secs(15),
            )
            .await?;
        assert_eq!(cluster.node(classroom).hub.doc_heads(&other), None);
        let up = status(&cluster, classroom).await?;
        assert_eq!(up["classroom"]["uplink"], "up", "{up}");
        assert_eq!(up["classroom"]["cohorts"][0], DEMO_COHORT, "{up}");

        // The region goes away: the class goes on, and the uplink is reported down.
        cluster.stop(region).await?;
        eventually_ok(
            "the uplink is reported down",
            Duration::from_secs(20),
            || async {
                let s = status(&cluster, classroom).await?;
                anyhow::ensure!(s["classroom"]["uplink"] == "down", "{s}");
                anyhow::ensure!(s["classroom"]["offlineS"].is_u64(), "{s}");
                Ok(())
            },
        )
        .await?;
        cluster
            .node(classroom)
            .hub
            .execute(
                demo_session(),
                demo_caller("student1", Role::Student),
                cmd("offline-ask", ask("asked while the uplink is down")),
            )
            .await?;
        cluster.stop_all().await
    })
    .await
}

/// Seconds since the Unix epoch.
fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A token of `user` with `role` in `cohorts`, ending at `exp`, signed with `secret`; with
/// `orig_exp`, an extension minted earlier.
fn token_until(
    secret: &str,
    user: &str,
    role: &str,
    cohorts: &[&str],
    exp: u64,
    orig_exp: Option<u64>,
) -> String {
    let claims = Claims {
        sub: user.into(),
        name: format!("User {user}"),
        role: role.into(),
        cohorts: cohorts.iter().map(|c| (*c).to_owned()).collect(),
        exp,
        iat: now_s().saturating_sub(60),
        nbf: None,
    };
    match orig_exp {
        None => mint(secret.as_bytes(), &claims),
        Some(orig) => mint_extension(secret.as_bytes(), &claims, orig),
    }
    .expect("minting with a test secret succeeds")
}

/// `POST /api/token/refresh` with `token` on `addr`: status, code and body.
async fn refresh(
    addr: std::net::SocketAddr,
    token: &str,
) -> anyhow::Result<(u16, Option<String>, serde_json::Value)> {
    let r = Http::new(addr)
        .post_json("/api/token/refresh", Some(token), &serde_json::json!({}))
        .await?;
    let body = r.json().unwrap_or(serde_json::Value::Null);
    Ok((r.status, r.error_code(), body))
}

/// Kills: no extension offline (the region is down), the original cohorts or role widened,
/// the cap not enforced (an extension past `orig_exp + 24 h`, or `orig_exp` moved by a second
/// extension), a token past its grace, of a user off the roster, of another cohort, of an
/// admin or under another key extended, a region node extending, or an extension lost or
/// refused after the classroom node restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classroom_node_extends_its_members_tokens_within_the_cap_and_across_a_restart()
-> anyhow::Result<()> {
    within(async {
        let mut cluster = Cluster::new("mesh-classroom-refresh")?;
        let region = cluster.start("node-b", vec![], true).await?;
        let upstream = cluster.peer(region);
        let classroom_config = move |c: &mut lectern_node::Config| {
            c.classroom.upstream = Some(upstream.clone());
            c.classroom.cohorts = Some(vec![DEMO_COHORT.into()]);
        };
        let classroom = cluster
            .start_with("node-a", vec![], false, classroom_config.clone())
            .await?;
        let cohort = DocId::Cohort(DEMO_COHORT.parse()?);
        cluster
            .converged(&cohort, &[region, classroom], Duration::from_secs(15))
            .await?;
        cluster
            .converged(
                &demo_session(),
                &[region, classroom],
                Duration::from_secs(15),
            )
            .await?;
        let now = now_s();
        let grace = lectern_gateway::refresh::REFRESH_GRACE_S;
        let lifetime = lectern_gateway::refresh::REFRESHED_TOKEN_LIFETIME_S;
        // A region node extends nothing.
        let student = token_until(
            SECRET,
            "student1",
            "student",
            &[DEMO_COHORT],
            now + 40,
            None,
        );
        let (status, code, _) = refresh(cluster.node(region).http_addr, &student).await?;
        assert_eq!((status, code.as_deref()), (403, Some("token_refresh_off")));

        // The uplink goes down; the class goes on.
        cluster.stop(region).await?;
        let addr = cluster.node(classroom).http_addr;
        let student = token_until(
            SECRET,
            "student1",
            "student",
            &[DEMO_COHORT, "another-cohort"],
            now + 40,
            None,
        );
        let (status, code, body) = refresh(addr, &student).await?;
        assert_eq!((status, code), (200, None), "{body}");
        let extended = body["token"].as_str().context("a token")?.to_owned();
        let exp = body["expiresAt"].as_u64().context("expiresAt")?;
        assert!(exp >= now + lifetime && exp <= now_s() + lifetime, "{body}");
        assert_eq!(body["origExp"], now + 40, "{body}");
        assert_eq!(
            body["cohorts"],
            serde_json::json!([DEMO_COHORT]),
            "narrowed: {body}"
        );
        let verified = lectern_gateway::Verifier::new(&lectern_gateway::AuthConfig {
            hs256_secret: SECRET.into(),
            ..Default::default()
        })?
        .verify(&extended, now_s())?;
        assert_eq!(verified.caller.role, Role::Student);
        assert_eq!(verified.caller.user.as_str(), "student1");
        // The extended token works: a question asked offline with it.
        let s = lectern_node::DEMO_SESSION;
        let r = Http::new(addr)
            .post_json(
                &format!("/api/sessions/{s}/commands/qa.ask"),
                Some(&extended),
                &serde_json::json!({"text": "asked with an extended token"}),
            )
            .await?;
        assert_eq!(r.status, 200, "{}", r.text());
        // Extending an extension keeps the chain's bound.
        let (status, _, again) = refresh(addr, &extended).await?;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["origExp"], now + 40, "{again}");

        // Within the grace after expiry: extended; past it: refused.
        let lapsed = token_until(
            SECRET,
            "student2",
            "student",
            &[DEMO_COHORT],
            now - 120,
            None,
        );
        let (status, _, body) = refresh(addr, &lapsed).await?;
        assert_eq!(status, 200, "{body}");
        let gone = token_until(
            SECRET,
            "student2",
            "student",
            &[DEMO_COHORT],
            now - grace - 120,
            None,
        );
        let (status, code, _) = refresh(addr, &gone).await?;
        assert_eq!((status, code.as_deref()), (401, Some("token_expired")));

        // The cap: never past orig_exp + 24 h.
        let day = 24 * 3600;
        let near = token_until(
            SECRET,
            "ada",
            "instructor",
            &[DEMO_COHORT],
            now + 30,
            Some(now + 50 - day),
        );
        let (status, _, body) = refresh(addr, &near).await?;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["expiresAt"], now + 50, "capped: {body}");
        assert_eq!(body["capAt"], now + 50, "{body}");
        let past = token_until(
            SECRET,
            "ada",
            "instructor",
            &[DEMO_COHORT],
            now + 30,
            Some(now - 10 - day),
        );
        let (status, code, _) = refresh(addr, &past).await?;
        assert_eq!((status, code.as_deref()), (403, Some("token_extend_cap")));

        // Not a member, another cohort, an admin, another key: refused.
        for (what, token, want) in [
            (
                "a user on no roster",
                token_until(
                    SECRET,
                    "stranger",
                    "student",
                    &[DEMO_COHORT],
                    now + 40,
                    None,
                ),
                (403, "not_classroom_member"),
            ),
            (
                "another cohort",
                token_until(
                    SECRET,
                    "student1",
                    "student",
                    &["another-cohort"],
                    now + 40,
                    None,
                ),
                (403, "not_classroom_member"),
            ),
            (
                "an admin",
                token_until(SECRET, "admin", "admin", &[DEMO_COHORT], now + 40, None),
                (403, "role_not_extendable"),
            ),
            (
                "a forged token",
                token_until(
                    "another-secret-0123456789abcdef",
                    "student1",
                    "student",
                    &[DEMO_COHORT],
                    now + 40,
                    None,
                ),
                (401, "bad_signature"),
            ),
        ] {
            let (status, code, _) = refresh(addr, &token).await?;
            assert_eq!((status, code.as_deref()), (want.0, Some(want.1)), "{what}");
        }

        // The classroom node restarts, still offline: the extended token still works and
        // can still be extended.
        cluster.stop(classroom).await?;
        cluster
            .restart_with(classroom, vec![], classroom_config)
            .await?;
        let addr = cluster.node(classroom).http_addr;
        let r = Http::new(addr)
            .get(&format!("/api/sessions/{s}"), Some(&extended))
            .await?;
        assert_eq!(r.status, 200, "{}", r.text());
        let (status, code, body) = refresh(addr, &extended).await?;
        assert_eq!((status, code), (200, None), "{body}");
        assert_eq!(body["origExp"], now + 40, "{body}");
        cluster.stop_all().await
    })
    .await
}

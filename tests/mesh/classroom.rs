//! The classroom profile (`[classroom] upstream, cohorts`): a node configured with nothing but
//! its upstream region node and its cohorts dials the region, pulls those cohorts' documents,
//! shows its uplink in `/admin/status` (`lectern status`), keeps serving its class when the
//! region goes away, and says since when the uplink is down; and extends the tokens of its
//! cohorts' members while offline, within its cap, across a restart; and lets a newcomer in
//! with a teacher's join code, which the region sees once the uplink is back.

use std::time::Duration;

use anyhow::Context;
use lectern_gateway::auth::{Claims, mint, mint_extension};
use lectern_model::{CommandBody, DocId, Role};
use lectern_node::DEMO_COHORT;
use lectern_testkit::Http;

use super::{Cluster, SECRET, demo_caller, demo_session, eventually_ok, within};
use crate::support::{ask, cmd};

/// The admin status of node `i`.
async fn admin_status(cluster: &Cluster, i: usize) -> anyhow::Result<serde_json::Value> {
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
        let classroom = cluster.start_classroom("node-a", region).await?;
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
        let up = admin_status(&cluster, classroom).await?;
        assert_eq!(up["classroom"]["uplink"], "up", "{up}");
        assert_eq!(up["classroom"]["cohorts"][0], DEMO_COHORT, "{up}");

        // The region goes away: the class goes on, and the uplink is reported down.
        cluster.stop(region).await?;
        eventually_ok(
            "the uplink is reported down",
            Duration::from_secs(20),
            || async {
                let s = admin_status(&cluster, classroom).await?;
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

        // A member the roster no longer lists: removed on the classroom node while offline.
        cluster
            .node(classroom)
            .hub
            .execute(
                DocId::Cohort(DEMO_COHORT.parse()?),
                demo_caller("ada", Role::Instructor),
                cmd(
                    "remove-student2",
                    CommandBody::RosterRemove {
                        user: "student2".parse()?,
                    },
                ),
            )
            .await?;

        // Not a member, a removed one, a role above the roster's, another cohort, an admin,
        // another key: refused.
        for (what, token, want) in [
            (
                "a member removed from the roster",
                token_until(
                    SECRET,
                    "student2",
                    "student",
                    &[DEMO_COHORT],
                    now + 40,
                    None,
                ),
                (403, "not_classroom_member"),
            ),
            (
                "a role the roster does not give (a student's token saying TA)",
                token_until(SECRET, "student1", "ta", &[DEMO_COHORT], now + 40, None),
                (403, "not_classroom_member"),
            ),
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

        // Each extension is counted by its result.
        let text = metrics(addr).await?;
        for series in [
            "lectern_token_extensions_total{result=\"ok\"} 4",
            "lectern_token_extensions_total{result=\"not_classroom_member\"} 4",
            "lectern_token_extensions_total{result=\"token_extend_cap\"} 1",
        ] {
            assert!(text.lines().any(|l| l == series), "{series} in:\n{text}");
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

/// The `/metrics` text of the node at `addr`.
async fn metrics(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    let r = Http::new(addr).get("/metrics", None).await?;
    anyhow::ensure!(r.status == 200, "metrics: {}", r.status);
    Ok(r.text())
}

/// `GET /api/classroom` on `addr` with `token`: status, code and body.
async fn uplink(
    addr: std::net::SocketAddr,
    token: &str,
) -> anyhow::Result<(u16, Option<String>, serde_json::Value)> {
    let r = Http::new(addr).get("/api/classroom", Some(token)).await?;
    let json = r.json().unwrap_or(serde_json::Value::Null);
    Ok((r.status, r.error_code(), json))
}

/// Waits until the classroom at `addr` tells its staff (`token`) that the uplink is `state`.
async fn uplink_becomes(
    addr: std::net::SocketAddr,
    token: &str,
    state: &str,
) -> anyhow::Result<serde_json::Value> {
    // The answer that showed the state, as the staff saw it.
    let seen = std::sync::Mutex::new(serde_json::Value::Null);
    eventually_ok(
        &format!("the staff see the uplink {state}"),
        Duration::from_secs(30),
        || async {
            let (status, _, body) = uplink(addr, token).await?;
            anyhow::ensure!(status == 200 && body["state"] == state, "{status} {body}");
            *seen.lock().unwrap_or_else(|e| e.into_inner()) = body;
            Ok(())
        },
    )
    .await?;
    Ok(seen.into_inner().unwrap_or_else(|e| e.into_inner()))
}

/// `POST path` with `body` (and `token`) on `addr`: status, code and body.
async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> anyhow::Result<(u16, Option<String>, serde_json::Value)> {
    let r = Http::new(addr).post_json(path, token, &body).await?;
    let json = r.json().unwrap_or(serde_json::Value::Null);
    Ok((r.status, r.error_code(), json))
}

/// The roster entry of `user` in the demo cohort on `node`, as its staff see it.
async fn roster_entry(node: &lectern_node::Node, user: &str) -> anyhow::Result<serde_json::Value> {
    let staff = demo_caller("ada", Role::Instructor);
    let view = node
        .hub
        .read(DocId::Cohort(DEMO_COHORT.parse()?), move |r| {
            r.cohort_view(&staff)
        })
        .await??;
    let entry = view["roster"]
        .as_array()
        .and_then(|list| list.iter().find(|m| m["user"] == user).cloned());
    Ok(entry.unwrap_or(serde_json::Value::Null))
}

/// Kills: no join code offline, a student making one, a code granting more than asked or
/// outside its bounds, a code redeemed past its uses or when unknown, the newcomer's token
/// not working or not renewable, guessing not rate-limited, a region node taking codes, or
/// the redemption not reaching the region (with who made the code) once the uplink is back;
/// and the staff's view of the uplink (`GET /api/classroom`) not saying in sync, offline since
/// when, and in sync again, or shown to a student or by a region node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teacher_lets_a_newcomer_in_offline_with_a_join_code_and_the_region_sees_it_after()
-> anyhow::Result<()> {
    within(async {
        let mut cluster = Cluster::new("mesh-classroom-join")?;
        let region = cluster.start("node-b", vec![], true).await?;
        let link = lectern_testkit::UdpProxy::start(cluster.quic(region), 7).await?;
        let upstream = format!("node-b@{}", link.addr());
        let classroom = cluster.start_classroom_via("node-a", upstream).await?;
        let cohort = DocId::Cohort(DEMO_COHORT.parse()?);
        for doc in [&cohort, &demo_session()] {
            cluster
                .converged(doc, &[region, classroom], Duration::from_secs(15))
                .await?;
        }
        let s = lectern_node::DEMO_SESSION;
        let codes = format!("/api/sessions/{s}/join-codes");
        let now = now_s();
        let ada = token_until(
            SECRET,
            "ada",
            "instructor",
            &[DEMO_COHORT],
            now + 3600,
            None,
        );
        // A region node neither makes nor takes join codes.
        let (status, code, _) = post(
            cluster.node(region).http_addr,
            &codes,
            Some(&ada),
            serde_json::json!({}),
        )
        .await?;
        assert_eq!((status, code.as_deref()), (403, Some("join_codes_off")));

        let addr = cluster.node(classroom).http_addr;
        uplink_becomes(addr, &ada, "in_sync").await?;
        let student = token_until(
            SECRET,
            "student1",
            "student",
            &[DEMO_COHORT],
            now + 3600,
            None,
        );
        let (st, code, _) = uplink(addr, &student).await?;
        assert_eq!((st, code.as_deref()), (403, Some("forbidden")));
        let (st, code, _) = uplink(cluster.node(region).http_addr, &ada).await?;
        assert_eq!((st, code.as_deref()), (404, Some("not_classroom")));

        // The uplink goes down.
        let cut_at = now_s();
        link.partition();
        eventually_ok(
            "the uplink is reported down",
            Duration::from_secs(30),
            || async {
                let s = admin_status(&cluster, classroom).await?;
                anyhow::ensure!(s["classroom"]["uplink"] == "down", "{s}");
                Ok(())
            },
        )
        .await?;
        let offline = uplink_becomes(addr, &ada, "offline").await?;
        let text = metrics(addr).await?;
        assert!(
            text.lines()
                .any(|l| l == "lectern_classroom_uplink_up{upstream=\"node-b\"} 0"),
            "{text}"
        );
        let since = offline["offlineSince"].as_u64().context("offlineSince")?;
        assert!(since + 2 >= cut_at && since <= now_s(), "{offline}");
        let (status, code, _) = post(addr, &codes, Some(&student), serde_json::json!({})).await?;
        assert_eq!(
            (status, code.as_deref()),
            (403, Some("forbidden")),
            "a student makes no code"
        );
        for bad in [
            serde_json::json!({"role": "instructor"}),
            serde_json::json!({"minutes": 721}),
            serde_json::json!({"uses": 0}),
        ] {
            let (status, code, _) = post(addr, &codes, Some(&ada), bad.clone()).await?;
            assert_eq!(
                (status, code.as_deref()),
                (422, Some("invalid_input")),
                "{bad}"
            );
        }
        let (status, _, made) = post(
            addr,
            &codes,
            Some(&ada),
            serde_json::json!({"role": "student", "minutes": 30, "uses": 2}),
        )
        .await?;
        assert_eq!(status, 200, "{made}");
        let the_code = made["code"].as_str().context("a code")?.to_owned();
        assert_eq!(the_code.len(), 11, "{made}");
        assert_eq!(made["role"], "student");

        // A newcomer types it in lower case without the dash.
        let typed = the_code.replace('-', "").to_lowercase();
        let join =
            |name: &str, code: &str| serde_json::json!({"session": s, "code": code, "name": name});
        let (status, code, joined) = post(addr, "/api/join", None, join("Hedy", &typed)).await?;
        assert_eq!((status, code), (200, None), "{joined}");
        assert_eq!(joined["role"], "student");
        assert_eq!(joined["cohort"], DEMO_COHORT);
        let newcomer = joined["token"].as_str().context("a token")?.to_owned();
        let user = joined["user"].as_str().context("a user")?.to_owned();
        let r = Http::new(addr)
            .post_json(
                &format!("/api/sessions/{s}/commands/qa.ask"),
                Some(&newcomer),
                &serde_json::json!({"text": "I just arrived: what did I miss?"}),
            )
            .await?;
        assert_eq!(r.status, 200, "{}", r.text());
        let (status, _, renewed) = refresh(addr, &newcomer).await?;
        assert_eq!(status, 200, "the newcomer's token renews: {renewed}");
        let entry = roster_entry(cluster.node(classroom), &user).await?;
        assert_eq!(entry["joined"]["by"], "ada", "{entry}");
        assert_eq!(entry["joined"]["session"], s, "{entry}");

        // The second use is the last; an unknown code and a made-up session let nobody in.
        let (status, _, _) = post(addr, "/api/join", None, join("Alan", &the_code)).await?;
        assert_eq!(status, 200);
        let (status, code, _) = post(addr, "/api/join", None, join("Barbara", &the_code)).await?;
        assert_eq!((status, code.as_deref()), (403, Some("join_code_used_up")));
        let (status, code, _) = post(addr, "/api/join", None, join("Eve", "ABCDE-FGHJK")).await?;
        assert_eq!((status, code.as_deref()), (404, Some("join_code_unknown")));
        // Eight newcomers at once on a code of three uses: exactly three get in.
        let (status, _, made) = post(
            addr,
            &codes,
            Some(&ada),
            serde_json::json!({"role": "student", "minutes": 30, "uses": 3}),
        )
        .await?;
        assert_eq!(status, 200, "{made}");
        let three = made["code"].as_str().context("a code")?.to_owned();
        let rush = futures_util::future::join_all((0..8).map(|i| {
            let body = join(&format!("Rush {i}"), &three);
            async move { post(addr, "/api/join", None, body).await }
        }))
        .await;
        let mut got = std::collections::BTreeMap::new();
        for r in rush {
            let (status, code, _) = r?;
            *got.entry((status, code)).or_insert(0) += 1;
        }
        assert_eq!(
            got,
            std::collections::BTreeMap::from([
                ((200, None), 3),
                ((403, Some("join_code_used_up".to_owned())), 5)
            ]),
            "eight at once on three uses"
        );
        let elsewhere =
            serde_json::json!({"session": "no-such-session", "code": the_code, "name": "Eve"});
        let (status, code, _) = post(addr, "/api/join", None, elsewhere).await?;
        assert_eq!((status, code.as_deref()), (404, Some("doc_not_found")));
        // A code past its expiry lets nobody in: one made (as the gateway makes them) to
        // expire in a second and a half.
        let expiring = "EXPRD00000";
        let cohort_id: lectern_model::CohortId = DEMO_COHORT.parse()?;
        let session_id: lectern_model::SessionId = s.parse()?;
        let expires_at = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis(),
        )? + 1_500;
        cluster
            .node(classroom)
            .hub
            .execute(
                cohort.clone(),
                demo_caller("ada", Role::Instructor),
                cmd(
                    "expiring-code",
                    CommandBody::JoinCodeCreate {
                        key: lectern_gateway::join::key_of(
                            SECRET.as_bytes(),
                            &cohort_id,
                            &session_id,
                            expiring,
                        ),
                        session: session_id.clone(),
                        role: Role::Student,
                        expires_at,
                        uses_max: 5,
                    },
                ),
            )
            .await?;
        let now_ms = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
        };
        super::eventually("the code's expiry passes", Duration::from_secs(20), || {
            now_ms() > u128::from(expires_at)
        })
        .await?;
        let (status, code, _) = post(addr, "/api/join", None, join("Late", "exprd-00000")).await?;
        assert_eq!((status, code.as_deref()), (403, Some("join_code_expired")));
        // Guessing is rate-limited per session.
        let burst = lectern_gateway::join::JOIN_ATTEMPTS_BURST as usize;
        let mut limited_after = None;
        for i in 0..burst * 2 {
            let (status, code, _) =
                post(addr, "/api/join", None, join("Eve", "ZZZZZ-ZZZZZ")).await?;
            if status == 429 {
                assert_eq!(code.as_deref(), Some("rate_limited"));
                limited_after = Some(i);
                break;
            }
            assert_eq!(code.as_deref(), Some("join_code_unknown"));
        }
        let limited_after = limited_after.context("guesses were never rate-limited")?;
        // At most the burst and what refilled meanwhile; at least what the burst had left after
        // the 13 attempts above (14 if a made-up session cost one), so a class arriving together
        // gets in.
        assert!(
            limited_after <= burst + 5 && limited_after + 14 >= burst,
            "{limited_after} guesses before 429"
        );
        let text = metrics(addr).await?;
        for series in [
            "lectern_join_redemptions_total{result=\"ok\"} 5",
            "lectern_join_redemptions_total{result=\"join_code_used_up\"} 6",
            "lectern_join_redemptions_total{result=\"rate_limited\"} 1",
        ] {
            assert!(text.lines().any(|l| l == series), "{series} in:\n{text}");
        }

        // The uplink returns: the region sees who came in, and through whom.
        link.heal();
        cluster
            .converged(&cohort, &[region, classroom], Duration::from_secs(30))
            .await?;
        let seen = roster_entry(cluster.node(region), &user).await?;
        assert_eq!(seen["role"], "student", "{seen}");
        assert_eq!(seen["joined"]["by"], "ada", "{seen}");
        uplink_becomes(addr, &ada, "in_sync").await?;
        let text = metrics(addr).await?;
        assert!(
            text.lines()
                .any(|l| l == "lectern_classroom_uplink_up{upstream=\"node-b\"} 1"),
            "{text}"
        );
        cluster.stop_all().await
    })
    .await
}

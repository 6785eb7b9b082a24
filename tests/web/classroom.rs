//! The instructor page on a classroom node, in Chromium: it says the uplink is in sync, then
//! "Offline since …" while the link to the region is cut, makes a join code with which a
//! newcomer (a page with no token) joins and asks a question, renews its own short-lived token
//! from the classroom node without a reload, and says "In sync" again after the heal; the
//! region then holds the newcomer on its roster and their question.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lectern_gateway::auth::{Claims, mint};
use lectern_model::{DocId, Role};
use lectern_node::{DEMO_COHORT, DEMO_SESSION};
use lectern_testkit::UdpProxy;

use super::{BROWSER, run_script};
use crate::gateway::unix_now_s;
use crate::mesh::{Cluster, SECRET, demo_caller, demo_session, within};

/// A token of `user` with `role` in the demo cohort, living `life_s` from now.
fn token(user: &str, name: &str, role: &str, life_s: u64) -> anyhow::Result<String> {
    let now = unix_now_s();
    let claims = Claims {
        sub: user.into(),
        name: name.into(),
        role: role.into(),
        cohorts: vec![DEMO_COHORT.into()],
        exp: now + life_s,
        iat: now,
        nbf: None,
    };
    Ok(mint(SECRET.as_bytes(), &claims)?)
}

/// Kills: a page that never shows the uplink's state or does not follow it (in sync, offline
/// since the cut, in sync after the heal), a join code the page cannot make or a newcomer
/// cannot use from the page, a token the page does not renew before it ends (the instructor's
/// lives 30 s), or a newcomer and their question that do not reach the region.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instructor_page_follows_the_uplink_and_lets_a_newcomer_in_with_a_join_code_in_chromium()
-> anyhow::Result<()> {
    let _browser = BROWSER.lock().await;
    within(async {
        let mut cluster = Cluster::new("web-classroom")?;
        let region = cluster.start("node-b", vec![], true).await?;
        let link = Arc::new(UdpProxy::start(cluster.quic(region), 11).await?);
        let upstream = format!("node-b@{}", link.addr());
        let classroom = cluster.start_classroom_via("node-a", upstream).await?;
        let cohort = DocId::Cohort(DEMO_COHORT.parse()?);
        for doc in [&cohort, &demo_session()] {
            cluster
                .converged(doc, &[region, classroom], Duration::from_secs(15))
                .await?;
        }
        let base = format!("http://{}", cluster.node(classroom).http_addr);
        let student = token("student1", "Grace", "student", 3600)?;
        // Renewed by the page 10 s before it ends (a third of its life).
        let teacher = token("ada", "Ada (instructor)", "instructor", 30)?;
        let steps = link.clone();
        let summary = tokio::task::spawn_blocking(move || {
            run_script(
                "classroom",
                &base,
                DEMO_SESSION,
                [&student, &teacher],
                move |step| match step {
                    "cut" => {
                        steps.partition();
                        Ok("cut".to_owned())
                    }
                    "heal" => {
                        steps.heal();
                        Ok("healed".to_owned())
                    }
                    other => anyhow::bail!("unknown step {other}"),
                },
            )
        })
        .await??;
        println!("classroom summary: {summary:#}");
        let text = |k: &str| summary[k].as_str().unwrap_or_default().to_owned();
        assert!(
            text("inSync").starts_with("In sync with node-b"),
            "{summary}"
        );
        assert!(text("offline").starts_with("Offline since"), "{summary}");
        assert!(
            text("inSyncAgain").starts_with("In sync with node-b"),
            "{summary}"
        );
        assert_eq!(summary["tokenRenewed"], true, "{summary}");
        // The token is kept by the tab, not shown in the address bar (history, logged URLs).
        assert_eq!(summary["tokenInAddressBar"], false, "{summary}");
        // The renewed connection outlived the first token: a question asked after its end
        // reached the teacher, whose page stayed live.
        assert_eq!(summary["stateAfterFirstExpiry"], "live", "{summary}");
        for page in ["a11yTeacher", "a11yJoin"] {
            assert_eq!(summary[page], serde_json::json!([]), "{page}: {summary}");
        }
        let newcomer_text = "I just arrived: what did I miss?";
        cluster
            .converged(&cohort, &[region, classroom], Duration::from_secs(30))
            .await?;
        cluster
            .converged(
                &demo_session(),
                &[region, classroom],
                Duration::from_secs(30),
            )
            .await?;
        let staff = demo_caller("ada", Role::Instructor);
        let view = cluster
            .node(region)
            .hub
            .read(cohort.clone(), move |r| r.cohort_view(&staff))
            .await??;
        let hedy = view["roster"]
            .as_array()
            .and_then(|l| l.iter().find(|m| m["name"] == "Hedy").cloned())
            .context("the newcomer on the region's roster")?;
        assert_eq!(hedy["joined"]["by"], "ada", "{hedy}");
        let staff = demo_caller("ada", Role::Instructor);
        let session = cluster
            .node(region)
            .hub
            .read(demo_session(), move |r| {
                r.session_view(&staff, lectern_model::Millis(0))
            })
            .await??;
        let asked = session["questions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|q| q["question"] == newcomer_text && q["author"]["name"] == "Hedy")
            .count();
        assert_eq!(
            asked, 1,
            "the newcomer's question on the region: {}",
            session["questions"]
        );
        cluster.stop_all().await
    })
    .await
}

//! Certificates that end: a node's certificate is valid for a set time and renewed in place,
//! and the cluster CA can revoke one. A revocation list dropped into ONE node's TLS directory
//! reaches every node over the mesh; each closes the revoked node and refuses it from then on,
//! while the others keep replicating. An expired certificate is refused at the handshake, and
//! a renewed one goes in force without a restart.

use std::time::Duration;

use lectern_model::{CommandBody, DocId, Role};

use super::{Cluster, eventually, within};
use crate::support::{caller, cmd};

/// How often the nodes here re-read their TLS directories.
const RELOAD_MS: u64 = 100;

fn cohort_create(title: &str) -> CommandBody {
    CommandBody::CohortCreate {
        course: "Course".into(),
        title: title.into(),
        home_region: "x".into(),
    }
}

/// Kills: no reload of the TLS directory, revocation lists not passed to peers (B keeps C),
/// lists not applied to connections already open, revoked nodes let back in on redial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_list_given_to_one_node_shuts_the_revoked_node_out_everywhere()
-> anyhow::Result<()> {
    within(async {
        let mut cluster = Cluster::new("mesh-revoke")?;
        let reload = |c: &mut lectern_node::Config| c.mesh.tls_reload_ms = RELOAD_MS;
        let c_cert = cluster.issue("node-c", lectern_mesh::tls::NODE_CERT_VALIDITY_DEFAULT)?;
        let a = cluster.start_with("node-a", vec![], false, reload).await?;
        let b = cluster
            .start_with("node-b", vec![cluster.peer(a)], false, reload)
            .await?;
        let c = cluster
            .start_with(
                "node-c",
                vec![cluster.peer(a), cluster.peer(b)],
                false,
                reload,
            )
            .await?;
        for i in [a, b, c] {
            cluster.connected(i, 2).await?;
        }

        let crl = cluster
            .ca
            .revocation_list(std::slice::from_ref(&c_cert.serial_hex), 1)?;
        let a_dir = cluster.tls_dir("node-a")?;
        std::fs::write(a_dir.join(lectern_mesh::tls::CRL_FILE), crl)?;

        // A reloads and drops C; B learns the list from A and drops C too.
        let mesh = |i: usize| cluster.node(i).mesh.clone().expect("a mesh");
        let (ma, mb, mc) = (mesh(a), mesh(b), mesh(c));
        let took = eventually(
            "A and B hold only each other",
            Duration::from_secs(20),
            || ma.connected_peers() == ["node-b"] && mb.connected_peers() == ["node-a"],
        )
        .await?;
        eprintln!("trust: the revoked node was shut out of the cluster in {took:?}");
        assert_eq!(mb.status().revocation_lists, 1, "B holds the list from A");
        let kept = cluster.dirs[b].path().join(lectern_node::REVOCATIONS_FILE);
        assert!(
            kept.is_file(),
            "B keeps the list it learned across restarts"
        );

        // C keeps redialling (its backoff is short here) and is refused every time.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            mc.connected_peers().is_empty(),
            "{:?}",
            mc.connected_peers()
        );
        assert_eq!(ma.connected_peers(), ["node-b"]);

        // A and B still replicate.
        let doc = DocId::Cohort("after".parse()?);
        cluster
            .node(a)
            .hub
            .execute(
                doc.clone(),
                caller("admin", Role::Admin),
                cmd("after", cohort_create("After")),
            )
            .await?;
        cluster
            .converged(&doc, &[a, b], Duration::from_secs(10))
            .await?;
        cluster.stop_all().await
    })
    .await
}

/// Kills: no expiry in issued certificates, no reload of a renewed certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused_and_its_renewal_is_taken_without_a_restart()
-> anyhow::Result<()> {
    within(async {
        let mut cluster = Cluster::new("mesh-expiry")?;
        let reload = |c: &mut lectern_node::Config| c.mesh.tls_reload_ms = RELOAD_MS;
        let short = Duration::from_secs(2);
        cluster.issue("node-b", short)?;
        let b = cluster.start_with("node-b", vec![], false, reload).await?;
        tokio::time::sleep(short + Duration::from_secs(1)).await;
        let a = cluster
            .start_with("node-a", vec![cluster.peer(b)], false, reload)
            .await?;
        let ma = cluster.node(a).mesh.clone().expect("a mesh");
        // B's certificate has expired: A's dials fail at the handshake.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            ma.connected_peers().is_empty(),
            "{:?}",
            ma.connected_peers()
        );
        let status = ma.status();
        let error = status.peers[0].last_error.clone().unwrap_or_default();
        assert!(
            error.contains("handshake"),
            "A's dial fails at the TLS handshake: {error}"
        );

        // Renewed in place; B picks it up without a restart and A gets in.
        cluster.issue("node-b", lectern_mesh::tls::NODE_CERT_VALIDITY_DEFAULT)?;
        cluster.connected(a, 1).await?;
        cluster.stop_all().await
    })
    .await
}

//! Hostile peers: a client without a certificate, one with a certificate of another CA, and one
//! with a valid certificate that sends garbage frames. Each is refused or dropped and counted as
//! a peer fault; the node does not panic and keeps replicating with its real peer.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lectern_mesh::{ClusterCa, NodeTls};
use lectern_model::Role;
use lectern_wire::{PROTOCOL_VERSION, PeerFrame, encode_frame};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::{Cluster, demo_caller, demo_session, eventually, within};
use crate::support::{ask, cmd};

/// Connects to `addr` as a client with `tls` and tries one exchange: send `bytes`, read what
/// comes back. Ok(bytes read) if the node talked; Err if the connection was refused or closed
/// before anything came back.
async fn try_exchange(
    config: quinn::ClientConfig,
    addr: std::net::SocketAddr,
    bytes: &[u8],
) -> anyhow::Result<Vec<u8>> {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(config);
    let result = async {
        let conn = endpoint.connect(addr, "node-b")?.await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(bytes).await?;
        let mut got = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), recv.read(&mut got))
            .await
            .context("no answer within 5 s")??
            .context("the stream ended")?;
        got.truncate(n);
        anyhow::Ok(got)
    }
    .await;
    endpoint.close(0u32.into(), b"done");
    result
}

/// Connects to `addr` with `tls`, sends `bytes`, and reads until B ends the stream or closes
/// the connection: Ok(what B sent) once it did, Err if it was still open after 10 s.
async fn answer_then_close(
    config: quinn::ClientConfig,
    addr: std::net::SocketAddr,
    bytes: &[u8],
) -> anyhow::Result<Vec<u8>> {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(config);
    let conn = endpoint.connect(addr, "node-b")?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(bytes).await?;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let result = loop {
        match tokio::time::timeout_at(deadline, recv.read(&mut buf)).await {
            Err(_) => break Err(anyhow::anyhow!("still open after 10 s; got {got:?}")),
            // The stream ended or the connection closed: B is done with this peer.
            Ok(Ok(None)) | Ok(Err(_)) => break Ok(got),
            Ok(Ok(Some(n))) => got.extend_from_slice(&buf[..n]),
        }
    };
    endpoint.close(0u32.into(), b"done");
    result
}

/// A client config that trusts the cluster CA but presents no certificate.
fn no_cert_config(ca_pem: &str) -> anyhow::Result<quinn::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(ca?)?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![lectern_wire::ALPN.to_vec()];
    Ok(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    )))
}

/// Each hostile peer is refused or closed and counted in `peer_faults`, and the real peer is
/// unaffected. Kills: a malformed frame dropped without counting it (no `faults.fetch_add` in
/// `FrameError::Malformed`). Not killed: an oversized frame that does not close the session at
/// once (the hello timeout closes it a few seconds later, inside the 10 s this test allows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_a_cluster_certificate_or_sending_garbage_are_refused() -> anyhow::Result<()>
{
    within(async {
        let mut cluster = Cluster::new("mesh-hostile")?;
        let b = cluster.start("node-b", vec![], true).await?;
        let a = cluster
            .start("node-a", vec![cluster.peer(b)], false)
            .await?;
        cluster.connected(b, 1).await?;
        // A has the demo session before anything is asked of it (the last step writes to it on
        // A); connected alone does not mean synced.
        cluster
            .converged(&demo_session(), &[a, b], Duration::from_secs(10))
            .await?;
        let addr_b = cluster.quic(b);
        let mesh_b = cluster.node(b).mesh.clone().context("mesh")?;
        let faults = || mesh_b.status().peer_faults;

        // 1. No client certificate: the handshake fails; nothing is ever read.
        let before = faults();
        let r = try_exchange(no_cert_config(&cluster.ca.cert_pem)?, addr_b, b"hello?").await;
        assert!(
            r.is_err(),
            "a peer without a certificate got an answer: {r:?}"
        );
        eventually("the refusal is counted", Duration::from_secs(10), || {
            faults() > before
        })
        .await?;

        // 2. A certificate of another CA (the client still trusts B's CA): refused.
        let before = faults();
        let other = ClusterCa::generate()?
            .issue_node("node-x", lectern_mesh::tls::NODE_CERT_VALIDITY_DEFAULT)?;
        let foreign = NodeTls::from_pem(&other.cert_pem, &other.key_pem, &cluster.ca.cert_pem)?;
        let r = try_exchange(foreign.client_config(5_000)?, addr_b, b"hello?").await;
        assert!(r.is_err(), "a peer of another CA got an answer: {r:?}");
        eventually("the refusal is counted", Duration::from_secs(10), || {
            faults() > before
        })
        .await?;

        // 3. A valid certificate, then garbage instead of a hello: B says hello, then bye.
        let intruder = cluster
            .ca
            .issue_node("node-i", lectern_mesh::tls::NODE_CERT_VALIDITY_DEFAULT)?;
        let valid = NodeTls::from_pem(&intruder.cert_pem, &intruder.key_pem, &intruder.ca_pem)?;
        let mut garbage = 7u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(&[0xFF, 0x00, 0x13, 0x37, 0x42, 0x42, 0x42]);
        let before = faults();
        let answer = answer_then_close(valid.client_config(5_000)?, addr_b, &garbage)
            .await
            .context("B closes a peer that sends garbage instead of a hello")?;
        assert!(!answer.is_empty(), "B answered (its hello) before closing");
        eventually(
            "the garbage frame is counted",
            Duration::from_secs(10),
            || faults() > before,
        )
        .await?;

        // 4. A frame header claiming 4 GiB: the stream is cut, counted.
        let before = faults();
        answer_then_close(valid.client_config(5_000)?, addr_b, &u32::MAX.to_be_bytes())
            .await
            .context("B cuts a stream announcing a 4 GiB frame")?;
        eventually(
            "the oversized frame is counted",
            Duration::from_secs(10),
            || faults() > before,
        )
        .await?;

        // 5. A member's proper hello followed by a sync message that is not automerge: refused
        // by the hub (bad_sync_message), logged; the connection and the node carry on. (A
        // member, node-c, which is not running here: a node outside the peer list would be
        // closed at its hello, and its frames never reach the hub.)
        let member = cluster
            .ca
            .issue_node("node-c", lectern_mesh::tls::NODE_CERT_VALIDITY_DEFAULT)?;
        let member = NodeTls::from_pem(&member.cert_pem, &member.key_pem, &member.ca_pem)?;
        let mut stream = encode_frame(&PeerFrame::Hello {
            node_id: "00000000000000000000000000000bad".into(),
            name: "node-c".into(),
            region: "nowhere".into(),
            protocol_version: PROTOCOL_VERSION,
        })?;
        stream.extend(encode_frame(&PeerFrame::Sync {
            doc: super::demo_session().to_string(),
            message: vec![0x42; 64],
        })?);
        stream.extend(encode_frame(&PeerFrame::Sync {
            doc: "not a doc id".into(),
            message: vec![1, 2, 3],
        })?);
        let heads_before = cluster.node(b).hub.heads_summary();
        let answer = try_exchange(member.client_config(5_000)?, addr_b, &stream).await?;
        assert!(!answer.is_empty());
        assert_eq!(
            cluster.node(b).hub.heads_summary(),
            heads_before,
            "a sync message that is not automerge changed nothing on B"
        );

        // 6. A valid certificate for node-i whose hello claims to be node-a: closed, counted,
        // and the real node-a keeps its connection.
        let before = faults();
        let impostor = encode_frame(&PeerFrame::Hello {
            node_id: "000000000000000000000000000000aa".into(),
            name: "node-a".into(),
            region: "nowhere".into(),
            protocol_version: PROTOCOL_VERSION,
        })?;
        answer_then_close(valid.client_config(5_000)?, addr_b, &impostor)
            .await
            .context("B closes an impostor")?;
        eventually("the impostor is counted", Duration::from_secs(10), || {
            faults() > before
        })
        .await?;

        // The real peer is unaffected: a command on A still reaches B.
        cluster
            .node(a)
            .hub
            .execute(
                demo_session(),
                demo_caller("student1", Role::Student),
                cmd("after-hostile", ask("still there?")),
            )
            .await?;
        cluster
            .converged(&demo_session(), &[a, b], Duration::from_secs(10))
            .await?;
        // B's one peer is the real node-a (its node id, not the impostor's), and no intruder
        // stayed. "Eventually": a node starved of CPU for longer than the idle timeout drops
        // and redials a healthy peer, and a read at that moment would see none.
        let real_a = cluster.node(a).hub.identity().node_id.to_string();
        eventually(
            "B is connected to the real node-a alone",
            Duration::from_secs(10),
            || {
                let peers = mesh_b.status().peers;
                peers.len() == 1
                    && peers[0].name == "node-a"
                    && peers[0].state == "connected"
                    && peers[0].node_id.as_deref() == Some(real_a.as_str())
            },
        )
        .await?;
        // The test's own handles keep the node's hub, and so its store, open past its stop.
        drop(mesh_b);
        cluster.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_half_open_connections_is_capped_and_the_real_peer_gets_through_after_it()
-> anyhow::Result<()> {
    within(async {
        const CAP: usize = 4;
        const FLOOD: usize = 12;
        let mut cluster = Cluster::new("mesh-flood")?;
        // A long connect timeout, so the flood's connections hold their places for the whole
        // test, however slow the machine: they are let go below, by closing them.
        let b = cluster
            .start_with("node-b", vec![], true, |c| {
                c.mesh.handshakes_max = CAP;
                c.mesh.connect_timeout_ms = 60_000;
            })
            .await?;
        let addr_b = cluster.quic(b);
        let mesh_b = cluster.node(b).mesh.clone().context("mesh")?;
        let faults_before = mesh_b.status().peer_faults;

        // An intruder with a cluster certificate opens connections and never a stream: each
        // holds one of B's handshake places. One at a time, so the order is known.
        let intruder = cluster
            .ca
            .issue_node("node-i", lectern_mesh::tls::NODE_CERT_VALIDITY_DEFAULT)?;
        let valid = NodeTls::from_pem(&intruder.cert_pem, &intruder.key_pem, &intruder.ca_pem)?;
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        endpoint.set_default_client_config(valid.client_config(120_000)?);
        let mut held = Vec::new();
        let mut refused = 0;
        for i in 0..FLOOD {
            match endpoint.connect(addr_b, "node-b")?.await {
                Ok(conn) => held.push(conn),
                Err(quinn::ConnectionError::ConnectionClosed(close))
                    if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
                {
                    refused += 1;
                }
                Err(e) => anyhow::bail!("connection {i} failed otherwise: {e}"),
            }
        }
        assert_eq!(held.len(), CAP, "B took exactly its cap of handshakes");
        assert_eq!(refused, FLOOD - CAP, "and refused the rest at once");
        eventually("the refusals are counted", Duration::from_secs(10), || {
            mesh_b.status().peer_faults >= faults_before + (FLOOD - CAP) as u64
        })
        .await?;

        // B keeps serving its clients meanwhile.
        cluster
            .node(b)
            .hub
            .execute(
                demo_session(),
                demo_caller("student1", Role::Student),
                cmd("during-flood", ask("is B still up?")),
            )
            .await?;

        // A real peer dialling now is refused too (B cannot tell it from the flood yet)...
        let a = cluster
            .start("node-a", vec![cluster.peer(b)], false)
            .await?;
        let mesh_a = cluster.node(a).mesh.clone().context("mesh")?;
        eventually("A's dials are refused", Duration::from_secs(20), || {
            mesh_a.status().peers.iter().any(|p| {
                p.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("refused"))
            })
        })
        .await?;
        assert!(mesh_b.connected_peers().is_empty());

        // ...and gets through once the flood lets go, then catches up.
        for conn in &held {
            conn.close(0u32.into(), b"done");
        }
        cluster.connected(a, 1).await?;
        cluster
            .converged(&demo_session(), &[a, b], Duration::from_secs(15))
            .await?;
        endpoint.wait_idle().await;
        // The nodes' stops wait for every handle on their stores: let go of ours first.
        drop((mesh_a, mesh_b));
        cluster.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certified_node_outside_the_peer_list_is_refused_and_the_members_keep_replicating()
-> anyhow::Result<()> {
    within(async {
        let mut cluster = Cluster::new("mesh-outsider")?;
        let b = cluster.start("node-b", vec![], true).await?;
        let a = cluster
            .start("node-a", vec![cluster.peer(b)], false)
            .await?;
        cluster.connected(b, 1).await?;
        cluster
            .converged(&demo_session(), &[a, b], Duration::from_secs(10))
            .await?;
        let mesh_b = cluster.node(b).mesh.clone().context("mesh")?;
        let before = mesh_b.status().peer_faults;

        // A real node with a certificate of the cluster CA, in nobody's peer list, dials B.
        let x = cluster
            .start("node-x", vec![cluster.peer(b)], false)
            .await?;
        let mesh_x = cluster.node(x).mesh.clone().context("mesh")?;
        eventually(
            "B refuses node-x at its hello, twice (it redials)",
            Duration::from_secs(20),
            || mesh_b.status().peer_faults >= before + 2,
        )
        .await?;
        // Refused every time: never registered on either side, and given no document.
        assert_eq!(mesh_b.connected_peers(), vec!["node-a".to_owned()]);
        assert!(mesh_x.connected_peers().is_empty());
        assert!(
            cluster.node(x).hub.doc_heads(&demo_session()).is_none(),
            "the outsider received the demo session"
        );

        // The members are undisturbed: a command on A still reaches B.
        cluster
            .node(a)
            .hub
            .execute(
                demo_session(),
                demo_caller("student1", Role::Student),
                cmd("after-outsider", ask("still replicating?")),
            )
            .await?;
        cluster
            .converged(&demo_session(), &[a, b], Duration::from_secs(10))
            .await?;
        assert!(cluster.node(x).hub.doc_heads(&demo_session()).is_none());
        drop((mesh_b, mesh_x));
        cluster.stop_all().await
    })
    .await
}

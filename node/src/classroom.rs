//! A classroom node's uplink for its staff: the report behind `GET /api/classroom` (offline
//! since when, syncing, in sync), made from the mesh's status of the upstream peer.
//!
//! [`report`] is pure (the status and the time are passed in, unit-tested below); [`start`]
//! hands the gateway a source that reads the running mesh's status on each request. The source
//! holds the mesh weakly, so a stopped node's mesh (and with it the hub and the store) is not
//! kept alive by the gateway.

use std::sync::{Arc, Weak};

use lectern_gateway::{Gateway, UplinkReport, UplinkState};
use lectern_mesh::{Mesh, MeshStatus};

use crate::config::ClassroomSettings;

/// The uplink of a classroom node configured by `settings`, from its mesh's `status` at
/// `now_s` (seconds since the Unix epoch). `None` on a node that is no classroom node.
pub(crate) fn report(
    settings: &ClassroomSettings,
    status: &MeshStatus,
    now_s: u64,
) -> Option<UplinkReport> {
    let upstream = settings.upstream.as_deref()?;
    let name = upstream.split('@').next().unwrap_or_default();
    let peer = status.peers.iter().find(|p| p.name == name);
    let connected = peer.is_some_and(|p| p.state == "connected");
    let waiting_docs = peer.map_or(0, |p| p.lag_docs);
    // A peer never heard of yet is down since the mesh started; the status says how long.
    let offline_s = if connected {
        None
    } else {
        Some(peer.and_then(|p| p.offline_s).unwrap_or(0))
    };
    let state = match (connected, waiting_docs) {
        (false, _) => UplinkState::Offline,
        (true, 0) => UplinkState::InSync,
        (true, _) => UplinkState::Syncing,
    };
    Some(UplinkReport {
        upstream: name.to_owned(),
        cohorts: settings.cohorts.clone().unwrap_or_default(),
        state,
        offline_since: offline_s.map(|s| now_s.saturating_sub(s)),
        offline_s,
        waiting_docs,
    })
}

/// Gives `gateway` the uplink report of this classroom node, read from `mesh` on each request,
/// and the same as a `/metrics` section ([`render`]).
pub(crate) fn start(gateway: &Gateway, mesh: &Arc<Mesh>, settings: ClassroomSettings) {
    let weak: Weak<Mesh> = Arc::downgrade(mesh);
    let source = Arc::new(move || {
        let status = weak.upgrade()?.status();
        report(&settings, &status, crate::unix_now_s())
    });
    gateway.set_uplink(source.clone());
    gateway.add_metrics(Arc::new(move |out: &mut String| {
        if let Some(r) = source() {
            render(&r, out);
        }
    }));
}

/// The uplink as Prometheus gauges: up or down, for how long, and what waits to go up (the
/// catch-up still to do once it is back).
pub(crate) fn render(r: &UplinkReport, out: &mut String) {
    use std::fmt::Write as _;
    let up = r.offline_s.is_none();
    let gauges = [
        (
            "lectern_classroom_uplink_up",
            "Whether this classroom node's uplink to its upstream is up (1) or down (0).",
            u64::from(up),
        ),
        (
            "lectern_classroom_offline_seconds",
            "How long the uplink has been down, in seconds (0 while it is up).",
            r.offline_s.unwrap_or(0),
        ),
        (
            "lectern_classroom_waiting_documents",
            "Documents waiting to go up to the upstream (the catch-up still to do).",
            u64::try_from(r.waiting_docs).unwrap_or(u64::MAX),
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name}{{upstream=\"{}\"}} {value}", r.upstream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lectern_mesh::PeerStatus;

    fn settings() -> ClassroomSettings {
        ClassroomSettings {
            upstream: Some("eu-1@10.0.0.1:7400".into()),
            cohorts: Some(vec!["c1".into()]),
            ..ClassroomSettings::default()
        }
    }

    fn status(peer: Option<(&'static str, usize, Option<u64>)>) -> MeshStatus {
        MeshStatus {
            name: "classroom-12".into(),
            region: "school".into(),
            listen: "0.0.0.0:7400".into(),
            peers: peer
                .map(|(state, lag_docs, offline_s)| PeerStatus {
                    name: "eu-1".into(),
                    state,
                    node_id: None,
                    region: None,
                    addr: None,
                    rtt_ms: None,
                    lag_docs,
                    connected_s: None,
                    last_error: None,
                    offline_s,
                })
                .into_iter()
                .collect(),
            peer_faults: 0,
            frames_refused: 0,
            writes_refused: 0,
            bytes_sent: 0,
            bytes_received: 0,
            revocation_lists: 0,
            blobs_sent: 0,
            blobs_received: 0,
            blobs_refused: 0,
        }
    }

    #[test]
    fn offline_syncing_and_in_sync_follow_the_upstream_peer() {
        let now = 1_000_000;
        let down = report(
            &settings(),
            &status(Some(("connecting", 3, Some(600)))),
            now,
        )
        .expect("a classroom");
        assert_eq!(down.state, UplinkState::Offline);
        assert_eq!(down.offline_since, Some(now - 600));
        assert_eq!(down.upstream, "eu-1");
        let catching_up =
            report(&settings(), &status(Some(("connected", 3, None))), now).expect("a classroom");
        assert_eq!(catching_up.state, UplinkState::Syncing);
        assert_eq!(catching_up.waiting_docs, 3);
        assert_eq!(catching_up.offline_since, None);
        let synced =
            report(&settings(), &status(Some(("connected", 0, None))), now).expect("a classroom");
        assert_eq!(synced.state, UplinkState::InSync);
        let never = report(&settings(), &status(None), now).expect("a classroom");
        assert_eq!(never.state, UplinkState::Offline);
        let region = ClassroomSettings::default();
        assert_eq!(report(&region, &status(None), now), None);
    }
}

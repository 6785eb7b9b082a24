//! The node's own sections of `/metrics`: its job runner and its mesh. The gateway renders its
//! counters and appends these (see `Gateway::add_metrics`).

use std::fmt::Write;
use std::sync::Arc;

use lectern_gateway::MetricsSection;
use lectern_jobs::{JobRunner, JobStats};
use lectern_mesh::Mesh;

/// The job runner's queue and outcomes.
pub(crate) fn jobs(runner: &JobRunner) -> MetricsSection {
    let stats = runner.watch();
    Arc::new(move |out: &mut String| {
        let s: JobStats = *stats.borrow();
        let gauges = [
            (
                "lectern_jobs_pending",
                "Jobs queued and waiting.",
                s.pending,
            ),
            ("lectern_jobs_running", "Jobs running now.", s.running),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {value}");
        }
        let counters = [
            (
                "lectern_jobs_completed_total",
                "Jobs finished.",
                s.completed,
            ),
            (
                "lectern_jobs_retried_total",
                "Failed job attempts that will be retried.",
                s.retried,
            ),
            ("lectern_jobs_dead_total", "Jobs dead-lettered.", s.dead),
            (
                "lectern_notifications_inapp_total",
                "Notifications put into inboxes.",
                s.inapp_delivered,
            ),
            (
                "lectern_notifications_emails_total",
                "Emails handed to SMTP or the outbox (a digest counts once).",
                s.emails_sent,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {value}");
        }
    })
}

/// The configured peers by state, and each connected peer's round trip and lag.
pub(crate) fn mesh(mesh: &Arc<Mesh>) -> MetricsSection {
    let mesh = Arc::clone(mesh);
    Arc::new(move |out: &mut String| {
        let status = mesh.status();
        let connected = status
            .peers
            .iter()
            .filter(|p| p.state == "connected")
            .count();
        let _ = writeln!(out, "# HELP lectern_mesh_peers Peers by connection state.");
        let _ = writeln!(out, "# TYPE lectern_mesh_peers gauge");
        let _ = writeln!(out, "lectern_mesh_peers{{state=\"connected\"}} {connected}");
        let _ = writeln!(
            out,
            "lectern_mesh_peers{{state=\"connecting\"}} {}",
            status.peers.len() - connected
        );
        let _ = writeln!(
            out,
            "# HELP lectern_mesh_peer_rtt_seconds Round-trip time to a connected peer."
        );
        let _ = writeln!(out, "# TYPE lectern_mesh_peer_rtt_seconds gauge");
        for p in &status.peers {
            if let Some(rtt) = p.rtt_ms {
                let _ = writeln!(
                    out,
                    "lectern_mesh_peer_rtt_seconds{{peer=\"{}\"}} {}",
                    label(&p.name),
                    rtt / 1000.0
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP lectern_mesh_peer_lag_documents Documents waiting to be pushed to a peer."
        );
        let _ = writeln!(out, "# TYPE lectern_mesh_peer_lag_documents gauge");
        for p in &status.peers {
            let _ = writeln!(
                out,
                "lectern_mesh_peer_lag_documents{{peer=\"{}\"}} {}",
                label(&p.name),
                p.lag_docs
            );
        }
    })
}

/// A label value with Prometheus's escapes (peer names come from config).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

//! The node's own sections of `/metrics`: its job runner (queue depth and lateness, parked and
//! dead jobs, email outcomes), the hub's evictions, course content served, the process (memory, file descriptors
//! against their limit) and its mesh. The gateway renders its counters and appends these (see
//! `Gateway::add_metrics`); README lists every name.

use std::fmt::Write;
use std::sync::Arc;

use lectern_gateway::{MetricsSection, labelled_counter};
use lectern_hub::Hub;
use lectern_jobs::{JobRunner, JobStats};
use lectern_mesh::Mesh;

/// The job runner's queue and outcomes.
pub(crate) fn jobs(runner: &JobRunner) -> MetricsSection {
    let stats = runner.watch();
    Arc::new(move |out: &mut String| {
        let s: JobStats = *stats.borrow();
        let now_ms = lectern_hub::system_now().0;
        let late_s = s
            .next_due_ms
            .map(|at| now_ms.saturating_sub(at) as f64 / 1000.0)
            .unwrap_or(0.0);
        let gauges: [(&str, &str, f64); 5] = [
            (
                "lectern_jobs_pending",
                "Jobs queued and waiting (parked ones included).",
                s.pending as f64,
            ),
            (
                "lectern_jobs_running",
                "Jobs running now.",
                s.running as f64,
            ),
            (
                "lectern_jobs_parked",
                "Email jobs parked while the mail server cannot be reached.",
                s.parked as f64,
            ),
            (
                "lectern_jobs_dead_letters",
                "Dead-lettered jobs in the store (until retried or dropped).",
                s.dead_letters as f64,
            ),
            (
                "lectern_jobs_oldest_due_seconds",
                "How long the most overdue queued job (not running, not parked) has been due.",
                late_s,
            ),
        ];
        for (name, help, value) in gauges {
            gauge(out, name, help, value);
        }
        let counters = [
            (
                "lectern_jobs_completed_total",
                "Jobs finished.",
                s.completed,
            ),
            (
                "lectern_jobs_retried_total",
                "Failed job attempts that will be retried (parked tries included).",
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
            (
                "lectern_emails_dead_total",
                "Email jobs dead-lettered.",
                s.emails_dead,
            ),
        ];
        for (name, help, value) in counters {
            counter(out, name, help, value);
        }
        labelled_counter(
            out,
            "lectern_email_failures_total",
            "Failed email attempts: refused (a 4xx or 5xx reply) or unreachable (no reply).",
            "reason",
            &[
                ("refused", s.emails_refused),
                ("unreachable", s.emails_unreachable),
            ],
        );
    })
}

/// Documents the hub dropped from memory (`lectern_documents_loaded`, the gauge, is the
/// gateway's).
pub(crate) fn hub(hub: &Hub) -> MetricsSection {
    let hub = hub.clone();
    Arc::new(move |out: &mut String| {
        let s = hub.stats();
        counter(
            out,
            "lectern_documents_evictions_total",
            "Documents dropped from memory: idle, or the least recently used idle one to make room for a load.",
            s.evictions + s.evictions_lru,
        );
        counter(
            out,
            "lectern_documents_compactions_total",
            "Documents whose chunks were folded into a fresh snapshot.",
            s.compactions,
        );
    })
}

/// Course content served (`/content/…`): requests answered `304` from the client's own copy,
/// and blob reads from the memory cache or the disk. The node's cache hit ratio is
/// (`not_modified` + `memory`) over all three.
pub(crate) fn content(store: &Arc<lectern_content::BlobStore>) -> MetricsSection {
    let store = Arc::clone(store);
    Arc::new(move |out: &mut String| {
        let s = store.stats();
        counter(
            out,
            "lectern_content_not_modified_total",
            "Content requests answered 304 Not Modified (the client's copy is current).",
            s.not_modified,
        );
        labelled_counter(
            out,
            "lectern_content_reads_total",
            "Content blobs read to answer a request: from the memory cache or from disk (verified).",
            "from",
            &[("memory", s.cache_hits), ("disk", s.disk_reads)],
        );
        counter(
            out,
            "lectern_content_pulled_total",
            "Content blobs this node lacked (or whose copy failed verification) brought from a peer, verified and stored: on a first request or by a prefetch.",
            s.pulled,
        );
        counter(
            out,
            "lectern_content_pull_failures_total",
            "Pulls of a wanted blob that no peer delivered.",
            s.pull_failures,
        );
    })
}

/// The process's memory and file descriptors against their limit, under the names Prometheus
/// client libraries use (`process_*`), read from `/proc/self` (nothing is emitted where it
/// cannot be read).
pub(crate) fn process() -> MetricsSection {
    Arc::new(|out: &mut String| {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let kb = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        };
        if let Some(rss) = kb("VmRSS:") {
            gauge(
                out,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                (rss * 1024) as f64,
            );
        }
        if let Some(vm) = kb("VmSize:") {
            gauge(
                out,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                (vm * 1024) as f64,
            );
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            gauge(
                out,
                "process_open_fds",
                "Open file descriptors (sockets included).",
                fds.count() as f64,
            );
        }
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let max_fds = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(max) = max_fds {
            gauge(
                out,
                "process_max_fds",
                "The soft limit of open file descriptors.",
                max as f64,
            );
        }
    })
}

fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    let _ = writeln!(out, "{name} {value}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    let _ = writeln!(out, "{name} {value}");
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
        let _ = writeln!(
            out,
            "# HELP lectern_mesh_frames_refused_total Peers' frames refused: for a document outside the share policy or the peer's scope (scope), or carrying a scoped peer's changes to the cluster's flags, which it may only read (read_only)."
        );
        let _ = writeln!(out, "# TYPE lectern_mesh_frames_refused_total counter");
        let _ = writeln!(
            out,
            "lectern_mesh_frames_refused_total{{reason=\"scope\"}} {}",
            status.frames_refused
        );
        let _ = writeln!(
            out,
            "lectern_mesh_frames_refused_total{{reason=\"read_only\"}} {}",
            status.writes_refused
        );
        labelled_counter(
            out,
            "lectern_mesh_blobs_total",
            "Content blobs exchanged with peers, verified on receipt.",
            "direction",
            &[
                ("sent", status.blobs_sent),
                ("received", status.blobs_received),
            ],
        );
        counter(
            out,
            "lectern_mesh_blobs_refused_total",
            "Blobs refused because a peer's bytes did not hash to the name asked for.",
            status.blobs_refused,
        );
    })
}

/// A label value with Prometheus's escapes (peer names come from config).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

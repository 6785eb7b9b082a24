//! Counters for `/metrics`, rendered as Prometheus text by hand (a few counters and one
//! histogram do not justify an exporter crate, and metrics-exporter-prometheus's defaults pull a
//! second rustls crypto provider into the graph: see docs/dependencies.md).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lectern_hub::{Hub, JoinStart};

/// Upper bounds of the command-latency histogram, in seconds.
const LATENCY_BUCKETS_S: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Upper bounds of the delivery-latency histogram (an event published → handed to the
/// client's socket), in seconds: from a fan-out on an idle node to the SSE target (10 s).
const DELIVERY_BUCKETS_S: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The transports whose deliveries are counted.
const EVENT_TRANSPORTS: [&str; 4] = ["socketio", "websocket", "sse", "longpoll"];

/// The reason of a resume token that does not parse (`Last-Event-ID`, `since`, an offset).
pub(crate) const BAD_TOKEN: &str = "bad_token";

/// The reason of a Socket.IO recovery whose join was refused.
pub(crate) const JOIN_FAILED: &str = "join_failed";

/// Why a resume was refused (the client got the state afresh instead of the events it missed):
/// the hub's reasons (`bad_token`: the token does not fit the document; `unknown_heads`: this
/// node does not have its heads, history gone or never seen; `too_far_behind`: more missed
/// than a replay holds), and `join_failed` (a Socket.IO recovery whose join was refused, such
/// as a session gone or the rate limit). A fixed set, so the label's cardinality is bounded:
/// anything else counts as `join_failed`.
pub(crate) const RESUME_REFUSED_REASONS: [&str; 4] =
    [BAD_TOKEN, "unknown_heads", "too_far_behind", JOIN_FAILED];

/// A section of `/metrics` rendered by another part of the node (its job runner, its mesh):
/// it appends complete Prometheus lines, `# HELP` and `# TYPE` included.
pub type MetricsSection = Arc<dyn Fn(&mut String) + Send + Sync>;

#[derive(Default)]
pub(crate) struct Metrics {
    sections: Mutex<Vec<MetricsSection>>,
    opened: Mutex<BTreeMap<&'static str, u64>>,
    closed: Mutex<BTreeMap<&'static str, u64>>,
    /// Per transport of [`EVENT_TRANSPORTS`]: counted once per delivery, so an atomic, not a
    /// lock every socket takes.
    events_out: [AtomicU64; EVENT_TRANSPORTS.len()],
    rejections: Mutex<BTreeMap<&'static str, u64>>,
    named_rejections: Mutex<BTreeMap<String, u64>>,
    events_in: AtomicU64,
    /// Per transport of [`EVENT_TRANSPORTS`], per bucket of [`DELIVERY_BUCKETS_S`].
    delivery_buckets: [[AtomicU64; DELIVERY_BUCKETS_S.len()]; EVENT_TRANSPORTS.len()],
    delivery_sum_us: [AtomicU64; EVENT_TRANSPORTS.len()],
    /// Connection attempts refused (token, limits, shutdown), by transport.
    failed: Mutex<BTreeMap<&'static str, u64>>,
    /// Joins that carried a resume token and were replayed from it, by transport.
    resumes: [AtomicU64; EVENT_TRANSPORTS.len()],
    /// Joins that carried a resume token and got a fresh start, by transport and reason of
    /// [`RESUME_REFUSED_REASONS`].
    resumes_refused: [[AtomicU64; RESUME_REFUSED_REASONS.len()]; EVENT_TRANSPORTS.len()],
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_S.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    /// A classroom node's token extensions, by result (`ok` or the refusal's code: a fixed
    /// set of static codes).
    extensions: Mutex<BTreeMap<&'static str, u64>>,
    /// Join-code redemptions, by result (`ok` or the refusal's code).
    joins: Mutex<BTreeMap<&'static str, u64>>,
}

/// Writes one Prometheus counter with a series per value of `label` (its `# HELP` and
/// `# TYPE` lines first): for the node's own metric sections too.
pub fn labelled_counter(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    series: &[(&str, u64)],
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    for (value, n) in series {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
    }
}

fn bump(map: &Mutex<BTreeMap<&'static str, u64>>, key: &'static str) {
    *map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_default() += 1;
}

impl Metrics {
    /// Counts a token extension asked of a classroom node, by `result`.
    pub(crate) fn token_extension(&self, result: &'static str) {
        bump(&self.extensions, result);
    }

    /// Counts a join-code redemption asked of a classroom node, by `result`.
    pub(crate) fn join_redemption(&self, result: &'static str) {
        bump(&self.joins, result);
    }

    pub(crate) fn connection_opened(&self, transport: &'static str) {
        bump(&self.opened, transport);
    }

    pub(crate) fn connection_closed(&self, transport: &'static str) {
        bump(&self.closed, transport);
    }

    /// Counts a delivery of an event published at `published_at` (its latency included).
    pub(crate) fn event_out(&self, transport: &'static str, published_at: std::time::Instant) {
        if let Some(i) = EVENT_TRANSPORTS.iter().position(|t| *t == transport) {
            self.events_out[i].fetch_add(1, Ordering::Relaxed);
            let d = published_at.elapsed();
            let s = d.as_secs_f64();
            if let Some(b) = DELIVERY_BUCKETS_S.iter().position(|le| s <= *le) {
                // Counted in its own bucket only; rendering accumulates (one atomic add per
                // delivery, not one per bucket).
                self.delivery_buckets[i][b].fetch_add(1, Ordering::Relaxed);
            }
            self.delivery_sum_us[i].fetch_add(
                u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
    }

    /// Counts a connection attempt refused before it opened.
    pub(crate) fn connection_failed(&self, transport: &'static str) {
        bump(&self.failed, transport);
    }

    /// Counts a join that carried a resume token: replayed from it (`refused` `None`), or
    /// started afresh for `refused`'s reason (one of [`RESUME_REFUSED_REASONS`]; any other
    /// counts as `join_failed`).
    pub(crate) fn resume(&self, transport: &'static str, refused: Option<&str>) {
        let Some(t) = EVENT_TRANSPORTS.iter().position(|x| *x == transport) else {
            return;
        };
        match refused {
            None => {
                self.resumes[t].fetch_add(1, Ordering::Relaxed);
            }
            Some(reason) => {
                let r = RESUME_REFUSED_REASONS
                    .iter()
                    .position(|x| *x == reason)
                    .unwrap_or(RESUME_REFUSED_REASONS.len() - 1);
                self.resumes_refused[t][r].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts how a join that carried a resume token started: a replay is a resume, a snapshot
    /// with a reason a refused one (a snapshot without one comes from a stream that does not
    /// resume, such as a board, and is not counted).
    pub(crate) fn resume_start(&self, transport: &'static str, start: &JoinStart) {
        match start {
            JoinStart::Replay { .. } => self.resume(transport, None),
            JoinStart::Snapshot {
                resume_refused: Some(reason),
                ..
            } => self.resume(transport, Some(reason)),
            JoinStart::Snapshot { .. } => {}
        }
    }

    pub(crate) fn event_in(&self) {
        self.events_in.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn rejected(&self, code: &'static str) {
        bump(&self.rejections, code);
    }

    /// Counts a rejection known only by its code's text (from a response header).
    pub(crate) fn rejected_named(&self, code: &str) {
        let mut map = self
            .named_rejections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Codes are a small fixed set; the bound only guards against a bug minting new ones.
        if map.len() < 256 || map.contains_key(code) {
            *map.entry(code.to_owned()).or_default() += 1;
        }
    }

    pub(crate) fn add_section(&self, section: MetricsSection) {
        crate::lock(&self.sections).push(section);
    }

    pub(crate) fn command_latency(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, le) in LATENCY_BUCKETS_S.iter().enumerate() {
            if s <= *le {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub(crate) fn render(&self, connections: usize, hub: &Hub) -> String {
        let mut out = String::new();
        let lock = |m: &Mutex<BTreeMap<&'static str, u64>>| {
            m.lock().unwrap_or_else(|e| e.into_inner()).clone()
        };
        let (opened, closed) = (lock(&self.opened), lock(&self.closed));
        let _ = writeln!(
            out,
            "# HELP lectern_connections Open client connections by transport."
        );
        let _ = writeln!(out, "# TYPE lectern_connections gauge");
        for (t, n) in &opened {
            let c = closed.get(t).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "lectern_connections{{transport=\"{t}\"}} {}",
                n.saturating_sub(c)
            );
        }
        let _ = writeln!(
            out,
            "# HELP lectern_connections_opened_total Connections opened, by transport."
        );
        let _ = writeln!(out, "# TYPE lectern_connections_opened_total counter");
        for t in EVENT_TRANSPORTS {
            let n = opened.get(t).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "lectern_connections_opened_total{{transport=\"{t}\"}} {n}"
            );
        }
        let failed = lock(&self.failed);
        let _ = writeln!(
            out,
            "# HELP lectern_connection_failures_total Connection attempts refused (token, limits, shutdown), by transport."
        );
        let _ = writeln!(out, "# TYPE lectern_connection_failures_total counter");
        for t in EVENT_TRANSPORTS {
            let n = failed.get(t).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "lectern_connection_failures_total{{transport=\"{t}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP lectern_delivery_latency_seconds From an event's publication (after fsync) to its hand-over to a client's socket, by transport."
        );
        let _ = writeln!(out, "# TYPE lectern_delivery_latency_seconds histogram");
        for (i, t) in EVENT_TRANSPORTS.iter().enumerate() {
            let mut cumulative = 0;
            for (b, le) in DELIVERY_BUCKETS_S.iter().enumerate() {
                cumulative += self.delivery_buckets[i][b].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "lectern_delivery_latency_seconds_bucket{{transport=\"{t}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let count = self.events_out[i].load(Ordering::Relaxed);
            let sum = self.delivery_sum_us[i].load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "lectern_delivery_latency_seconds_bucket{{transport=\"{t}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "lectern_delivery_latency_seconds_sum{{transport=\"{t}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "lectern_delivery_latency_seconds_count{{transport=\"{t}\"}} {count}"
            );
        }
        self.render_resumes(&mut out);
        for (map, name, help) in [
            (
                &self.extensions,
                "lectern_token_extensions_total",
                "Token extensions asked of this classroom node (POST /api/token/refresh), by result: ok or the refusal's code.",
            ),
            (
                &self.joins,
                "lectern_join_redemptions_total",
                "Join codes presented to this classroom node (POST /api/join), by result: ok or the refusal's code.",
            ),
        ] {
            let series = lock(map);
            if !series.is_empty() {
                let series: Vec<(&str, u64)> = series.iter().map(|(k, v)| (*k, *v)).collect();
                labelled_counter(&mut out, name, help, "result", &series);
            }
        }
        let _ = writeln!(
            out,
            "# HELP lectern_connections_total Connections counted by the limiter."
        );
        let _ = writeln!(out, "# TYPE lectern_connections_total gauge");
        let _ = writeln!(out, "lectern_connections_total {connections}");
        let _ = writeln!(
            out,
            "# HELP lectern_events_in_total Commands accepted from clients."
        );
        let _ = writeln!(out, "# TYPE lectern_events_in_total counter");
        let _ = writeln!(
            out,
            "lectern_events_in_total {}",
            self.events_in.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP lectern_events_out_total Events sent to clients by transport."
        );
        let _ = writeln!(out, "# TYPE lectern_events_out_total counter");
        for (t, n) in EVENT_TRANSPORTS.iter().zip(&self.events_out) {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(out, "lectern_events_out_total{{transport=\"{t}\"}} {n}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP lectern_rejections_total Refused requests by code."
        );
        let _ = writeln!(out, "# TYPE lectern_rejections_total counter");
        let mut all: BTreeMap<String, u64> = self
            .named_rejections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (code, n) in lock(&self.rejections) {
            *all.entry(code.to_owned()).or_default() += n;
        }
        for (code, n) in all {
            let _ = writeln!(out, "lectern_rejections_total{{code=\"{code}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP lectern_command_latency_seconds Time from command to durable ack."
        );
        let _ = writeln!(out, "# TYPE lectern_command_latency_seconds histogram");
        for (i, le) in LATENCY_BUCKETS_S.iter().enumerate() {
            let n = self.latency_buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "lectern_command_latency_seconds_bucket{{le=\"{le}\"}} {n}"
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "lectern_command_latency_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "lectern_command_latency_seconds_sum {sum}");
        let _ = writeln!(out, "lectern_command_latency_seconds_count {count}");
        let stats = hub.stats();
        let _ = writeln!(out, "# HELP lectern_documents_loaded Documents in memory.");
        let _ = writeln!(out, "# TYPE lectern_documents_loaded gauge");
        let _ = writeln!(out, "lectern_documents_loaded {}", stats.docs_loaded);
        let _ = writeln!(
            out,
            "# HELP lectern_documents_loads_total Stored documents read from the store into memory."
        );
        let _ = writeln!(out, "# TYPE lectern_documents_loads_total counter");
        let _ = writeln!(out, "lectern_documents_loads_total {}", stats.loads);
        let _ = writeln!(out, "# TYPE lectern_hub_commands_applied_total counter");
        let _ = writeln!(
            out,
            "lectern_hub_commands_applied_total {}",
            stats.commands_applied
        );
        let _ = writeln!(out, "# TYPE lectern_hub_commands_rejected_total counter");
        let _ = writeln!(
            out,
            "lectern_hub_commands_rejected_total {}",
            stats.commands_rejected
        );
        let _ = writeln!(out, "# TYPE lectern_hub_batches_total counter");
        let _ = writeln!(out, "lectern_hub_batches_total {}", stats.batches);
        labelled_counter(
            &mut out,
            "lectern_hub_evictions_total",
            "Documents dropped from memory: idle for doc_idle_ms, or the least recently used idle one to make room for a load.",
            "reason",
            &[("idle", stats.evictions), ("room", stats.evictions_lru)],
        );
        labelled_counter(
            &mut out,
            "lectern_hub_loads_refused_total",
            "Loads refused: the hub full of busy or followed documents, or the user at docs_loaded_per_user_max.",
            "reason",
            &[
                ("full", stats.refused_full),
                ("per_user", stats.refused_per_user),
            ],
        );
        let sections = crate::lock(&self.sections).clone();
        for section in sections {
            section(&mut out);
        }
        out
    }

    /// `lectern_reconnects_total`, `lectern_resumes_total` and `lectern_resumes_refused_total`,
    /// every series present from the start (zero until counted) so rates and alerts see them.
    fn render_resumes(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP lectern_reconnects_total Joins that carried a resume token (a client back after a drop; every long-poll after the first), by transport: resumed plus refused."
        );
        let _ = writeln!(out, "# TYPE lectern_reconnects_total counter");
        for (t, transport) in EVENT_TRANSPORTS.iter().enumerate() {
            let refused: u64 = self.resumes_refused[t]
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .sum();
            let n = self.resumes[t].load(Ordering::Relaxed) + refused;
            let _ = writeln!(
                out,
                "lectern_reconnects_total{{transport=\"{transport}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP lectern_resumes_total Joins replayed from their resume token (exactly the missed events), by transport."
        );
        let _ = writeln!(out, "# TYPE lectern_resumes_total counter");
        for (t, transport) in EVENT_TRANSPORTS.iter().enumerate() {
            let n = self.resumes[t].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "lectern_resumes_total{{transport=\"{transport}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP lectern_resumes_refused_total Joins with a resume token that started afresh instead, by transport and reason."
        );
        let _ = writeln!(out, "# TYPE lectern_resumes_refused_total counter");
        for (t, transport) in EVENT_TRANSPORTS.iter().enumerate() {
            for (r, reason) in RESUME_REFUSED_REASONS.iter().enumerate() {
                let n = self.resumes_refused[t][r].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "lectern_resumes_refused_total{{transport=\"{transport}\",reason=\"{reason}\"}} {n}"
                );
            }
        }
    }
}

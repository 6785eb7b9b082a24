//! Counters for `/metrics`, rendered as Prometheus text by hand (a few counters and one
//! histogram do not justify an exporter crate, and metrics-exporter-prometheus's defaults pull a
//! second rustls crypto provider into the graph: see docs/dependencies.md).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lectern_hub::Hub;

/// Upper bounds of the command-latency histogram, in seconds.
const LATENCY_BUCKETS_S: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Upper bounds of the delivery-latency histogram (an event published → handed to the
/// client's socket), in seconds: from a fan-out on an idle node to the SSE target (10 s).
const DELIVERY_BUCKETS_S: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The transports whose deliveries are counted.
const EVENT_TRANSPORTS: [&str; 4] = ["socketio", "websocket", "sse", "longpoll"];

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
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_S.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

fn bump(map: &Mutex<BTreeMap<&'static str, u64>>, key: &'static str) {
    *map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_default() += 1;
}

impl Metrics {
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
        let _ = writeln!(
            out,
            "# HELP lectern_hub_evictions_total Documents dropped from memory: idle for doc_idle_ms, or the least recently used idle one to make room for a load."
        );
        let _ = writeln!(out, "# TYPE lectern_hub_evictions_total counter");
        let _ = writeln!(
            out,
            "lectern_hub_evictions_total{{reason=\"idle\"}} {}",
            stats.evictions
        );
        let _ = writeln!(
            out,
            "lectern_hub_evictions_total{{reason=\"room\"}} {}",
            stats.evictions_lru
        );
        let _ = writeln!(
            out,
            "# HELP lectern_hub_loads_refused_total Loads refused: the hub full of busy or followed documents, or the user at docs_loaded_per_user_max."
        );
        let _ = writeln!(out, "# TYPE lectern_hub_loads_refused_total counter");
        let _ = writeln!(
            out,
            "lectern_hub_loads_refused_total{{reason=\"full\"}} {}",
            stats.refused_full
        );
        let _ = writeln!(
            out,
            "lectern_hub_loads_refused_total{{reason=\"per_user\"}} {}",
            stats.refused_per_user
        );
        let sections = crate::lock(&self.sections).clone();
        for section in sections {
            section(&mut out);
        }
        out
    }
}

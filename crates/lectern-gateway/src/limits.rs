//! Per-user command rate (token buckets) and connection caps.
//!
//! A bucket refills at `commands_per_s` up to `command_burst`; a command that finds it empty is
//! refused with `rate_limited` (the client backs off and retries with the same command id).
//! Connections are counted per node and per user; past either cap a new connection is refused
//! with `too_many_connections`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::StatusCode;

use crate::error::AppError;

/// Limits the gateway enforces; every default is safe for a public node.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Sustained commands per second per user. Default 10.
    pub commands_per_s: f64,
    /// Commands a user may send in a burst. Default 20.
    pub command_burst: u32,
    /// Largest request body or Socket.IO packet, in bytes. Default 16 KiB.
    pub payload_max_bytes: usize,
    /// Frames queued per connection (events, acks, pongs, every push) before a slow consumer
    /// is cut off. Default 256.
    pub outbound_queue_max: usize,
    /// Bytes queued per lean WebSocket connection (every push counts) before it is cut off;
    /// one frame alone is always let through. Default 4 MiB.
    pub outbound_bytes_max: usize,
    /// Authenticated connections (Socket.IO + SSE + long-poll) per node. Default 16,000: with
    /// [`Limits::preauth_max`] it keeps 10 % of a 20,000 open-files limit for the store, the
    /// peers and the admin listener.
    pub conns_max: usize,
    /// Connections per user. Default 16.
    pub conns_per_user_max: usize,
    /// Milliseconds between the server's Engine.IO pings on a Socket.IO connection (both
    /// transports). Default 25,000 (socketioxide's and the Socket.IO reference server's).
    pub ping_interval_ms: u64,
    /// Milliseconds a client has to answer a ping before its connection is closed. Default
    /// 20,000.
    pub ping_timeout_ms: u64,
    /// Milliseconds a Socket.IO connection may go without connecting namespace `/` before it
    /// is closed (both transports). Default 45,000 (socket.io's `connectTimeout`).
    pub connect_timeout_ms: u64,
    /// Connections accepted that have not authenticated yet, in all (see `admission.rs`).
    /// Default 2,000 (10 % of a 20,000 open-files limit).
    pub preauth_max: usize,
    /// Connections waiting to authenticate from one client address. Default 256 (a school
    /// behind one NAT address opens a few per student at the bell; behind a reverse proxy
    /// every client has the proxy's address, so raise it there).
    pub preauth_per_address_max: usize,
    /// Milliseconds a client may take to send a request body once its head is in (every
    /// route hyper serves: REST, polling, uploads); past it the request fails. Default 30,000.
    pub body_read_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            commands_per_s: 10.0,
            command_burst: 20,
            payload_max_bytes: 16 * 1024,
            outbound_queue_max: 256,
            outbound_bytes_max: 4 * 1024 * 1024,
            conns_max: 16_000,
            conns_per_user_max: 16,
            ping_interval_ms: 25_000,
            ping_timeout_ms: 20_000,
            connect_timeout_ms: 45_000,
            preauth_max: 2_000,
            preauth_per_address_max: 256,
            body_read_timeout_ms: 30_000,
        }
    }
}

/// Buckets kept before the table is pruned of full ones (idle users, whose fresh bucket would
/// be the same): bounds the table's memory whatever the number of distinct users.
const BUCKETS_PRUNE_ABOVE_COUNT: usize = 100_000;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets and connection counters.
pub(crate) struct Limiter {
    limits: Limits,
    buckets: Mutex<HashMap<String, Bucket>>,
    conns: AtomicUsize,
    per_user: Mutex<HashMap<String, usize>>,
    /// [`BUCKETS_PRUNE_ABOVE_COUNT`], a field so that unit tests can prune a small table.
    buckets_prune_above_count: usize,
}

/// A held connection slot; released on drop.
pub(crate) struct ConnSlot {
    limiter: Arc<Limiter>,
    user: String,
}

impl Limiter {
    pub(crate) fn new(limits: Limits) -> Limiter {
        Limiter {
            limits,
            buckets: Mutex::new(HashMap::new()),
            conns: AtomicUsize::new(0),
            per_user: Mutex::new(HashMap::new()),
            buckets_prune_above_count: BUCKETS_PRUNE_ABOVE_COUNT,
        }
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Takes one token from `user`'s bucket, or refuses.
    pub(crate) fn command(&self, user: &str) -> Result<(), AppError> {
        self.command_at(user, Instant::now())
    }

    /// [`Limiter::command`] at time `now`: the clock seam, so tests can step time exactly.
    pub(crate) fn command_at(&self, user: &str, now: Instant) -> Result<(), AppError> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        // Bound the table: drop full buckets (idle users) when it grows large.
        if buckets.len() > self.buckets_prune_above_count {
            let burst = f64::from(self.limits.command_burst);
            let rate = self.limits.commands_per_s;
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let b = buckets.entry(user.to_owned()).or_insert(Bucket {
            tokens: f64::from(self.limits.command_burst),
            at: now,
        });
        let refill = now.duration_since(b.at).as_secs_f64() * self.limits.commands_per_s;
        b.tokens = (b.tokens + refill).min(f64::from(self.limits.command_burst));
        b.at = now;
        if b.tokens < 1.0 {
            return Err(AppError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "more than {} commands per second; slow down",
                    self.limits.commands_per_s
                ),
            ));
        }
        b.tokens -= 1.0;
        Ok(())
    }

    /// Counts a new connection of `user`, or refuses it.
    pub(crate) fn connect(self: &Arc<Self>, user: &str) -> Result<ConnSlot, AppError> {
        let refused = |what: &str| {
            AppError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                format!("{what}; try again later or another node"),
            )
        };
        if self.conns.fetch_add(1, Ordering::SeqCst) >= self.limits.conns_max {
            self.conns.fetch_sub(1, Ordering::SeqCst);
            return Err(refused("this node is at its connection limit"));
        }
        let mut per_user = self.per_user.lock().unwrap_or_else(|p| p.into_inner());
        let n = per_user.entry(user.to_owned()).or_insert(0);
        if *n >= self.limits.conns_per_user_max {
            self.conns.fetch_sub(1, Ordering::SeqCst);
            return Err(refused("you have too many open connections"));
        }
        *n += 1;
        Ok(ConnSlot {
            limiter: self.clone(),
            user: user.to_owned(),
        })
    }

    /// Connections open now.
    pub(crate) fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    fn release(&self, user: &str) {
        self.conns.fetch_sub(1, Ordering::SeqCst);
        let mut per_user = self.per_user.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_user.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                per_user.remove(user);
            }
        }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.limiter.release(&self.user);
    }
}

#[cfg(test)]
#[path = "limits_tests.rs"]
mod tests;

//! A fault-injecting UDP proxy for mesh tests: it forwards datagrams between clients and one
//! target, and can drop a share of them, delay them, or cut the link entirely (partition) and
//! restore it (heal). The kernel here has no netem, so WAN faults are made in user space.
//!
//! Each client address gets its own upstream socket, so the target sees one peer per client, as
//! it would without the proxy. Drops use a seeded xorshift generator: a run replays exactly.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// The largest datagram forwarded, in bytes (QUIC never sends more than 64 KiB).
const DATAGRAM_MAX_BYTES: usize = 65_536;

/// Counters of a proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Datagrams forwarded (both directions).
    pub forwarded: u64,
    /// Datagrams dropped (partition or random loss).
    pub dropped: u64,
}

struct Faults {
    partitioned: AtomicBool,
    /// Loss in parts per million.
    drop_ppm: AtomicU64,
    delay_ms: AtomicU64,
    rng: Mutex<u64>,
    forwarded: AtomicU64,
    dropped: AtomicU64,
}

impl Faults {
    /// Whether to drop the next datagram.
    fn drop_now(&self) -> bool {
        if self.partitioned.load(Ordering::SeqCst) {
            return true;
        }
        let ppm = self.drop_ppm.load(Ordering::Relaxed);
        if ppm == 0 {
            return false;
        }
        let mut state = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        // xorshift64
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state % 1_000_000 < ppm
    }

    /// Sends `bytes` to `to` through `socket` unless dropped, after the configured delay.
    fn forward(self: &Arc<Self>, socket: &Arc<UdpSocket>, bytes: &[u8], to: Option<SocketAddr>) {
        if self.drop_now() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        let delay = self.delay_ms.load(Ordering::Relaxed);
        if delay == 0 {
            let _ = match to {
                Some(to) => socket.try_send_to(bytes, to),
                None => socket.try_send(bytes),
            };
            return;
        }
        let socket = socket.clone();
        let bytes = bytes.to_vec();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let _ = match to {
                Some(to) => socket.send_to(&bytes, to).await,
                None => socket.send(&bytes).await,
            };
        });
    }
}

/// A running proxy in front of one UDP target.
pub struct UdpProxy {
    addr: SocketAddr,
    faults: Arc<Faults>,
    task: JoinHandle<()>,
}

impl UdpProxy {
    /// Starts a proxy on `127.0.0.1:0` forwarding to `target`; `seed` drives random loss.
    pub async fn start(target: SocketAddr, seed: u64) -> anyhow::Result<UdpProxy> {
        UdpProxy::start_at(SocketAddr::from(([127, 0, 0, 1], 0)), target, seed).await
    }

    /// Starts a proxy listening on `listen` (an address of a network namespace's link, say)
    /// forwarding to `target`; `seed` drives random loss.
    pub async fn start_at(
        listen: SocketAddr,
        target: SocketAddr,
        seed: u64,
    ) -> anyhow::Result<UdpProxy> {
        let listen = Arc::new(
            UdpSocket::bind(listen)
                .await
                .with_context(|| format!("bind the proxy socket on {listen}"))?,
        );
        let addr = listen.local_addr().context("read the proxy address")?;
        let faults = Arc::new(Faults {
            partitioned: AtomicBool::new(false),
            drop_ppm: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
            rng: Mutex::new(seed | 1),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let task = tokio::spawn(run(listen, target, faults.clone()));
        Ok(UdpProxy { addr, faults, task })
    }

    /// The address clients send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every datagram, both ways, until [`UdpProxy::heal`].
    pub fn partition(&self) {
        self.faults.partitioned.store(true, Ordering::SeqCst);
    }

    /// Forwards again.
    pub fn heal(&self) {
        self.faults.partitioned.store(false, Ordering::SeqCst);
    }

    /// Drops this share (0.0 to 1.0) of datagrams at random.
    pub fn set_loss(&self, share: f64) {
        let ppm = (share.clamp(0.0, 1.0) * 1_000_000.0) as u64;
        self.faults.drop_ppm.store(ppm, Ordering::Relaxed);
    }

    /// Delays every datagram by this many ms (each way).
    pub fn set_delay_ms(&self, ms: u64) {
        self.faults.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// Counters so far.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            forwarded: self.faults.forwarded.load(Ordering::Relaxed),
            dropped: self.faults.dropped.load(Ordering::Relaxed),
        }
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(listen: Arc<UdpSocket>, target: SocketAddr, faults: Arc<Faults>) {
    let mut upstreams: HashMap<SocketAddr, (Arc<UdpSocket>, JoinHandle<()>)> = HashMap::new();
    let mut buf = vec![0u8; DATAGRAM_MAX_BYTES];
    loop {
        let Ok((n, client)) = listen.recv_from(&mut buf).await else {
            break;
        };
        let upstream = match upstreams.get(&client) {
            Some((socket, _)) => socket.clone(),
            None => {
                // The kernel picks the source address of the route to the target.
                let any = match target {
                    SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
                    SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
                };
                let Ok(socket) = UdpSocket::bind(any).await else {
                    continue;
                };
                if socket.connect(target).await.is_err() {
                    continue;
                }
                let socket = Arc::new(socket);
                let back = tokio::spawn(backward(
                    socket.clone(),
                    listen.clone(),
                    client,
                    faults.clone(),
                ));
                upstreams.insert(client, (socket.clone(), back));
                socket
            }
        };
        faults.forward(&upstream, &buf[..n], None);
    }
    for (_, (_, task)) in upstreams {
        task.abort();
    }
}

/// Carries the target's replies back to `client`.
async fn backward(
    upstream: Arc<UdpSocket>,
    listen: Arc<UdpSocket>,
    client: SocketAddr,
    faults: Arc<Faults>,
) {
    let mut buf = vec![0u8; DATAGRAM_MAX_BYTES];
    loop {
        match upstream.recv(&mut buf).await {
            Ok(n) => faults.forward(&listen, &buf[..n], Some(client)),
            // A connected UDP socket reports ICMP errors (the target restarting) as receive
            // errors; keep going, the target may come back.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

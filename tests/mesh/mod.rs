//! Mesh tests: real nodes (each its own sled store, HTTP port and QUIC endpoint) replicating over
//! real QUIC with mutual TLS on loopback, with real Socket.IO clients, the fault-injecting UDP
//! proxy of lectern-testkit for partitions, and a re-executed child process for SIGKILL.
//!
//! [`Cluster`] is the harness: a cluster CA made in memory, node certificates written to a temp
//! dir, one shared token secret, and nodes started in order so that each later node dials the
//! earlier ones (their QUIC ports are known by then).

mod classroom;
mod content;
mod demo;
mod failover;
mod hostile;
mod notify;
mod partition;
mod presence;
mod recovery;
mod region;
mod replicate;
mod restart;
mod scope;
mod trust;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use lectern_gateway::auth::{Claims, mint};
use lectern_mesh::ClusterCa;
use lectern_model::DocId;
use lectern_node::{Config, DEMO_COHORT, DEMO_SESSION, Node};
use lectern_testkit::{Client, Transport};
use serde_json::json;

use crate::support::TempDir;

/// The longest any one mesh test may run before it fails as hung.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The shared HS256 secret of a test cluster.
pub const SECRET: &str = "mesh-test-secret-0123456789abcdef";

/// A test node's longest wait between two dials, in ms: a peer back from a partition or a
/// restart is redialled within a fraction of a second.
pub const RECONNECT_MAX_MS: u64 = 200;

/// A test node's peer idle timeout, in ms: a dead or cut-off peer is noticed after this long
/// (keep-alives every third of it). Short enough for the dead-peer tests (partition, presence
/// expiry, restart) to notice within their limits, long enough that a loaded 2-core machine
/// that does not schedule a node for a moment does not drop a healthy connection.
pub const PEER_IDLE_TIMEOUT_MS: u64 = 3_000;

/// A test node's dial timeout, in ms (a dial into a partition is retried this often).
pub const CONNECT_TIMEOUT_MS: u64 = 700;

/// How long a test node holds a resume join for the mesh to catch up, in ms: generous (the
/// wait ends as soon as the changes arrive), and shorter than the test client's 10 s wait
/// for an ack, so that a node that gives up is seen answering with a snapshot.
pub const RESUME_WAIT_MS: u64 = 8_000;

/// The cluster names of the honest nodes of every test cluster: each node admits these when
/// they dial it (a node started earlier cannot list a later one's address). Any other name
/// (the tests' intruders) is refused at its hello, certificate or not.
pub const MEMBERS: [&str; 6] = ["node-a", "node-b", "node-c", "a", "b", "c"];

/// Runs a test body under [`TEST_TIMEOUT`].
pub async fn within<T>(body: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .with_context(|| format!("the test did not finish within {TEST_TIMEOUT:?}"))?
}

/// Polls `cond` every 5 ms until it holds or `limit` passes; how long it took.
pub async fn eventually(
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Retries the async check `check` every 20 ms until it succeeds or `limit` passes (then its
/// last error is the test's); how long it took. For conditions read over HTTP or that need
/// `ensure!`s with their own messages.
pub async fn eventually_ok<F, Fut>(
    what: &str,
    limit: Duration,
    mut check: F,
) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(()) => return Ok(start.elapsed()),
            Err(e) if start.elapsed() >= limit => {
                return Err(e.context(format!("{what}: not within {limit:?}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// A loopback UDP address for a node's QUIC endpoint that a test has to know before the node
/// binds it (two nodes that dial each other; a node restarted on the same address), and that
/// nothing else can take in between.
///
/// Probing `127.0.0.1:0` and releasing the port would not do: the kernel hands released
/// ephemeral ports to the next socket that binds port 0, in this process or another. So the
/// address is one of 127.0.0.0/8's own (unique to this process and call: derived from the pid
/// and a counter; no other code binds it by name), and the port lies below the kernel's
/// ephemeral range (`ip_local_port_range`), which it never hands out by itself. The port is
/// checked free by binding it once; only a socket bound on purpose to exactly this port of every
/// address could take it afterwards.
pub fn reserved_udp_addr() -> anyhow::Result<SocketAddr> {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::atomic::{AtomicU32, Ordering};
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    // 127.64.0.0 to 127.127.255.255: 14 bits of pid, 8 of call (1 to 254 in the last byte).
    let ip = Ipv4Addr::new(
        127,
        64 | ((pid >> 8) & 0x3f) as u8,
        (pid & 0xff) as u8,
        1 + (call % 254) as u8,
    );
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_001));
    let span = u32::from(high - low);
    let first = (pid
        .wrapping_mul(7_919)
        .wrapping_add(call.wrapping_mul(104_729)))
        % span;
    for i in 0..span {
        let port = low + ((first + i) % span) as u16;
        let addr = SocketAddr::new(IpAddr::V4(ip), port);
        if std::net::UdpSocket::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    anyhow::bail!("no free UDP port below {high} on {ip}")
}

/// A test cluster.
pub struct Cluster {
    /// The cluster CA.
    pub ca: ClusterCa,
    /// Running nodes, by index, with their names.
    pub nodes: Vec<(String, Option<Node>)>,
    /// Each node's data dir (kept across restarts).
    pub dirs: Vec<TempDir>,
    tls_root: TempDir,
    tag: String,
}

impl Cluster {
    /// An empty cluster with a fresh CA.
    pub fn new(tag: &str) -> anyhow::Result<Cluster> {
        Ok(Cluster {
            ca: ClusterCa::generate()?,
            nodes: Vec::new(),
            dirs: Vec::new(),
            tls_root: TempDir::new(&format!("{tag}-tls")),
            tag: tag.to_owned(),
        })
    }

    /// The TLS dir of node `name` (certificate issued on first use).
    pub fn tls_dir(&self, name: &str) -> anyhow::Result<std::path::PathBuf> {
        let dir = self.tls_root.path().join(name);
        if !dir.join(lectern_mesh::tls::NODE_CERT_FILE).is_file() {
            self.ca
                .issue_node(name, lectern_mesh::tls::NODE_CERT_VALIDITY_DEFAULT)?
                .write(&dir)?;
        }
        Ok(dir)
    }

    /// Issues node `name` a certificate valid for `valid_for` into its TLS dir (replacing the
    /// one there, as `lectern cluster issue-node --renew` does); the certificate.
    pub fn issue(&self, name: &str, valid_for: Duration) -> anyhow::Result<lectern_mesh::NodeCert> {
        let dir = self.tls_root.path().join(name);
        let cert = self.ca.issue_node(name, valid_for)?;
        if dir.join(lectern_mesh::tls::NODE_CERT_FILE).is_file() {
            cert.replace(&dir)?;
        } else {
            cert.write(&dir)?;
        }
        Ok(cert)
    }

    /// The config of a node named `name` dialling `peers` (`NAME@ADDR`), storing in `dir`.
    pub fn config(
        &self,
        name: &str,
        dir: &std::path::Path,
        peers: Vec<String>,
    ) -> anyhow::Result<Config> {
        let mut config = Config {
            data_dir: dir.to_path_buf(),
            http: "127.0.0.1:0".parse()?,
            ..Default::default()
        };
        config.auth.hs256_secret = Some(SECRET.into());
        config.mesh.name = name.into();
        config.mesh.region = format!("region-{name}");
        config.mesh.listen = "127.0.0.1:0".parse()?;
        config.mesh.tls_dir = Some(self.tls_dir(name)?);
        config.mesh.peers = peers;
        config.mesh.accept_from = MEMBERS.iter().map(|m| (*m).to_owned()).collect();
        config.mesh.reconnect_max_ms = RECONNECT_MAX_MS;
        config.mesh.peer_idle_timeout_ms = PEER_IDLE_TIMEOUT_MS;
        config.mesh.connect_timeout_ms = CONNECT_TIMEOUT_MS;
        config.mesh.resume_wait_ms = RESUME_WAIT_MS;
        config.admin_token = Some("admin-token-0123456789".into());
        Ok(config)
    }

    /// Starts node `name` dialling `peers`; `seed` seeds the demo class on it. Its index.
    pub async fn start(
        &mut self,
        name: &str,
        peers: Vec<String>,
        seed: bool,
    ) -> anyhow::Result<usize> {
        self.start_with(name, peers, seed, |_| {}).await
    }

    /// [`Cluster::start`], after `edit` adjusts the node's configuration.
    pub async fn start_with(
        &mut self,
        name: &str,
        peers: Vec<String>,
        seed: bool,
        edit: impl FnOnce(&mut Config),
    ) -> anyhow::Result<usize> {
        let dir = TempDir::new(&format!("{}-{name}", self.tag));
        let mut config = self.config(name, dir.path(), peers)?;
        config.demo = seed;
        edit(&mut config);
        let node = lectern_node::start(config)
            .await
            .with_context(|| format!("start node {name}"))?;
        self.dirs.push(dir);
        self.nodes.push((name.to_owned(), Some(node)));
        Ok(self.nodes.len() - 1)
    }

    /// Restarts stopped node `i` on its own data directory, dialling `peers`, after `edit`
    /// adjusts its configuration (as a machine restarting the same node would).
    pub async fn restart_with(
        &mut self,
        i: usize,
        peers: Vec<String>,
        edit: impl FnOnce(&mut Config),
    ) -> anyhow::Result<()> {
        anyhow::ensure!(self.nodes[i].1.is_none(), "node {i} is still running");
        let name = self.nodes[i].0.clone();
        let mut config = self.config(&name, self.dirs[i].path(), peers)?;
        edit(&mut config);
        let node = lectern_node::start(config)
            .await
            .with_context(|| format!("restart node {name}"))?;
        self.nodes[i].1 = Some(node);
        Ok(())
    }

    /// Starts a classroom node `name` (`[classroom]`) for the demo cohort, with node `region`
    /// as its upstream and nothing seeded; its index.
    pub async fn start_classroom(&mut self, name: &str, region: usize) -> anyhow::Result<usize> {
        let upstream = self.peer(region);
        self.start_classroom_via(name, upstream).await
    }

    /// [`Cluster::start_classroom`] with its upstream at `upstream` (`NAME@ADDR`: a relay in
    /// front of the region, for a link the test cuts).
    pub async fn start_classroom_via(
        &mut self,
        name: &str,
        upstream: String,
    ) -> anyhow::Result<usize> {
        self.start_with(name, vec![], false, |c| {
            c.classroom.upstream = Some(upstream);
            c.classroom.cohorts = Some(vec![DEMO_COHORT.into()]);
        })
        .await
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &Node {
        // Invariant: tests only address nodes they started and have not stopped.
        self.nodes[i].1.as_ref().expect("the node is running")
    }

    /// `name@quic-addr` of node `i`, for another node's peer list.
    pub fn peer(&self, i: usize) -> String {
        format!("{}@{}", self.nodes[i].0, self.quic(i))
    }

    /// Node `i`'s QUIC address.
    pub fn quic(&self, i: usize) -> SocketAddr {
        let mesh = self.node(i).mesh.as_ref().expect("the node runs a mesh");
        mesh.local_addr().expect("the mesh has an address")
    }

    /// Waits until every node in `among` has a copy of `doc` with the same heads.
    pub async fn converged(
        &self,
        doc: &DocId,
        among: &[usize],
        limit: Duration,
    ) -> anyhow::Result<Duration> {
        eventually(&format!("{doc} converges on {among:?}"), limit, || {
            let heads: Vec<Option<[u8; 32]>> = among
                .iter()
                .map(|&i| self.node(i).hub.doc_heads(doc))
                .collect();
            heads[0].is_some() && heads.iter().all(|h| *h == heads[0])
        })
        .await
    }

    /// Waits until node `i` is connected to `n` peers.
    pub async fn connected(&self, i: usize, n: usize) -> anyhow::Result<Duration> {
        let mesh = self.node(i).mesh.clone().context("a mesh")?;
        eventually(
            &format!("node {i} connects to {n} peers"),
            Duration::from_secs(10),
            || mesh.connected_peers().len() == n,
        )
        .await
    }

    /// Stops node `i` cleanly.
    pub async fn stop(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(node) = self.nodes[i].1.take() {
            node.stop().await?;
        }
        Ok(())
    }

    /// Stops every node.
    pub async fn stop_all(mut self) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            self.stop(i).await?;
        }
        Ok(())
    }
}

/// The demo session's document.
pub fn demo_session() -> DocId {
    DocId::Session(DEMO_SESSION.parse().expect("valid id"))
}

/// A caller in the demo cohort (the demo roster has `student1`, `student2`, `ada`).
pub fn demo_caller(user: &str, role: lectern_model::Role) -> lectern_model::Caller {
    lectern_model::Caller {
        user: user.parse().expect("valid user id"),
        name: format!("User {user}"),
        role,
        cohorts: vec![DEMO_COHORT.parse().expect("valid cohort id")],
    }
}

/// A token for `user` with `role` in the demo cohort, valid for an hour.
pub fn token(user: &str, role: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = Claims {
        sub: user.into(),
        name: format!("User {user}"),
        role: role.into(),
        cohorts: vec![DEMO_COHORT.into()],
        exp: now + 3600,
        iat: now,
        nbf: None,
    };
    mint(SECRET.as_bytes(), &claims).expect("minting with the test secret succeeds")
}

/// A Socket.IO client of `node` as `user`, joined to the demo session; and its join ack.
pub async fn joined(
    node: &Node,
    user: &str,
    role: &str,
    resume: Option<&str>,
) -> anyhow::Result<(Client, serde_json::Value)> {
    joined_on(node.http_addr, user, role, resume).await
}

/// [`joined`], to the node serving HTTP at `addr`.
pub async fn joined_on(
    addr: SocketAddr,
    user: &str,
    role: &str,
    resume: Option<&str>,
) -> anyhow::Result<(Client, serde_json::Value)> {
    let mut client = Client::connect(
        addr,
        Transport::WebSocket,
        json!({ "token": token(user, role) }),
        user,
    )
    .await?;
    let mut args = vec![json!(DEMO_SESSION)];
    if let Some(r) = resume {
        args.push(json!(r));
    }
    let ack = client.call("session:join", args).await?;
    anyhow::ensure!(ack["ok"] == true, "session:join on {user}: {ack}");
    Ok((client, ack))
}

//! Tests with real `lectern-node` processes in Linux network namespaces (iproute2's `ip`, as
//! root): each node gets its own network stack and address, and a link between two nodes can
//! be cut (`ip link set … down`) and brought back like a school's uplink, which a loopback test
//! cannot do (there, a "partition" is a proxy in the test process).
//!
//! [`Lab`] is the harness: a namespace per node, each joined to the test's own (root)
//! namespace by a veth pair (the clients and the admin calls of the test reach the nodes that
//! way), and a veth pair for each pair of nodes the test links (the mesh). A veth pair per link,
//! rather than one bridge namespace, is what lets a test cut exactly one link between two
//! nodes (`ip link set … down` on one end) and leave the others up, as a partition between
//! two regions does. Addresses come from 198.18.0.0/15 (RFC 2544, set aside for test
//! networks): one /26 per lab chosen from the test process's id, cut into /30s, one per link
//! ([`Addrs`]). The offline classroom's lab ([`Lab::region_and_classroom`]) is two namespaces
//! whose uplink is the classroom's default route; the region forwards, so the classroom
//! reaches the root namespace's SMTP catcher only through the uplink: with the uplink down its
//! mail server is unreachable, as a school's is when its uplink is. Dropping the lab kills
//! every process left in its namespaces and deletes them (also when the test failed); a lab
//! left over by a test process that was killed is removed by the next one. [`NodeProcess`] is
//! a real `lectern-node` in a namespace, stopped cleanly or SIGKILLed and started again on its
//! data directory; [`Trust`] is one cluster trust (`lectern cluster init/issue-node`).
//!
//! * `offline_class`: a class of 40 students on a classroom node with its uplink cut, merged
//!   with its region when the link is back; a classroom node that starts with its uplink down.
//! * `chaos`: three nodes and 1,000 clients (Socket.IO, SSE + POST, REST) under a seeded
//!   schedule of SIGKILLs, restarts and link cuts; every acked command on every node, the
//!   heads identical within 2 s of the last heal, no duplicated effect, and every client's
//!   event stream without gap or duplicate across reconnects and failovers.

mod chaos;
mod offline_class;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Context;
use lectern_testkit::Http;

use crate::support::{KillOnDrop, TempDir, Watchdog};

/// The prefix of every namespace a lab makes (`{prefix}{pid}-{n}-{role}`), by which a later
/// test process finds the ones a killed test process left behind.
const NS_PREFIX: &str = "lectern-t";

/// Longest a node process may live: a test hung past it fails instead of hanging CI.
const NODE_LIFETIME_MAX: Duration = Duration::from_secs(300);

/// How long a node process has to answer `/healthz` after it was started.
const NODE_START_MAX: Duration = Duration::from_secs(30);

/// The admin token of every lab node.
pub const ADMIN_TOKEN: &str = "netns-admin-token-0123456789";

/// iproute2's `ip`: found on `PATH` or in the system directories, which a non-login root
/// shell may leave off `PATH`.
fn ip_command() -> Command {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/bin".into()])
        .map(|dir: PathBuf| dir.join("ip"))
        .find(|p| p.is_file());
    Command::new(found.unwrap_or_else(|| PathBuf::from("ip")))
}

/// Runs `ip ARGS`; fails with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = ip_command()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| {
            format!(
                "run ip {} (iproute2, installed by scripts/setup)",
                args.join(" ")
            )
        })?;
    anyhow::ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The output of `ip ARGS`, or an empty string if it failed (for cleanup, best effort).
fn ip_output(args: &[&str]) -> String {
    ip_command()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Kills every process in namespace `ns` and deletes it (best effort: cleanup).
fn remove_namespace(ns: &str) {
    for pid in ip_output(&["netns", "pids", ns]).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            #[allow(unsafe_code)]
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is a process the
            // kernel just listed in our own namespace.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    // A namespace is gone once its last process is; the name can be removed at once.
    let _ = ip(&["netns", "del", ns]);
}

/// Removes the namespaces of labs whose test process no longer runs (it was killed before its
/// labs were dropped).
fn remove_stale_labs() {
    for line in ip_output(&["netns", "list"]).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            remove_namespace(name);
        }
    }
}

/// The largest number of namespaces a lab holds: their host links and the links between them
/// fit its /26 (16 /30 subnets), as long as `nodes + links <= 16`.
const LAB_NAMESPACES_MAX: usize = 5;

/// The /30 subnets of a lab's /26.
const LAB_SUBNETS: u32 = 16;

/// The port each lab node serves HTTP on, in its own namespace.
pub const HTTP_PORT: u16 = 8080;

/// The port each lab node's mesh listens on, in its own namespace.
pub const QUIC_PORT: u16 = 7400;

/// The addresses of one lab: a /26 of 198.18.0.0/15, cut into /30s. Subnet `i` is namespace
/// `i`'s host link (the root namespace's end `.1`, the namespace's `.2`); subnet `nodes + j`
/// is link `j` between two namespaces (its first namespace's end `.1`, its second's `.2`).
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    base: u32,
    nodes: u32,
}

impl Addrs {
    fn at(self, subnet: u32, host: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base + subnet * 4 + host)
    }

    /// The root namespace's end of namespace `i`'s host link.
    pub fn root_end(self, i: usize) -> Ipv4Addr {
        self.at(i as u32, 1)
    }

    /// Namespace `i`'s end of its host link: its HTTP address, which the test's clients use.
    pub fn node(self, i: usize) -> Ipv4Addr {
        self.at(i as u32, 2)
    }

    /// The address of link `j`'s end in its first namespace (`first`) or its second.
    pub fn link_end(self, j: usize, first: bool) -> Ipv4Addr {
        self.at(self.nodes + j as u32, if first { 1 } else { 2 })
    }

    /// The root namespace's end of its link to the region (where the SMTP catchers listen).
    pub fn root_to_region(self) -> Ipv4Addr {
        self.root_end(REGION)
    }

    /// The region's end of its link to the root namespace (its HTTP address).
    pub fn region(self) -> Ipv4Addr {
        self.node(REGION)
    }

    /// The classroom's end of its link to the root namespace (its HTTP address).
    pub fn classroom(self) -> Ipv4Addr {
        self.node(CLASSROOM)
    }

    /// The region's end of the uplink (its QUIC address for the classroom).
    pub fn region_uplink(self) -> Ipv4Addr {
        self.link_end(UPLINK, true)
    }
}

/// A link between two of a lab's namespaces: a veth pair, one end in each.
struct Link {
    /// The second namespace's index.
    b: usize,
    /// The interface at the second namespace's end (the one cut and brought back).
    b_end: String,
}

/// The region's namespace in [`Lab::region_and_classroom`].
const REGION: usize = 0;
/// The classroom's namespace in [`Lab::region_and_classroom`].
const CLASSROOM: usize = 1;
/// The uplink in [`Lab::region_and_classroom`].
const UPLINK: usize = 0;

/// Namespaces joined to the root namespace and to each other by veth pairs (see the module's
/// documentation).
pub struct Lab {
    /// The namespaces, in the order their names were given.
    namespaces: Vec<String>,
    /// The lab's addresses.
    pub addrs: Addrs,
    /// The links between namespaces, in the order given.
    links: Vec<Link>,
    /// The root namespace's ends of the host links.
    root_links: Vec<String>,
}

impl Lab {
    /// A namespace per name, each with a host link to the root namespace, and a veth pair for
    /// each `(a, b)` of `links` (indexes into `names`). Needs root and iproute2.
    pub fn new(names: &[&str], links: &[(usize, usize)]) -> anyhow::Result<Lab> {
        static LABS: AtomicU32 = AtomicU32::new(0);
        anyhow::ensure!(
            names.len() <= LAB_NAMESPACES_MAX && (names.len() + links.len()) as u32 <= LAB_SUBNETS,
            "a lab holds at most {LAB_NAMESPACES_MAX} namespaces and {LAB_SUBNETS} links in all"
        );
        remove_stale_labs();
        let pid = std::process::id();
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        // Interface names are at most 15 bytes: "l" + pid in hex (≤ 6) + n + 2 or 3.
        let tag = format!("l{pid:x}{n:x}");
        // 198.18.0.0/15 holds 2,048 /26s.
        let slot = (pid.wrapping_mul(4).wrapping_add(n)) % 2_048;
        let addrs = Addrs {
            base: u32::from(Ipv4Addr::new(198, 18, 0, 0)) + slot * 64,
            nodes: names.len() as u32,
        };
        let mut lab = Lab {
            namespaces: names
                .iter()
                .map(|name| format!("{NS_PREFIX}{pid}-{n}-{name}"))
                .collect(),
            addrs,
            links: Vec::new(),
            root_links: Vec::new(),
        };
        lab.build(&tag, links)
            .with_context(|| format!("build the network namespaces of lab {tag}"))?;
        Ok(lab)
    }

    /// The offline classroom's lab: a region and a classroom namespace, joined by an uplink
    /// that is the classroom's default route. The region forwards, so the classroom reaches
    /// the root namespace only through the uplink.
    pub fn region_and_classroom() -> anyhow::Result<Lab> {
        let lab = Lab::new(&["region", "classroom"], &[(REGION, CLASSROOM)])?;
        let r = lab.namespace(REGION);
        let forward = ip_command()
            .args(["netns", "exec", r, "sh", "-c"])
            .arg("echo 1 > /proc/sys/net/ipv4/ip_forward")
            .status()
            .context("switch forwarding on in the region's namespace")?;
        anyhow::ensure!(forward.success(), "ip_forward in {r}: {forward}");
        // The root namespace routes the uplink's replies back through the region.
        let uplink_net = format!("{}/30", lab.addrs.at(lab.addrs.nodes + UPLINK as u32, 0));
        ip(&[
            "route",
            "add",
            &uplink_net,
            "via",
            &lab.addrs.region().to_string(),
        ])?;
        lab.uplink_up()?;
        Ok(lab)
    }

    /// Namespace `i`'s name.
    pub fn namespace(&self, i: usize) -> &str {
        &self.namespaces[i]
    }

    fn build(&mut self, tag: &str, links: &[(usize, usize)]) -> anyhow::Result<()> {
        let a = self.addrs;
        let cidr = |ip: Ipv4Addr| format!("{ip}/30");
        for ns in &self.namespaces {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        for (i, ns) in self.namespaces.iter().enumerate() {
            let (root_end, ns_end) = (format!("{tag}r{i}"), format!("{tag}x{i}"));
            ip(&[
                "link", "add", &root_end, "type", "veth", "peer", "name", &ns_end, "netns", ns,
            ])?;
            self.root_links.push(root_end.clone());
            ip(&["addr", "add", &cidr(a.root_end(i)), "dev", &root_end])?;
            ip(&["link", "set", &root_end, "up"])?;
            ip(&["-n", ns, "addr", "add", &cidr(a.node(i)), "dev", &ns_end])?;
            ip(&["-n", ns, "link", "set", &ns_end, "up"])?;
        }
        for (j, &(i, k)) in links.iter().enumerate() {
            let (first, second) = (&self.namespaces[i], &self.namespaces[k]);
            let (a_end, b_end) = (format!("{tag}a{j}"), format!("{tag}b{j}"));
            ip(&[
                "-n", first, "link", "add", &a_end, "type", "veth", "peer", "name", &b_end,
                "netns", second,
            ])?;
            for (ns, end, is_first) in [(first, &a_end, true), (second, &b_end, false)] {
                let addr = cidr(a.link_end(j, is_first));
                ip(&["-n", ns, "addr", "add", &addr, "dev", end])?;
                ip(&["-n", ns, "link", "set", end, "up"])?;
            }
            self.links.push(Link { b: k, b_end });
        }
        Ok(())
    }

    /// Cuts link `j` (its second namespace's end goes down, and the routes through it).
    pub fn link_down(&self, j: usize) -> anyhow::Result<()> {
        self.set_link(j, "down")
    }

    /// Brings link `j` back (the kernel restores its /30's route with it).
    pub fn link_up(&self, j: usize) -> anyhow::Result<()> {
        self.set_link(j, "up")
    }

    /// Sets the second namespace's end of link `j` `down` or `up`.
    fn set_link(&self, j: usize, state: &str) -> anyhow::Result<()> {
        let link = &self.links[j];
        ip(&[
            "-n",
            &self.namespaces[link.b],
            "link",
            "set",
            &link.b_end,
            state,
        ])
    }

    /// The region's namespace in [`Lab::region_and_classroom`].
    pub fn region_ns(&self) -> &str {
        self.namespace(REGION)
    }

    /// The classroom's namespace in [`Lab::region_and_classroom`].
    pub fn classroom_ns(&self) -> &str {
        self.namespace(CLASSROOM)
    }

    /// Cuts the uplink of [`Lab::region_and_classroom`] (the classroom's end goes down, and its
    /// routes through it with it).
    pub fn uplink_down(&self) -> anyhow::Result<()> {
        self.link_down(UPLINK)
    }

    /// Brings the uplink back, with the classroom's default route through it.
    pub fn uplink_up(&self) -> anyhow::Result<()> {
        self.link_up(UPLINK)?;
        ip(&[
            "-n",
            self.classroom_ns(),
            "route",
            "replace",
            "default",
            "via",
            &self.addrs.region_uplink().to_string(),
        ])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            remove_namespace(ns);
        }
        // Deleting one end of a veth pair deletes both; these are gone already unless a
        // namespace outlived its name (a process in it still exiting).
        for link in &self.root_links {
            let _ = ip_command()
                .args(["link", "del", link])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A `lectern-node` process running in a namespace with a configuration file, killed when
/// dropped.
pub struct NodeProcess {
    child: KillOnDrop,
    _watchdog: Watchdog,
    log: PathBuf,
}

impl NodeProcess {
    /// Starts `lectern-node --config {dir}/lectern.toml` (written from `toml`) in namespace
    /// `ns`, logging to `{dir}/node.log`, and waits until it answers `/healthz` on `http`.
    pub async fn start(
        ns: &str,
        dir: &Path,
        toml: &str,
        http: SocketAddr,
    ) -> anyhow::Result<NodeProcess> {
        Self::start_for(ns, dir, toml, http, NODE_LIFETIME_MAX).await
    }

    /// [`NodeProcess::start`] for a node that may live up to `lifetime` (a long chaos run).
    pub async fn start_for(
        ns: &str,
        dir: &Path,
        toml: &str,
        http: SocketAddr,
        lifetime: Duration,
    ) -> anyhow::Result<NodeProcess> {
        let config = dir.join("lectern.toml");
        std::fs::write(&config, toml).with_context(|| format!("write {}", config.display()))?;
        let log = dir.join("node.log");
        let bin = crate::ops::node_bin()?;
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        // `ip netns exec` switches namespaces and executes the node in its own process, so
        // the child's pid is the node's.
        let child = ip_command()
            .args(["netns", "exec", ns])
            .arg(bin)
            .arg("--config")
            .arg(&config)
            .env_clear()
            .env("LECTERN_LOG", "info")
            // Plain text in the log file that a failure's message quotes.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("start lectern-node in its namespace")?;
        let watchdog = Watchdog::arm(child.id(), lifetime);
        let mut node = NodeProcess {
            child: KillOnDrop(child),
            _watchdog: watchdog,
            log,
        };
        let health = Http::new(http);
        let start = std::time::Instant::now();
        loop {
            if let Ok(Some(status)) = node.child.try_wait() {
                anyhow::bail!("lectern-node exited with {status}: {}", node.log_tail());
            }
            if let Ok(r) = health.get("/healthz", None).await
                && r.status == 200
            {
                return Ok(node);
            }
            anyhow::ensure!(
                start.elapsed() < NODE_START_MAX,
                "lectern-node did not answer /healthz on {http} within {NODE_START_MAX:?}: {}",
                node.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of its log (for a failure's message).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Kills it with SIGKILL (a crash: nothing flushed that was not already) and reaps it.
    pub fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().context("SIGKILL lectern-node")?;
        self.child.wait().context("reap lectern-node")?;
        Ok(())
    }

    /// Stops it with SIGTERM (a clean stop: the store flushed) and waits for it to exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        #[allow(unsafe_code)]
        // SAFETY: kill(2) has no memory-safety preconditions; the child is ours and unreaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::ensure!(status.success(), "lectern-node stopped with {status}");
                return Ok(());
            }
            anyhow::ensure!(
                start.elapsed() < NODE_START_MAX,
                "lectern-node did not stop on SIGTERM: {}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// An admin GET on a node; its JSON.
pub async fn admin(http: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    let r = Http::new(http).get(path, Some(ADMIN_TOKEN)).await?;
    anyhow::ensure!(r.status == 200, "{path}: {} {}", r.status, r.text());
    r.json()
}

/// Every document a node stores, with its heads digest (`/admin/docs`, a page of 1,000 at a
/// time).
pub async fn doc_heads(
    http: SocketAddr,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut out = std::collections::BTreeMap::new();
    let mut after = String::new();
    loop {
        let page = admin(
            http,
            &format!("/admin/docs?limit=1000&heads_only=true&after={after}"),
        )
        .await?;
        let docs = page["docs"].as_array().cloned().unwrap_or_default();
        for d in &docs {
            if let Some(doc) = d["doc"].as_str() {
                let heads = d["heads"].as_str().unwrap_or_default().to_owned();
                out.insert(doc.to_owned(), heads);
                after = doc.to_owned();
            }
        }
        if page["more"] != true || docs.is_empty() {
            return Ok(out);
        }
    }
}

/// A lab's certificates and token key, made with the `lectern` binary as an operator would
/// (`lectern cluster init`, `lectern cluster issue-node`).
pub struct Trust {
    dir: TempDir,
    /// The cluster's token key.
    pub secret: Vec<u8>,
}

impl Trust {
    /// A CA with bundles for `nodes`.
    pub async fn new(nodes: &[&str]) -> anyhow::Result<Trust> {
        let dir = TempDir::new("netns-ca");
        let ca = dir.path().join("ca");
        let ca_arg = ca.display().to_string();
        crate::ops::lectern(&["cluster", "init", "--out", &ca_arg])
            .await?
            .expect_code(0)?;
        for node in nodes {
            let out = dir.path().join(node).display().to_string();
            crate::ops::lectern(&[
                "cluster",
                "issue-node",
                "--id",
                node,
                "--ca",
                &ca_arg,
                "--out",
                &out,
            ])
            .await?
            .expect_code(0)?;
        }
        let secret = std::fs::read_to_string(ca.join("auth-secret"))?
            .trim()
            .as_bytes()
            .to_vec();
        Ok(Trust { dir, secret })
    }

    /// The TLS directory of `node`.
    pub fn tls_dir(&self, node: &str) -> PathBuf {
        self.dir.path().join(node)
    }
}

//! Tests with real `lectern-node` processes in Linux network namespaces (iproute2's `ip`, as
//! root): each node gets its own network stack and address, and a link between two nodes can
//! be cut (`ip link set … down`) and brought back like a school's uplink, which a loopback test
//! cannot do (there, a "partition" is a proxy in the test process).
//!
//! [`Lab`] is the harness: a region namespace and a classroom namespace, each joined to the
//! test's own (root) namespace by a veth pair (the students and the admin calls of the test
//! reach the nodes that way), and an uplink veth pair between them, which is the classroom's
//! default route. The region forwards, so the classroom reaches the root namespace's SMTP
//! catcher only through the uplink: with the uplink down its mail server is unreachable, as a
//! school's is when its uplink is. Addresses come from 198.18.0.0/15 (RFC 2544, set aside for
//! test networks), one /28 per lab chosen from the test process's id. Dropping the lab kills
//! every process left in its namespaces and deletes them (also when the test failed); a lab
//! left over by a test process that was killed is removed by the next one.
//!
//! * `offline_class`: a class of 40 students on a classroom node with its uplink cut, merged
//!   with its region when the link is back; a classroom node that starts with its uplink down.

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

/// The addresses of one lab: a /28 of 198.18.0.0/15.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    base: u32,
}

impl Addrs {
    fn at(self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base + offset)
    }

    /// The root namespace's end of its link to the region (where the SMTP catchers listen).
    pub fn root_to_region(self) -> Ipv4Addr {
        self.at(1)
    }

    /// The region's end of its link to the root namespace (its HTTP address).
    pub fn region(self) -> Ipv4Addr {
        self.at(2)
    }

    /// The root namespace's end of its link to the classroom.
    pub fn root_to_classroom(self) -> Ipv4Addr {
        self.at(5)
    }

    /// The classroom's end of its link to the root namespace (its HTTP address).
    pub fn classroom(self) -> Ipv4Addr {
        self.at(6)
    }

    /// The region's end of the uplink (its QUIC address for the classroom).
    pub fn region_uplink(self) -> Ipv4Addr {
        self.at(9)
    }

    /// The classroom's end of the uplink.
    pub fn classroom_uplink(self) -> Ipv4Addr {
        self.at(10)
    }
}

/// A region namespace and a classroom namespace, linked to the root namespace and to each
/// other (see the module's documentation).
pub struct Lab {
    /// The region's namespace.
    pub region_ns: String,
    /// The classroom's namespace.
    pub classroom_ns: String,
    /// The lab's addresses.
    pub addrs: Addrs,
    /// The classroom's end of the uplink (an interface in its namespace).
    uplink: String,
    /// The root namespace's ends of the two host links.
    root_links: [String; 2],
}

impl Lab {
    /// Makes the namespaces and links. Needs root and iproute2.
    pub fn new() -> anyhow::Result<Lab> {
        static LABS: AtomicU32 = AtomicU32::new(0);
        remove_stale_labs();
        let pid = std::process::id();
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        // Interface names are at most 15 bytes: "l" + pid in hex (≤ 6) + n + 2.
        let tag = format!("l{pid:x}{n:x}");
        let slot = (pid.wrapping_mul(4).wrapping_add(n)) % 8_192;
        let addrs = Addrs {
            base: u32::from(Ipv4Addr::new(198, 18, 0, 0)) + slot * 16,
        };
        let mut lab = Lab {
            region_ns: format!("{NS_PREFIX}{pid}-{n}-region"),
            classroom_ns: format!("{NS_PREFIX}{pid}-{n}-classroom"),
            addrs,
            uplink: format!("{tag}uc"),
            root_links: [format!("{tag}rr"), format!("{tag}cr")],
        };
        lab.build(&tag)
            .with_context(|| format!("build the network namespaces of lab {tag}"))?;
        Ok(lab)
    }

    fn build(&mut self, tag: &str) -> anyhow::Result<()> {
        let a = self.addrs;
        let (r, c) = (self.region_ns.clone(), self.classroom_ns.clone());
        let cidr = |ip: Ipv4Addr| format!("{ip}/30");
        ip(&["netns", "add", &r])?;
        ip(&["netns", "add", &c])?;
        for ns in [&r, &c] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        // The host links: root ⇄ region, root ⇄ classroom.
        for (root_end, ns, ns_end, root_ip, ns_ip) in [
            (
                &self.root_links[0],
                &r,
                format!("{tag}rx"),
                a.root_to_region(),
                a.region(),
            ),
            (
                &self.root_links[1],
                &c,
                format!("{tag}cx"),
                a.root_to_classroom(),
                a.classroom(),
            ),
        ] {
            ip(&[
                "link", "add", root_end, "type", "veth", "peer", "name", &ns_end, "netns", ns,
            ])?;
            ip(&["addr", "add", &cidr(root_ip), "dev", root_end])?;
            ip(&["link", "set", root_end, "up"])?;
            ip(&["-n", ns, "addr", "add", &cidr(ns_ip), "dev", &ns_end])?;
            ip(&["-n", ns, "link", "set", &ns_end, "up"])?;
        }
        // The uplink: region ⇄ classroom, the classroom's default route.
        let region_end = format!("{tag}ur");
        ip(&[
            "-n",
            &r,
            "link",
            "add",
            &region_end,
            "type",
            "veth",
            "peer",
            "name",
            &self.uplink,
            "netns",
            &c,
        ])?;
        ip(&[
            "-n",
            &r,
            "addr",
            "add",
            &cidr(a.region_uplink()),
            "dev",
            &region_end,
        ])?;
        ip(&["-n", &r, "link", "set", &region_end, "up"])?;
        ip(&[
            "-n",
            &c,
            "addr",
            "add",
            &cidr(a.classroom_uplink()),
            "dev",
            &self.uplink,
        ])?;
        self.uplink_up()?;
        // The region routes between the uplink and the root namespace, which routes the
        // uplink's replies back through the region.
        let forward = ip_command()
            .args(["netns", "exec", &r, "sh", "-c"])
            .arg("echo 1 > /proc/sys/net/ipv4/ip_forward")
            .status()
            .context("switch forwarding on in the region's namespace")?;
        anyhow::ensure!(forward.success(), "ip_forward in {r}: {forward}");
        let uplink_net = format!("{}/30", a.at(8));
        ip(&["route", "add", &uplink_net, "via", &a.region().to_string()])?;
        Ok(())
    }

    /// Cuts the uplink (the classroom's end goes down, and its routes through it with it).
    pub fn uplink_down(&self) -> anyhow::Result<()> {
        ip(&[
            "-n",
            &self.classroom_ns,
            "link",
            "set",
            &self.uplink,
            "down",
        ])
    }

    /// Brings the uplink back, with the classroom's default route through it.
    pub fn uplink_up(&self) -> anyhow::Result<()> {
        ip(&["-n", &self.classroom_ns, "link", "set", &self.uplink, "up"])?;
        ip(&[
            "-n",
            &self.classroom_ns,
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
        remove_namespace(&self.region_ns);
        remove_namespace(&self.classroom_ns);
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
        let watchdog = Watchdog::arm(child.id(), NODE_LIFETIME_MAX);
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

/// Every document a node stores, with its heads digest (`/admin/docs`).
pub async fn doc_heads(
    http: SocketAddr,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let docs = admin(http, "/admin/docs?limit=1000").await?;
    anyhow::ensure!(docs["more"] == false, "more than 1,000 documents: {docs}");
    Ok(docs["docs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| {
            Some((
                d["doc"].as_str()?.to_owned(),
                d["heads"].as_str().unwrap_or_default().to_owned(),
            ))
        })
        .collect())
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

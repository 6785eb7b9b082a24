//! The server processes of a load run: the node (`lectern-bench serve`, or any binary that
//! prints `node: http://ADDR`, such as `lectern-node --demo`) and the floor
//! (`lectern-bench floor-serve`), each a child process so that its memory and CPU can be read
//! from `/proc/<pid>` apart from the load generator's, and so that the two processes' 16,000
//! sockets are not counted against one open-files limit.
//!
//! A child exits when its stdin closes, so it never outlives the load generator; the load
//! generator also kills it (by its pid) when done with it.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lectern_node::config::{Config, Overrides};

/// Options of the `serve` subcommand.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Directory of the node's store.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address to serve HTTP on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub http: SocketAddr,
    /// Seed nothing: the node gets the demo class from a peer (`region`).
    #[arg(long)]
    pub no_demo: bool,
}

/// Runs a node with the demo class until stdin closes or a signal arrives. Configuration is
/// the node's own (`LECTERN_*` environment, `./lectern.toml`), as for `lectern-node --demo`.
/// Prints `node: http://ADDR` and `session: ID` once serving.
pub fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides::default()
        .flag("data-dir", args.data_dir.display().to_string())
        .flag("http", args.http.to_string())
        .flag("demo", (!args.no_demo).to_string());
    count_heap_if_asked();
    let config = Config::load(overrides, &|k| std::env::var(k).ok())?;
    // The same runtime as `lectern-node`: one worker per core.
    let rt = tokio::runtime::Runtime::new().context("start the async runtime")?;
    rt.block_on(async {
        let node = lectern_node::start(config).await?;
        println!("node: http://{}", node.http_addr);
        if let Some(demo) = &node.demo {
            println!("session: {}", demo.session);
        }
        serve_stdin();
        lectern_node::shutdown_signal().await;
        node.stop().await
    })
}

/// Serves the parent's requests on stdin, one a line, until stdin reaches its end (the parent
/// went away or is done), then ends the process. `heap` prints `heap: LIVE PEAK` (bytes on
/// the heap now and at most, counted from the start of the process when it was started with
/// `LECTERN_BENCH_COUNT_HEAP=1`, else `heap: - -`).
/// Exiting without a clean stop is deliberate: a node with 16,000 clients would otherwise
/// spend its last seconds recording their leaving.
pub fn serve_stdin() {
    std::thread::spawn(|| {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if line.trim() == "heap" {
                match crate::alloc::live() {
                    Some(w) => println!("heap: {} {}", w.retained_bytes, w.peak_bytes),
                    None => println!("heap: - -"),
                }
            }
        }
        std::process::exit(0);
    });
}

/// Environment variable that turns heap counting on in a server process.
pub const COUNT_HEAP_ENV: &str = "LECTERN_BENCH_COUNT_HEAP";

/// Starts counting heap bytes if the environment asks for it (call first thing).
pub fn count_heap_if_asked() {
    if std::env::var(COUNT_HEAP_ENV).is_ok_and(|v| v == "1") {
        crate::alloc::start();
    }
}

/// A server process this load generator started.
pub struct ChildServer {
    child: Child,
    stdin: ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
    /// Its process id.
    pub pid: u32,
    /// The address it serves.
    pub addr: SocketAddr,
}

impl ChildServer {
    /// Starts `program args…` with `env` added, in `dir`, and waits (up to `timeout`) for the
    /// stdout line `{prefix}ADDR`. Its later stdout lines are kept for [`ChildServer::ask`].
    pub fn spawn(
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        dir: &Path,
        prefix: &str,
        timeout: Duration,
    ) -> anyhow::Result<ChildServer> {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("start {}", program.display()))?;
        let pid = child.id();
        let stdin = child.stdin.take().context("take the child's stdin")?;
        let stdout = child.stdout.take().context("take the child's stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = ChildServer {
            child,
            stdin,
            lines: rx,
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let line = server
            .wait_line(prefix, timeout)
            .with_context(|| format!("wait for {} to print its address", program.display()))?;
        let addr = line.trim_end_matches('/');
        server.addr = addr
            .parse()
            .with_context(|| format!("parse the address {addr:?}"))?;
        Ok(server)
    }

    /// Sends `request` on the child's stdin and returns the rest of its first stdout line
    /// that starts with `prefix`.
    pub fn ask(&mut self, request: &str, prefix: &str) -> anyhow::Result<String> {
        writeln!(self.stdin, "{request}").context("write to the child")?;
        self.stdin.flush().context("write to the child")?;
        self.wait_line(prefix, Duration::from_secs(10))
    }

    fn wait_line(&self, prefix: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .with_context(|| format!("no line starting with {prefix:?}"))?;
            if let Some(rest) = line.trim().strip_prefix(prefix) {
                return Ok(rest.to_owned());
            }
        }
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Resident set size (`VmRSS`), bytes.
    pub rss: u64,
    /// Its anonymous part (`RssAnon`: heap and stacks), bytes.
    pub anon: u64,
    /// Live heap bytes, when the process counts them.
    pub heap: Option<u64>,
}

/// Reads the memory of process `pid`.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        let kb: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("parse {line:?}"))?;
        Ok(kb * 1024)
    };
    Ok(Memory {
        rss: field("VmRSS:")?,
        anon: field("RssAnon:")?,
        heap: None,
    })
}

/// CPU time (user + system) process `pid` has used so far.
pub fn cpu(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("parse /proc/<pid>/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .context("short /proc/<pid>/stat")?
            .parse()
            .context("parse a CPU time")
    };
    // Linux reports clock ticks of 1/100 s (USER_HZ) on every platform it runs on.
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

/// Waits until process `pid` uses less than `share` of one core over a `window`, or `max`
/// has passed; returns how long it waited.
pub async fn wait_idle(
    pid: u32,
    share: f64,
    window: Duration,
    max: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let before = cpu(pid)?;
        tokio::time::sleep(window).await;
        let used = cpu(pid)?.saturating_sub(before);
        if used.as_secs_f64() < share * window.as_secs_f64() || started.elapsed() >= max {
            return Ok(started.elapsed());
        }
    }
}

/// The soft limit on open files of this process.
pub fn open_files_limit() -> anyhow::Result<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").context("read /proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no open-files line in /proc/self/limits")?;
    let soft = line
        .split_whitespace()
        .nth(3)
        .context("parse the open-files limit")?;
    if soft == "unlimited" {
        return Ok(u64::MAX);
    }
    soft.parse().context("parse the open-files limit")
}

/// Fails unless this process may open `needed` more files.
pub fn check_open_files(needed: u64) -> anyhow::Result<()> {
    let limit = open_files_limit()?;
    if needed + 64 > limit {
        bail!(
            "this run needs about {} open files but the limit is {limit}; raise `ulimit -n` \
             (the hard limit on this machine is 20,000) or use fewer clients",
            needed + 64
        );
    }
    Ok(())
}

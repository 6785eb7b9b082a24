//! Helpers shared by the test modules: temporary directories, callers, command builders, the
//! child-process entry point that crash tests re-execute this test binary into, and the
//! watchdog that kills a hung child.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use lectern_model::{Caller, Command, CommandBody, CommandId, DocId, Role, SessionId};

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty directory under the system temp dir.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("lectern-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    /// Removes the directory, unless `LECTERN_KEEP_TEST_DIRS` is set (to read a node's log
    /// after a run: a run's directories are named after the test and the process id).
    fn drop(&mut self) {
        if std::env::var_os("LECTERN_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The cohort every helper caller belongs to.
pub const COHORT: &str = "c1";

/// A caller of `role` in [`COHORT`].
pub fn caller(user: &str, role: Role) -> Caller {
    Caller {
        user: user.parse().expect("valid user id"),
        name: format!("User {user}"),
        role,
        cohorts: vec![COHORT.parse().expect("valid cohort id")],
    }
}

/// A command.
pub fn cmd(id: &str, body: CommandBody) -> Command {
    Command {
        id: id.parse::<CommandId>().expect("valid command id"),
        body,
    }
}

/// The session document `session/{id}`.
pub fn session(id: &str) -> DocId {
    DocId::Session(id.parse::<SessionId>().expect("valid session id"))
}

/// `session.create` in [`COHORT`].
pub fn create_session(title: &str) -> CommandBody {
    CommandBody::SessionCreate {
        cohort: COHORT.parse().expect("valid cohort id"),
        title: title.into(),
        moderation: false,
    }
}

/// `qa.ask`.
pub fn ask(text: &str) -> CommandBody {
    CommandBody::QaAsk {
        text: text.into(),
        anonymous: false,
    }
}

/// The environment variable that turns this test binary into a child process for crash tests.
pub const CHILD_ENV: &str = "LECTERN_TEST_CHILD";

/// Starts this test binary again as a child running `role` (see [`crate::durability`]), with
/// `dir` as its data directory and stdout piped.
pub fn spawn_child(role: &str, dir: &Path) -> std::process::Child {
    let exe = std::env::current_exe().expect("the test binary's path");
    std::process::Command::new(exe)
        .args([
            "--exact",
            "durability::child_entrypoint",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, role)
        .env("LECTERN_TEST_CHILD_DIR", dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn the child process")
}

/// The runtime of a re-executed child process (a node a test SIGKILLs): two workers, like the
/// machine, with IO and timers.
pub fn child_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a child process's runtime")
}

/// Kills a child process with SIGKILL if it outlives `after`, so that a hung child fails its
/// test instead of hanging it. Dropping the watchdog disarms it (the sender's drop wakes the
/// waiting thread with `Disconnected`).
///
/// On Linux the child is addressed through a pidfd opened when the watchdog is armed (while the
/// child is still ours and unreaped), so a watchdog that fires late can only ever signal that
/// process: once it is reaped, its pid may belong to an unrelated process, but the pidfd does
/// not follow the pid. Elsewhere it falls back to `kill(pid)`, disarmed by the drop.
pub struct Watchdog(#[allow(dead_code)] mpsc::Sender<()>);

impl Watchdog {
    /// Arms a watchdog for the child with process id `pid` (call it right after spawning, before
    /// the child can have been reaped).
    pub fn arm(pid: u32, after: Duration) -> Watchdog {
        let target = KillTarget::open(pid);
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if rx.recv_timeout(after) == Err(mpsc::RecvTimeoutError::Timeout) {
                target.kill();
            }
        });
        Watchdog(tx)
    }
}

/// What a [`Watchdog`] signals: a pidfd where the kernel has them, else the bare pid.
enum KillTarget {
    #[cfg(target_os = "linux")]
    PidFd(std::os::fd::OwnedFd),
    Pid(i32),
    Nothing,
}

impl KillTarget {
    fn open(pid: u32) -> KillTarget {
        let Ok(pid) = i32::try_from(pid) else {
            return KillTarget::Nothing;
        };
        #[cfg(target_os = "linux")]
        {
            #[allow(unsafe_code)]
            // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1;
            // it touches no memory of ours.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            if let Ok(fd) = i32::try_from(fd)
                && fd >= 0
            {
                use std::os::fd::FromRawFd;
                #[allow(unsafe_code)]
                // SAFETY: `fd` is a descriptor the kernel just created for us and nothing else
                // owns; the OwnedFd closes it once.
                return KillTarget::PidFd(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
            }
        }
        KillTarget::Pid(pid)
    }

    fn kill(&self) {
        match self {
            #[cfg(target_os = "linux")]
            KillTarget::PidFd(fd) => {
                use std::os::fd::AsRawFd;
                #[allow(unsafe_code)]
                // SAFETY: pidfd_send_signal(2) with a pidfd we own, a valid signal, no siginfo
                // (null) and no flags; it touches no memory of ours.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd.as_raw_fd(),
                        libc::SIGKILL,
                        std::ptr::null::<libc::siginfo_t>(),
                        0u32,
                    );
                }
            }
            KillTarget::Pid(pid) => {
                #[allow(unsafe_code)]
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe {
                    libc::kill(*pid, libc::SIGKILL);
                }
            }
            KillTarget::Nothing => {}
        }
    }
}

/// A child process that is killed (SIGKILL) and reaped when dropped unless it was reaped
/// already, so that a test failing half-way leaves no child running.
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;

    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // `Child` knows whether it was reaped: it never signals a pid it has waited for.
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs `tests/js/{script}` with Node.js and `env`, within `timeout` (then SIGKILLed); the last
/// JSON line it printed, and whether it exited successfully. Fails, saying why, when
/// `scripts/setup` has not installed the npm packages.
pub async fn run_js(
    script: &str,
    args: &[String],
    env: &[(&str, &std::ffi::OsStr)],
    timeout: Duration,
) -> anyhow::Result<(serde_json::Value, bool)> {
    use anyhow::Context;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("js");
    anyhow::ensure!(
        dir.join("node_modules/socket.io-client/package.json")
            .is_file(),
        "{} has no socket.io-client: run scripts/setup (it runs `npm ci --prefix tests/js`) \
         before the tests",
        dir.join("node_modules").display()
    );
    let mut command = std::process::Command::new("node");
    command
        .arg(dir.join(script))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let child = command
        .spawn()
        .context("run `node` (Node.js 20 must be on PATH; see scripts/setup)")?;
    let pid = child.id();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output());
    let output = match tokio::time::timeout(timeout, output).await {
        Ok(joined) => joined
            .context("join the waiting thread")?
            .context("wait for node")?,
        Err(_) => {
            let pid = i32::try_from(pid).context("pid fits an i32")?;
            #[allow(unsafe_code)]
            // SAFETY: kill(2) with a pid we spawned and a valid signal has no memory effects.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            anyhow::bail!("{script} did not finish within {timeout:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| {
            format!(
                "{script} printed no summary (status {}); stdout: {stdout}; stderr: {stderr}",
                output.status
            )
        })?;
    let summary = serde_json::from_str(line).with_context(|| format!("parse {line}"))?;
    if !output.status.success() {
        eprintln!("{script} failed ({}); stderr: {stderr}", output.status);
    }
    Ok((summary, output.status.success()))
}

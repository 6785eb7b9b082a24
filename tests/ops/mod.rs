//! Operating a node with the `lectern` binary itself: each test starts real nodes (in-process,
//! real sockets, a real store, the test kit's SMTP server) and runs the command as an operator
//! would, checking its output, its `--json` and its exit code.
//!
//! * `admin_listener`: `/metrics` and `/admin/*` on a private listener (`admin_http`), hidden
//!   from the public one.
//! * `cli`: `--json` on every command, the exit codes in `--help`, shell completions.
//! * `counters`: resumes and refused resumes on every transport, document loads and content
//!   revalidations move their counters on a real node.
//! * `error_tracking`: a `lectern-node` process with `error_tracking.dsn` sends a forced error
//!   and a task's panic to a local HTTP endpoint, with tokens and secrets redacted.
//! * `flags`: `lectern flags set|unset|list`: a flag set on one node of a real cluster is in
//!   force on the others (a classroom node too) within 2 s, refused with `feature_disabled` on
//!   REST and Socket.IO, shown by `GET /api/flags`; a cohort flag wins; unset restores; a
//!   classroom node held to a scope receives the flags but cannot change them.
//! * `jobs`: `lectern jobs list|show|retry|drop`: a dead-lettered email re-driven and delivered
//!   exactly once, a job that is running refused as busy, a dropped job never sent, and the
//!   errors an operator meets (wrong token, no admin API, no such job, no node).
//! * `migrate`: `lectern store migrate` down to schema 1 and up again on a stopped node's
//!   store: refused (exit 8) while the flags document is there, idempotent, a node of this
//!   build names the command for an older store, nothing lost.
//! * `park`: emails wait, parked, for a mail server that cannot be reached, and go out once
//!   when it is back; a parking period that ends dead-letters them.
//! * `prometheus`: the alert rules pass `promtool test rules`, and every metric they and the
//!   Grafana dashboard use is exported by a real node.
//! * `trust`: one token key per cluster, carried by every node's bundle.

mod admin_listener;
mod backup;
mod cli;
mod content;
mod counters;
mod docs;
mod drain;
mod error_tracking;
mod flags;
mod jobs;
mod migrate;
mod park;
mod prometheus;
mod trust;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::Context;
use serde_json::Value;

/// [`crate::gateway::within`] for tests that run the `lectern` binary: the binary is built first
/// (once per test run), outside the time limit, which is for the test's own work; a build on a
/// loaded 2-core machine can take minutes.
pub async fn within<T>(
    body: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(lectern_bin).await??;
    crate::gateway::within(body).await
}

/// The `lectern` binary, built once per test run with the same profile as this test binary
/// (cargo builds a test's own package's binaries only; the operator's command lives in
/// `lectern-cli`).
pub fn lectern_bin() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| build_lectern().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The `lectern-node` binary, built once per test run like [`lectern_bin`] (for tests of what
/// only its `main` does: error tracking, the log subscriber).
pub fn node_bin() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| build_bin("lectern-node", "lectern-node").map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_lectern() -> anyhow::Result<PathBuf> {
    build_bin("lectern-cli", "lectern")
}

fn build_bin(package: &str, bin_name: &str) -> anyhow::Result<PathBuf> {
    // This test binary is `target/{profile}/deps/lectern-…`.
    let exe = std::env::current_exe().context("find the test binary")?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("the test binary is not under target/{profile}/deps")?
        .to_path_buf();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the tests crate sits in the workspace")?
        .to_path_buf();
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .current_dir(&workspace)
        .args(["build", "--quiet", "-p", package, "--bin", bin_name]);
    if release {
        cargo.arg("--release");
    }
    let status = cargo
        .status()
        .with_context(|| format!("run cargo build for {bin_name}"))?;
    anyhow::ensure!(
        status.success(),
        "cargo build -p {package} failed: {status}"
    );
    let bin = profile_dir.join(bin_name);
    anyhow::ensure!(bin.is_file(), "{} was not built", bin.display());
    Ok(bin)
}

/// What one run of `lectern` did.
#[derive(Debug)]
pub struct Run {
    /// The exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Stdout as JSON (a `--json` run).
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.stdout).with_context(|| format!("stdout is not JSON: {self:?}"))
    }

    /// Asserts the exit code; returns self for more checks.
    pub fn expect_code(self, code: i32) -> anyhow::Result<Run> {
        anyhow::ensure!(self.code == code, "expected exit {code}: {self:?}");
        Ok(self)
    }
}

/// Runs `lectern ARGS` (off the async runtime's threads) with a clean environment for the
/// variables it reads.
pub async fn lectern(args: &[&str]) -> anyhow::Result<Run> {
    let bin = lectern_bin()?;
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let shown = args.join(" ");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args(&args)
            .env_remove("LECTERN_ADMIN_TOKEN")
            .env_remove("LECTERN_ADMIN_HTTP")
            .output()
    })
    .await?
    .with_context(|| format!("run lectern {shown}"))?;
    Ok(Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

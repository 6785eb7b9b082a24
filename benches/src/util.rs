//! Helpers every benchmark shares: a scratch directory that deletes itself, medians and
//! percentiles, and number formatting for the human summaries.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;

/// A fresh directory under `std::env::temp_dir()`, removed (with everything in it) on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `lectern-bench-{what}-{pid}-{nanos}`; fails rather than reuse an existing one.
    pub fn new(what: &str) -> anyhow::Result<TempDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "lectern-bench-{what}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir(&path)
            .with_context(|| format!("create scratch directory {}", path.display()))?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!(
                "lectern-bench: could not remove {}: {e}",
                self.path.display()
            );
        }
    }
}

/// The median of `xs` (mean of the middle two for an even count); 0 for none.
pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The nearest-rank `p`-quantile (0 < p ≤ 1) of an ascending slice; 0 for none.
pub fn quantile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Milliseconds as a float, for summaries.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Bytes in KiB or MiB, whichever reads better.
pub fn bytes(n: f64) -> String {
    if n.abs() >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", n / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", n / 1024.0)
    }
}

/// A token for `user` with `role` in `cohort`, valid for a day, signed with `secret` (what the
/// benchmarks' clients connect with).
pub fn token(secret: &[u8], user: &str, role: &str, cohort: &str) -> anyhow::Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = lectern_gateway::auth::Claims {
        sub: user.into(),
        name: user.into(),
        role: role.into(),
        cohorts: vec![cohort.into()],
        exp: now + 24 * 3600,
        iat: now,
        nbf: None,
    };
    lectern_gateway::auth::mint(secret, &claims).context("mint a token")
}

//! The alert rules and the dashboard against the real thing: `promtool test rules` passes on
//! the rules' fixtures, and every metric name the rules, the Grafana dashboard and README's
//! metrics table use is exported by a real node of a two-node mesh (so a renamed metric cannot silently disarm an
//! alert), with the process gauges reading sensible values.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use lectern_node::Config;
use lectern_testkit::Http;

use crate::gateway::within;
use crate::support::TempDir;

/// Metric names Prometheus makes itself (not exported by a node).
const PROMETHEUS_OWN: [&str; 1] = ["up"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `promtool`, installed by scripts/setup (Debian's `prometheus` package).
fn promtool() -> anyhow::Result<PathBuf> {
    ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("promtool is not installed: run scripts/setup (it installs Debian's prometheus)")
}

/// Every `lectern_*` and `process_*` metric name (and `up`) in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut rest = text;
    while let Some(at) = rest.find(|c: char| c.is_ascii_alphabetic()) {
        rest = &rest[at..];
        let end = rest.find(|c: char| !is_name(c)).unwrap_or(rest.len());
        let word = &rest[..end];
        if word.starts_with("lectern_") || word.starts_with("process_") {
            names.insert(word.to_owned());
        }
        rest = &rest[end..];
        // Skip the rest of a word that started with a digit or a symbol.
        let skip = rest.find(|c: char| !is_name(c)).unwrap_or(rest.len());
        rest = &rest[skip..];
    }
    names
}

/// Whether a scrape exports `name` (a sample, or a declared family; `_bucket`/`_sum`/`_count`
/// of a declared histogram).
fn exported(scrape: &str, name: &str) -> bool {
    let declared = |n: &str| {
        scrape
            .lines()
            .any(|l| l.starts_with(&format!("# TYPE {n} ")))
    };
    let sampled = scrape
        .lines()
        .any(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")));
    let histogram_part = ["_bucket", "_sum", "_count"].iter().any(|suffix| {
        name.strip_suffix(suffix).is_some_and(|base| {
            scrape
                .lines()
                .any(|l| l == format!("# TYPE {base} histogram"))
        })
    });
    sampled || declared(name) || histogram_part
}

#[test]
fn promtool_passes_the_alert_rules_on_their_fixtures() -> anyhow::Result<()> {
    let dir = repo().join("deploy/prometheus");
    let check = Command::new(promtool()?)
        .current_dir(&dir)
        .args(["check", "rules", "lectern-rules.yml"])
        .output()?;
    anyhow::ensure!(check.status.success(), "{check:?}");
    let test = Command::new(promtool()?)
        .current_dir(&dir)
        .args(["test", "rules", "lectern-rules.test.yml"])
        .output()?;
    let out = String::from_utf8_lossy(&test.stdout);
    anyhow::ensure!(
        test.status.success() && out.contains("SUCCESS"),
        "promtool test rules failed:\n{out}\n{}",
        String::from_utf8_lossy(&test.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_rules_and_the_dashboard_use_is_exported_by_a_real_node() {
    within(async {
        let rules = std::fs::read_to_string(repo().join("deploy/prometheus/lectern-rules.yml"))?;
        let dashboard =
            std::fs::read_to_string(repo().join("deploy/grafana/lectern-dashboard.json"))?;
        let _: serde_json::Value =
            serde_json::from_str(&dashboard).context("the dashboard is JSON")?;
        let mut wanted = metric_names(&rules);
        wanted.extend(metric_names(&dashboard));
        // Every metric README's table names, too (what an operator reads about must exist).
        let readme = std::fs::read_to_string(repo().join("README.md"))?;
        let table = readme
            .split_once("### Metrics, alerts and the dashboard")
            .and_then(|(_, rest)| rest.split_once("Not measured yet"))
            .map(|(table, _)| table)
            .context("README's metrics section")?;
        let named = metric_names(table);
        for family in [
            "lectern_documents_loads_total",
            "lectern_documents_evictions_total",
            "lectern_reconnects_total",
            "lectern_resumes_total",
            "lectern_resumes_refused_total",
            "lectern_content_not_modified_total",
            "lectern_content_reads_total",
        ] {
            assert!(named.contains(family), "README names {family}");
        }
        wanted.extend(named);
        // The rules cover what the checklist asks for: if a family drops out of the rules, this
        // list says so.
        for family in [
            "lectern_delivery_latency_seconds_bucket",
            "lectern_connection_failures_total",
            "lectern_connections_opened_total",
            "lectern_rejections_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "lectern_mesh_peers",
            "lectern_jobs_oldest_due_seconds",
            "lectern_jobs_parked",
        ] {
            assert!(wanted.contains(family), "the rules use {family}");
        }

        let dir = TempDir::new("ops-prometheus");
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            http: "127.0.0.1:0".parse()?,
            demo: true,
            ..Config::default()
        };
        config.mesh.listen = "127.0.0.1:0".parse()?;
        let cluster = lectern_node::start_demo_cluster(config, 2).await?;
        // The second node dials the first: it has a configured peer, so its mesh series exist.
        let node = &cluster[1].1;
        let mesh = node.mesh.clone().context("a mesh")?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while mesh.connected_peers().is_empty() {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the peers never connected"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let scrape = Http::new(node.http_addr)
            .get("/metrics", None)
            .await?
            .text();
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|n| !PROMETHEUS_OWN.contains(&n.as_str()) && !exported(&scrape, n))
            .collect();
        assert!(missing.is_empty(), "not exported: {missing:?}\n{scrape}");

        // The exposition is valid Prometheus text.
        let mut lint = Command::new(promtool()?)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        {
            use std::io::Write;
            let mut stdin = lint.stdin.take().context("promtool's stdin")?;
            stdin.write_all(scrape.as_bytes())?;
        }
        let lint = lint.wait_with_output()?;
        let problems = String::from_utf8_lossy(&lint.stderr).into_owned()
            + &String::from_utf8_lossy(&lint.stdout);
        assert!(
            !problems.contains("error while linting"),
            "promtool check metrics: {problems}"
        );

        // The process gauges read the real process.
        let value = |name: &str| -> anyhow::Result<f64> {
            scrape
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .with_context(|| format!("{name} in the scrape"))?
                .trim()
                .parse::<f64>()
                .with_context(|| format!("{name}'s value"))
        };
        let rss = value("process_resident_memory_bytes")?;
        assert!(rss > 1e6, "RSS {rss}");
        let (fds, max) = (value("process_open_fds")?, value("process_max_fds")?);
        assert!(fds > 0.0 && max > fds, "fds {fds} of {max}");
        for (_, node) in cluster {
            node.stop().await?;
        }
        Ok(())
    })
    .await
    .unwrap();
}

/// Every alert names a runbook that exists, and every link between runbooks resolves.
#[test]
fn every_alert_names_a_runbook_that_exists() -> anyhow::Result<()> {
    let rules = std::fs::read_to_string(repo().join("deploy/prometheus/lectern-rules.yml"))?;
    let named: BTreeSet<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook:"))
        .map(str::trim)
        .collect();
    let alerts = rules
        .lines()
        .filter(|l| l.trim().starts_with("- alert:"))
        .count();
    let with_runbook = rules
        .lines()
        .filter(|l| l.trim().starts_with("runbook:"))
        .count();
    assert_eq!(alerts, with_runbook, "an alert without a runbook");
    assert!(!named.is_empty());
    for path in &named {
        assert!(
            repo().join(path).is_file(),
            "{path} is named by an alert but missing"
        );
    }
    let dir = repo().join("docs/runbooks");
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?;
        for link in text.split("](").skip(1) {
            let target = link.split(')').next().unwrap_or_default();
            if target.ends_with(".md") && !target.contains("://") {
                assert!(
                    dir.join(target).is_file(),
                    "{} links to {target}, which is missing",
                    path.display()
                );
            }
        }
    }
    Ok(())
}

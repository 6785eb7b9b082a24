//! The `lectern` command as a whole: every command answers `--json` with one JSON document
//! (failures included), `--help` lists the exit codes, and `lectern completions` prints scripts
//! that complete its commands (bash's is run in bash).

use anyhow::Context;
use lectern_node::Config;

use super::within;
use super::{Run, lectern};
use crate::support::TempDir;

const ADMIN_TOKEN: &str = "an-admin-token-for-the-cli-test";

/// `lectern --json ARGS`, which must succeed with a JSON document.
async fn json_ok(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let run: Run = lectern(&all).await?.expect_code(0)?;
    run.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_answers_json() {
    within(async {
        let dir = TempDir::new("ops-cli-json");
        let data = dir.path().join("node");
        let node = lectern_node::start(Config {
            data_dir: data.clone(),
            http: "127.0.0.1:0".parse()?,
            admin_token: Some(ADMIN_TOKEN.to_owned()),
            demo: true,
            ..Config::default()
        })
        .await?;
        let http = node.http_addr.to_string();
        let admin = ["--http", http.as_str(), "--admin-token", ADMIN_TOKEN];

        let health = json_ok(&["health", "--http", &http]).await?;
        assert_eq!(health["status"], "ok", "{health}");
        let status = json_ok(&[&["status"][..], &admin].concat()).await?;
        assert!(status["nodeId"].is_string(), "{status}");
        let peers = json_ok(&[&["peers"][..], &admin].concat()).await?;
        assert!(peers["peers"].is_array(), "{peers}");
        let jobs = json_ok(&[&["jobs", "list"][..], &admin].concat()).await?;
        assert_eq!(jobs["counts"]["dead"], 0, "{jobs}");
        let data_dir = data.display().to_string();
        let token = json_ok(&[
            "token",
            "mint",
            "--user",
            "u1",
            "--role",
            "student",
            "--cohort",
            "c1",
            "--data-dir",
            &data_dir,
        ])
        .await?;
        assert!(
            token["token"]
                .as_str()
                .is_some_and(|t| t.split('.').count() == 3),
            "{token}"
        );
        let ca = dir.path().join("ca").display().to_string();
        let made = json_ok(&["cluster", "init", "--out", &ca]).await?;
        assert_eq!(made["ca"], ca.as_str());
        let issued_dir = dir.path().join("n1").display().to_string();
        let issued = json_ok(&[
            "cluster",
            "issue-node",
            "--id",
            "n1",
            "--ca",
            &ca,
            "--out",
            &issued_dir,
        ])
        .await?;
        assert_eq!(issued["node"], "n1");
        assert_eq!(issued["renewed"], false);
        let serial = issued["serial"].as_str().unwrap_or_default().to_owned();
        // Renewed in place: another serial, same files; then revoked by name.
        let renewed = json_ok(&[
            "cluster",
            "issue-node",
            "--id",
            "n1",
            "--ca",
            &ca,
            "--out",
            &issued_dir,
            "--renew",
            "--valid-days",
            "7",
        ])
        .await?;
        assert_eq!(renewed["renewed"], true);
        assert_ne!(renewed["serial"], serial.as_str());
        // 30 days (the default) against 7: 23 days apart, give or take the seconds between.
        let shorter = issued["notAfterS"].as_u64().unwrap_or_default()
            - renewed["notAfterS"]
                .as_u64()
                .unwrap_or(u64::MAX / 2)
                .min(u64::MAX / 2);
        assert!(shorter.abs_diff(23 * 86_400) < 120, "{issued} vs {renewed}");
        lectern_mesh::NodeTls::load(std::path::Path::new(&issued_dir))?;
        let too_long = lectern(&[
            "--json",
            "cluster",
            "issue-node",
            "--id",
            "n2",
            "--ca",
            &ca,
            "--out",
            &issued_dir,
            "--valid-days",
            "400",
        ])
        .await?;
        too_long
            .expect_code(2)
            .context("validity is capped at 397 days")?;
        let revoked = json_ok(&["cluster", "revoke", "--ca", &ca, "--id", "n1"]).await?;
        let listed: Vec<&str> = revoked["revoked"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        assert_eq!(listed.len(), 2, "both certificates of n1: {revoked}");
        assert!(listed.contains(&serial.as_str()));
        let crl = std::fs::read_to_string(revoked["crl"].as_str().unwrap_or_default())?;
        assert_eq!(lectern_mesh::tls::parse_crls(&crl)?.len(), 1);
        // The node's own directory with that list beside it: its own certificate is revoked,
        // which the node still accepts as the CA's list.
        std::fs::write(
            std::path::Path::new(&issued_dir).join(lectern_mesh::tls::CRL_FILE),
            &crl,
        )?;
        let tls = lectern_mesh::NodeTls::load(std::path::Path::new(&issued_dir))?;
        assert_eq!(tls.crls().len(), 1);
        let completions = json_ok(&["completions", "bash"]).await?;
        assert!(
            completions["script"]
                .as_str()
                .is_some_and(|s| s.contains("_lectern"))
        );

        // store-info reads a stopped node's store; on a running one it says to stop it first.
        let busy = lectern(&["--json", "store-info", "--data-dir", &data_dir])
            .await?
            .expect_code(1)?;
        let busy = busy.json()?;
        assert!(
            busy["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("stop the node"),
            "{busy}"
        );
        node.stop().await?;
        let info = json_ok(&["store-info", "--data-dir", &data_dir]).await?;
        assert!(
            info["documents"].as_array().is_some_and(|d| !d.is_empty()),
            "{info}"
        );
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_lists_the_exit_codes_and_bash_completes_the_commands() {
    within(async {
        let help = lectern(&["--help"]).await?.expect_code(0)?;
        for code in ["3 the node cannot be reached", "5 not found", "6 busy"] {
            assert!(help.stdout.contains(code), "{code}: {}", help.stdout);
        }

        let dir = TempDir::new("ops-cli-completions");
        let script = lectern(&["completions", "bash"])
            .await?
            .expect_code(0)?
            .stdout;
        let file = dir.path().join("lectern.bash");
        std::fs::write(&file, script)?;
        // What bash does on `lectern jobs re<TAB>` and `lectern com<TAB>`.
        let complete = |words: &'static str, cword: usize| {
            let file = file.clone();
            async move {
                let out = tokio::task::spawn_blocking(move || {
                    std::process::Command::new("bash")
                        .arg("-c")
                        .arg(format!(
                            "source '{}'; COMP_WORDS=({words}); COMP_CWORD={cword}; \
                             _lectern lectern \"${{COMP_WORDS[$COMP_CWORD]}}\" \
                             \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; echo \"${{COMPREPLY[@]}}\"",
                            file.display()
                        ))
                        .output()
                })
                .await??;
                anyhow::Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            }
        };
        let jobs = complete("lectern jobs re", 2).await?;
        assert!(jobs.split_whitespace().any(|w| w == "retry"), "{jobs:?}");
        let top = complete("lectern com", 1).await?;
        assert!(
            top.split_whitespace().any(|w| w == "completions"),
            "{top:?}"
        );
        // zsh and fish get theirs (their shells are not installed here to run them).
        for shell in ["zsh", "fish"] {
            let script = lectern(&["completions", shell])
                .await?
                .expect_code(0)?
                .stdout;
            for word in ["jobs", "retry", "completions", "admin-token"] {
                assert!(script.contains(word), "{shell}: {word}");
            }
        }
        lectern(&["completions", "tcsh"]).await?.expect_code(2)?;
        Ok(())
    })
    .await
    .unwrap();
}

//! The `[notify]` configuration: file, environment, validation with the key named.

use lectern_node::config::Config;

use crate::support::TempDir;

/// Loads `text` as the config file, with `env` as the environment.
fn load(text: &str, env: &[(&str, &str)]) -> anyhow::Result<Config> {
    let dir = TempDir::new("notify-config");
    crate::config::load(&crate::config::write_file(dir.path(), text), env)
}

#[test]
fn smtp_settings_come_from_the_file_and_the_environment_overrides_them() {
    let file = r#"
[notify]
from = "Course <course@uni.example>"
email_domain = "@students.uni.example"
attempts_max = 3
leaderboard_interval_ms = 1000

[notify.smtp]
host = "smtp.uni.example"
tls = "tls"
username = "lectern"
password = "pw"
"#;
    let c = load(file, &[]).expect("loads");
    let smtp = c.notify.smtp.clone().expect("smtp");
    assert_eq!(smtp.host, "smtp.uni.example");
    assert_eq!(smtp.port, 465, "the port follows the TLS mode");
    assert_eq!(smtp.tls, lectern_jobs::TlsMode::Tls);
    assert_eq!(smtp.username.as_deref(), Some("lectern"));
    assert_eq!(
        c.notify.email_domain.as_deref(),
        Some("students.uni.example")
    );
    assert_eq!(c.notify.attempts_max, 3);
    assert_eq!(c.notify.leaderboard_interval_ms, 1000);

    let c = load(
        file,
        &[
            ("LECTERN_SMTP_HOST", "relay.local"),
            ("LECTERN_SMTP_TLS", "none"),
            ("LECTERN_SMTP_PORT", "2525"),
        ],
    )
    .expect("loads");
    let smtp = c.notify.smtp.expect("smtp");
    assert_eq!((smtp.host.as_str(), smtp.port), ("relay.local", 2525));
    assert_eq!(smtp.tls, lectern_jobs::TlsMode::None);
}

#[test]
fn bad_notify_values_are_errors_naming_the_key() {
    for (text, key) in [
        (
            "[notify.smtp]\nhost = \"smtp.x\"\ntls = \"ssl3\"\n",
            "notify.smtp.tls",
        ),
        ("[notify]\ndigest_hour_utc = 24\n", "notify.digest_hour_utc"),
        ("[notify]\nfrom = \"nobody\"\n", "notify.from"),
        ("[notify]\nworkers = 0\n", "notify.workers"),
        (
            "[notify]\nemail_domain = \"no dots\"\n",
            "notify.email_domain",
        ),
        ("[notify]\nsmtp_host = \"x\"\n", "smtp_host"),
    ] {
        let err = format!("{:#}", load(text, &[]).expect_err(text));
        assert!(err.contains(key), "{text}: {err}");
    }
    let err = format!(
        "{:#}",
        load("", &[("LECTERN_SMTP_HOST", "a b")]).expect_err("a bad host")
    );
    assert!(err.contains("LECTERN_SMTP_HOST"), "{err}");
}

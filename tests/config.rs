//! The node's configuration: layers override in the documented order (file < environment <
//! flags), a typo or a bad value is an error that names the key and its source, and the
//! generated HS256 secret is created once, privately, and read back unchanged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use lectern_node::config::{Config, Overrides, keys};

use crate::support::TempDir;

/// Writes `text` as `lectern.toml` in `dir` and returns its path.
pub(crate) fn write_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("lectern.toml");
    std::fs::write(&path, text).expect("write the test config file");
    path
}

/// Loads with `file` and the given environment (and no flags).
pub(crate) fn load(file: &Path, env: &[(&str, &str)]) -> anyhow::Result<Config> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Config::load(
        Overrides {
            config_file: Some(file.to_owned()),
            ..Overrides::default()
        },
        &|k| env.get(k).cloned(),
    )
}

/// The error of a load that must fail, as printed (`{:#}`, with its context chain).
fn load_err(file: &Path, env: &[(&str, &str)]) -> String {
    match load(file, env) {
        Ok(c) => panic!("config loaded: {c:?}"),
        Err(e) => format!("{e:#}"),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test addresses are valid")
}

#[test]
fn defaults_are_the_documented_ones() {
    let dir = TempDir::new("config-defaults");
    let c = load(&write_file(dir.path(), ""), &[]).expect("an empty file is valid");
    assert_eq!(c.data_dir, PathBuf::from("./lectern-data"));
    assert_eq!(c.http, addr("127.0.0.1:8080"));
    assert_eq!(c.public_url, None);
    assert!(!c.demo);
    assert_eq!(c.auth.hs256_secret, None);
    assert_eq!(c.auth.leeway_s, 30);
    assert_eq!(c.limits.commands_per_s, 10.0);
    assert_eq!(c.limits.command_burst, 20);
    assert_eq!(c.limits.payload_max_bytes, 16 * 1024);
    assert_eq!(c.limits.outbound_queue_max, 256);
    assert_eq!(c.limits.conns_max, 16_000);
    assert_eq!(c.limits.conns_per_user_max, 16);
}

#[test]
fn the_sample_file_is_valid_and_states_the_defaults() {
    // deploy/lectern.toml documents every key with its default, uncommented; loading it must
    // give exactly the defaults, or the sample is lying.
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/lectern.toml");
    let from_sample = load(&sample, &[]).expect("deploy/lectern.toml loads");
    let default = Config::default();
    assert_eq!(format!("{from_sample:?}"), format!("{default:?}"));
}

#[test]
fn mesh_settings_from_file_env_and_flags_with_checked_values() {
    let dir = TempDir::new("config-mesh");
    let file = write_file(
        dir.path(),
        r#"
[mesh]
name = "sydney-1"
region = "apac"
listen = "0.0.0.0:7401"
tls_dir = "/etc/lectern/tls"
peers = ["berlin-1@10.0.0.2:7400"]
share_cohorts = ["c1"]
push_coalesce_ms = 5
resume_wait_ms = 4000
"#,
    );
    let env: HashMap<&str, &str> = HashMap::from([
        (
            "LECTERN_MESH_PEERS",
            "berlin-1@10.0.0.2:7400, tokyo-1@10.0.0.3:7400",
        ),
        ("LECTERN_ADMIN_TOKEN", "an admin token of 32 bytes......"),
        ("LECTERN_MESH_RESUME_WAIT_MS", "7500"),
    ]);
    let c = Config::load(
        Overrides {
            config_file: Some(file.clone()),
            ..Overrides::default()
        }
        .flag("region", "apac-2"),
        &|k| env.get(k).map(|v| v.to_string()),
    )
    .expect("loads");
    assert_eq!(c.mesh.name, "sydney-1");
    assert_eq!(c.mesh.region, "apac-2", "the flag wins");
    assert_eq!(c.mesh.listen.to_string(), "0.0.0.0:7401");
    assert_eq!(c.mesh.peers.len(), 2, "the environment wins over the file");
    assert_eq!(c.mesh.share_cohorts, Some(vec!["c1".to_owned()]));
    assert_eq!(c.mesh.push_coalesce_ms, 5);
    assert_eq!(
        c.mesh.resume_wait_ms, 7_500,
        "the environment wins over the file"
    );
    assert!(c.admin_token.is_some());
    let file_only = Config::load(
        Overrides {
            config_file: Some(file.clone()),
            ..Overrides::default()
        },
        &|_| None,
    )
    .expect("loads");
    assert_eq!(file_only.mesh.resume_wait_ms, 4_000);
    assert_eq!(Config::default().mesh.resume_wait_ms, 2_000);

    for (text, key) in [
        ("[mesh]\npush_coalesce_ms = 50\n", "mesh.push_coalesce_ms"),
        ("[mesh]\nresume_wait_ms = 600000\n", "mesh.resume_wait_ms"),
        ("[mesh]\npeers = [\"no-address\"]\n", "mesh.peers"),
        ("[mesh]\nname = \"Bad_Name\"\n", "mesh.name"),
        ("[mesh]\nlisten = \"nowhere\"\n", "mesh.listen"),
    ] {
        let bad = write_file(dir.path(), text);
        let err = Config::load(
            Overrides {
                config_file: Some(bad),
                ..Overrides::default()
            },
            &|_| None,
        )
        .expect_err("a bad mesh value is refused");
        assert!(format!("{err:#}").contains(key), "{err:#} names {key}");
    }
}

#[test]
fn precedence_file_then_env_then_flags() {
    let dir = TempDir::new("config-precedence");
    let file = write_file(
        dir.path(),
        r#"
data_dir = "/srv/from-file"
http = "127.0.0.1:9001"
public_url = "https://file.example/"

[auth]
leeway_s = 10

[limits]
commands_per_s = 5.5
conns_max = 100
"#,
    );
    let env: HashMap<&str, &str> = HashMap::from([
        ("LECTERN_HTTP", "127.0.0.1:9002"),
        ("LECTERN_CONNS_MAX", "200"),
        ("LECTERN_PUBLIC_URL", ""), // empty counts as unset
        ("LECTERN_AUTH_SECRET", "an env secret of 32 bytes......."),
    ]);
    let c = Config::load(
        Overrides {
            config_file: Some(file),
            ..Overrides::default()
        }
        .flag("http", "127.0.0.1:9003")
        .flag("demo", "true"),
        &|k| env.get(k).map(|v| (*v).to_owned()),
    )
    .expect("valid layers load");
    assert_eq!(
        c.http,
        addr("127.0.0.1:9003"),
        "the flag wins over env and file"
    );
    assert_eq!(c.limits.conns_max, 200, "env wins over the file");
    assert_eq!(c.limits.commands_per_s, 5.5, "the file wins over defaults");
    assert_eq!(c.data_dir, PathBuf::from("/srv/from-file"));
    assert_eq!(c.public_url.as_deref(), Some("https://file.example"));
    assert_eq!(c.auth.leeway_s, 10);
    assert_eq!(
        c.auth.hs256_secret.as_deref(),
        Some("an env secret of 32 bytes.......")
    );
    assert!(c.demo);
    assert_eq!(
        c.limits.command_burst, 20,
        "untouched keys keep their default"
    );
}

#[test]
fn unknown_keys_are_errors_naming_the_key() {
    let dir = TempDir::new("config-unknown");
    for (text, key) in [
        ("htpp = \"127.0.0.1:1\"\n", "htpp"),
        ("[limits]\nconn_max = 5\n", "conn_max"),
        ("[auth]\nsecret = \"x\"\n", "secret"),
        ("[limit]\nconns_max = 5\n", "limit"),
    ] {
        let err = load_err(&write_file(dir.path(), text), &[]);
        assert!(err.contains(key), "{key:?} not named in: {err}");
    }
}

#[test]
fn bad_values_are_errors_naming_the_key_and_source() {
    let dir = TempDir::new("config-bad");
    let file_says = |text: &str, key: &str| {
        let err = load_err(&write_file(dir.path(), text), &[]);
        // The key with its table, and the file it is in.
        assert!(err.contains(key), "{key:?} not in: {err}");
        assert!(
            err.contains("lectern.toml"),
            "the file is not named in: {err}"
        );
    };
    file_says("http = \"nope\"\n", "http in");
    file_says("[limits]\nconns_max = 0\n", "limits.conns_max in");
    file_says(
        "[limits]\ncommands_per_s = -1.0\n",
        "limits.commands_per_s in",
    );
    // A wrong type is toml's own error, which quotes the offending line.
    file_says("[limits]\ncommands_per_s = \"fast\"\n", "commands_per_s");
    file_says("[auth]\nhs256_secret = \"short\"\n", "auth.hs256_secret in");
    file_says(
        "[auth]\npublic_key_alg = \"HS256\"\n",
        "auth.public_key_alg in",
    );

    let empty = write_file(dir.path(), "");
    for (var, value) in [
        ("LECTERN_HTTP", "nope"),
        ("LECTERN_CONNS_PER_USER_MAX", "-3"),
        ("LECTERN_RATE_COMMANDS_PER_S", "0"),
        ("LECTERN_PUBLIC_URL", "ftp://x"),
        ("LECTERN_DEMO", "maybe"),
        ("LECTERN_CLASSROOM_COHORTS", "cs101,not a cohort/id"),
    ] {
        let err = load_err(&empty, &[(var, value)]);
        assert!(err.contains(var), "{var} not named in: {err}");
    }
}

#[test]
fn a_public_key_needs_its_algorithm_and_a_named_file_must_exist() {
    let dir = TempDir::new("config-pubkey");
    let file = write_file(
        dir.path(),
        "[auth]\npublic_key_pem_file = \"/etc/lms.pem\"\n",
    );
    assert!(load_err(&file, &[]).contains("public_key_alg"));
    let ok = load(&file, &[("LECTERN_AUTH_PUBLIC_KEY_ALG", "eddsa")]).expect("both set");
    assert_eq!(ok.auth.public_key_alg.as_deref(), Some("EdDSA"));

    let missing = dir.path().join("absent.toml");
    assert!(load_err(&missing, &[]).contains("absent.toml"));
}

#[test]
fn resolve_secret_creates_the_file_once_privately() {
    let dir = TempDir::new("config-secret");
    let data_dir = dir.path().join("data");
    let c = Config::load(
        Overrides {
            config_file: Some(write_file(dir.path(), "")),
            ..Overrides::default()
        }
        .flag("data-dir", data_dir.display().to_string()),
        &|_| None,
    )
    .expect("defaults load");
    let first = c.resolve_secret().expect("the secret is created");
    let second = c.resolve_secret().expect("the secret is read back");
    assert_eq!(first, second);
    assert_eq!(first.len(), 64, "32 random bytes in hex");
    assert!(first.iter().all(u8::is_ascii_hexdigit));

    let path = data_dir.join("auth-secret");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)
            .expect("the file exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(&data_dir)
        .expect("the data dir exists")
        .map(|e| e.expect("readable entry").file_name())
        .collect();
    assert_eq!(names, ["auth-secret"]);

    // A configured secret wins over the file.
    let mut configured = c.clone();
    configured.auth.hs256_secret = Some("configured secret of 32 bytes...".into());
    assert_eq!(
        configured.resolve_secret().expect("configured"),
        b"configured secret of 32 bytes...".to_vec()
    );
}

/// The path of a file of the repository.
fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[test]
fn the_sample_file_names_every_key_and_variable_of_the_table() {
    // Keys as the sample writes them, set or commented out: `[section]` headers then `key =`.
    let text = std::fs::read_to_string(repo_file("deploy/lectern.toml")).expect("read the sample");
    let mut section = String::new();
    let mut written = std::collections::HashSet::new();
    for line in text.lines() {
        let line = line.trim_start_matches(['#', ' ']);
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            section = name.to_owned();
        } else if let Some((key, _)) = line.split_once('=')
            && !key.trim().is_empty()
            && key
                .trim()
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            written.insert(if section.is_empty() {
                key.trim().to_owned()
            } else {
                format!("{section}.{}", key.trim())
            });
        }
    }
    for key in keys::KEYS {
        assert!(
            written.contains(key.file),
            "deploy/lectern.toml does not state {}",
            key.file
        );
        assert!(
            text.contains(key.env),
            "deploy/lectern.toml does not name {}",
            key.env
        );
        if let Some(flag) = key.flag {
            assert!(
                text.contains(&format!("--{flag}")),
                "deploy/lectern.toml does not name --{flag}"
            );
        }
    }
    for key in &written {
        assert!(
            keys::by_file(key).is_some(),
            "deploy/lectern.toml states unknown {key}"
        );
    }
}

#[test]
fn the_reference_is_generated_from_the_table() {
    let path = repo_file("docs/configuration.md");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == keys::reference_markdown(),
        "docs/configuration.md is stale: regenerate it with \
         `cargo run -p lectern-node -- --print-config-reference > docs/configuration.md`"
    );
    for key in keys::KEYS {
        assert!(committed.contains(key.env), "{} missing", key.env);
    }
}

#[test]
fn every_variable_and_flag_of_the_table_reaches_its_key() {
    // A value no key accepts unchanged: each variable and flag either changes the
    // configuration or is refused with an error naming it. A key the loaders forgot would
    // leave the defaults untouched and load.
    let dir = TempDir::new("config-every-key");
    let empty = write_file(dir.path(), "");
    let default = format!("{:?}", load(&empty, &[]).expect("defaults load"));
    let odd = "@@ not a value @@";
    for key in keys::KEYS {
        let mut sources = vec![(key.env.to_owned(), load(&empty, &[(key.env, odd)]))];
        if let Some(flag) = key.flag {
            let flags = Overrides {
                config_file: Some(empty.clone()),
                ..Overrides::default()
            }
            .flag(flag, odd);
            sources.push((format!("--{flag}"), Config::load(flags, &|_| None)));
        }
        for (source, loaded) in sources {
            match loaded {
                Ok(c) => assert_ne!(format!("{c:?}"), default, "{source} changed nothing"),
                Err(e) => {
                    let e = format!("{e:#}");
                    assert!(e.contains(&source) || e.contains(key.file), "{source}: {e}");
                }
            }
        }
    }
}

#[test]
fn the_gateway_limits_are_configurable_in_every_layer() {
    let dir = TempDir::new("config-gateway-limits");
    let file = write_file(
        dir.path(),
        "[limits]\nconnect_timeout_ms = 1500\noutbound_bytes_max = 65536\n",
    );
    let c = load(&file, &[("LECTERN_OUTBOUND_BYTES_MAX", "131072")]).expect("loads");
    assert_eq!(c.limits.connect_timeout_ms, 1_500);
    assert_eq!(c.limits.outbound_bytes_max, 131_072, "the environment wins");
    let err = load_err(
        &write_file(dir.path(), "[limits]\nconnect_timeout_ms = 0\n"),
        &[],
    );
    assert!(err.contains("limits.connect_timeout_ms in"), "{err}");
}

#[test]
fn the_table_names_each_key_variable_and_flag_once_with_a_valid_default() {
    let dir = TempDir::new("config-table");
    let default = format!("{:?}", Config::default());
    let (mut files, mut envs, mut flags) = (Vec::new(), Vec::new(), Vec::new());
    for key in keys::KEYS {
        assert!(!files.contains(&key.file), "{} twice", key.file);
        assert!(!envs.contains(&key.env), "{} twice", key.env);
        assert!(key.env.starts_with("LECTERN_"), "{}", key.env);
        assert!(
            !keys::is_section(key.file),
            "{} is a key and a table",
            key.file
        );
        assert!(
            !key.doc.contains('|'),
            "{}: a pipe breaks the reference's table",
            key.file
        );
        files.push(key.file);
        envs.push(key.env);
        if let Some(flag) = key.flag {
            assert!(!flags.contains(&flag), "--{flag} twice");
            flags.push(flag);
        }
        // The documented default, written in the file, loads and is the default.
        if let Some(value) = key.default {
            let text = match key.section() {
                "" => format!("{} = {value}\n", key.leaf()),
                section => format!("[{section}]\n{} = {value}\n", key.leaf()),
            };
            let c = load(&write_file(dir.path(), &text), &[])
                .unwrap_or_else(|e| panic!("{text}: {e:#}"));
            assert_eq!(
                format!("{c:?}"),
                default,
                "{} = {value} is not the default",
                key.file
            );
        }
    }
}

/// A TOML value of the table (a string, a list of strings without commas inside, a number, a
/// boolean) as a variable or flag writes it: a string unquoted, a list item by item.
fn as_text(toml_value: &str) -> Vec<String> {
    let unquote = |s: &str| s.trim().trim_matches('"').to_owned();
    match toml_value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
    {
        Some(items) => items.split(',').map(unquote).collect(),
        None => vec![unquote(toml_value)],
    }
}

#[test]
fn every_key_takes_its_example_alike_from_the_file_its_variable_and_its_flag() {
    // Each key's example (a valid value other than the default) changes the configuration, and
    // the same way from every layer: a loader that drops, misroutes or misreads a key fails.
    let dir = TempDir::new("config-examples");
    // Keys that need a partner get one: an SMTP key needs a host, a public key its algorithm.
    let partners = [
        ("auth", "public_key_pem_file", "\"/base.pem\""),
        ("auth", "public_key_alg", "\"RS256\""),
        ("notify.smtp", "host", "\"base.example\""),
    ];
    let render = |lines: &[(&str, &str, &str)]| {
        let mut text = String::new();
        for (section, leaf, value) in lines.iter().filter(|l| l.0.is_empty()) {
            let _ = section;
            text.push_str(&format!("{leaf} = {value}\n"));
        }
        for section in [
            "auth",
            "error_tracking",
            "limits",
            "classroom",
            "mesh",
            "notify",
            "notify.smtp",
        ] {
            text.push_str(&format!("[{section}]\n"));
            for (_, leaf, value) in lines.iter().filter(|l| l.0 == section) {
                text.push_str(&format!("{leaf} = {value}\n"));
            }
        }
        text
    };
    let baseline = load(&write_file(dir.path(), &render(&partners)), &[]).expect("partners load");
    let baseline = format!("{baseline:?}");
    for key in keys::KEYS {
        assert!(!key.example.is_empty(), "{} has no example", key.file);
        let others: Vec<_> = partners
            .iter()
            .copied()
            .filter(|(s, l, _)| (*s, *l) != (key.section(), key.leaf()))
            .collect();
        let mut with_example = others.clone();
        with_example.push((key.section(), key.leaf(), key.example));
        let from_file = load(&write_file(dir.path(), &render(&with_example)), &[])
            .unwrap_or_else(|e| panic!("{} = {}: {e:#}", key.file, key.example));
        let from_file = format!("{from_file:?}");
        assert_ne!(
            from_file, baseline,
            "{} = {} changed nothing",
            key.file, key.example
        );

        let without = write_file(dir.path(), &render(&others));
        let values = as_text(key.example);
        let from_env = load(&without, &[(key.env, &values.join(","))])
            .unwrap_or_else(|e| panic!("{}: {e:#}", key.env));
        assert_eq!(
            format!("{from_env:?}"),
            from_file,
            "{} differs from the file",
            key.env
        );
        if let Some(flag) = key.flag {
            let mut overrides = Overrides {
                config_file: Some(without.clone()),
                ..Overrides::default()
            };
            for v in &values {
                overrides = overrides.flag(flag, v.as_str());
            }
            let from_flag =
                Config::load(overrides, &|_| None).unwrap_or_else(|e| panic!("--{flag}: {e:#}"));
            assert_eq!(
                format!("{from_flag:?}"),
                from_file,
                "--{flag} differs from the file"
            );
        }
    }
}

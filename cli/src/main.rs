//! `lectern`: the operator's command. It inspects a node's store (with the node stopped, since
//! sled holds an exclusive lock), checks a node's health over HTTP, and mints tokens with the
//! node's own secret (same config layers, same `auth-secret` file), so an operator can hand out
//! a link without an identity provider. `cluster init` / `cluster issue-node` create the mesh's
//! CA and node certificates; `status`, `peers`, `jobs`, `docs`, `drain`, `backup` and `flags` ask a
//! running node's admin API; `content push` publishes a course package through its public API.
//!
//! Every command takes `--json` (one JSON document on stdout, also for a failure:
//! `{"error": {"code", "message", "exit"}}`), and the exit code says what kind of failure it was
//! ([`Exit`], listed in the README), so a script can branch without parsing messages.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use lectern_gateway::auth::{AuthConfig, Claims, Verifier, mint};
use lectern_node::config::{Config, Overrides};

mod content;

/// Longest lifetime `lectern token mint` grants, in seconds (one year): a token cannot be
/// revoked, only left to expire.
const TOKEN_TTL_MAX_S: u64 = 366 * 24 * 3600;

/// How long the admin API may take to answer, in seconds (a listing of many jobs included).
const ADMIN_TIMEOUT_S: u64 = 30;

/// Largest answer read from a node, in bytes (a full job listing is well under it).
const RESPONSE_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Operate Lectern nodes.
#[derive(Debug, Parser)]
#[command(name = "lectern", version, about, after_help = EXIT_CODES_HELP)]
struct Args {
    /// Print one JSON document on stdout (also for a failure).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

/// The exit codes, as `--help` lists them (the README has the same table).
const EXIT_CODES_HELP: &str = "Exit codes: 0 success; 1 any other failure; 2 bad usage; \
3 the node cannot be reached; 4 the admin API refused (no admin_token on the node, or a wrong \
one); 5 not found (no such job or document); 6 busy (the job is running: try again); \
7 the node is shutting down; 8 the store migration would lose data (see its message).";

/// Why `lectern` failed, as its exit code: a script branches on these. 2 is clap's own (bad
/// usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// Anything not below (a local file, a bad answer, a failure inside the node).
    Failure = 1,
    /// Nothing answers at the address (connection refused, timed out).
    Unreachable = 3,
    /// The admin API refused: it is off on that node, or the token is wrong.
    Refused = 4,
    /// No such job or document.
    NotFound = 5,
    /// The job is running now; the same command later will do.
    Busy = 6,
    /// The node is shutting down.
    Unavailable = 7,
    /// A store migration would lose data the target version cannot hold (nothing was written).
    Blocked = 8,
}

/// A failure with its exit code and a stable code for `--json`.
#[derive(Debug)]
struct Failed {
    exit: Exit,
    code: String,
    message: String,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failed {}

fn failed(exit: Exit, code: &str, message: impl Into<String>) -> anyhow::Error {
    anyhow!(Failed {
        exit,
        code: code.to_owned(),
        message: message.into(),
    })
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Inspect a stopped node's store: node id, boot epoch, documents and size.
    StoreInfo {
        /// The node's data directory.
        #[arg(long, default_value = "./lectern-data")]
        data_dir: PathBuf,
    },
    /// A stopped node's store: schema migrations (`lectern store migrate`).
    Store {
        #[command(subcommand)]
        command: StoreCmd,
    },
    /// Ask a running node for `/healthz`.
    Health {
        /// The node's HTTP address (host:port).
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: String,
    },
    /// Tokens signed with the node's HS256 secret.
    Token {
        #[command(subcommand)]
        command: TokenCmd,
    },
    /// The mesh's certificates.
    Cluster {
        #[command(subcommand)]
        command: ClusterCmd,
    },
    /// A running node's status: node id, region, uptime, documents, peers (admin API).
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// A running node's peers: state, RTT, lag (admin API).
    Peers {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// A running node's stored documents: sizes, heads, history (admin API).
    Docs {
        #[command(subcommand)]
        command: DocsCmd,
    },
    /// Back up a running node: every stored document, each as it was acknowledged when read,
    /// into FILE (JSON lines with a SHA-256 trailer, verified before FILE is written); the
    /// node keeps serving (admin API).
    Backup {
        #[command(flatten)]
        admin: AdminArgs,
        /// Where to write the backup (replaced only once the new one is complete and verified).
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a backup into a new, empty data directory (the node must not run on it): every
    /// document is checked first; a node started on DIR has a new identity and catches up from
    /// its peers.
    Restore {
        /// The backup (`lectern backup --out`).
        file: PathBuf,
        /// The new node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Drain a running node before maintenance: it refuses new Socket.IO connections and
    /// streams, fails its health check, and tells its clients to reconnect to another node
    /// (admin API). With `--wait-s`, waits until no client connection is left.
    Drain {
        #[command(flatten)]
        admin: AdminArgs,
        /// Wait up to this many seconds for the node's last client connection to go (exit 1 if
        /// some are left then).
        #[arg(long)]
        wait_s: Option<u64>,
    },
    /// End a drain: the node takes clients again (admin API).
    Undrain {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// A running node's notification jobs: queued, parked and dead-lettered (admin API).
    Jobs {
        #[command(subcommand)]
        command: JobsCmd,
    },
    /// Feature flags of the cluster: switch chat, polls, leaderboard, email or copilot off (or
    /// on) at run time, globally or for one cohort; replicated to every node (admin API).
    Flags {
        #[command(subcommand)]
        command: FlagsCmd,
    },
    /// Course content: publish a course package to a node (public API, an instructor's or
    /// admin's token).
    Content {
        #[command(subcommand)]
        command: content::ContentCmd,
    },
    /// Print the shell completion script: `lectern completions bash > /etc/bash_completion.d/lectern`,
    /// `lectern completions zsh > "${fpath[1]}/_lectern"`, `lectern completions fish >
    /// ~/.config/fish/completions/lectern.fish`.
    Completions {
        /// The shell.
        #[arg(value_parser = ["bash", "zsh", "fish"])]
        shell: String,
    },
}

#[derive(Debug, Subcommand)]
enum StoreCmd {
    /// Move a STOPPED node's store to schema version N, up or down (a rollback across a schema
    /// change: migrate down with the newer build, then start the older one). One atomic step;
    /// running it again does nothing. Refuses (exit 8) what the older version cannot hold.
    Migrate {
        /// The node's data directory.
        #[arg(long, default_value = "./lectern-data")]
        data_dir: PathBuf,
        /// The schema version to move to: 1 (before the feature-flags document) or 2 (this
        /// build's).
        #[arg(long)]
        to: u32,
        /// Going below version 2: delete the feature-flags document (the other nodes keep it)
        /// instead of refusing.
        #[arg(long)]
        discard_flags: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DocsCmd {
    /// Stored documents by id, a page at a time: size (snapshot and chunks) and heads.
    List {
        #[command(flatten)]
        admin: AdminArgs,
        /// Only ids starting with this (`session/`, `cohort/`, `inbox/`, `course/`).
        #[arg(long)]
        prefix: Option<String>,
        /// Only ids after this one (the last of the previous page).
        #[arg(long)]
        after: Option<String>,
        /// At most this many (the node caps it at 1,000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One document: its sizes, heads and history length (number of changes).
    Show {
        #[command(flatten)]
        admin: AdminArgs,
        /// The document id (`session/ID`, `cohort/ID`, `inbox/USER`, `course/ID`).
        id: String,
    },
    /// Rewrite one document as a single snapshot now (its chunks folded in); prints the stored
    /// bytes before and after. Nodes also do this on their own when chunks outweigh the snapshot.
    Compact {
        #[command(flatten)]
        admin: AdminArgs,
        /// The document id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum JobsCmd {
    /// Queued (waiting, parked, running) and dead-lettered jobs, with counts.
    List {
        #[command(flatten)]
        admin: AdminArgs,
        /// Which jobs: queued, dead or all.
        #[arg(long, default_value = "all", value_parser = ["queued", "dead", "all"])]
        state: String,
        /// Show at most this many jobs (the counts are always complete).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// One job's whole record: what it carries, its attempts, its last error.
    Show {
        #[command(flatten)]
        admin: AdminArgs,
        /// The job id (from `jobs list`).
        id: String,
    },
    /// Re-drive dead letters (attempts reset, due now) or run queued jobs now.
    Retry {
        #[command(flatten)]
        admin: AdminArgs,
        /// The job ids (from `jobs list`).
        #[arg(required_unless_present = "all_dead")]
        ids: Vec<String>,
        /// Re-drive every dead letter (after an outage is over).
        #[arg(long, conflicts_with = "ids")]
        all_dead: bool,
    },
    /// Forget a queued or dead-lettered job for good; it is never run.
    Drop {
        #[command(flatten)]
        admin: AdminArgs,
        /// The job id (from `jobs list`).
        id: String,
    },
}

/// The features a flag can switch (the node's `Feature` names).
const FEATURES: [&str; 5] = ["chat", "polls", "leaderboard", "email", "copilot"];

#[derive(Debug, Subcommand)]
enum FlagsCmd {
    /// The flags set, globally and per cohort (a feature not listed is on).
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Switch a feature on or off, for one cohort (`--cohort`) or globally; a cohort's flag
    /// wins over the global one. In force on the node asked when the command returns, on the
    /// others as soon as the mesh carries it (within a second or two).
    Set {
        #[command(flatten)]
        admin: AdminArgs,
        /// The feature.
        #[arg(value_parser = FEATURES)]
        feature: String,
        /// `off` or `on`.
        #[arg(value_parser = ["off", "on"])]
        state: String,
        /// Only this cohort.
        #[arg(long)]
        cohort: Option<String>,
    },
    /// Forget a flag: a cohort's (`--cohort`; it follows the global flag again) or the global
    /// one (the feature is on wherever no cohort flag says otherwise).
    Unset {
        #[command(flatten)]
        admin: AdminArgs,
        /// The feature.
        #[arg(value_parser = FEATURES)]
        feature: String,
        /// Only this cohort.
        #[arg(long)]
        cohort: Option<String>,
    },
}

/// How to reach a node's admin API.
#[derive(Debug, clap::Args)]
struct AdminArgs {
    /// The node's admin address (host:port): its `admin_http` if it has one, else its `http`.
    #[arg(long, env = "LECTERN_ADMIN_HTTP", default_value = "127.0.0.1:8080")]
    http: String,
    /// The node's admin token.
    #[arg(long, env = "LECTERN_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
}

#[derive(Debug, Subcommand)]
enum ClusterCmd {
    /// Create a cluster: its CA (DIR/ca.pem, DIR/ca.key) and the token key every node verifies
    /// with (DIR/auth-secret). Keep the directory offline.
    Init {
        /// Where to write the CA (must not hold one yet).
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a node's bundle: its certificate signed by the cluster CA (DIR/node.pem,
    /// DIR/node.key, DIR/ca.pem) and the cluster's token key (DIR/auth-secret). With `--renew`,
    /// replace the certificate and key of an existing bundle; a running node picks them up
    /// within `mesh.tls_reload_ms`, without a restart.
    IssueNode {
        /// The node's cluster name (a-z, 0-9, '-'); peers dial it as NAME@HOST:PORT.
        #[arg(long)]
        id: String,
        /// The CA directory (`cluster init --out`).
        #[arg(long)]
        ca: PathBuf,
        /// Where to write the node's files (the node's `mesh.tls_dir`).
        #[arg(long)]
        out: PathBuf,
        /// How many days the certificate is valid (1 to 397).
        #[arg(long, default_value_t = lectern_mesh::tls::NODE_CERT_VALIDITY_DAYS_DEFAULT,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(lectern_mesh::tls::NODE_CERT_VALIDITY_DAYS_MAX)))]
        valid_days: u32,
        /// Replace the certificate and key in an existing bundle (same CA) instead of creating one.
        #[arg(long)]
        renew: bool,
    },
    /// Revoke a node: every certificate issued to it (DIR/issued.tsv) or one serial number is
    /// added to the CA's revocation list, written to DIR/crl.pem. Copy that file into any
    /// node's TLS directory (`mesh.tls_dir/crl.pem`): the node loads it within
    /// `mesh.tls_reload_ms`, closes the revoked node's connections and passes the list to its
    /// peers, which do the same; the revoked node is refused everywhere from then on.
    Revoke {
        /// The CA directory (`cluster init --out`).
        #[arg(long)]
        ca: PathBuf,
        /// The node's cluster name: revoke every certificate issued to it.
        #[arg(long, required_unless_present = "serial")]
        id: Option<String>,
        /// One certificate's serial number (hex, as `issue-node --json` prints it).
        #[arg(long)]
        serial: Option<String>,
    },
}

/// The CA directory's record of issued certificates: `name<TAB>serial<TAB>not_after_s` lines.
const ISSUED_FILE: &str = "issued.tsv";
/// The CA directory's record of revoked serial numbers, one a line.
const REVOKED_FILE: &str = "revoked.tsv";

/// Appends `line` (and a newline) to `path`, creating it (mode 0600).
fn append_line(path: &std::path::Path, line: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    writeln!(file, "{line}").with_context(|| format!("write {}", path.display()))?;
    file.sync_all()
        .with_context(|| format!("sync {}", path.display()))
}

/// The lines of `path`, none if it does not exist.
fn read_lines(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().map(str::to_owned).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// Print a token for a user: the secret comes from the node's configuration (`--config`,
    /// `./lectern.toml`, `LECTERN_AUTH_SECRET`) or else `{data_dir}/auth-secret`, created if
    /// missing exactly as the node would.
    Mint {
        /// The user id (`sub`).
        #[arg(long)]
        user: String,
        /// The role.
        #[arg(long, value_parser = ["student", "ta", "instructor", "admin"])]
        role: String,
        /// A cohort the token grants; repeat for several.
        #[arg(long = "cohort")]
        cohorts: Vec<String>,
        /// Display name (default: the user id).
        #[arg(long)]
        name: Option<String>,
        /// Lifetime in seconds (at most one year).
        #[arg(long, default_value_t = 86_400)]
        ttl_s: u64,
        /// The node's TOML config file (default `./lectern.toml` if it exists).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The node's data directory (overrides the config).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let json = args.json;
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let (exit, code, message) = match e.downcast_ref::<Failed>() {
                Some(f) => (f.exit, f.code.clone(), f.message.clone()),
                None => (Exit::Failure, "failed".to_owned(), format!("{e:#}")),
            };
            if json {
                let v = serde_json::json!({
                    "error": {"code": code, "message": message, "exit": exit as u8}
                });
                println!("{v}");
            } else {
                eprintln!("lectern: {message}");
            }
            ExitCode::from(exit as u8)
        }
    }
}

/// Prints `v` as the command's JSON answer.
fn print_json(v: &serde_json::Value) {
    println!("{v:#}");
}

fn run(args: Args) -> anyhow::Result<()> {
    let json = args.json;
    match args.command {
        Cmd::Store {
            command:
                StoreCmd::Migrate {
                    data_dir,
                    to,
                    discard_flags,
                },
        } => {
            use lectern_store::StoreError as E;
            use lectern_store::migrate::{MigrateOptions, migrate};
            let done = migrate(&data_dir, to, MigrateOptions { discard_flags }).map_err(|e| {
                let (exit, code) = match &e {
                    E::Locked { .. } => (Exit::Busy, "store_open"),
                    E::MigrationBlocked { .. } => (Exit::Blocked, "migration_blocked"),
                    E::NotAStore { .. } => (Exit::NotFound, "not_a_store"),
                    E::UnknownSchema { .. } | E::NewerSchema { .. } => {
                        (Exit::Failure, "unknown_version")
                    }
                    _ => (Exit::Failure, "store_failed"),
                };
                failed(exit, code, format!("migrate {}: {e}", data_dir.display()))
            })?;
            if json {
                print_json(&serde_json::json!({
                    "from": done.from,
                    "to": done.to,
                    "keysChanged": done.keys_changed,
                }));
            } else if done.from == done.to {
                println!("the store is at schema version {}: nothing to do", done.to);
            } else {
                println!(
                    "migrated from schema version {} to {} ({} keys changed)",
                    done.from, done.to, done.keys_changed
                );
            }
            Ok(())
        }
        Cmd::StoreInfo { data_dir } => {
            let store = lectern_store::Store::open(&data_dir).map_err(|e| {
                failed(
                    Exit::Failure,
                    "store_unavailable",
                    format!(
                        "open store at {}: {e} (store-info reads a stopped node's store: stop the \
                         node first, or ask a running one with `lectern status`)",
                        data_dir.display()
                    ),
                )
            })?;
            let id = store.identity();
            let docs = store.doc_ids().context("list documents")?;
            let size = store.size_on_disk().context("measure the store")?;
            if json {
                print_json(&serde_json::json!({
                    "node": id.node_id.to_string(),
                    "bootEpoch": id.boot_epoch,
                    "documents": docs,
                    "bytesOnDisk": size,
                }));
            } else {
                println!("node:       {}", id.node_id);
                println!("boot epoch: {}", id.boot_epoch);
                println!("on disk:    {size} bytes");
                println!("documents:  {}", docs.len());
                for d in docs {
                    println!("  {d}");
                }
            }
            Ok(())
        }
        Cmd::Health { http } => {
            let v = request_json(&http, "GET", "/healthz", "")?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "{} node={} bootEpoch={} docsLoaded={}",
                    v["status"].as_str().unwrap_or("?"),
                    v["node"].as_str().unwrap_or("?"),
                    v["bootEpoch"],
                    v["docsLoaded"]
                );
            }
            Ok(())
        }
        Cmd::Token {
            command:
                TokenCmd::Mint {
                    user,
                    role,
                    cohorts,
                    name,
                    ttl_s,
                    config,
                    data_dir,
                },
        } => {
            if ttl_s == 0 || ttl_s > TOKEN_TTL_MAX_S {
                bail!("--ttl-s must be between 1 and {TOKEN_TTL_MAX_S}");
            }
            let mut overrides = Overrides {
                config_file: config,
                ..Overrides::default()
            };
            if let Some(dir) = data_dir {
                overrides = overrides.flag("data-dir", dir.display().to_string());
            }
            let config = Config::load(overrides, &|k| std::env::var(k).ok())
                .context("load the node configuration")?;
            let secret = config
                .resolve_secret()
                .context("resolve the HS256 secret")?;
            let now_s = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .context("read the clock")?
                .as_secs();
            let exp = now_s.saturating_add(ttl_s);
            let claims = Claims {
                name: name.unwrap_or_else(|| user.clone()),
                sub: user,
                role,
                cohorts,
                exp,
                iat: now_s,
                nbf: None,
            };
            let token = mint(&secret, &claims).context("sign the token")?;
            // Verify with the node's own rules so a bad user or cohort id is reported here,
            // not as a refusal when the link is first opened.
            let verifier = Verifier::new(&AuthConfig {
                hs256_secret: secret,
                public_key: None,
                leeway_s: config.auth.leeway_s,
                token_lifetime_max_s: config.auth.token_lifetime_max_s,
                audience: None,
                issuer: None,
            })
            .context("load the HS256 secret")?;
            verifier
                .verify(&token, now_s)
                .context("the node would refuse this token")?;
            if json {
                print_json(&serde_json::json!({"token": token, "exp": exp}));
            } else {
                println!("{token}");
            }
            Ok(())
        }
        Cmd::Cluster {
            command: ClusterCmd::Init { out },
        } => {
            let ca = lectern_mesh::ClusterCa::generate()?;
            ca.write(&out)?;
            lectern_node::create_cluster_secret(&out)?;
            if json {
                print_json(&serde_json::json!({"ca": out.display().to_string()}));
            } else {
                println!("cluster CA written to {}", out.display());
            }
            Ok(())
        }
        Cmd::Cluster {
            command:
                ClusterCmd::IssueNode {
                    id,
                    ca,
                    out,
                    valid_days,
                    renew,
                },
        } => {
            let ca_dir = ca;
            let ca = lectern_mesh::ClusterCa::read(&ca_dir)?;
            let valid_for = Duration::from_secs(u64::from(valid_days) * 86_400);
            let cert = ca.issue_node(&id, valid_for)?;
            if renew {
                cert.replace(&out)?;
            } else {
                cert.write(&out)?;
                lectern_node::install_cluster_secret(&ca_dir, &out)?;
            }
            let line = format!("{id}\t{}\t{}", cert.serial_hex, cert.not_after_s);
            append_line(&ca_dir.join(ISSUED_FILE), &line)?;
            if json {
                print_json(&serde_json::json!({
                    "node": id, "dir": out.display().to_string(), "serial": cert.serial_hex,
                    "notAfterS": cert.not_after_s, "renewed": renew,
                }));
            } else {
                let verb = if renew { "renewed in" } else { "written to" };
                println!(
                    "node certificate for {id} (serial {}, valid {valid_days} days) {verb} {}",
                    cert.serial_hex,
                    out.display()
                );
            }
            Ok(())
        }
        Cmd::Cluster {
            command: ClusterCmd::Revoke { ca, id, serial },
        } => {
            let ca_dir = ca;
            let authority = lectern_mesh::ClusterCa::read(&ca_dir)?;
            let mut serials: Vec<String> = Vec::new();
            if let Some(id) = &id {
                for line in read_lines(&ca_dir.join(ISSUED_FILE))? {
                    let mut fields = line.split('\t');
                    if fields.next() == Some(id.as_str())
                        && let Some(s) = fields.next()
                    {
                        serials.push(s.to_owned());
                    }
                }
                if serials.is_empty() {
                    bail!(
                        "{} lists no certificate issued to {id}: pass --serial",
                        ca_dir.join(ISSUED_FILE).display()
                    );
                }
            }
            if let Some(s) = serial {
                serials.push(s.to_ascii_lowercase());
            }
            let mut revoked = read_lines(&ca_dir.join(REVOKED_FILE))?;
            for s in serials {
                if !revoked.contains(&s) {
                    append_line(&ca_dir.join(REVOKED_FILE), &s)?;
                    revoked.push(s);
                }
            }
            // A later list has a higher number: the seconds since the epoch.
            let number = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let pem = authority.revocation_list(&revoked, number)?;
            let path = ca_dir.join(lectern_mesh::tls::CRL_FILE);
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, pem).with_context(|| format!("write {}", tmp.display()))?;
            std::fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))?;
            if json {
                print_json(
                    &serde_json::json!({"crl": path.display().to_string(), "revoked": revoked}),
                );
            } else {
                println!(
                    "{} serial(s) revoked; revocation list written to {}: copy it to any node's mesh.tls_dir",
                    revoked.len(),
                    path.display()
                );
            }
            Ok(())
        }
        Cmd::Status { admin } => {
            let v = admin_call(&admin, "GET", "/admin/status")?;
            if json {
                print_json(&v);
                return Ok(());
            }
            let s = |k: &str| v[k].as_str().unwrap_or("-").to_owned();
            println!("node:      {} ({})", s("name"), s("nodeId"));
            println!("region:    {}", s("region"));
            println!("quic:      {}", s("quic"));
            println!("uptime:    {} s", v["uptimeS"]);
            println!("documents: {} ({} loaded)", v["documents"], v["docsLoaded"]);
            let draining = if v["draining"] == true {
                " (draining)"
            } else {
                ""
            };
            println!("clients:   {}{draining}", v["connections"]);
            print_classroom(&v["classroom"]);
            let content = &v["content"];
            if content["courseBlobs"].as_u64().is_some_and(|n| n > 0) {
                println!(
                    "content:   {} of {} blobs of the stored courses held ({} brought from peers)",
                    content["held"], content["courseBlobs"], content["pulled"]
                );
            }
            print_peers(&v["peers"]);
            Ok(())
        }
        Cmd::Peers { admin } => {
            let v = admin_call(&admin, "GET", "/admin/peers")?;
            if json {
                print_json(&v);
            } else {
                print_peers(&v["peers"]);
            }
            Ok(())
        }
        Cmd::Docs { command } => docs(command, json),
        Cmd::Backup { admin, out } => {
            let tmp = out.with_extension("partial");
            let bytes = download(&admin, "/admin/backup", &tmp)?;
            let verified = lectern_node::backup::verify(&tmp).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                failed(Exit::Failure, "backup_damaged", format!("{e:#}"))
            })?;
            std::fs::rename(&tmp, &out).with_context(|| format!("write {}", out.display()))?;
            if json {
                print_json(&serde_json::json!({
                    "out": out.display().to_string(), "docs": verified.docs.len(), "bytes": bytes,
                    "node": verified.node,
                }));
            } else {
                println!(
                    "{} documents of node {} backed up to {} ({bytes} bytes, verified)",
                    verified.docs.len(),
                    verified.node,
                    out.display()
                );
            }
            Ok(())
        }
        Cmd::Restore { file, data_dir } => {
            let verified = lectern_node::backup::verify(&file)
                .map_err(|e| failed(Exit::Failure, "backup_damaged", format!("{e:#}")))?;
            let n = lectern_node::backup::restore(&verified, &data_dir)?;
            if json {
                print_json(
                    &serde_json::json!({"docs": n, "dataDir": data_dir.display().to_string()}),
                );
            } else {
                println!(
                    "{n} documents restored into {}: start a node on it; it catches up from its peers",
                    data_dir.display()
                );
            }
            Ok(())
        }
        Cmd::Drain { admin, wait_s } => {
            let mut v = admin_call(&admin, "POST", "/admin/drain")?;
            let deadline = std::time::Instant::now() + Duration::from_secs(wait_s.unwrap_or(0));
            while wait_s.is_some()
                && v["connections"].as_u64() != Some(0)
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(200));
                v = admin_call(&admin, "GET", "/admin/status")?;
            }
            let left = v["connections"].as_u64().unwrap_or(0);
            if json {
                print_json(&serde_json::json!({"draining": true, "connections": left}));
            } else {
                println!("draining: {left} client connections left");
            }
            if wait_s.is_some() && left > 0 {
                return Err(failed(
                    Exit::Failure,
                    "still_connected",
                    format!(
                        "{left} client connections are still open; wait longer or stop the node"
                    ),
                ));
            }
            Ok(())
        }
        Cmd::Undrain { admin } => {
            let v = admin_call(&admin, "POST", "/admin/undrain")?;
            if json {
                print_json(&v);
            } else {
                println!("taking clients again ({} connected)", v["connections"]);
            }
            Ok(())
        }
        Cmd::Jobs { command } => jobs(command, json),
        Cmd::Flags { command } => flags(command, json),
        Cmd::Content { command } => content::content(command, json),
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            let shell = match shell.as_str() {
                "bash" => clap_complete::Shell::Bash,
                "zsh" => clap_complete::Shell::Zsh,
                _ => clap_complete::Shell::Fish,
            };
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Args::command(), "lectern", &mut script);
            let script = String::from_utf8(script).context("the completion script is text")?;
            if json {
                print_json(&serde_json::json!({"shell": shell.to_string(), "script": script}));
            } else {
                print!("{script}");
            }
            Ok(())
        }
    }
}

/// A classroom node's uplink in `lectern status` (nothing for other nodes).
fn print_classroom(c: &serde_json::Value) {
    if c.is_null() {
        return;
    }
    let cohorts: Vec<&str> = c["cohorts"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    println!("classroom: cohorts {}", cohorts.join(", "));
    let upstream = c["upstream"].as_str().unwrap_or("?");
    if c["uplink"] == "up" {
        println!(
            "uplink:    {upstream} up, {} documents waiting to go up",
            c["lagDocs"]
        );
    } else {
        let error = c["lastError"]
            .as_str()
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default();
        println!(
            "uplink:    {upstream} DOWN for {} s (the class runs on and merges when the link is back){error}",
            c["offlineS"]
        );
    }
}

/// `lectern docs …`.
fn docs(command: DocsCmd, json: bool) -> anyhow::Result<()> {
    match command {
        DocsCmd::List {
            admin,
            prefix,
            after,
            limit,
        } => {
            let mut path = format!("/admin/docs?limit={limit}");
            if let Some(p) = prefix {
                path.push_str(&format!("&prefix={}", enc(&p)));
            }
            if let Some(a) = after {
                path.push_str(&format!("&after={}", enc(&a)));
            }
            let v = admin_call(&admin, "GET", &path)?;
            if json {
                print_json(&v);
                return Ok(());
            }
            println!("{:>10} {:>7}  {:<16} DOCUMENT", "BYTES", "CHUNKS", "HEADS");
            for d in v["docs"].as_array().cloned().unwrap_or_default() {
                let heads = d["heads"].as_str().unwrap_or("-");
                println!(
                    "{:>10} {:>7}  {:<16} {}",
                    d["bytes"],
                    d["chunks"],
                    &heads[..heads.len().min(16)],
                    d["doc"].as_str().unwrap_or("?")
                );
            }
            if v["more"] == true {
                println!("(more: --after the last id above)");
            }
            Ok(())
        }
        DocsCmd::Show { admin, id } => {
            let v = admin_call(&admin, "GET", &format!("/admin/docs/show?doc={}", enc(&id)))?;
            print_json(&v);
            Ok(())
        }
        DocsCmd::Compact { admin, id } => {
            let path = format!("/admin/docs/compact?doc={}", enc(&id));
            let v = admin_call(&admin, "POST", &path)?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "{id}: {} bytes stored before, {} after",
                    v["bytesBefore"], v["bytesAfter"]
                );
            }
            Ok(())
        }
    }
}

/// `lectern jobs …`.
fn jobs(command: JobsCmd, json: bool) -> anyhow::Result<()> {
    match command {
        JobsCmd::List {
            admin,
            state,
            limit,
        } => {
            let v = admin_call(
                &admin,
                "GET",
                &format!("/admin/jobs?state={state}&limit={limit}"),
            )?;
            if json {
                print_json(&v);
                return Ok(());
            }
            let c = &v["counts"];
            println!(
                "queued: {} (parked {}, running {})   dead: {}",
                c["queued"], c["parked"], c["running"], c["dead"]
            );
            let list = v["jobs"].as_array().cloned().unwrap_or_default();
            if !list.is_empty() {
                println!(
                    "{:<8} {:<8} {:>8}  {:<24} ID / LAST ERROR",
                    "STATE", "KIND", "ATTEMPTS", "DUE (UTC)"
                );
            }
            for j in list {
                println!(
                    "{:<8} {:<8} {:>8}  {:<24} {}",
                    j["state"].as_str().unwrap_or("?"),
                    j["kind"].as_str().unwrap_or("?"),
                    j["attempts"],
                    j["runAtMs"].as_u64().map(utc).unwrap_or_else(|| "-".into()),
                    j["id"].as_str().unwrap_or("?"),
                );
                if let Some(e) = j["lastError"].as_str().or(j["unreadable"].as_str()) {
                    println!("{:<53} {e}", "");
                }
            }
            Ok(())
        }
        JobsCmd::Show { admin, id } => {
            let v = admin_call(&admin, "GET", &format!("/admin/jobs/show?id={}", enc(&id)))?;
            print_json(&v);
            Ok(())
        }
        JobsCmd::Retry {
            admin,
            ids,
            all_dead,
        } => {
            let ids = if all_dead {
                let v = admin_call(&admin, "GET", "/admin/jobs?state=dead")?;
                v["jobs"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|j| j["id"].as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default()
            } else {
                ids
            };
            let mut retried = Vec::new();
            for id in &ids {
                let v = admin_call(&admin, "POST", &format!("/admin/jobs/retry?id={}", enc(id)))?;
                if !json {
                    println!("retry {id}: queued, due now");
                }
                retried.push(v["job"].clone());
            }
            if json {
                print_json(&serde_json::json!({"retried": retried}));
            } else if ids.is_empty() {
                println!("no dead letters");
            }
            Ok(())
        }
        JobsCmd::Drop { admin, id } => {
            let v = admin_call(&admin, "POST", &format!("/admin/jobs/drop?id={}", enc(&id)))?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "dropped {id} (was {})",
                    v["dropped"]["state"].as_str().unwrap_or("?")
                );
            }
            Ok(())
        }
    }
}

fn flags(command: FlagsCmd, json: bool) -> anyhow::Result<()> {
    let v = match command {
        FlagsCmd::List { admin } => admin_call(&admin, "GET", "/admin/flags")?,
        FlagsCmd::Set {
            admin,
            feature,
            state,
            cohort,
        } => {
            let mut path = format!(
                "/admin/flags/set?feature={}&enabled={}",
                enc(&feature),
                state == "on"
            );
            if let Some(c) = &cohort {
                path.push_str(&format!("&cohort={}", enc(c)));
            }
            admin_call(&admin, "POST", &path)?
        }
        FlagsCmd::Unset {
            admin,
            feature,
            cohort,
        } => {
            let mut path = format!("/admin/flags/unset?feature={}", enc(&feature));
            if let Some(c) = &cohort {
                path.push_str(&format!("&cohort={}", enc(c)));
            }
            admin_call(&admin, "POST", &path)?
        }
    };
    if json {
        print_json(&v);
        return Ok(());
    }
    let flags = &v["flags"];
    let on_off = |b: &serde_json::Value| {
        if b.as_bool() == Some(false) {
            "off"
        } else {
            "on"
        }
    };
    let mut lines = 0;
    if let Some(global) = flags["global"].as_object() {
        for (feature, value) in global {
            println!("{:<12} {:<4} everywhere", feature, on_off(value));
            lines += 1;
        }
    }
    if let Some(cohorts) = flags["cohorts"].as_object() {
        for (cohort, set) in cohorts {
            for (feature, value) in set.as_object().into_iter().flatten() {
                println!("{:<12} {:<4} cohort {cohort}", feature, on_off(value));
                lines += 1;
            }
        }
    }
    if lines == 0 {
        println!("no flags set: every feature is on");
    }
    Ok(())
}

/// A time in ms since the Unix epoch as `YYYY-MM-DD HH:MM:SS` UTC.
fn utc(ms: u64) -> String {
    let s = ms / 1000;
    let (days, rem) = (s / 86_400, s % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Percent-encodes a query value (job ids hold `/`).
fn enc(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A table of peers from the admin API's JSON.
fn print_peers(peers: &serde_json::Value) {
    let list = peers.as_array().cloned().unwrap_or_default();
    println!("peers:     {}", list.len());
    for p in list {
        let rtt = p["rtt_ms"]
            .as_f64()
            .map(|r| format!("{r:.1} ms"))
            .unwrap_or_else(|| "-".into());
        println!(
            "  {:<16} {:<10} region={:<12} rtt={:<10} lag={} docs{}",
            p["name"].as_str().unwrap_or("?"),
            p["state"].as_str().unwrap_or("?"),
            p["region"].as_str().unwrap_or("-"),
            rtt,
            p["lag_docs"],
            p["last_error"]
                .as_str()
                .map(|e| format!("  ({e})"))
                .unwrap_or_default(),
        );
    }
}

/// Calls the admin API with the admin token; its answer's JSON.
fn admin_call(admin: &AdminArgs, method: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    request_json(
        &admin.http,
        method,
        path,
        &format!("Authorization: Bearer {}\r\n", admin.admin_token),
    )
}

/// `GET path` of the admin API into the file `to` (a 200's body, however long: HTTP/1.0, so
/// the body runs to the end of the connection); its length. A refusal is the same error as
/// [`request_json`]'s.
fn download(admin: &AdminArgs, path: &str, to: &std::path::Path) -> anyhow::Result<u64> {
    let addr = &admin.http;
    let unreachable = |e: std::io::Error| {
        failed(
            Exit::Unreachable,
            "unreachable",
            format!("cannot reach a node at {addr} ({e}): is it running?"),
        )
    };
    let timeout = Duration::from_secs(ADMIN_TIMEOUT_S);
    let a = std::net::ToSocketAddrs::to_socket_addrs(addr.as_str())
        .map_err(unreachable)?
        .next()
        .ok_or_else(|| unreachable(std::io::Error::other("no address")))?;
    let mut stream = TcpStream::connect_timeout(&a, timeout).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(unreachable)?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\r\n",
        admin.admin_token
    )
    .map_err(unreachable)?;
    let mut reader = std::io::BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut reader, &mut line).map_err(unreachable)?;
        if n == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status != 200 {
        // The same answers as any admin call: read it as one.
        return Err(match status {
            401 => failed(
                Exit::Refused,
                "unauthorized",
                "the node refused the admin token: pass its admin_token with --admin-token or \
                 LECTERN_ADMIN_TOKEN",
            ),
            404 => failed(
                Exit::Refused,
                "admin_off",
                "the node has no admin API (set admin_token on it)",
            ),
            s => failed(
                Exit::Failure,
                "backup_failed",
                format!("the node answered {s}"),
            ),
        });
    }
    let mut file = std::fs::File::create(to).with_context(|| format!("create {}", to.display()))?;
    let bytes = std::io::copy(&mut reader, &mut file).map_err(unreachable)?;
    file.sync_all()
        .with_context(|| format!("sync {}", to.display()))?;
    Ok(bytes)
}

/// One HTTP/1.0 request (enough for the admin API without an HTTP client dependency); a 200's
/// JSON body, or a [`Failed`] that says what went wrong and what to do.
fn request_json(
    addr: &str,
    method: &str,
    path: &str,
    headers: &str,
) -> anyhow::Result<serde_json::Value> {
    let (status, body) = exchange(addr, method, path, headers, b"")?;
    let body = body.as_str();
    let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
    if status == 200 {
        return json.ok_or_else(|| {
            failed(
                Exit::Failure,
                "bad_answer",
                format!("{path}: the answer is not JSON"),
            )
        });
    }
    let code = json
        .as_ref()
        .and_then(|v| v["error"]["code"].as_str())
        .unwrap_or("")
        .to_owned();
    let message = json
        .as_ref()
        .and_then(|v| v["error"]["message"].as_str())
        .unwrap_or(body.trim())
        .to_owned();
    Err(match (status, code.as_str()) {
        (401, _) => failed(
            Exit::Refused,
            "unauthorized",
            "the node refused the admin token: pass its admin_token with --admin-token or \
             LECTERN_ADMIN_TOKEN",
        ),
        (404, "not_found") | (404, "") => failed(
            Exit::Refused,
            "admin_off",
            format!(
                "{path}: the node has no admin API (set admin_token in its configuration and \
                 restart it), or {addr} is not its admin address"
            ),
        ),
        (404, "doc_not_found") => failed(
            Exit::NotFound,
            &code,
            format!("{message}; `lectern docs list` shows what this node stores"),
        ),
        (404, _) => failed(
            Exit::NotFound,
            &code,
            format!("{message}; `lectern jobs list` shows what is queued and dead"),
        ),
        (409, _) => failed(
            Exit::Busy,
            &code,
            format!("{message} (run the same command again in a moment)"),
        ),
        (503, _) => failed(
            Exit::Unavailable,
            if code.is_empty() {
                "unavailable"
            } else {
                &code
            },
            format!(
                "{message}: the node is shutting down; ask another node or wait for the restart"
            ),
        ),
        _ => failed(
            Exit::Failure,
            if code.is_empty() { "failed" } else { &code },
            format!("{path} answered {status}: {message}"),
        ),
    })
}

/// One HTTP/1.0 request with `body` (`headers` are whole lines, each ending in CRLF): the
/// answer's status and body. Only an unreachable node or an answer that is not HTTP fails here.
fn exchange(
    addr: &str,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    let unreachable = |e: std::io::Error| {
        failed(
            Exit::Unreachable,
            "unreachable",
            format!(
                "cannot reach a node at {addr} ({e}): is it running, and is --http its address \
                 (for the admin commands, LECTERN_ADMIN_HTTP too: the node's admin_http if set, \
                 else its http)?"
            ),
        )
    };
    let timeout = Duration::from_secs(ADMIN_TIMEOUT_S);
    let mut last = None;
    let mut stream = None;
    for a in std::net::ToSocketAddrs::to_socket_addrs(addr).map_err(unreachable)? {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let mut stream = stream
        .ok_or_else(|| unreachable(last.unwrap_or_else(|| std::io::Error::other("no address"))))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(unreachable)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(unreachable)?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .map_err(unreachable)?;
    stream.write_all(body).map_err(unreachable)?;
    let mut response = Vec::new();
    stream
        .take(RESPONSE_MAX_BYTES)
        .read_to_end(&mut response)
        .map_err(unreachable)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| {
        failed(
            Exit::Failure,
            "bad_answer",
            format!("{addr} did not answer HTTP"),
        )
    })?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

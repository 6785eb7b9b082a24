//! A node's configuration, parsed once into a validated [`Config`].
//!
//! Four layers, each overriding the one before: documented defaults < `lectern.toml` <
//! environment (`LECTERN_*`) < command-line flags ([`Overrides`]). Every value is checked as it
//! is read, and an error names the key and where it came from (`limits.conns_max in
//! ./lectern.toml`, `LECTERN_HTTP`), so an operator never has to guess which layer is wrong.
//! Unknown keys in the file are errors rather than silently ignored typos. The environment is
//! passed in as a function, so tests do not mutate the process environment.
//!
//! The HS256 secret is the one value with a side effect: when none is configured,
//! [`Config::resolve_secret`] creates `{data_dir}/auth-secret` once, so the node and
//! `lectern token mint --data-dir` agree on it without the operator handling key material.

use std::fs;
use std::io::{ErrorKind, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, anyhow, bail};

pub mod keys;

use keys::{Draft, KEYS, Raw, Shape};

/// The file read when no `--config` is given (and only if it exists).
pub const CONFIG_FILE_DEFAULT: &str = "lectern.toml";

/// The file under the data directory that holds the generated HS256 secret.
pub const SECRET_FILE: &str = "auth-secret";

/// Shortest HS256 secret accepted, in bytes: HMAC-SHA256 with a short secret is guessable.
pub const SECRET_LEN_MIN_BYTES: usize = 16;

/// Longest secret file read, in bytes (a generated one is 64 hex digits).
pub const SECRET_FILE_LEN_MAX_BYTES: usize = 4096;

/// Largest accepted `auth.leeway_s`, in seconds: more would make expiry meaningless.
pub const LEEWAY_MAX_S: u64 = 3600;

/// Largest accepted `auth.token_lifetime_max_s`, in seconds (ten times the default).
pub const TOKEN_LIFETIME_MAX_MAX_S: u64 = 10 * lectern_gateway::auth::TOKEN_LIFETIME_MAX_S;

/// A node's validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory of the node's store and generated secret. Default `./lectern-data`.
    pub data_dir: PathBuf,
    /// Address HTTP is served on. Default `127.0.0.1:8080` (loopback only: exposing a node is
    /// a decision).
    pub http: SocketAddr,
    /// Base URL printed in demo links, without a trailing `/`. Default none, meaning
    /// `http://{http}`.
    pub public_url: Option<String>,
    /// The public client URLs of the cluster's other nodes, in the order a browser should try
    /// them when this node fails (`GET /api/nodes` lists this node's, then these; cross-origin
    /// requests from these origins are allowed). Default none: the page stays on its node.
    pub cluster_urls: Vec<String>,
    /// Further browser origins (`https://class.example`) whose pages may authenticate with
    /// the `lectern_token` cookie; the node's own origin, its `public_url`'s and the cluster
    /// URLs' are always allowed. Default none.
    pub allowed_origins: Vec<String>,
    /// Seed a demo course, cohort and live session and print links. Default `false`.
    pub demo: bool,
    /// Print the demo's links without seeding it (a node of a demo cluster that receives the
    /// demo from its peers). Not configurable; set by `--demo --nodes N`. Default `false`.
    pub demo_links: bool,
    /// Token verification.
    pub auth: AuthSettings,
    /// Rates, sizes and caps.
    pub limits: Limits,
    /// The regional mesh (off unless `mesh.tls_dir` is set).
    pub mesh: MeshSettings,
    /// Bearer token of the admin API (`/admin/status`, `/admin/peers`; what `lectern status`
    /// and `lectern peers` call). Default none: the admin API answers 404.
    pub admin_token: Option<String>,
    /// Notifications: email, the job queue, digests.
    pub notify: NotifySettings,
    /// A separate, private address for the operator's surface (`/metrics`, `/admin/*`,
    /// `/healthz`): when set, they are served there only and the public listener answers 404
    /// for them. Default none: they share the public listener (`http`), so put the node behind
    /// a proxy that hides them (deploy/nginx does) or set this.
    pub admin_http: Option<SocketAddr>,
    /// Seconds between the keep-alive comments of an idle SSE stream (so proxies do not close
    /// it). Default 15.
    pub sse_keepalive_s: u64,
    /// The classroom profile (`--upstream NAME@HOST:PORT`, `[classroom]`). Default: not a
    /// classroom node.
    pub classroom: ClassroomSettings,
    /// How log lines are written on stderr. Default [`LogFormat::Text`].
    pub log_format: LogFormat,
    /// The Sentry DSN panics and error-level events go to (`error_tracking.dsn`). Default
    /// none: error tracking is off.
    pub error_tracking_dsn: Option<String>,
}

/// How the node writes its log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

/// A classroom node: one upstream region node, the cohorts it serves. At start the upstream
/// joins `mesh.peers` and the cohorts become `mesh.share_cohorts` ([`ClassroomSettings::apply`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassroomSettings {
    /// The region node it syncs with, `NAME@HOST:PORT`; set, it makes this a classroom node.
    pub upstream: Option<String>,
    /// The cohorts it serves.
    pub cohorts: Option<Vec<String>>,
    /// How far past the expiry its issuer gave it a classroom node may extend the token of a
    /// member of its cohorts (`POST /api/token/refresh`), in hours; 0: never. Default 24.
    pub token_extend_max_h: u64,
}

impl Default for ClassroomSettings {
    fn default() -> Self {
        ClassroomSettings {
            upstream: None,
            cohorts: None,
            token_extend_max_h: TOKEN_EXTEND_DEFAULT_H,
        }
    }
}

/// The default of `classroom.token_extend_max_h`: a school day's outage, and the night after.
pub const TOKEN_EXTEND_DEFAULT_H: u64 = 24;

/// Largest accepted `classroom.token_extend_max_h`: a week, so a stolen token of a classroom's
/// member cannot be kept alive for long after its issuer let it end.
pub const TOKEN_EXTEND_MAX_H: u64 = 7 * 24;

impl ClassroomSettings {
    /// What the gateway of this classroom node grants (token extensions, join codes), if it
    /// is one.
    pub fn classroom_policy(&self) -> Option<lectern_gateway::ClassroomPolicy> {
        if !self.is_on() {
            return None;
        }
        Some(lectern_gateway::ClassroomPolicy {
            cohorts: self
                .cohorts
                .iter()
                .flatten()
                .filter_map(|c| c.parse().ok())
                .collect(),
            extend_max_s: self.token_extend_max_h.saturating_mul(3600),
        })
    }

    /// Whether this is a classroom node.
    pub fn is_on(&self) -> bool {
        self.upstream.is_some()
    }

    /// Applies the profile to `mesh`: the upstream among the peers, the cohorts as the share
    /// policy. An error says what is missing or in conflict.
    pub fn apply(&self, mesh: &mut MeshSettings) -> anyhow::Result<()> {
        let Some(upstream) = &self.upstream else {
            if self.cohorts.is_some() {
                bail!(
                    "classroom.cohorts is set but not classroom.upstream (a classroom node needs both)"
                );
            }
            return Ok(());
        };
        let cohorts = match &self.cohorts {
            Some(c) if !c.is_empty() => c.clone(),
            _ => bail!(
                "classroom.upstream: a classroom node needs classroom.cohorts (LECTERN_CLASSROOM_COHORTS): the cohorts it serves"
            ),
        };
        if mesh.tls_dir.is_none() {
            bail!(
                "classroom.upstream: a classroom node needs mesh.tls_dir, its bundle from `lectern cluster issue-node`"
            );
        }
        match &mesh.share_cohorts {
            Some(shared) if shared != &cohorts => bail!(
                "mesh.share_cohorts ({shared:?}) and classroom.cohorts ({cohorts:?}) differ: set only classroom.cohorts"
            ),
            _ => mesh.share_cohorts = Some(cohorts),
        }
        if !mesh.peers.contains(upstream) {
            mesh.peers.insert(0, upstream.clone());
        }
        Ok(())
    }
}

/// Longest push coalescing window accepted, in ms (the replication-latency budget).
pub const PUSH_COALESCE_MAX_MS: u64 = 20;

/// Longest resume wait accepted, in ms: a join held longer would outlast a client's patience.
pub const RESUME_WAIT_MAX_MS: u64 = 60_000;

/// The regional mesh: QUIC with mutual TLS to the other nodes.
#[derive(Debug, Clone)]
pub struct MeshSettings {
    /// This node's cluster name: the `--id` its certificate was issued for. Default: the
    /// certificate directory is required, the name then defaults to `node`.
    pub name: String,
    /// This node's region, shown to peers and operators. Default `local`.
    pub region: String,
    /// UDP address to listen on for peers. Default `127.0.0.1:7400`.
    pub listen: SocketAddr,
    /// Directory with `node.pem`, `node.key`, `ca.pem` (`lectern cluster issue-node`).
    /// Default none: the mesh is off.
    pub tls_dir: Option<PathBuf>,
    /// Peers to dial, each `NAME@HOST:PORT`. Default none.
    pub peers: Vec<String>,
    /// Nodes (cluster names) that may dial this node besides those in `peers`: a node that
    /// others dial but that dials nobody lists them here. Any other node is refused at its
    /// hello, even with a certificate of the cluster CA. Default none: only `peers`.
    pub accept_from: Vec<String>,
    /// Share only these cohorts' documents (their sessions, their members' inboxes and the
    /// course each follows) with peers, in both directions: a classroom node restricted to its
    /// own cohorts. Default none: share all.
    pub share_cohorts: Option<Vec<String>>,
    /// Per peer (cluster name), the cohorts it may exchange documents of with this node (the
    /// cohort, its sessions, its members' inboxes), both ways, on top of `share_cohorts`: a
    /// region node holds each classroom node to the cohorts it serves, so a compromised one
    /// cannot write anything else here. Default none: peers are held to `share_cohorts` only.
    pub peer_cohorts: Vec<(String, Vec<String>)>,
    /// Local changes are pushed to peers at most this often, in ms (at most
    /// [`PUSH_COALESCE_MAX_MS`]). Default 10.
    pub push_coalesce_ms: u64,
    /// Longest wait between two dials of an unreachable peer, in ms (jittered exponential
    /// backoff from 100 ms up to this; the dials overlap). Default 1000.
    pub reconnect_max_ms: u64,
    /// A peer silent for this long is dead (its connection closes, its presence expires), in
    /// ms. Default 5000.
    pub peer_idle_timeout_ms: u64,
    /// A dial (QUIC + TLS handshake) that takes longer than this is abandoned and retried, in
    /// ms. Default 3000.
    pub connect_timeout_ms: u64,
    /// Inbound peer connections allowed at once between their first packet and a verified
    /// hello; more are refused, so a flood of handshakes costs a bounded amount. Default 64.
    pub handshakes_max: usize,
    /// A client that resumes here with a token from a node that is ahead (failover) waits up to
    /// this long for the mesh to bring the missing changes, then gets a snapshot instead of
    /// the events it missed, in ms (at most [`RESUME_WAIT_MAX_MS`]; 0 answers at once). The
    /// wait ends as soon as the changes arrive. Default 2000.
    pub resume_wait_ms: u64,
    /// How often `tls_dir` is checked for a renewed certificate or a new `crl.pem`, in ms.
    /// Default 30000.
    pub tls_reload_ms: u64,
    /// Bring every content blob of the courses this node stores from its peers ahead of time
    /// (a classroom node then serves its lessons with the uplink down). False: a blob comes
    /// from a peer on its first request only. Default true.
    pub prefetch_content: bool,
}

impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            name: "node".into(),
            region: "local".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            tls_dir: None,
            peers: Vec::new(),
            accept_from: Vec::new(),
            share_cohorts: None,
            peer_cohorts: Vec::new(),
            push_coalesce_ms: 10,
            reconnect_max_ms: 1_000,
            peer_idle_timeout_ms: 5_000,
            connect_timeout_ms: 3_000,
            handshakes_max: lectern_mesh::HANDSHAKES_MAX_DEFAULT,
            resume_wait_ms: 2_000,
            tls_reload_ms: lectern_mesh::TLS_RELOAD_MS_DEFAULT,
            prefetch_content: true,
        }
    }
}

/// Notification delivery: where email goes, and how the job queue retries.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    /// The SMTP server. Default none: emails are written as `.eml` files to `outbox_dir`.
    pub smtp: Option<SmtpSettings>,
    /// Where emails go without SMTP. Default none, meaning `{data_dir}/outbox`.
    pub outbox_dir: Option<PathBuf>,
    /// The From mailbox. Default `Lectern <no-reply@lectern.invalid>`.
    pub from: String,
    /// Users who gave no address get `{user}@{email_domain}` (for an institution whose user
    /// ids are its mail names). Default none: no email without an address.
    pub email_domain: Option<String>,
    /// Jobs running at once. Default 32.
    pub workers: usize,
    /// Attempts before a job is dead-lettered. Default 8.
    pub attempts_max: u32,
    /// First retry delay in ms, doubled per attempt. Default 2000.
    pub backoff_base_ms: u64,
    /// Longest retry delay in ms. Default 3,600,000 (1 h).
    pub backoff_max_ms: u64,
    /// Hour of the day (UTC) the daily digest goes out. Default 7.
    pub digest_hour_utc: u64,
    /// How often digests go out, in ms. Default 86,400,000 (daily); not in the file or the
    /// environment: tests shorten it.
    pub digest_period_ms: u64,
    /// The leaderboard stream updates at most this often, in ms. Default 30,000.
    pub leaderboard_interval_ms: u64,
    /// The instructor dashboard stream updates at most this often, in ms. Default 5,000.
    pub dashboard_interval_ms: u64,
    /// The dashboard lists students inactive for this many days. Default 7.
    pub inactive_days: u64,
    /// The dashboard reads this many of the cohort's newest sessions. Default 20.
    pub dashboard_sessions_max: usize,
    /// How long a finished job's marker is kept (it keeps the job from being queued again), in
    /// ms; the file says `finished_jobs_kept_days`. Default 30 days.
    pub finished_jobs_kept_ms: u64,
    /// How long an email waits (parked, spending no attempts) for a mail server that cannot be
    /// reached before it is dead-lettered, in ms; the file says `park_unreachable_hours`; 0
    /// turns parking off. Default 72 h.
    pub park_unreachable_ms: u64,
    /// While the mail server is unreachable, the longest time between two probes of it, in ms
    /// (so the longest an email waits after the server is back). Default 60,000.
    pub park_probe_max_ms: u64,
}

/// An SMTP server.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    /// Host name.
    pub host: String,
    /// Port. Default by TLS mode: 25 (none), 587 (starttls), 465 (tls).
    pub port: u16,
    /// `none`, `starttls` or `tls`. Default `starttls`.
    pub tls: lectern_jobs::TlsMode,
    /// Login, if the server wants one (with `password`).
    pub username: Option<String>,
    /// Password for `username`.
    pub password: Option<String>,
    /// Timeout of a connection or command, in ms. Default 10,000.
    pub timeout_ms: u64,
}

/// A day, in ms.
const DAY_MS: u64 = 86_400_000;

/// An hour, in ms.
const HOUR_MS: u64 = 3_600_000;

/// Timeout of an SMTP connection or command when none is configured, in ms.
const SMTP_TIMEOUT_DEFAULT_MS: u64 = 10_000;

impl Default for NotifySettings {
    fn default() -> Self {
        NotifySettings {
            smtp: None,
            outbox_dir: None,
            from: "Lectern <no-reply@lectern.invalid>".to_owned(),
            email_domain: None,
            workers: 32,
            attempts_max: 8,
            backoff_base_ms: 2_000,
            backoff_max_ms: 3_600_000,
            digest_hour_utc: 7,
            digest_period_ms: 86_400_000,
            leaderboard_interval_ms: 30_000,
            dashboard_interval_ms: 5_000,
            inactive_days: 7,
            dashboard_sessions_max: 20,
            finished_jobs_kept_ms: 30 * DAY_MS,
            park_unreachable_ms: 72 * HOUR_MS,
            park_probe_max_ms: 60_000,
        }
    }
}

/// How tokens are verified.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// The HS256 shared secret (at least [`SECRET_LEN_MIN_BYTES`]). Default none, meaning
    /// `{data_dir}/auth-secret`, generated on first use (see [`Config::resolve_secret`]).
    pub hs256_secret: Option<String>,
    /// PEM file of an external issuer's public key. Default none (only HS256 tokens).
    pub public_key_pem_file: Option<PathBuf>,
    /// Algorithm of that key: `"EdDSA"` or `"RS256"`; required with the file. Default none.
    pub public_key_alg: Option<String>,
    /// Clock-skew allowance on a token's `exp`, in seconds (at most [`LEEWAY_MAX_S`]).
    /// Default 30.
    pub leeway_s: u64,
    /// Longest accepted time from now to a token's `exp`, in seconds (1 to
    /// [`TOKEN_LIFETIME_MAX_MAX_S`]). Default 31,622,400 (366 days).
    pub token_lifetime_max_s: u64,
    /// The `aud` the external issuer's tokens must carry. Default none (not checked).
    pub audience: Option<String>,
    /// The `iss` the external issuer's tokens must carry. Default none (not checked).
    pub issuer: Option<String>,
}

/// Limits the gateway enforces (defined with the gateway, which enforces them).
pub use lectern_gateway::Limits;

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./lectern-data"),
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            cluster_urls: Vec::new(),
            allowed_origins: Vec::new(),
            demo: false,
            demo_links: false,
            auth: AuthSettings::default(),
            limits: Limits::default(),
            mesh: MeshSettings::default(),
            admin_token: None,
            notify: NotifySettings::default(),
            admin_http: None,
            sse_keepalive_s: 15,
            classroom: ClassroomSettings::default(),
            log_format: LogFormat::Text,
            error_tracking_dsn: None,
        }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            hs256_secret: None,
            public_key_pem_file: None,
            public_key_alg: None,
            leeway_s: 30,
            token_lifetime_max_s: lectern_gateway::auth::TOKEN_LIFETIME_MAX_DEFAULT_S,
            audience: None,
            issuer: None,
        }
    }
}

/// What the command line says; it overrides every other layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--config FILE`: the TOML file to read (it must exist). Without it, `./lectern.toml` is
    /// read if it exists.
    pub config_file: Option<PathBuf>,
    /// The flags given, as `(flag without --, values)`; each must be the flag of a key in
    /// [`keys::KEYS`]. A list key's values replace the list of the other layers; a switch is
    /// turned on by any value that reads as true.
    pub flags: Vec<(String, Vec<String>)>,
}

impl Overrides {
    /// Adds the flag `--{flag} {value}` (repeat it for a list key).
    pub fn flag(mut self, flag: &str, value: impl Into<String>) -> Overrides {
        let value = value.into();
        match self.flags.iter_mut().find(|(f, _)| f == flag) {
            Some((_, values)) => values.push(value),
            None => self.flags.push((flag.to_owned(), vec![value])),
        }
        self
    }
}

impl Config {
    /// Loads: defaults < the TOML file (given path, else ./lectern.toml if it exists) <
    /// environment (the `LECTERN_*` variable of every key in [`keys::KEYS`]; an empty variable
    /// counts as unset) < overrides (flags). Unknown TOML keys are an error naming the key;
    /// invalid values are errors naming the key and the source.
    pub fn load(
        overrides: Overrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Config> {
        let mut draft = Draft::default();

        let file = match &overrides.config_file {
            Some(path) => Some(path.clone()),
            None => {
                let path = PathBuf::from(CONFIG_FILE_DEFAULT);
                path.is_file().then_some(path)
            }
        };
        if let Some(path) = file {
            let text = fs::read_to_string(&path)
                .with_context(|| format!("read config file {}", path.display()))?;
            let table: toml::Table = toml::from_str(&text)
                .with_context(|| format!("parse config file {}", path.display()))?;
            apply_table(&mut draft, &table, "", &path.display().to_string())?;
        }

        for key in KEYS {
            if let Some(v) = env(key.env).filter(|v| !v.trim().is_empty()) {
                (key.set)(&mut draft, &Raw::Text(&v), key.env)?;
            }
        }

        for (flag, values) in &overrides.flags {
            let key = keys::by_flag(flag).ok_or_else(|| anyhow!("unknown flag --{flag}"))?;
            let name = format!("--{flag}");
            match (key.shape, values.as_slice()) {
                (_, []) => {}
                (Shape::List, values) => (key.set)(&mut draft, &Raw::List(values), &name)?,
                (Shape::Switch, values) => {
                    // A flag turns a switch on; it cannot turn it off.
                    let mut on = false;
                    for v in values {
                        on |= parse_bool(v, &name)?;
                    }
                    if on {
                        (key.set)(&mut draft, &Raw::Text("true"), &name)?;
                    }
                }
                (Shape::Value, [.., last]) => (key.set)(&mut draft, &Raw::Text(last), &name)?,
            }
        }

        let config = draft.finish()?;
        config.check_together()?;
        Ok(config)
    }

    /// The HS256 secret: configured, else `{data_dir}/auth-secret`, created with 32 random
    /// bytes (hex) and mode 0600 on first use, so `lectern token mint --data-dir` can read the
    /// same secret. The key is the file's text (the 64 hex digits), so copying the file into
    /// `LECTERN_AUTH_SECRET` gives the same tokens.
    ///
    /// A node enrolled with `lectern cluster issue-node` finds the cluster's secret in its
    /// certificate directory (`{mesh.tls_dir}/auth-secret`, made once by `lectern cluster
    /// init`); that one comes before the data directory's, so every node of the cluster, and
    /// `lectern token mint` with any node's configuration, accept and sign the same tokens.
    pub fn resolve_secret(&self) -> anyhow::Result<Vec<u8>> {
        if let Some(secret) = &self.auth.hs256_secret {
            return Ok(secret.as_bytes().to_vec());
        }
        if let Some(dir) = &self.mesh.tls_dir
            && let Some(secret) = read_secret(&dir.join(SECRET_FILE))?
        {
            return Ok(secret);
        }
        let path = self.data_dir.join(SECRET_FILE);
        if let Some(secret) = read_secret(&path)? {
            return Ok(secret);
        }
        {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.data_dir)
                .with_context(|| format!("create data directory {}", self.data_dir.display()))?;
        }
        create_secret(&path)?;
        read_secret(&path)?.with_context(|| format!("read back {}", path.display()))
    }

    /// Checks the settings that only make sense together.
    fn check_together(&self) -> anyhow::Result<()> {
        match (&self.auth.public_key_pem_file, &self.auth.public_key_alg) {
            (Some(_), None) => bail!(
                "auth.public_key_pem_file is set but auth.public_key_alg is not (\"EdDSA\" or \"RS256\")"
            ),
            (None, Some(_)) => {
                bail!("auth.public_key_alg is set but auth.public_key_pem_file is not")
            }
            _ => Ok(()),
        }
    }
}

/// Applies every key of a file table; `prefix` is the table's dotted name, `file` names the
/// file in errors.
fn apply_table(
    draft: &mut Draft,
    table: &toml::Table,
    prefix: &str,
    file: &str,
) -> anyhow::Result<()> {
    for (name, value) in table {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match (keys::by_file(&path), value) {
            (Some(key), value) => {
                (key.set)(draft, &Raw::Toml(value), &format!("{path} in {file}"))?
            }
            (None, toml::Value::Table(inner)) if keys::is_section(&path) => {
                apply_table(draft, inner, &path, file)?;
            }
            (None, _) => bail!("unknown key `{path}` in {file}"),
        }
    }
    Ok(())
}

impl Draft {
    /// The configuration once every layer is applied: the SMTP keys become a server if a host
    /// is set.
    fn finish(self) -> anyhow::Result<Config> {
        let Draft { mut config, smtp } = self;
        match smtp.host {
            Some(host) => {
                let tls = smtp.tls.unwrap_or(lectern_jobs::TlsMode::Starttls);
                config.notify.smtp = Some(SmtpSettings {
                    host,
                    port: smtp.port.unwrap_or_else(|| default_port(tls)),
                    tls,
                    username: smtp.username,
                    password: smtp.password,
                    timeout_ms: smtp.timeout_ms.unwrap_or(SMTP_TIMEOUT_DEFAULT_MS),
                });
            }
            None => {
                if let Some(source) = smtp.first {
                    bail!("{source}: notify.smtp.host (LECTERN_SMTP_HOST) is not set");
                }
            }
        }
        Ok(config)
    }
}

/// The usual port of an SMTP TLS mode.
fn default_port(tls: lectern_jobs::TlsMode) -> u16 {
    match tls {
        lectern_jobs::TlsMode::None => 25,
        lectern_jobs::TlsMode::Starttls => 587,
        lectern_jobs::TlsMode::Tls => 465,
    }
}

fn parse_tls(raw: &str, key: &str) -> anyhow::Result<lectern_jobs::TlsMode> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "none" => Ok(lectern_jobs::TlsMode::None),
        "starttls" => Ok(lectern_jobs::TlsMode::Starttls),
        "tls" => Ok(lectern_jobs::TlsMode::Tls),
        _ => bail!("{key}: invalid value {raw:?}: expected \"none\", \"starttls\" or \"tls\""),
    }
}

fn check_host(raw: &str, key: &str) -> anyhow::Result<String> {
    let host = raw.trim();
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
        bail!("{key}: invalid value {raw:?}: expected a host name or address");
    }
    Ok(host.to_owned())
}

fn check_domain(raw: &str, key: &str) -> anyhow::Result<String> {
    let domain = raw.trim().trim_start_matches('@');
    if domain.is_empty()
        || !domain.contains('.')
        || domain.chars().any(|c| c.is_whitespace() || c == '@')
    {
        bail!("{key}: invalid value {raw:?}: expected a mail domain such as example.edu");
    }
    Ok(domain.to_owned())
}

fn check_from(raw: &str, key: &str) -> anyhow::Result<String> {
    let from = raw.trim();
    if !from.contains('@') {
        bail!(
            "{key}: invalid value {raw:?}: expected a mailbox such as \"Lectern <no-reply@example.edu>\""
        );
    }
    Ok(from.to_owned())
}

fn check_extend_h(v: u64, key: &str) -> anyhow::Result<u64> {
    if v > TOKEN_EXTEND_MAX_H {
        bail!("{key}: {v} h is more than the {TOKEN_EXTEND_MAX_H} h allowed");
    }
    Ok(v)
}

fn check_hour(v: u64, key: &str) -> anyhow::Result<u64> {
    if v > 23 {
        bail!("{key}: invalid value {v}: expected an hour from 0 to 23");
    }
    Ok(v)
}

/// Parses `raw` with `FromStr`; the error names `key` and quotes the value.
fn parse_value<T>(raw: &str, key: &str) -> anyhow::Result<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    raw.trim()
        .parse()
        .map_err(|e| anyhow!("{key}: invalid value {raw:?}: {e}"))
}

/// `1/true/yes/on` or `0/false/no/off`, in any case.
fn parse_bool(raw: &str, key: &str) -> anyhow::Result<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => bail!("{key}: invalid value {raw:?}: expected true or false"),
    }
}

/// A path must not be empty.
fn check_path(path: PathBuf, key: &str) -> anyhow::Result<PathBuf> {
    if path.as_os_str().is_empty() {
        bail!("{key}: the path is empty");
    }
    Ok(path)
}

/// An absolute `http://` or `https://` URL; a trailing `/` is dropped.
fn check_url(raw: &str) -> Result<String, String> {
    let url = raw.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("invalid value {raw:?}: expected an http:// or https:// URL"))?;
    if rest.is_empty() || rest.chars().any(char::is_whitespace) {
        return Err(format!(
            "invalid value {raw:?}: expected a host after the scheme"
        ));
    }
    Ok(url.to_owned())
}

fn check_urls(urls: Vec<String>, key: &str) -> anyhow::Result<Vec<String>> {
    urls.iter()
        .map(|u| check_url(u).map_err(|e| anyhow!("{key}: {e}")))
        .collect()
}

fn check_secret(secret: String, key: &str) -> anyhow::Result<String> {
    if secret.len() < SECRET_LEN_MIN_BYTES {
        bail!(
            "{key}: the secret is {} bytes long; use at least {SECRET_LEN_MIN_BYTES} random bytes",
            secret.len()
        );
    }
    Ok(secret)
}

/// `EdDSA` or `RS256` (any case), returned in its canonical spelling.
fn check_alg(raw: &str, key: &str) -> anyhow::Result<String> {
    match raw.trim().to_ascii_uppercase().as_str() {
        "EDDSA" => Ok("EdDSA".to_owned()),
        "RS256" => Ok("RS256".to_owned()),
        _ => bail!("{key}: invalid value {raw:?}: expected \"EdDSA\" or \"RS256\""),
    }
}

/// Parses one `NAME=COHORT+COHORT` entry of `mesh.peer_cohorts`.
fn check_peer_cohorts(entry: &str, key: &str) -> anyhow::Result<(String, Vec<String>)> {
    let Some((name, cohorts)) = entry.split_once('=') else {
        bail!("{key}: invalid value {entry:?}: expected NAME=COHORT+COHORT");
    };
    let name = check_node_name(name, key)?;
    let cohorts: Vec<String> = cohorts.split('+').map(|c| c.trim().to_owned()).collect();
    for c in &cohorts {
        if c.parse::<lectern_model::CohortId>().is_err() {
            bail!("{key}: invalid value {entry:?}: {c:?} is not a cohort id");
        }
    }
    Ok((name, cohorts))
}

/// `text` or `json` (any case).
/// A Sentry DSN: `http(s)://PUBLIC_KEY@HOST[:PORT]/PROJECT_ID`, checked by the sentry crate's
/// own parser so that a typo stops the node at start rather than dropping every event.
fn check_dsn(raw: &str, key: &str) -> anyhow::Result<String> {
    raw.parse::<sentry::types::Dsn>().map_err(|e| {
        anyhow::anyhow!(
            "{key}: {raw:?} is not a Sentry DSN ({e}); it looks like https://KEY@HOST/PROJECT"
        )
    })?;
    Ok(raw.to_owned())
}

fn check_log_format(raw: &str, key: &str) -> anyhow::Result<LogFormat> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => bail!("{key}: invalid value {raw:?}: expected \"text\" or \"json\""),
    }
}

fn check_node_name(v: &str, key: &str) -> anyhow::Result<String> {
    lectern_mesh::tls::validate_node_name(v.trim()).map_err(|e| anyhow!("{key}: {e}"))?;
    Ok(v.trim().to_owned())
}

fn check_nonempty(v: &str, key: &str) -> anyhow::Result<String> {
    if v.trim().is_empty() {
        bail!("{key}: the value is empty");
    }
    Ok(v.trim().to_owned())
}

/// Every peer must parse as `NAME@HOST:PORT` (resolved later, when dialled).
fn check_peers(peers: Vec<String>, key: &str) -> anyhow::Result<Vec<String>> {
    for peer in &peers {
        let Some((name, addr)) = peer.split_once('@') else {
            bail!("{key}: invalid peer {peer:?}: expected NAME@HOST:PORT");
        };
        lectern_mesh::tls::validate_node_name(name).map_err(|e| anyhow!("{key}: {e}"))?;
        if addr
            .rsplit_once(':')
            .is_none_or(|(_, port)| port.parse::<u16>().is_err())
        {
            bail!("{key}: invalid peer {peer:?}: expected NAME@HOST:PORT");
        }
    }
    Ok(peers)
}

fn check_coalesce(v: u64, key: &str) -> anyhow::Result<u64> {
    if v > PUSH_COALESCE_MAX_MS {
        bail!("{key}: {v} ms is more than the {PUSH_COALESCE_MAX_MS} ms allowed");
    }
    Ok(v)
}

fn check_resume_wait(v: u64, key: &str) -> anyhow::Result<u64> {
    if v > RESUME_WAIT_MAX_MS {
        bail!("{key}: {v} ms is more than the {RESUME_WAIT_MAX_MS} ms allowed");
    }
    Ok(v)
}

fn check_leeway(v: u64, key: &str) -> anyhow::Result<u64> {
    if v > LEEWAY_MAX_S {
        bail!("{key}: {v} s is more than the {LEEWAY_MAX_S} s allowed");
    }
    Ok(v)
}

fn check_lifetime(v: u64, key: &str) -> anyhow::Result<u64> {
    if v == 0 || v > TOKEN_LIFETIME_MAX_MAX_S {
        bail!("{key}: {v} s is not between 1 and {TOKEN_LIFETIME_MAX_MAX_S} s");
    }
    Ok(v)
}

fn check_rate(v: f64, key: &str) -> anyhow::Result<f64> {
    if !(v.is_finite() && v > 0.0) {
        bail!("{key}: invalid value {v}: expected a positive number");
    }
    Ok(v)
}

fn check_min_1<T: PartialOrd + From<u8> + std::fmt::Display>(v: T, key: &str) -> anyhow::Result<T> {
    if v < T::from(1) {
        bail!("{key}: invalid value {v}: expected at least 1");
    }
    Ok(v)
}

/// Reads an existing secret file: `None` if there is none yet.
fn read_secret(path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    let text = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("read secret file {}", path.display())),
    };
    if text.len() > SECRET_FILE_LEN_MAX_BYTES {
        bail!(
            "secret file {} is {} bytes long, more than the {SECRET_FILE_LEN_MAX_BYTES} allowed",
            path.display(),
            text.len()
        );
    }
    let secret = text.trim_ascii().to_vec();
    if secret.len() < SECRET_LEN_MIN_BYTES {
        bail!(
            "secret file {} holds {} bytes; delete it to generate a new one",
            path.display(),
            secret.len()
        );
    }
    warn_if_readable_by_others(path);
    Ok(Some(secret))
}

/// Writes a fresh secret to `path` unless another process got there first. The secret is
/// written and fsynced under a temporary name, then hard-linked into place: a link fails if
/// the name exists, so two processes starting at once agree on one secret and neither can read
/// a half-written file.
/// Makes the cluster's token secret beside its CA (`lectern cluster init`): `{dir}/auth-secret`,
/// 32 random bytes as hex, mode 0600; an existing one is kept.
pub fn create_cluster_secret(dir: &Path) -> anyhow::Result<()> {
    create_secret(&dir.join(SECRET_FILE))
}

/// Copies the cluster's token secret from the CA directory into a node's certificate
/// directory (`lectern cluster issue-node`), mode 0600. Returns false when the CA directory has
/// none (a CA made before clusters had one: its nodes keep their own secrets).
pub fn install_cluster_secret(ca_dir: &Path, node_dir: &Path) -> anyhow::Result<bool> {
    let Some(secret) = read_secret(&ca_dir.join(SECRET_FILE))? else {
        return Ok(false);
    };
    let mut text = secret;
    text.push(b'\n');
    let path = node_dir.join(SECRET_FILE);
    write_private(&path, &text).with_context(|| format!("write {}", path.display()))?;
    Ok(true)
}

fn create_secret(path: &Path) -> anyhow::Result<()> {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = path.with_file_name(format!(
        "{SECRET_FILE}.tmp-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let written = write_private(&tmp, format!("{hex}\n").as_bytes());
    let linked = written.and_then(|()| match fs::hard_link(&tmp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    });
    let _ = fs::remove_file(&tmp);
    linked.with_context(|| format!("create secret file {}", path.display()))
}

/// Creates `path` (which must not exist) readable by its owner only, writes and fsyncs it.
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// A secret others can read is not secret; say so, but keep working (the operator decides).
fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "the auth secret file is readable by other users; chmod 600 it"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

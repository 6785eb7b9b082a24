//! The one table of configuration keys: for each, its name in `lectern.toml`, its environment
//! variable, its command-line flag (if it has one), its documented default, its one-line
//! meaning and the function that checks a value and stores it.
//!
//! The file loader, the environment loader, the clap flags of `lectern-node` and the generated
//! reference (`docs/configuration.md`) all read [`KEYS`], so adding a key is one entry here
//! (plus the typed field it fills). Every layer hands a key's setter a [`Raw`] value and the
//! name of its source (`limits.conns_max in ./lectern.toml`, `LECTERN_CONNS_MAX`,
//! `--http`), so one check gives the same error whichever layer the value came from.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::bail;

use super::{
    Config, DAY_MS, HOUR_MS, check_alg, check_coalesce, check_domain, check_dsn, check_extend_h,
    check_from, check_host, check_hour, check_leeway, check_lifetime, check_log_format,
    check_min_1, check_node_name, check_nonempty, check_path, check_peer_cohorts, check_peers,
    check_rate, check_resume_wait, check_secret, check_url, check_urls, parse_bool, parse_tls,
    parse_value,
};

/// How a key is written on the command line and in the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One value.
    Value,
    /// A list: a TOML array of strings, a comma-separated variable, a repeatable flag (the
    /// flags replace the list of the other layers).
    List,
    /// `true`/`false`; its flag takes no value and turns it on (a flag cannot turn it off).
    Switch,
}

/// One configuration key, as every layer names it.
pub struct Key {
    /// Dotted name in the file: `limits.conns_max` is `conns_max` in `[limits]`.
    pub file: &'static str,
    /// Environment variable (set and not empty overrides the file).
    pub env: &'static str,
    /// Long command-line flag without its `--` (overrides the environment), if any.
    pub flag: Option<&'static str>,
    /// How the value is written outside the file.
    pub shape: Shape,
    /// The default as TOML text (what `deploy/lectern.toml` states), or `None` when unset by
    /// default (the meaning then says what unset means).
    pub default: Option<&'static str>,
    /// A valid value other than the default, as TOML text (shown in the reference; the tests
    /// load it through every layer).
    pub example: &'static str,
    /// What the key means, with its unit, in one line.
    pub doc: &'static str,
    /// Checks a value and stores it; the `&str` names the source in errors.
    pub(super) set: Setter,
}

/// The function of a key that checks a value and stores it in the draft.
pub(super) type Setter = fn(&mut Draft, &Raw<'_>, &str) -> anyhow::Result<()>;

impl Key {
    /// The table the key lives in (`""` for the top level).
    pub fn section(&self) -> &'static str {
        self.file.rsplit_once('.').map_or("", |(s, _)| s)
    }

    /// The key's name inside its table.
    pub fn leaf(&self) -> &'static str {
        self.file.rsplit_once('.').map_or(self.file, |(_, l)| l)
    }
}

/// A key with no flag, one value, no default.
const fn key(file: &'static str, env: &'static str, doc: &'static str, set: Setter) -> Key {
    Key {
        file,
        env,
        flag: None,
        shape: Shape::Value,
        default: None,
        example: "",
        doc,
        set,
    }
}

impl Key {
    const fn flag(mut self, flag: &'static str) -> Key {
        self.flag = Some(flag);
        self
    }
    const fn list(mut self) -> Key {
        self.shape = Shape::List;
        self
    }
    const fn switch(mut self) -> Key {
        self.shape = Shape::Switch;
        self
    }
    const fn example(mut self, toml: &'static str) -> Key {
        self.example = toml;
        self
    }
    const fn default(mut self, toml: &'static str) -> Key {
        self.default = Some(toml);
        self
    }
}

/// A value as one layer gives it.
pub(super) enum Raw<'a> {
    /// From the file.
    Toml(&'a toml::Value),
    /// From an environment variable or a flag.
    Text(&'a str),
    /// From a repeated flag.
    List(&'a [String]),
}

impl Raw<'_> {
    /// The value as text.
    fn text(&self, key: &str) -> anyhow::Result<String> {
        match self {
            Raw::Toml(toml::Value::String(s)) => Ok(s.clone()),
            Raw::Text(s) => Ok((*s).to_owned()),
            Raw::Toml(v) => bail!("{key}: invalid value {v}: expected a string"),
            Raw::List(_) => bail!("{key}: expected one value"),
        }
    }

    /// The value parsed with `FromStr` (a TOML number or string, or text).
    fn parse<T>(&self, key: &str) -> anyhow::Result<T>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        let text = match self {
            Raw::Toml(toml::Value::Integer(i)) => i.to_string(),
            Raw::Toml(toml::Value::Float(f)) => f.to_string(),
            _ => self.text(key)?,
        };
        parse_value(&text, key)
    }

    fn path(&self, key: &str) -> anyhow::Result<PathBuf> {
        check_path(PathBuf::from(self.text(key)?), key)
    }

    fn bool(&self, key: &str) -> anyhow::Result<bool> {
        match self {
            Raw::Toml(toml::Value::Boolean(b)) => Ok(*b),
            _ => parse_bool(&self.text(key)?, key),
        }
    }

    /// A list: a TOML array of strings, comma-separated text, or repeated flags.
    fn list(&self, key: &str) -> anyhow::Result<Vec<String>> {
        match self {
            Raw::Toml(toml::Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    toml::Value::String(s) => Ok(s.clone()),
                    other => bail!("{key}: invalid item {other}: expected a string"),
                })
                .collect(),
            Raw::Toml(v) => bail!("{key}: invalid value {v}: expected a list of strings"),
            Raw::Text(s) => Ok(s
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect()),
            Raw::List(items) => Ok(items.to_vec()),
        }
    }

    /// A number of at least 1.
    fn min_1<T>(&self, key: &str) -> anyhow::Result<T>
    where
        T: FromStr + PartialOrd + From<u8> + std::fmt::Display,
        T::Err: std::fmt::Display,
    {
        check_min_1(self.parse(key)?, key)
    }
}

/// The configuration while the layers are applied; the SMTP keys are gathered apart and make
/// an SMTP server once the host is known (the port's default depends on the TLS mode).
#[derive(Debug, Default)]
pub(super) struct Draft {
    pub(super) config: Config,
    pub(super) smtp: SmtpDraft,
}

/// The `notify.smtp.*` keys as set so far.
#[derive(Debug, Default)]
pub(super) struct SmtpDraft {
    pub(super) host: Option<String>,
    pub(super) port: Option<u16>,
    pub(super) tls: Option<lectern_jobs::TlsMode>,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) timeout_ms: Option<u64>,
    /// The source of the first key other than the host set (named when the host is missing).
    pub(super) first: Option<String>,
}

impl Draft {
    /// The SMTP keys, noting `source` as one that needs a host.
    fn smtp_key(&mut self, source: &str) -> &mut SmtpDraft {
        self.smtp.first.get_or_insert_with(|| source.to_owned());
        &mut self.smtp
    }
}

/// Every configuration key, in the order the reference lists them.
#[rustfmt::skip]
pub static KEYS: &[Key] = &[
    key("data_dir", "LECTERN_DATA_DIR", "Directory of the node's store and of the generated `auth-secret`.",
        |d, v, k| { d.config.data_dir = v.path(k)?; Ok(()) })
        .flag("data-dir").default("\"./lectern-data\"").example("\"/var/lib/lectern\""),
    key("http", "LECTERN_HTTP", "Address HTTP (Socket.IO, SSE, REST, `/healthz`, `/metrics`) is served on; loopback by default, port 0 picks a free port.",
        |d, v, k| { d.config.http = v.parse(k)?; Ok(()) })
        .flag("http").default("\"127.0.0.1:8080\"").example("\"0.0.0.0:8080\""),
    key("public_url", "LECTERN_PUBLIC_URL", "Base URL printed in the demo links (what browsers reach, e.g. behind a proxy). Unset: `http://{http}`.",
        |d, v, k| { d.config.public_url = Some(check_url(&v.text(k)?).map_err(|e| anyhow::anyhow!("{k}: {e}"))?); Ok(()) })
        .flag("public-url").example("\"https://lectern.example.edu\""),
    key("cluster_urls", "LECTERN_CLUSTER_URLS", "Public client URLs of the cluster's other nodes, in the order a page fails over to them (`GET /api/nodes`; CORS allows their origins). Unset: the page stays on its node.",
        |d, v, k| { d.config.cluster_urls = check_urls(v.list(k)?, k)?; Ok(()) })
        .flag("cluster-url").list().example("[\"https://us.lectern.example.edu\", \"https://ap.lectern.example.edu\"]"),
    key("allowed_origins", "LECTERN_ALLOWED_ORIGINS", "Browser origins, besides this node's own and `public_url` and `cluster_urls`, whose requests may authenticate with the `lectern_token` cookie.",
        |d, v, k| { d.config.allowed_origins = check_urls(v.list(k)?, k)?; Ok(()) })
        .list().example("[\"https://lms.example.edu\"]"),
    key("demo", "LECTERN_DEMO", "Seed a demo course, cohort and live session, and print a student and an instructor link.",
        |d, v, k| { d.config.demo = v.bool(k)?; Ok(()) })
        .flag("demo").switch().default("false").example("true"),
    key("admin_token", "LECTERN_ADMIN_TOKEN", "Bearer token of the admin API (`/admin/*`, what `lectern status`, `peers` and `jobs` call), at least 16 bytes. Unset: no admin API.",
        |d, v, k| { d.config.admin_token = Some(check_secret(v.text(k)?, k)?); Ok(()) })
        .flag("admin-token").example("\"a long random admin token\""),
    key("admin_http", "LECTERN_ADMIN_HTTP", "A private address that alone serves `/metrics`, `/admin/*` and `/healthz`. Unset: they share the public `http` listener.",
        |d, v, k| { d.config.admin_http = Some(v.parse(k)?); Ok(()) })
        .flag("admin-http").example("\"127.0.0.1:9464\""),
    key("log_format", "LECTERN_LOG_FORMAT", "The node's log lines on stderr: `text`, or `json` (one object a line: timestamp, level, target, message and fields) for a log shipper. The level comes from `LECTERN_LOG` (default `info`).",
        |d, v, k| { d.config.log_format = check_log_format(&v.text(k)?, k)?; Ok(()) })
        .flag("log-format").default("\"text\"").example("\"json\""),
    key("sse_keepalive_s", "LECTERN_SSE_KEEPALIVE_S", "Seconds between the keep-alive comments of an idle SSE stream, so proxies do not close it.",
        |d, v, k| { d.config.sse_keepalive_s = v.min_1(k)?; Ok(()) })
        .default("15").example("30"),
    // [auth]
    key("auth.hs256_secret", "LECTERN_AUTH_SECRET", "HS256 shared secret, at least 16 bytes. Unset: `{mesh.tls_dir}/auth-secret` if there is one, else `{data_dir}/auth-secret`, generated on first start.",
        |d, v, k| { d.config.auth.hs256_secret = Some(check_secret(v.text(k)?, k)?); Ok(()) })
        .example("\"a long random shared secret\""),
    key("auth.public_key_pem_file", "LECTERN_AUTH_PUBLIC_KEY_FILE", "PEM file of an external issuer's public key (with `public_key_alg`). Unset: HS256 tokens only.",
        |d, v, k| { d.config.auth.public_key_pem_file = Some(v.path(k)?); Ok(()) })
        .example("\"/etc/lectern/lms-public.pem\""),
    key("auth.public_key_alg", "LECTERN_AUTH_PUBLIC_KEY_ALG", "Algorithm of that key: `EdDSA` or `RS256`.",
        |d, v, k| { d.config.auth.public_key_alg = Some(check_alg(&v.text(k)?, k)?); Ok(()) })
        .example("\"EdDSA\""),
    key("auth.leeway_s", "LECTERN_AUTH_LEEWAY_S", "Clock-skew allowance on a token's `exp`, in seconds (at most 3600).",
        |d, v, k| { d.config.auth.leeway_s = check_leeway(v.parse(k)?, k)?; Ok(()) })
        .default("30").example("60"),
    key("auth.token_lifetime_max_s", "LECTERN_AUTH_TOKEN_LIFETIME_MAX_S", "Longest a token may live (`exp` − now), in seconds; a longer one is refused `token_too_long`.",
        |d, v, k| { d.config.auth.token_lifetime_max_s = check_lifetime(v.parse(k)?, k)?; Ok(()) })
        .default("31622400").example("2592000"),
    key("auth.audience", "LECTERN_AUTH_AUDIENCE", "The `aud` an external issuer's tokens must carry. Unset: not checked.",
        |d, v, k| { d.config.auth.audience = Some(v.text(k)?); Ok(()) })
        .example("\"lectern\""),
    key("auth.issuer", "LECTERN_AUTH_ISSUER", "The `iss` an external issuer's tokens must carry. Unset: not checked.",
        |d, v, k| { d.config.auth.issuer = Some(v.text(k)?); Ok(()) })
        .example("\"https://lms.example.edu\""),
    // [limits]
    key("limits.commands_per_s", "LECTERN_RATE_COMMANDS_PER_S", "Sustained commands per second per user (a token bucket).",
        |d, v, k| { d.config.limits.commands_per_s = check_rate(v.parse(k)?, k)?; Ok(()) })
        .default("10.0").example("5.5"),
    key("limits.command_burst", "LECTERN_RATE_COMMAND_BURST", "Commands a user may send in a burst.",
        |d, v, k| { d.config.limits.command_burst = v.min_1(k)?; Ok(()) })
        .default("20").example("40"),
    key("limits.payload_max_bytes", "LECTERN_PAYLOAD_MAX_BYTES", "Largest request body or Socket.IO packet, in bytes.",
        |d, v, k| { d.config.limits.payload_max_bytes = v.min_1(k)?; Ok(()) })
        .default("16384").example("65536"),
    key("limits.outbound_queue_max", "LECTERN_OUTBOUND_QUEUE_MAX", "Events queued per connection before a slow consumer is cut off (it resumes by token).",
        |d, v, k| { d.config.limits.outbound_queue_max = v.min_1(k)?; Ok(()) })
        .default("256").example("512"),
    key("limits.outbound_bytes_max", "LECTERN_OUTBOUND_BYTES_MAX", "Bytes queued per connection before a slow consumer is cut off (one frame alone always goes through).",
        |d, v, k| { d.config.limits.outbound_bytes_max = v.min_1(k)?; Ok(()) })
        .default("4194304").example("1048576"),
    key("limits.conns_max", "LECTERN_CONNS_MAX", "Authenticated connections (Socket.IO, SSE, long-poll) per node; with `preauth_max`, at most 90 % of the open-files limit.",
        |d, v, k| { d.config.limits.conns_max = v.min_1(k)?; Ok(()) })
        .default("16000").example("50000"),
    key("limits.conns_per_user_max", "LECTERN_CONNS_PER_USER_MAX", "Connections per user.",
        |d, v, k| { d.config.limits.conns_per_user_max = v.min_1(k)?; Ok(()) })
        .default("16").example("4"),
    key("limits.ping_interval_ms", "LECTERN_PING_INTERVAL_MS", "Socket.IO heartbeat: the server pings this often, in ms.",
        |d, v, k| { d.config.limits.ping_interval_ms = v.min_1(k)?; Ok(()) })
        .default("25000").example("10000"),
    key("limits.ping_timeout_ms", "LECTERN_PING_TIMEOUT_MS", "A connection whose pong has not come within this long is closed, in ms.",
        |d, v, k| { d.config.limits.ping_timeout_ms = v.min_1(k)?; Ok(()) })
        .default("20000").example("5000"),
    key("limits.connect_timeout_ms", "LECTERN_CONNECT_TIMEOUT_MS", "A Socket.IO connection that sends no CONNECT within this long is closed, in ms (socket.io's `connectTimeout`).",
        |d, v, k| { d.config.limits.connect_timeout_ms = v.min_1(k)?; Ok(()) })
        .default("45000").example("10000"),
    key("limits.preauth_max", "LECTERN_PREAUTH_MAX", "Connections accepted that have not authenticated yet, in all; past it a new one gets 503 `node_busy` at once.",
        |d, v, k| { d.config.limits.preauth_max = v.min_1(k)?; Ok(()) })
        .default("2000").example("1000"),
    key("limits.preauth_per_address_max", "LECTERN_PREAUTH_PER_ADDRESS_MAX", "Connections waiting to authenticate from one client address; past it 503 `address_busy` (behind a reverse proxy every client has its address: raise it).",
        |d, v, k| { d.config.limits.preauth_per_address_max = v.min_1(k)?; Ok(()) })
        .default("256").example("64"),
    key("limits.body_read_timeout_ms", "LECTERN_BODY_READ_TIMEOUT_MS", "A request body (REST, polling, uploads) not fully received this long after its head fails, in ms.",
        |d, v, k| { d.config.limits.body_read_timeout_ms = v.min_1(k)?; Ok(()) })
        .default("30000").example("10000"),
    // [error_tracking]
    key("error_tracking.dsn", "LECTERN_ERROR_TRACKING_DSN", "Sentry DSN that panics and error-level log events are sent to (never request data, tokens or breadcrumbs; JWT-shaped text is replaced). Unset: error tracking is off.",
        |d, v, k| { d.config.error_tracking_dsn = Some(check_dsn(&v.text(k)?, k)?); Ok(()) })
        .example("\"https://public-key@o0.ingest.sentry.io/0\""),
    // [classroom]
    key("classroom.upstream", "LECTERN_CLASSROOM_UPSTREAM", "Makes this a classroom node: the region node it syncs with, `NAME@HOST:PORT` (its certificate's name). Needs `classroom.cohorts` and `mesh.tls_dir`.",
        |d, v, k| { d.config.classroom.upstream = check_peers(vec![v.text(k)?], k)?.pop(); Ok(()) })
        .flag("upstream").example("\"eu-1@region.example:7400\""),
    key("classroom.cohorts", "LECTERN_CLASSROOM_COHORTS", "The cohorts a classroom node serves: it holds their documents (the cohort, its sessions, its members' inboxes) and nothing else.",
        |d, v, k| { d.config.classroom.cohorts = Some(check_cohort_ids(v.list(k)?, k)?); Ok(()) })
        .list().example("[\"cs101-autumn\"]"),
    key("classroom.token_extend_max_h", "LECTERN_CLASSROOM_TOKEN_EXTEND_MAX_H", "How far past the expiry its issuer gave it a classroom node may extend the token of a member of its cohorts (`POST /api/token/refresh`), in hours (at most 168); 0: never.",
        |d, v, k| { d.config.classroom.token_extend_max_h = check_extend_h(v.parse(k)?, k)?; Ok(()) })
        .default("24").example("12"),
    // [mesh]
    key("mesh.name", "LECTERN_MESH_NAME", "This node's cluster name: the `--id` its certificate was issued for.",
        |d, v, k| { d.config.mesh.name = check_node_name(&v.text(k)?, k)?; Ok(()) })
        .flag("mesh-name").default("\"node\"").example("\"sydney-1\""),
    key("mesh.region", "LECTERN_REGION", "This node's region, shown to peers and operators.",
        |d, v, k| { d.config.mesh.region = check_nonempty(&v.text(k)?, k)?; Ok(()) })
        .flag("region").default("\"local\"").example("\"apac\""),
    key("mesh.listen", "LECTERN_MESH_LISTEN", "UDP address to listen on for peers.",
        |d, v, k| { d.config.mesh.listen = v.parse(k)?; Ok(()) })
        .flag("mesh-listen").default("\"127.0.0.1:7400\"").example("\"0.0.0.0:7400\""),
    key("mesh.tls_dir", "LECTERN_MESH_TLS_DIR", "Directory with `node.pem`, `node.key` and `ca.pem` (`lectern cluster issue-node`). Unset: no mesh.",
        |d, v, k| { d.config.mesh.tls_dir = Some(v.path(k)?); Ok(()) })
        .flag("mesh-tls-dir").example("\"/etc/lectern/node-tls\""),
    key("mesh.peers", "LECTERN_MESH_PEERS", "Peers to dial, each `NAME@HOST:PORT`.",
        |d, v, k| { d.config.mesh.peers = check_peers(v.list(k)?, k)?; Ok(()) })
        .flag("peer").list().default("[]").example("[\"berlin-1@10.0.0.2:7400\", \"tokyo-1@10.0.0.3:7400\"]"),
    key("mesh.accept_from", "LECTERN_MESH_ACCEPT_FROM", "Peers, besides those of `mesh.peers`, allowed to dial in (their certificate names); any other certified node is refused at its hello.",
        |d, v, k| { d.config.mesh.accept_from = v.list(k)?.iter().map(|n| check_node_name(n, k)).collect::<anyhow::Result<_>>()?; Ok(()) })
        .list().default("[]").example("[\"classroom-12\"]"),
    key("mesh.share_cohorts", "LECTERN_MESH_SHARE_COHORTS", "Share only these cohorts' documents (the cohort, its sessions, its members' inboxes, the course it follows) with peers, both ways. Unset: share everything.",
        |d, v, k| { d.config.mesh.share_cohorts = Some(v.list(k)?); Ok(()) })
        .list().example("[\"cs101-autumn\"]"),
    key("mesh.peer_cohorts", "LECTERN_MESH_PEER_COHORTS", "Per peer, the only cohorts it may exchange documents of with this node (the cohort, its sessions, its members' inboxes; both ways), each `NAME=COHORT+COHORT`: a classroom node held to the cohorts it serves.",
        |d, v, k| { d.config.mesh.peer_cohorts = v.list(k)?.iter().map(|e| check_peer_cohorts(e, k)).collect::<anyhow::Result<_>>()?; Ok(()) })
        .list().default("[]").example("[\"classroom-12=cs101-autumn+cs102-autumn\"]"),
    key("mesh.prefetch_content", "LECTERN_MESH_PREFETCH_CONTENT", "Bring every content blob (lesson bodies, assets) of the courses this node stores from its peers ahead of time, so its lessons stay readable with the uplink down. False: a blob comes from a peer on its first request only.",
        |d, v, k| { d.config.mesh.prefetch_content = v.bool(k)?; Ok(()) })
        .default("true").example("false"),
    key("mesh.push_coalesce_ms", "LECTERN_MESH_PUSH_COALESCE_MS", "Local changes are pushed to peers at most this often, in ms (at most 20).",
        |d, v, k| { d.config.mesh.push_coalesce_ms = check_coalesce(v.parse(k)?, k)?; Ok(()) })
        .default("10").example("5"),
    key("mesh.reconnect_max_ms", "LECTERN_MESH_RECONNECT_MAX_MS", "Longest wait between two dials of an unreachable peer, in ms (jittered exponential backoff from 100 ms; dials overlap, each lasting up to connect_timeout_ms), so at most this long passes between a link coming back and the dial that finds it.",
        |d, v, k| { d.config.mesh.reconnect_max_ms = v.min_1(k)?; Ok(()) })
        .default("1000").example("500"),
    key("mesh.peer_idle_timeout_ms", "LECTERN_MESH_PEER_IDLE_TIMEOUT_MS", "A peer silent for this long is dead (its connection closes, its presence expires), in ms.",
        |d, v, k| { d.config.mesh.peer_idle_timeout_ms = v.min_1(k)?; Ok(()) })
        .default("5000").example("8000"),
    key("mesh.connect_timeout_ms", "LECTERN_MESH_CONNECT_TIMEOUT_MS", "A dial (QUIC and TLS handshake) that takes longer than this is abandoned and retried, in ms.",
        |d, v, k| { d.config.mesh.connect_timeout_ms = v.min_1(k)?; Ok(()) })
        .default("3000").example("5000"),
    key("mesh.handshakes_max", "LECTERN_MESH_HANDSHAKES_MAX", "Inbound peer connections allowed at once between their first packet and a verified hello.",
        |d, v, k| { d.config.mesh.handshakes_max = v.min_1(k)?; Ok(()) })
        .default("64").example("16"),
    key("mesh.tls_reload_ms", "LECTERN_MESH_TLS_RELOAD_MS", "How often `mesh.tls_dir` is checked for a renewed certificate (`lectern cluster issue-node --renew`) or a new revocation list (`crl.pem`), in ms; a change goes in force without a restart.",
        |d, v, k| { d.config.mesh.tls_reload_ms = v.min_1(k)?; Ok(()) })
        .default("30000").example("60000"),
    key("mesh.resume_wait_ms", "LECTERN_MESH_RESUME_WAIT_MS", "A client failing over with a token from a node that is ahead waits this long for the mesh before it gets a snapshot, in ms (at most 60000; 0 answers at once).",
        |d, v, k| { d.config.mesh.resume_wait_ms = check_resume_wait(v.parse(k)?, k)?; Ok(()) })
        .default("2000").example("5000"),
    // [notify]
    key("notify.outbox_dir", "LECTERN_OUTBOX_DIR", "Where emails are written as `.eml` files when there is no `[notify.smtp]`. Unset: `{data_dir}/outbox`.",
        |d, v, k| { d.config.notify.outbox_dir = Some(v.path(k)?); Ok(()) })
        .example("\"/var/spool/lectern\""),
    key("notify.from", "LECTERN_MAIL_FROM", "The From mailbox of every email.",
        |d, v, k| { d.config.notify.from = check_from(&v.text(k)?, k)?; Ok(()) })
        .default("\"Lectern <no-reply@lectern.invalid>\"").example("\"Course <course@example.edu>\""),
    key("notify.email_domain", "LECTERN_EMAIL_DOMAIN", "Users who gave no address get `{user}@{email_domain}`. Unset: no email without an address.",
        |d, v, k| { d.config.notify.email_domain = Some(check_domain(&v.text(k)?, k)?); Ok(()) })
        .example("\"students.example.edu\""),
    key("notify.workers", "LECTERN_NOTIFY_WORKERS", "Notification jobs running at once.",
        |d, v, k| { d.config.notify.workers = v.min_1(k)?; Ok(()) })
        .default("32").example("8"),
    key("notify.attempts_max", "LECTERN_NOTIFY_ATTEMPTS_MAX", "Attempts before a job is dead-lettered.",
        |d, v, k| { d.config.notify.attempts_max = v.min_1(k)?; Ok(()) })
        .default("8").example("4"),
    key("notify.backoff_base_ms", "LECTERN_NOTIFY_BACKOFF_BASE_MS", "First retry delay, in ms, doubled per attempt (plus up to 25 % jitter).",
        |d, v, k| { d.config.notify.backoff_base_ms = v.min_1(k)?; Ok(()) })
        .default("2000").example("1000"),
    key("notify.backoff_max_ms", "LECTERN_NOTIFY_BACKOFF_MAX_MS", "Longest retry delay, in ms.",
        |d, v, k| { d.config.notify.backoff_max_ms = v.min_1(k)?; Ok(()) })
        .default("3600000").example("600000"),
    key("notify.digest_hour_utc", "LECTERN_DIGEST_HOUR_UTC", "Hour of the day (UTC, 0 to 23) the daily digest goes out.",
        |d, v, k| { d.config.notify.digest_hour_utc = check_hour(v.parse(k)?, k)?; Ok(()) })
        .default("7").example("18"),
    key("notify.leaderboard_interval_ms", "LECTERN_LEADERBOARD_INTERVAL_MS", "The leaderboard stream updates at most this often, in ms.",
        |d, v, k| { d.config.notify.leaderboard_interval_ms = v.min_1(k)?; Ok(()) })
        .default("30000").example("10000"),
    key("notify.dashboard_interval_ms", "LECTERN_DASHBOARD_INTERVAL_MS", "The instructor dashboard stream updates at most this often, in ms.",
        |d, v, k| { d.config.notify.dashboard_interval_ms = v.min_1(k)?; Ok(()) })
        .default("5000").example("2000"),
    key("notify.inactive_days", "LECTERN_INACTIVE_DAYS", "The dashboard lists students inactive for this many days.",
        |d, v, k| { d.config.notify.inactive_days = v.min_1(k)?; Ok(()) })
        .default("7").example("14"),
    key("notify.dashboard_sessions_max", "LECTERN_DASHBOARD_SESSIONS_MAX", "The dashboard reads this many of the cohort's newest sessions.",
        |d, v, k| { d.config.notify.dashboard_sessions_max = v.min_1(k)?; Ok(()) })
        .default("20").example("50"),
    key("notify.finished_jobs_kept_days", "LECTERN_FINISHED_JOBS_KEPT_DAYS", "A finished job's marker (it keeps the job from being queued again) is forgotten after this many days.",
        |d, v, k| { d.config.notify.finished_jobs_kept_ms = v.min_1::<u64>(k)?.saturating_mul(DAY_MS); Ok(()) })
        .default("30").example("7"),
    key("notify.park_unreachable_hours", "LECTERN_PARK_UNREACHABLE_HOURS", "An email waiting for an unreachable mail server longer than this many hours is dead-lettered; 0 turns parking off.",
        |d, v, k| { d.config.notify.park_unreachable_ms = v.parse::<u64>(k)?.saturating_mul(HOUR_MS); Ok(()) })
        .default("72").example("24"),
    key("notify.park_probe_max_ms", "LECTERN_PARK_PROBE_MAX_MS", "While the mail server is unreachable, the longest time between two probes of it, in ms.",
        |d, v, k| { d.config.notify.park_probe_max_ms = v.min_1(k)?; Ok(()) })
        .default("60000").example("30000"),
    // [notify.smtp]
    key("notify.smtp.host", "LECTERN_SMTP_HOST", "The SMTP server's host name. Unset: no SMTP, emails go to `outbox_dir`.",
        |d, v, k| { d.smtp.host = Some(check_host(&v.text(k)?, k)?); Ok(()) })
        .example("\"smtp.example.edu\""),
    key("notify.smtp.tls", "LECTERN_SMTP_TLS", "`none`, `starttls` or `tls` (default `starttls`).",
        |d, v, k| { d.smtp_key(k).tls = Some(parse_tls(&v.text(k)?, k)?); Ok(()) })
        .example("\"tls\""),
    key("notify.smtp.port", "LECTERN_SMTP_PORT", "The SMTP port (default by `tls`: 25, 587 or 465).",
        |d, v, k| { d.smtp_key(k).port = Some(v.parse(k)?); Ok(()) })
        .example("2525"),
    key("notify.smtp.username", "LECTERN_SMTP_USERNAME", "Login, if the server wants one (with `password`).",
        |d, v, k| { d.smtp_key(k).username = Some(v.text(k)?); Ok(()) })
        .example("\"lectern\""),
    key("notify.smtp.password", "LECTERN_SMTP_PASSWORD", "Password for `username`.",
        |d, v, k| { d.smtp_key(k).password = Some(v.text(k)?); Ok(()) })
        .example("\"a password\""),
    key("notify.smtp.timeout_ms", "LECTERN_SMTP_TIMEOUT_MS", "Timeout of an SMTP connection or command, in ms (default 10000).",
        |d, v, k| { d.smtp_key(k).timeout_ms = Some(v.min_1(k)?); Ok(()) })
        .example("5000"),
];

/// The key a file path names.
pub fn by_file(file: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.file == file)
}

/// The key a flag (without `--`) names.
pub fn by_flag(flag: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.flag == Some(flag))
}

/// Whether `path` is a table of the file (`limits`, `notify.smtp`).
pub fn is_section(path: &str) -> bool {
    KEYS.iter().any(|k| {
        k.file
            .strip_prefix(path)
            .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// The clap arguments of every key that has a flag; read them back with [`flags_given`].
pub fn clap_args() -> Vec<clap::Arg> {
    KEYS.iter()
        .filter_map(|k| {
            let flag = k.flag?;
            let help = format!("{} [env {}]", k.doc, k.env);
            let arg = clap::Arg::new(flag).long(flag).help(help);
            Some(match k.shape {
                Shape::Value => arg.action(clap::ArgAction::Set),
                Shape::List => arg.action(clap::ArgAction::Append),
                Shape::Switch => arg.action(clap::ArgAction::SetTrue),
            })
        })
        .collect()
}

/// The flags of [`clap_args`] that the command line gave, as `(flag, values)` for
/// [`super::Overrides::flags`].
pub fn flags_given(matches: &clap::ArgMatches) -> Vec<(String, Vec<String>)> {
    KEYS.iter()
        .filter_map(|k| {
            let flag = k.flag?;
            let values: Vec<String> = match k.shape {
                Shape::Switch => {
                    if matches.get_flag(flag) {
                        vec!["true".to_owned()]
                    } else {
                        Vec::new()
                    }
                }
                Shape::Value | Shape::List => matches
                    .get_many::<String>(flag)
                    .map(|v| v.cloned().collect())
                    .unwrap_or_default(),
            };
            (!values.is_empty()).then(|| (flag.to_owned(), values))
        })
        .collect()
}

/// The reference of every key as Markdown (`docs/configuration.md` is this text;
/// `lectern-node --print-config-reference` prints it).
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the table of keys in `node/src/config/keys.rs`: do not edit by hand, \
         regenerate with\n`cargo run -p lectern-node -- --print-config-reference > docs/configuration.md`\n\
         (a test fails when this file is stale).\n\n\
         Layers, each overriding the one before: defaults < `lectern.toml` (or `--config FILE`) \
         < environment (`LECTERN_*`; set but empty counts as unset) < command-line flags. \
         Unknown keys in the file are errors; an invalid value is an error naming the key and \
         where it came from. Lists are TOML arrays in the file, comma-separated in the \
         environment, and repeated flags (which replace the other layers' list). \
         `deploy/lectern.toml` is a commented sample stating every default.\n",
    );
    let mut section = None;
    for k in KEYS {
        if section != Some(k.section()) {
            section = Some(k.section());
            let title = if k.section().is_empty() {
                "Top level".to_owned()
            } else {
                format!("`[{}]`", k.section())
            };
            out.push_str(&format!(
                "\n## {title}\n\n| Key | Environment | Flag | Default | Example | Meaning |\n|---|---|---|---|---|---|\n"
            ));
        }
        let flag = match (k.flag, k.shape) {
            (Some(f), Shape::List) => format!("`--{f}` (repeatable)"),
            (Some(f), _) => format!("`--{f}`"),
            (None, _) => String::new(),
        };
        let default = k
            .default
            .map_or_else(|| "unset".to_owned(), |d| format!("`{d}`"));
        out.push_str(&format!(
            "| `{}` | `{}` | {flag} | {default} | `{}` | {} |\n",
            k.leaf(),
            k.env,
            k.example,
            k.doc
        ));
    }
    out
}

/// Every entry of `list` is a cohort id (a mistyped one would otherwise be dropped quietly,
/// and a classroom node would hold nothing of it).
fn check_cohort_ids(list: Vec<String>, key: &str) -> anyhow::Result<Vec<String>> {
    for c in &list {
        if let Err(e) = c.parse::<lectern_model::CohortId>() {
            bail!("{key}: {c:?} is not a cohort id: {e}");
        }
    }
    Ok(list)
}

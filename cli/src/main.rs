//! `lectern`: the operator's command. It inspects a node's store (with the node stopped, since
//! sled holds an exclusive lock), checks a node's health over HTTP, and mints tokens with the
//! node's own secret (same config layers, same `auth-secret` file), so an operator can hand out
//! a link without an identity provider. `cluster init` / `cluster issue-node` create the mesh's
//! CA and node certificates; `status` and `peers` ask a running node's admin API.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use lectern_gateway::auth::{AuthConfig, Claims, Verifier, mint};
use lectern_node::config::{Config, Overrides};

/// Longest lifetime `lectern token mint` grants, in seconds (one year): a token cannot be
/// revoked, only left to expire.
const TOKEN_TTL_MAX_S: u64 = 366 * 24 * 3600;

/// Operate Lectern nodes.
#[derive(Debug, Parser)]
#[command(name = "lectern", version, about)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Inspect a stopped node's store: node id, boot epoch, documents and size.
    StoreInfo {
        /// The node's data directory.
        #[arg(long, default_value = "./lectern-data")]
        data_dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
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
}

/// How to reach a node's admin API.
#[derive(Debug, clap::Args)]
struct AdminArgs {
    /// The node's HTTP address (host:port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: String,
    /// The node's admin token.
    #[arg(long, env = "LECTERN_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum ClusterCmd {
    /// Create a cluster CA: DIR/ca.pem and DIR/ca.key (keep the key offline).
    Init {
        /// Where to write the CA (must not hold one yet).
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a node certificate signed by the cluster CA: DIR/node.pem, DIR/node.key, DIR/ca.pem.
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
    },
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
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lectern: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Cmd::StoreInfo { data_dir, json } => {
            let store = lectern_store::Store::open(&data_dir)
                .with_context(|| format!("open store at {}", data_dir.display()))?;
            let id = store.identity();
            let docs = store.doc_ids().context("list documents")?;
            let size = store.size_on_disk().context("measure the store")?;
            if json {
                let v = serde_json::json!({
                    "node": id.node_id.to_string(),
                    "bootEpoch": id.boot_epoch,
                    "documents": docs,
                    "bytesOnDisk": size,
                });
                println!("{v:#}");
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
            let body = http_get(&http, "/healthz")?;
            println!("{body}");
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
            let overrides = Overrides {
                config_file: config,
                data_dir,
                ..Overrides::default()
            };
            let config = Config::load(overrides, &|k| std::env::var(k).ok())
                .context("load the node configuration")?;
            let secret = config
                .resolve_secret()
                .context("resolve the HS256 secret")?;
            let now_s = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .context("read the clock")?
                .as_secs();
            let claims = Claims {
                name: name.unwrap_or_else(|| user.clone()),
                sub: user,
                role,
                cohorts,
                exp: now_s.saturating_add(ttl_s),
                iat: now_s,
            };
            let token = mint(&secret, &claims).context("sign the token")?;
            // Verify with the node's own rules so a bad user or cohort id is reported here,
            // not as a refusal when the link is first opened.
            let verifier = Verifier::new(&AuthConfig {
                hs256_secret: secret,
                public_key: None,
                leeway_s: config.auth.leeway_s,
            })
            .context("load the HS256 secret")?;
            verifier
                .verify(&token, now_s)
                .context("the node would refuse this token")?;
            println!("{token}");
            Ok(())
        }
        Cmd::Cluster {
            command: ClusterCmd::Init { out },
        } => {
            let ca = lectern_mesh::ClusterCa::generate()?;
            ca.write(&out)?;
            println!("cluster CA written to {}", out.display());
            Ok(())
        }
        Cmd::Cluster {
            command: ClusterCmd::IssueNode { id, ca, out },
        } => {
            let ca = lectern_mesh::ClusterCa::read(&ca)?;
            ca.issue_node(&id)?.write(&out)?;
            println!("node certificate for {id} written to {}", out.display());
            Ok(())
        }
        Cmd::Status { admin } => {
            let body = admin_get(&admin, "/admin/status")?;
            let v: serde_json::Value =
                serde_json::from_str(&body).context("parse the node's answer")?;
            if admin.json {
                println!("{v:#}");
                return Ok(());
            }
            let s = |k: &str| v[k].as_str().unwrap_or("-").to_owned();
            println!("node:      {} ({})", s("name"), s("nodeId"));
            println!("region:    {}", s("region"));
            println!("quic:      {}", s("quic"));
            println!("uptime:    {} s", v["uptimeS"]);
            println!("documents: {} ({} loaded)", v["documents"], v["docsLoaded"]);
            print_peers(&v["peers"]);
            Ok(())
        }
        Cmd::Peers { admin } => {
            let body = admin_get(&admin, "/admin/peers")?;
            let v: serde_json::Value =
                serde_json::from_str(&body).context("parse the node's answer")?;
            if admin.json {
                println!("{v:#}");
            } else {
                print_peers(&v["peers"]);
            }
            Ok(())
        }
    }
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

/// GET `path` from the admin API with the admin token.
fn admin_get(admin: &AdminArgs, path: &str) -> anyhow::Result<String> {
    http_request(
        &admin.http,
        path,
        &format!("Authorization: Bearer {}\r\n", admin.admin_token),
    )
}

/// A minimal HTTP/1.0 GET, enough for a health probe without an HTTP client dependency.
fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    http_request(addr, path, "")
}

/// A minimal HTTP/1.0 GET with extra header lines (each ending in CRLF).
fn http_request(addr: &str, path: &str, headers: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}\r\n"
    )
    .context("send the request")?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .context("read the response")?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("the response has no header end")?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        bail!("{path} answered {status}");
    }
    Ok(body.to_owned())
}

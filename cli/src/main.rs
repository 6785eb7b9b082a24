//! `lectern`: the operator's command. It inspects a node's store (with the node stopped, since
//! sled holds an exclusive lock), checks a node's health over HTTP, and mints tokens with the
//! node's own secret (same config layers, same `auth-secret` file), so an operator can hand out
//! a link without an identity provider; cluster commands arrive with the mesh.

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
    }
}

/// A minimal HTTP/1.0 GET, enough for a health probe without an HTTP client dependency.
fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").context("send the request")?;
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

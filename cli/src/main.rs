//! `lectern`: the operator's command. Today it inspects a node's store (with the node
//! stopped, since sled holds an exclusive lock) and checks a node's health over HTTP; cluster
//! and token commands arrive with the mesh and gateway.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

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

//! `lectern-node`: runs one Lectern node until SIGTERM or SIGINT.
//!
//! Configuration: `lectern.toml` < environment (`LECTERN_*`) < these flags; see
//! `deploy/lectern.toml` for every key and its default.
//!
//! `--demo --nodes N` starts a demo cluster in this process: N nodes, each with its own store
//! (`{data_dir}/{name}`), HTTP port (`--http` port + i) and QUIC port (`--mesh-listen` port + i),
//! connected by real mutual TLS with a cluster CA generated under `{data_dir}/cluster`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use lectern_node::config::{Config, Overrides};
use lectern_node::{shutdown_signal, start};

/// Runs a Lectern regional node.
#[derive(Debug, Parser)]
#[command(name = "lectern-node", version, about)]
struct Args {
    /// TOML configuration file (default: ./lectern.toml if it exists).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Directory of the node's store [default: ./lectern-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to serve HTTP on [default: 127.0.0.1:8080].
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Base URL for printed links [default: http://<http>].
    #[arg(long)]
    public_url: Option<String>,
    /// Another node's public client URL, where the page fails over (repeatable, in order).
    #[arg(long = "cluster-url")]
    cluster_urls: Vec<String>,
    /// Seed a demo course, cohort and live session, and print links to it.
    #[arg(long)]
    demo: bool,
    /// With --demo: start a cluster of this many nodes in this process.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=9))]
    nodes: u16,
    /// This node's cluster name (the --id of its certificate).
    #[arg(long)]
    mesh_name: Option<String>,
    /// This node's region.
    #[arg(long)]
    region: Option<String>,
    /// UDP address to listen on for peers [default: 127.0.0.1:7400].
    #[arg(long)]
    mesh_listen: Option<SocketAddr>,
    /// Directory with node.pem, node.key and ca.pem; turns the mesh on.
    #[arg(long)]
    mesh_tls_dir: Option<PathBuf>,
    /// A peer to dial, NAME@HOST:PORT (repeatable).
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Bearer token of the admin API (/admin/status, /admin/peers).
    #[arg(long)]
    admin_token: Option<String>,
    /// A private address for /metrics, /admin/* and /healthz (off the public listener).
    #[arg(long)]
    admin_http: Option<SocketAddr>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LECTERN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let overrides = Overrides {
        config_file: args.config,
        data_dir: args.data_dir,
        http: args.http,
        public_url: args.public_url,
        cluster_urls: args.cluster_urls,
        demo: args.demo,
        mesh_name: args.mesh_name,
        region: args.region,
        mesh_listen: args.mesh_listen,
        mesh_tls_dir: args.mesh_tls_dir,
        peers: args.peers,
        admin_token: args.admin_token,
        admin_http: args.admin_http,
    };
    let nodes = args.nodes;
    let config = match Config::load(overrides, &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lectern: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lectern: start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let stop = shutdown_signal();
        if config.demo && nodes > 1 {
            let cluster = lectern_node::start_demo_cluster(config, usize::from(nodes)).await?;
            for (name, node) in &cluster {
                println!("node {name}: http://{}", node.http_addr);
                if let Some(demo) = &node.demo {
                    println!("student: {}", demo.student);
                    println!("instructor: {}", demo.instructor);
                }
            }
            stop.await;
            for (_, node) in cluster {
                node.stop().await?;
            }
            return Ok(());
        }
        let node = start(config).await?;
        println!("node: http://{}", node.http_addr);
        if let Some(demo) = &node.demo {
            println!("session: {}", demo.session);
            println!("student: {}", demo.student);
            println!("instructor: {}", demo.instructor);
        }
        stop.await;
        node.stop().await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lectern: {e:#}");
            ExitCode::FAILURE
        }
    }
}

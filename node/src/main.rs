//! `lectern-node`: runs one Lectern node until SIGTERM or SIGINT.
//!
//! Configuration: `lectern.toml` < environment (`LECTERN_*`) < these flags; see
//! `deploy/lectern.toml` for every key and its default.

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
    /// Seed a demo course, cohort and live session, and print links to it.
    #[arg(long)]
    demo: bool,
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
        demo: args.demo,
    };
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

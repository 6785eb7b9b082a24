//! `lectern-node`: runs one Lectern node until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use lectern_node::{NodeConfig, shutdown_signal, start};

/// Runs a Lectern regional node.
#[derive(Debug, Parser)]
#[command(name = "lectern-node", version, about)]
struct Args {
    /// Directory of the node's store.
    #[arg(long, env = "LECTERN_DATA_DIR", default_value = "./lectern-data")]
    data_dir: PathBuf,
    /// Address to serve HTTP on.
    #[arg(long, env = "LECTERN_HTTP", default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Seed a demo course, cohort and live session.
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
    let config = NodeConfig {
        data_dir: args.data_dir,
        http: args.http,
        demo: args.demo,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lectern: start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let demo = config.demo;
    let result = runtime.block_on(async move {
        let stop = shutdown_signal();
        let node = start(config).await?;
        println!("health: http://{}/healthz", node.http_addr);
        if demo {
            println!("session: {}", lectern_node::demo_session_id());
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

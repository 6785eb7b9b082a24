//! `lectern-node`: runs one Lectern node until SIGTERM or SIGINT.
//!
//! Configuration: `lectern.toml` < environment (`LECTERN_*`) < these flags; see
//! `deploy/lectern.toml` for every key and its default.
//!
//! `--demo --nodes N` starts a demo cluster in this process: N nodes, each with its own store
//! (`{data_dir}/{name}`), HTTP port (`--http` port + i) and QUIC port (`--mesh-listen` port + i),
//! connected by real mutual TLS with a cluster CA generated under `{data_dir}/cluster`.
//! `--demo-classroom` adds a classroom node of the demo cohort, `classroom`, whose upstream is
//! the first node.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};
use lectern_node::config::{Config, Overrides, keys};
use lectern_node::{shutdown_signal, start};

/// Runs a Lectern regional node. The flags of configuration keys come from the table of keys
/// (`lectern_node::config::keys`), added to these at start.
#[derive(Debug, Parser)]
#[command(name = "lectern-node", version, about)]
struct Args {
    /// TOML configuration file (default: ./lectern.toml if it exists).
    #[arg(long)]
    config: Option<PathBuf>,
    /// With --demo: start a cluster of this many nodes in this process.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=9))]
    nodes: u16,
    /// With --demo: one more node, `classroom`, a classroom node of the demo cohort whose
    /// upstream is the first node (its instructor page shows the uplink and makes join codes).
    #[arg(long)]
    demo_classroom: bool,
    /// Print the configuration reference (every key, its environment variable, flag and
    /// default) as Markdown, as docs/configuration.md holds it, and exit.
    #[arg(long)]
    print_config_reference: bool,
}

fn main() -> ExitCode {
    let matches = Args::command().args(keys::clap_args()).get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    if args.print_config_reference {
        print!("{}", keys::reference_markdown());
        return ExitCode::SUCCESS;
    }
    let overrides = Overrides {
        config_file: args.config,
        flags: keys::flags_given(&matches),
    };
    let nodes = args.nodes;
    let demo_classroom = args.demo_classroom;
    let config = match Config::load(overrides, &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lectern: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // Before the logs and the runtime, so that a panic anywhere is reported.
    let secrets = [config.admin_token.clone(), config.auth.hs256_secret.clone()]
        .into_iter()
        .flatten()
        .collect();
    let _error_tracking =
        match lectern_node::error_tracking::init(config.error_tracking_dsn.as_deref(), secrets) {
            Ok(guard) => guard,
            Err(e) => {
                eprintln!("lectern: {e:#}");
                return ExitCode::FAILURE;
            }
        };
    let filter = tracing_subscriber::EnvFilter::try_from_env("LECTERN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = lectern_node::log_subscriber(config.log_format, filter, std::io::stderr);
    if let Err(e) = tracing::subscriber::set_global_default(logs) {
        eprintln!("lectern: set up logging: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lectern: start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let stop = shutdown_signal();
        if config.demo && (nodes > 1 || demo_classroom) {
            let cluster =
                lectern_node::start_demo_cluster_with(config, usize::from(nodes), demo_classroom)
                    .await?;
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

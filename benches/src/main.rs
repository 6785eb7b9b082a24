//! `lectern-bench`: Lectern's benchmarks, one subcommand each.
//!
//! - `hub-throughput`: acknowledged (fsynced) commands per second on one hot session through the
//!   hub, with ack latencies, against the store's raw fsync rate.
//! - `remote-apply`: a 100-change batch received through the sync protocol into a 20k-change
//!   document, against the same batch into a 1k-change one.
//! - `class-size`: bytes in memory and on disk and load time of a 40-student, 60-minute class,
//!   against an empty session.
//! - `load`: N Socket.IO websocket and M SSE clients on one session of a node (a child
//!   process); fan-out latency, deliveries and the node's memory per connection, against a
//!   bare tokio server (the floor) in the same run. `serve` and `floor-serve` are the two
//!   server processes it starts (hidden: not meant to be run by hand).
//! - `notify`: an announcement to 5,000 students each on `/api/stream/notifications`: p95 until
//!   every stream shows it, time until every email is accepted by a real SMTP server, and the
//!   node's memory before and after; a one-student grade as the baseline.
//!
//! - `backup`: `GET /admin/backup` of a node storing 10,000 documents while a class sends 1,000
//!   commands per second: the backup's duration and size, and the ack latency during it,
//!   against the same load without a backup.
//!
//! - `content`: a 100 KB course asset, its `304` revalidation and the course catalog served by a
//!   node, against nginx serving the same files from disk, with the same client in the same run.
//!
//! - `mesh latency|catch-up|anti-entropy`: two nodes replicating over QUIC with mutual TLS on
//!   loopback: replication latency at a fixed command rate, catch-up after both sides wrote
//!   apart, and anti-entropy over many documents of which few differ.
//!
//! Every subcommand prints a human summary; with `--json` it adds one JSON line (the last line
//! of its output). Stores live in a fresh directory under the system's temp dir that is removed
//! afterwards. BENCHMARKS.md at the repository root has the figures and how to read them.

mod alloc;
mod backup;
mod class_size;
mod content;
mod hostile;
mod hub_throughput;
mod load;
mod mesh;
mod notify;
mod remote_apply;
mod util;
mod workload;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

/// Lectern's benchmarks. Build with `--release`.
#[derive(Debug, Parser)]
#[command(name = "lectern-bench", version)]
struct Cli {
    /// Also print one JSON line with every figure.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Acked (fsynced) ask/upvote commands per second on one hot session through the hub.
    HubThroughput(hub_throughput::Args),
    /// A 100-change batch into a 20k-change document through the sync protocol.
    RemoteApply(remote_apply::Args),
    /// Memory, disk and load time of a 40-student, 60-minute class.
    ClassSize(class_size::Args),
    /// N websocket + M SSE clients on one session: fan-out latency, delivery, node memory per
    /// connection, against a bare tokio floor.
    Load(load::Args),
    /// A backup of a node storing N documents while a class writes: its duration, and ack
    /// latency during it against the same load without a backup.
    Backup(backup::Args),
    /// One session spread over three nodes of a region (N websocket clients on each) against
    /// the same class on one node: delivery and fan-out latency per node.
    Region(load::region::Args),
    /// Two nodes over QUIC/mTLS: replication latency, catch-up, anti-entropy.
    Mesh(mesh::Args),
    /// Course content (an asset, its revalidation, the catalog) from a node against nginx
    /// serving the same files from disk: requests per second and latency.
    Content(content::Args),
    /// An announcement to N students connected over SSE: time until each stream shows it,
    /// until every email is accepted by SMTP, and the node's memory.
    Notify(notify::Args),
    /// A class of students on one node under a document flood, a ping flood, a flood of
    /// connections that never authenticate and a slow-body flood: delivery against the
    /// unloaded baseline, and the node's memory.
    Hostile(hostile::Args),
    /// Runs a node with the demo class for `load` (configured by `LECTERN_*`).
    #[command(hide = true)]
    Serve(load::node::ServeArgs),
    /// Runs the floor server for `load`.
    #[command(hide = true)]
    FloorServe(load::floor::ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cfg!(debug_assertions) {
        eprintln!(
            "lectern-bench: this is a debug build; figures are meaningless without --release"
        );
    }
    let result = match &cli.bench {
        Bench::HubThroughput(args) => hub_throughput::run(args, cli.json),
        Bench::RemoteApply(args) => remote_apply::run(args, cli.json),
        Bench::ClassSize(args) => class_size::run(args, cli.json),
        Bench::Load(args) => load::run(args, cli.json),
        Bench::Region(args) => load::region::run(args, cli.json),
        Bench::Backup(args) => backup::run(args, cli.json),
        Bench::Mesh(args) => mesh::run(args, cli.json),
        Bench::Content(args) => content::run(args, cli.json),
        Bench::Notify(args) => notify::run(args, cli.json),
        Bench::Hostile(args) => hostile::run(args, cli.json),
        Bench::Serve(args) => load::node::serve(args),
        Bench::FloorServe(args) => load::floor::serve(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lectern-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

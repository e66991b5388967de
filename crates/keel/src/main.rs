//! The `keel` binary: a drop-in for the `etcd` binary (same flags), plus Keel's own subcommands.

mod bench;
mod members;
mod snapshot;

use clap::{Parser, Subcommand};
use keel::flags::{check_not_implemented, normalize_go_style, EtcdFlags};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc malloc: the request paths allocate from many threads at once, and
/// glibc's arena locks were a visible cost in watch fan-out profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keel: a Raft-replicated key-value store that speaks etcd's v3 API.
#[derive(Parser, Debug)]
#[command(name = "keel", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    etcd: EtcdFlags,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every member's replication state (role, progress, lag), as the leader sees it.
    Members(members::MembersArgs),
    /// Save a member's snapshot, or restore one into a new data dir.
    Snapshot {
        #[command(subcommand)]
        command: snapshot::SnapshotCommand,
    },
    /// Benchmark an etcd-compatible endpoint list.
    Bench {
        #[command(subcommand)]
        workload: bench::Workload,
    },
}

fn main() -> anyhow::Result<()> {
    let args = normalize_go_style(std::env::args());
    if let Err(msg) = check_not_implemented(&args, std::env::vars()) {
        eprintln!("keel: {msg}");
        std::process::exit(2);
    }
    let cli = Cli::parse_from(args);
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Some(Command::Bench { workload }) => runtime.block_on(bench::run(workload)),
        Some(Command::Members(args)) => runtime.block_on(members::run(args)),
        Some(Command::Snapshot { command }) => runtime.block_on(snapshot::run(command)),
        None => runtime.block_on(serve(cli.etcd)),
    }
}

async fn serve(flags: EtcdFlags) -> anyhow::Result<()> {
    init_logging(&flags.log_level);
    let cfg = flags.to_config().map_err(anyhow::Error::msg)?;
    let server = keel::Server::start(cfg).await?;
    server.serve(shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// JSON logs on stderr, as etcd's zap logger writes them; RUST_LOG overrides --log-level.
fn init_logging(level: &str) {
    let level = match level {
        "panic" | "fatal" => "error",
        other => other,
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
    tracing::info!("shutting down");
}

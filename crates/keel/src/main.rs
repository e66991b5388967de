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
    let Some(command) = cli.command else {
        return member_runtime()?.block_on(serve(cli.etcd));
    };
    let runtime = tokio::runtime::Runtime::new()?;
    match command {
        Command::Bench { workload } => runtime.block_on(bench::run(workload)),
        Command::Members(args) => runtime.block_on(members::run(args)),
        Command::Snapshot { command } => runtime.block_on(snapshot::run(command)),
    }
}

/// A member's runtime: a worker thread per core but one (at least one). Every write also passes
/// through two threads of the member's own, the raft driver and the apply loop; with a worker on
/// every core the workers and those two take turns preempting each other. On 2 cores one worker
/// fewer cut the members' CPU per put by 6-10 % (bench/cpu.sh, 1 and 3 members; see
/// docs/performance.md) with reads unchanged. TOKIO_WORKER_THREADS still decides when it is set.
fn member_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        builder.worker_threads(cores.saturating_sub(1).max(1));
    }
    builder.build()
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

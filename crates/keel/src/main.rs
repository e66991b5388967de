//! The `keel` binary: a drop-in for the `etcd` binary (same flags, variables and config file,
//! `gateway` and `grpc-proxy` subcommands), plus Keel's own subcommands.

mod bench;
mod members;
mod snapshot;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use keel::flags::{args_from_config_file, normalize_go_style, EtcdFlags, Notes};
use keel::logging::{LogConfig, Rotation};

/// mimalloc instead of glibc malloc: the request paths allocate from many threads at once, and
/// glibc's arena locks were a visible cost in watch fan-out profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The etcd version Keel serves the API of (what `etcd --version` prints first).
const ETCD_VERSION: &str = "3.4.23";

/// Keel: a Raft-replicated key-value store that speaks etcd's v3 API.
#[derive(Parser, Debug)]
#[command(
    name = "keel",
    args_conflicts_with_subcommands = true,
    disable_version_flag = true,
    // Go's flag package lets a later flag replace an earlier one; etcd users rely on it.
    args_override_self = true
)]
struct Cli {
    #[command(flatten)]
    etcd: EtcdFlags,
    /// Print the version and exit.
    #[arg(long, help_heading = "Member")]
    version: bool,
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
    /// Run the stateless pass-through etcd TCP connection forwarding proxy (etcd's gateway).
    Gateway {
        #[command(flatten)]
        args: keel::proxy::gateway::GatewayArgs,
        #[command(subcommand)]
        command: ProxyCommand,
    },
    /// Run the stateless etcd v3 gRPC L7 reverse proxy (etcd's grpc-proxy).
    GrpcProxy {
        #[command(flatten)]
        args: Box<keel::proxy::grpc::GrpcProxyArgs>,
        #[command(subcommand)]
        command: ProxyCommand,
    },
}

/// The proxies' one subcommand.
#[derive(Subcommand, Debug)]
enum ProxyCommand {
    /// start the proxy
    Start,
}

fn main() -> anyhow::Result<()> {
    let (args, ignored) = normalize_go_style(std::env::args());
    let cli = Cli::parse_from(&args);
    if cli.version {
        print_version();
        return Ok(());
    }
    let Some(command) = cli.command else {
        return run_member(cli.etcd, &ignored);
    };
    let runtime = tokio::runtime::Runtime::new()?;
    match command {
        Command::Gateway {
            args,
            command: ProxyCommand::Start,
        } => {
            start_proxy_logging(false);
            runtime.block_on(keel::proxy::gateway::run(args))
        }
        Command::GrpcProxy {
            args,
            command: ProxyCommand::Start,
        } => {
            start_proxy_logging(args.debug);
            runtime.block_on(keel::proxy::grpc::run(*args))
        }
        Command::Bench { workload } => runtime.block_on(bench::run(workload)),
        Command::Members(args) => runtime.block_on(members::run(args)),
        Command::Snapshot { command } => runtime.block_on(snapshot::run(command)),
    }
}

/// The proxies log as etcd's do (zap, JSON lines on stderr).
fn start_proxy_logging(debug: bool) {
    let cfg = LogConfig {
        logger: "zap".into(),
        format: "json".into(),
        level: if debug { "debug" } else { "info" }.into(),
        outputs: vec!["stderr".into()],
        rotation: None,
    };
    if let Err(e) = keel::logging::start(&cfg) {
        eprintln!("keel: {e}");
    }
}

/// etcd's `--version`, with Keel's own version where etcd names its build.
fn print_version() {
    println!("etcd Version: {ETCD_VERSION}");
    println!("Git SHA: keel-{}", env!("CARGO_PKG_VERSION"));
    println!(
        "Go Version: none (keel {}, Rust)",
        env!("CARGO_PKG_VERSION")
    );
    println!("Go OS/Arch: {}/{}", std::env::consts::OS, go_arch());
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Runs a member: flags (or the config file) to a configuration, logging, then the server.
fn run_member(flags: EtcdFlags, ignored: &[String]) -> anyhow::Result<()> {
    let (flags, from_file) = match flags.config_file.clone() {
        Some(path) => (flags_from_file(&path)?, Some(path)),
        None => (flags, None),
    };
    let (cfg, notes) = match flags.to_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keel: error verifying flags, {e}. See 'keel --help'.");
            std::process::exit(1);
        }
    };
    if let Err(e) = keel::logging::start(&log_config(&flags)?) {
        eprintln!("keel: {e}");
        std::process::exit(1);
    }
    if let Some(path) = from_file {
        tracing::info!(path = %path.display(), "loaded server configuration, other configuration command line flags and environment variables will be ignored if provided");
    }
    log_notes(&flags, &notes, ignored);
    if flags.experimental_memory_mlock {
        lock_memory()?;
    }
    member_runtime()?.block_on(async move {
        let server = keel::Server::start(cfg).await?;
        server.serve(shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// The flags a config file sets; the command line and ETCD_* variables are ignored, as by etcd.
fn flags_from_file(path: &std::path::Path) -> anyhow::Result<EtcdFlags> {
    let (args, unknown) = args_from_config_file(path).map_err(anyhow::Error::msg)?;
    let command = EtcdFlags::augment_args(clap::Command::new("keel").args_override_self(true))
        .mut_args(|a| a.env(None));
    let matches = command.try_get_matches_from(std::iter::once("keel".to_string()).chain(args));
    let matches = match matches {
        Ok(m) => m,
        Err(e) => {
            eprintln!("keel: error in config file {}:", path.display());
            e.exit();
        }
    };
    for key in unknown {
        eprintln!(
            "keel: config file {}: unknown key {key:?} ignored",
            path.display()
        );
    }
    Ok(EtcdFlags::from_arg_matches(&matches)?)
}

fn log_config(flags: &EtcdFlags) -> anyhow::Result<LogConfig> {
    let rotation = if flags.enable_log_rotation {
        Some(Rotation::parse(&flags.log_rotation_config_json).map_err(anyhow::Error::msg)?)
    } else {
        None
    };
    let outputs = if flags.log_output.is_empty() {
        flags.log_outputs.clone()
    } else {
        flags.log_output.clone()
    };
    Ok(LogConfig {
        logger: flags.logger.clone(),
        format: flags.log_format.clone().unwrap_or_else(|| "json".into()),
        level: if flags.debug {
            "debug".into()
        } else {
            flags.log_level.clone()
        },
        outputs,
        rotation,
    })
}

/// Logs what the flags asked for that Keel does in its own way, etcd 2's ignored flags, and
/// ETCD_* variables that name no flag (as etcd does).
fn log_notes(flags: &EtcdFlags, notes: &Notes, ignored: &[String]) {
    for note in notes {
        tracing::info!("{note}");
    }
    for flag in ignored {
        tracing::warn!("flag \"{flag}\" is no longer supported - ignoring");
    }
    if flags.log_package_levels.is_some() && flags.logger != "capnslog" {
        tracing::warn!("--log-package-levels is ignored with --logger=zap (as by etcd)");
    } else if let Some(levels) = &flags.log_package_levels {
        tracing::warn!(%levels, "--log-package-levels names etcd's Go packages, which keel does not have; use RUST_LOG=<module>=<level> for keel's modules");
    }
    if flags
        .log_rotation_config_json
        .contains("\"localtime\": true")
    {
        tracing::info!("--log-rotation-config-json: keel names rotated files by UTC time");
    }
    let known: Vec<String> = Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_long())
        .map(|l| format!("ETCD_{}", l.to_ascii_uppercase().replace('-', "_")))
        .collect();
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("ETCD_")) {
        if !known.contains(&key) && key != "ETCD_UNSUPPORTED_ARCH" {
            tracing::warn!("unrecognized environment variable {key}");
        }
    }
}

/// --experimental-memory-mlock: keeps the member's memory in RAM (mlockall).
fn lock_memory() -> anyhow::Result<()> {
    // SAFETY: mlockall takes no pointers; it only changes how the kernel pages this process.
    let rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) };
    if rc != 0 {
        anyhow::bail!(
            "--experimental-memory-mlock: mlockall failed: {}",
            std::io::Error::last_os_error()
        );
    }
    tracing::info!("memory locked in RAM (--experimental-memory-mlock)");
    Ok(())
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

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
    tracing::info!("shutting down");
}

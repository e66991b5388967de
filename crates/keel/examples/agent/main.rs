//! An agent on the `keel` library: each node runs an embedded member, the cluster's identity and
//! configuration are written once, and one node at a time leads.
//!
//! ```sh
//! agent init --config node-a.yaml                       # first node: a new cluster
//! agent join --config node-b.yaml --join 10.0.0.1:2379  # more nodes: joins through a member
//! ```
//!
//! Prints `became leader: NAME` when this node leads and `observing leader NAME` when another
//! does.

mod config;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use futures::StreamExt;
use keel::{ClusterState, Compare, Member, Op, ServerConfig, StateStore};

const UID_KEY: &[u8] = b"/keel/config/cluster_uid";
const CONFIG_KEY: &[u8] = b"/keel/config/cluster_config";

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the first node of a new cluster (or restart a node, its data dir already there).
    Init {
        #[arg(long)]
        config: PathBuf,
    },
    /// Add this node to a running cluster through one of its members' client address.
    Join {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        join: String,
    },
}

#[tokio::main]
async fn main() {
    // The member's own logs (warnings by default; RUST_LOG=info for more) go to stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("agent: {e}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let (path, join) = match cli.command {
        Command::Init { config } => (config, None),
        Command::Join { config, join } => (config, Some(join)),
    };
    let cfg = config::load(&path)?;
    let restarting = cfg.data_dir.join("member").exists();
    let mut server = ServerConfig {
        name: cfg.node_name.clone(),
        data_dir: cfg.data_dir.clone(),
        listen_client_urls: vec![cfg.client_url()],
        advertise_client_urls: vec![cfg.client_url()],
        listen_peer_urls: vec![cfg.peer_url()],
        initial_advertise_peer_urls: vec![cfg.peer_url()],
        initial_cluster: vec![(cfg.node_name.clone(), vec![cfg.peer_url()])],
        initial_cluster_token: cfg.cluster.cluster_name.clone(),
        ..Default::default()
    };
    if let (Some(join), false) = (&join, restarting) {
        server.initial_cluster = add_self(join, &cfg).await?;
        server.initial_cluster_state = ClusterState::Existing;
    }
    let member = Member::start(server).await.map_err(|e| e.to_string())?;
    member
        .ready(Duration::from_secs(60))
        .await
        .map_err(|e| format!("the member did not become ready: {e}"))?;
    let store: Arc<dyn StateStore> = Arc::new(member.client());
    if join.is_none() {
        initialize(&*store, &cfg).await?;
    }
    tokio::select! {
        r = lead_or_follow(store.clone(), &cfg) => r?,
        () = stop_signal() => {}
    }
    // Resign before stopping, so another node leads at once rather than after the lease's TTL.
    store.close().await;
    member.shutdown().await.map_err(|e| e.to_string())
}

/// SIGINT (Ctrl-C) or SIGTERM (what service managers and `kill` send).
async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// How long a join keeps asking the cluster to add this node.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Adds this node to the cluster at `join`; the initial cluster to start with. A refusal that
/// passes (the node added before this one has not started yet, so another member would cost the
/// quorum; no leader; the member unreachable) is retried until `JOIN_TIMEOUT`.
async fn add_self(join: &str, cfg: &config::Config) -> Result<Vec<(String, Vec<String>)>, String> {
    let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    let mut wait = Duration::from_millis(200);
    let added = loop {
        let attempt = async {
            let mut client = etcd_client::Client::connect([join], None)
                .await
                .map_err(|e| format!("reaching {join}: {e}"))?;
            client
                .member_add([cfg.peer_url()], None)
                .await
                .map_err(|e| format!("adding this node through {join}: {e}"))
        };
        match attempt.await {
            Ok(added) => break added,
            Err(e) if passing(&e) && tokio::time::Instant::now() < deadline => {
                eprintln!("{e}; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    };
    Ok(added
        .member_list()
        .iter()
        .map(|m| {
            // The new member has no name until it starts: it is this node.
            let name = if m.name().is_empty() {
                cfg.node_name.as_str()
            } else {
                m.name()
            };
            (name.to_string(), m.peer_urls().to_vec())
        })
        .collect())
}

/// Whether a join's refusal may pass by itself.
fn passing(error: &str) -> bool {
    [
        "not enough started members",
        "no leader",
        "reaching ",
        "Unavailable",
        "timed out",
    ]
    .iter()
    .any(|m| error.contains(m))
}

/// Records the cluster's UID and configuration, once: an initialized cluster keeps its own.
async fn initialize(store: &dyn StateStore, cfg: &config::Config) -> Result<(), String> {
    let uid: String = (0..16)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let sanitized = serde_json::to_vec(&cfg.cluster).map_err(|e| e.to_string())?;
    let created = store
        .transaction(
            vec![Compare::Absent(UID_KEY.to_vec())],
            vec![
                Op::Put(UID_KEY.to_vec(), uid.clone().into_bytes()),
                Op::Put(CONFIG_KEY.to_vec(), sanitized),
            ],
            vec![],
        )
        .await
        .map_err(|e| e.to_string())?;
    if created {
        println!(
            "initialized cluster {} with uid {uid}",
            cfg.cluster.cluster_name
        );
    } else {
        let existing = store.get(UID_KEY).await.map_err(|e| e.to_string())?;
        let existing = existing.map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
        println!(
            "cluster already initialized: uid {}",
            existing.unwrap_or_default()
        );
    }
    Ok(())
}

/// Campaigns forever; while another node leads, says which.
async fn lead_or_follow(store: Arc<dyn StateStore>, cfg: &config::Config) -> Result<(), String> {
    let observer = {
        let store = store.clone();
        let me = cfg.node_name.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(mut leaders) = store.observe().await {
                    while let Some(Ok(leader)) = leaders.next().await {
                        if leader != me {
                            println!("observing leader {leader}");
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    loop {
        match store.campaign(&cfg.node_name, cfg.lease_ttl).await {
            Ok(leadership) => {
                println!("became leader: {}", cfg.node_name);
                leadership.lost().await;
                println!("lost leadership: {}", cfg.node_name);
            }
            Err(e) => {
                eprintln!("campaign failed: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        if observer.is_finished() {
            return Err("the leader observer stopped".into());
        }
    }
}

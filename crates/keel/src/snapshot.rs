//! `keel snapshot save` and `keel snapshot restore`: etcdctl's snapshot commands for Keel's
//! snapshot files (`etcdctl snapshot save` writes the same files).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use keel::flags::EtcdFlags;

/// Snapshot commands.
#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Stream a member's whole store into FILE (as `etcdctl snapshot save`).
    Save {
        /// Where to write the snapshot.
        file: PathBuf,
        /// The member to snapshot.
        #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
        endpoints: Vec<String>,
        /// `name:password` of a root user, when auth is enabled.
        #[arg(long)]
        user: Option<String>,
    },
    /// Create a new member's data dir from FILE, for a new cluster described by the usual flags
    /// (--name, --data-dir, --initial-cluster, --initial-cluster-token,
    /// --initial-advertise-peer-urls); restore every member of the new cluster from the same file.
    Restore {
        /// The snapshot file.
        file: PathBuf,
        #[command(flatten)]
        etcd: Box<EtcdFlags>,
    },
}

/// Runs a snapshot command.
pub async fn run(cmd: SnapshotCommand) -> anyhow::Result<()> {
    match cmd {
        SnapshotCommand::Save {
            file,
            endpoints,
            user,
        } => save(file, endpoints, user).await,
        SnapshotCommand::Restore { file, etcd } => {
            let (cfg, _) = etcd.to_config().map_err(anyhow::Error::msg)?;
            keel::restore(&file, &cfg)?;
            println!(
                "restored {} into {}",
                file.display(),
                cfg.data_dir.display()
            );
            Ok(())
        }
    }
}

async fn save(file: PathBuf, endpoints: Vec<String>, user: Option<String>) -> anyhow::Result<()> {
    let options = match user {
        Some(u) => {
            let (name, password) = u.split_once(':').context("--user takes name:password")?;
            Some(etcd_client::ConnectOptions::new().with_user(name, password))
        }
        None => None,
    };
    let mut c = etcd_client::Client::connect(endpoints, options).await?;
    let partial = file.with_extension("part");
    let mut out = std::fs::File::create(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let mut stream = c.snapshot().await?;
    while let Some(piece) = stream.message().await? {
        out.write_all(piece.blob())?;
    }
    out.sync_all()?;
    std::fs::rename(&partial, &file)?;
    println!("Snapshot saved at {}", file.display());
    Ok(())
}

//! `keel snapshot save`, `restore` and `status`: etcdctl's snapshot commands. Snapshots are in
//! etcd's format (etcd's backend database and its SHA-256), so these and etcdctl's commands read
//! each other's files; `restore` also reads Keel's first format.

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
    /// Print a snapshot file's hash, revision, key count and size (as `etcdctl snapshot status`).
    Status {
        /// The snapshot file (or an etcd data dir's `member/snap/db`).
        file: PathBuf,
        /// Output format.
        #[arg(short = 'w', long = "write-out", value_enum, default_value = "simple")]
        write_out: StatusFormat,
    },
}

/// `keel snapshot status` output formats (etcdctl's).
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum StatusFormat {
    /// `hash, revision, total keys, total size`.
    Simple,
    /// One JSON object.
    Json,
    /// A table.
    Table,
}

/// Runs a snapshot command.
pub async fn run(cmd: SnapshotCommand) -> anyhow::Result<()> {
    match cmd {
        SnapshotCommand::Save {
            file,
            endpoints,
            user,
        } => save(file, endpoints, user).await,
        SnapshotCommand::Status { file, write_out } => {
            let s = keel_server::backup::status(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            println!("{}", format_status(&s, write_out));
            Ok(())
        }
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

/// `s` as etcdctl prints it.
fn format_status(s: &keel_server::backup::SnapshotStatus, format: StatusFormat) -> String {
    let size = humanize_bytes(s.total_size);
    match format {
        StatusFormat::Simple => format!("{:x}, {}, {}, {size}", s.hash, s.revision, s.total_key),
        StatusFormat::Json => serde_json::json!({
            "hash": s.hash,
            "revision": s.revision,
            "totalKey": s.total_key,
            "totalSize": s.total_size,
        })
        .to_string(),
        StatusFormat::Table => {
            let cells = [
                format!("{:x}", s.hash),
                s.revision.to_string(),
                s.total_key.to_string(),
                size,
            ];
            let header = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
            let widths: Vec<usize> = header
                .iter()
                .zip(&cells)
                .map(|(h, c)| h.len().max(c.len()) + 2)
                .collect();
            let rule: String = widths
                .iter()
                .map(|w| format!("+{}", "-".repeat(*w)))
                .collect::<String>()
                + "+";
            let center = |t: &str, w: usize| {
                let pad = w - t.len();
                format!("{}{t}{}", " ".repeat(pad / 2), " ".repeat(pad - pad / 2))
            };
            let head: String = header
                .iter()
                .zip(&widths)
                .map(|(h, w)| format!("|{}", center(h, *w)))
                .collect::<String>()
                + "|";
            let row: String = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("|{c:>width$} ", width = w - 1))
                .collect::<String>()
                + "|";
            [rule.clone(), head, rule.clone(), row, rule].join("\n")
        }
    }
}

/// Bytes in SI units as etcdctl prints them (go-humanize's `Bytes`): `20 kB`, `1.5 MB`.
fn humanize_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let val = (n as f64 / 1000f64.powi(e as i32) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {}", UNITS[e])
    } else {
        format!("{val:.0} {}", UNITS[e])
    }
}

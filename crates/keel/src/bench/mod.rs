//! `keel bench`: load against any etcd-compatible endpoint list (Keel or etcd), modelled on etcd's
//! benchmark tool, reporting throughput, latency percentiles, errors by kind and its own CPU use.

mod drive;
mod report;
mod watch;

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};

use drive::drive;
use report::print;

/// Options shared by the request workloads.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// Endpoints to send requests to (comma separated).
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Total number of gRPC connections.
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// Total number of concurrent clients.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Total number of requests (ignored with --duration).
    #[arg(long, default_value_t = 10_000)]
    pub total: u64,
    /// Run for this long instead of a total (e.g. 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Requests per second across all clients (0: as fast as they go).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Which keys requests touch.
#[derive(Args, Clone, Debug)]
pub struct Keys {
    /// Key size in bytes.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 100_000)]
    pub key_space_size: u64,
    /// Keys in order (request n uses key n modulo the key space) instead of at random.
    #[arg(long)]
    pub sequential_keys: bool,
    /// Keys shaped like Kubernetes' (`/registry/pods/<namespace>/<name>`, 1,000 namespaces)
    /// instead of zero-padded numbers.
    #[arg(long)]
    pub kube_keys: bool,
    /// Every `--large-every`-th request writes a value of this many bytes instead (0: none).
    #[arg(long, default_value_t = 0)]
    pub large_val_size: usize,
    /// See `--large-val-size`.
    #[arg(long, default_value_t = 10)]
    pub large_every: u64,
    /// Values of random letters instead of one letter repeated: storage that compresses (RocksDB)
    /// gains nothing over storage that does not (bbolt).
    #[arg(long)]
    pub random_values: bool,
}

impl Keys {
    /// The key request `n` uses.
    fn key(&self, n: u64) -> Vec<u8> {
        self.key_of(self.index(n))
    }

    /// Where in the key space request `n` starts: `n` itself, or a scramble of it.
    fn index(&self, n: u64) -> u64 {
        if self.sequential_keys {
            n
        } else {
            mix(n)
        }
    }

    /// The `i`-th key of the key space (wrapping around).
    fn key_of(&self, i: u64) -> Vec<u8> {
        let i = i % self.key_space_size.max(1);
        if self.kube_keys {
            // Pods spread over namespaces as a cluster creates them: not in key order.
            return format!("/registry/pods/ns-{:04}/pod-{i:010}", mix(i) % 1000).into_bytes();
        }
        format!("{i:0width$}", width = self.key_size).into_bytes()
    }

    fn value(&self) -> Vec<u8> {
        vec![b'v'; self.val_size]
    }

    /// The value request `n` puts: large every `--large-every` requests, random letters (its
    /// own) with `--random-values`.
    fn value_for(&self, n: u64) -> Vec<u8> {
        let large = self.large_val_size > 0 && n.is_multiple_of(self.large_every.max(1));
        let size = if large {
            self.large_val_size
        } else {
            self.val_size
        };
        if !self.random_values {
            return vec![b'v'; size];
        }
        let mut seed = mix(n);
        (0..size)
            .map(|_| {
                seed = mix(seed);
                b'a' + (seed % 26) as u8
            })
            .collect()
    }
}

/// A deterministic scramble of `n` (splitmix64): random-looking keys and read/write choices
/// without a generator per client.
fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Whether request `n` is a read, for a share `ratio` of reads.
fn is_read(n: u64, ratio: f64) -> bool {
    (mix(n ^ 0x5eed) as f64 / u64::MAX as f64) < ratio
}

/// How reads are served.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Consistency {
    /// Linearizable (ReadIndex).
    L,
    /// Serializable (the member's local state).
    S,
}

impl Consistency {
    fn options(self) -> Option<GetOptions> {
        match self {
            Consistency::L => None,
            Consistency::S => Some(GetOptions::new().with_serializable()),
        }
    }
}

/// The workloads.
#[derive(Subcommand, Clone, Debug)]
pub enum Workload {
    /// Puts.
    Put {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        keys: Keys,
    },
    /// Single-key reads of keys written first (untimed).
    Range {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        keys: Keys,
        /// l (linearizable) or s (serializable).
        #[arg(long, value_enum, default_value = "l")]
        consistency: Consistency,
        /// Read the keys as they are: do not write the key space first.
        #[arg(long)]
        no_prefill: bool,
    },
    /// Transactions of puts (no compares).
    TxnPut {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        keys: Keys,
        /// Puts per transaction.
        #[arg(long, default_value_t = 1)]
        txn_ops: usize,
    },
    /// Transactions that either read or write a key (a compare on its version, then a put or a get).
    TxnMixed {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        keys: Keys,
        /// Share of transactions that read.
        #[arg(long, default_value_t = 0.5)]
        read_ratio: f64,
    },
    /// Reads and puts mixed in a ratio.
    Mixed {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        keys: Keys,
        /// Share of requests that read.
        #[arg(long, default_value_t = 0.9)]
        read_ratio: f64,
        /// l (linearizable) or s (serializable) reads.
        #[arg(long, value_enum, default_value = "l")]
        consistency: Consistency,
    },
    /// Lease keep-alives: each client grants a lease, then renews it over its keep-alive stream,
    /// one request in flight at a time.
    LeaseKeepalive {
        #[command(flatten)]
        common: Common,
    },
    /// Put-to-event latency: watchers on one key spread over watch streams, puts to that key at a
    /// fixed rate; every (watcher, put) pair is one sample.
    WatchLatency {
        #[command(flatten)]
        watch: watch::WatchArgs,
        /// Puts per second.
        #[arg(long, default_value_t = 100)]
        put_rate: u64,
    },
    /// Event throughput: watchers on the keys of a key space, puts to those keys as fast as they
    /// go; reports events delivered per second and put-to-event latency.
    Watch {
        #[command(flatten)]
        watch: watch::WatchArgs,
        /// Keys the watchers spread over (watcher i watches key i modulo this).
        #[arg(long, default_value_t = 100)]
        key_space_size: usize,
        /// Concurrent putters.
        #[arg(long, default_value_t = 10)]
        putters: usize,
    },
    /// The disk's floor: appends of `size` bytes to a file in `dir`, each followed by fdatasync
    /// (what one write costs a WAL at least); no endpoint involved.
    Fsync {
        /// A directory on the disk to measure (the data dir's).
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
        /// Appends.
        #[arg(long, default_value_t = 1000)]
        total: u64,
        /// Bytes per append.
        #[arg(long, default_value_t = 512)]
        size: usize,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a workload and prints its report.
pub async fn run(w: Workload) -> anyhow::Result<()> {
    let session = |client: Client| async move { Ok(client) };
    match w {
        Workload::Put { common, keys } => {
            let out = drive(&common, session, move |mut client, n| {
                let (key, value) = (keys.key(n), keys.value_for(n));
                async move {
                    let res = client.put(key, value, None).await.map(|_| ());
                    (client, res)
                }
            })
            .await?;
            print("put", common.clients, common.conns, common.json, out);
        }
        Workload::Range {
            common,
            keys,
            consistency,
            no_prefill,
        } => {
            if !no_prefill {
                prefill(&common, &keys).await?;
            }
            let out = drive(&common, session, move |mut client, n| {
                let key = keys.key(n);
                async move {
                    let res = client.get(key, consistency.options()).await.map(|_| ());
                    (client, res)
                }
            })
            .await?;
            let name = format!("range ({consistency:?})");
            print(&name, common.clients, common.conns, common.json, out);
        }
        Workload::TxnPut {
            common,
            keys,
            txn_ops,
        } => {
            // etcd refuses a transaction that puts one key twice: each puts neighbouring keys.
            anyhow::ensure!(
                txn_ops as u64 <= keys.key_space_size.max(1),
                "--txn-ops ({txn_ops}) must not exceed --key-space-size ({})",
                keys.key_space_size
            );
            let value = keys.value();
            let out = drive(&common, session, move |client, n| {
                let first = keys.index(n * txn_ops as u64);
                let ops = (0..txn_ops as u64)
                    .map(|i| TxnOp::put(keys.key_of(first + i), value.clone(), None));
                send_txn(client, Txn::new().and_then(ops.collect::<Vec<_>>()))
            })
            .await?;
            print("txn-put", common.clients, common.conns, common.json, out);
        }
        Workload::TxnMixed {
            common,
            keys,
            read_ratio,
        } => {
            prefill(&common, &keys).await?;
            let value = keys.value();
            let out = drive(&common, session, move |client, n| {
                let key = keys.key(n);
                let op = if is_read(n, read_ratio) {
                    TxnOp::get(key.clone(), None)
                } else {
                    TxnOp::put(key.clone(), value.clone(), None)
                };
                let txn = Txn::new()
                    .when([Compare::version(key, CompareOp::Greater, 0)])
                    .and_then([op]);
                send_txn(client, txn)
            })
            .await?;
            print("txn-mixed", common.clients, common.conns, common.json, out);
        }
        Workload::Mixed {
            common,
            keys,
            read_ratio,
            consistency,
        } => {
            prefill(&common, &keys).await?;
            let value = keys.value();
            let out = drive(&common, session, move |mut client, n| {
                let (key, value) = (keys.key(n), value.clone());
                async move {
                    let res = if is_read(n, read_ratio) {
                        client.get(key, consistency.options()).await.map(|_| ())
                    } else {
                        client.put(key, value, None).await.map(|_| ())
                    };
                    (client, res)
                }
            })
            .await?;
            print("mixed", common.clients, common.conns, common.json, out);
        }
        Workload::LeaseKeepalive { common } => {
            let setup = |mut client: Client| async move {
                let id = client.lease_grant(600, None).await?.id();
                client.lease_keep_alive(id).await
            };
            let out = drive(&common, setup, |(mut keeper, mut stream), _| async move {
                let res = match keeper.keep_alive().await {
                    Ok(()) => match stream.message().await {
                        Ok(Some(_)) => Ok(()),
                        Ok(None) => Err(etcd_client::Error::WatchError("stream closed".into())),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                };
                ((keeper, stream), res)
            })
            .await?;
            print(
                "lease-keepalive",
                common.clients,
                common.conns,
                common.json,
                out,
            );
        }
        Workload::WatchLatency { watch, put_rate } => {
            let out = watch::run(&watch, 1, 1, put_rate).await?;
            let watchers = watch.streams * watch.watchers_per_stream;
            print("watch-latency", watchers, watch.streams, watch.json, out);
        }
        Workload::Watch {
            watch,
            key_space_size,
            putters,
        } => {
            let out = watch::run(&watch, key_space_size, putters, 0).await?;
            let watchers = watch.streams * watch.watchers_per_stream;
            print("watch", watchers, watch.streams, watch.json, out);
        }
        Workload::Fsync {
            dir,
            total,
            size,
            json,
        } => {
            let out = tokio::task::spawn_blocking(move || fsync_floor(&dir, total, size)).await??;
            print("fsync", 1, 0, json, out);
        }
    }
    Ok(())
}

/// Writes every key of the key space once (untimed), so reads find values.
async fn prefill(c: &Common, keys: &Keys) -> anyhow::Result<()> {
    let conns = drive::connect(c).await?;
    let value = keys.value();
    let width = conns.len() * 16;
    let mut n = 0;
    while n < keys.key_space_size {
        let mut batch = Vec::new();
        for i in 0..width as u64 {
            if n + i >= keys.key_space_size {
                break;
            }
            let mut client = conns[i as usize % conns.len()].clone();
            let key = keys.key_of(n + i);
            let value = value.clone();
            batch.push(tokio::spawn(
                async move { client.put(key, value, None).await },
            ));
        }
        n += batch.len() as u64;
        for b in batch {
            b.await??;
        }
    }
    Ok(())
}

/// Times `total` appends of `size` bytes, each made durable with fdatasync.
fn fsync_floor(dir: &std::path::Path, total: u64, size: usize) -> anyhow::Result<report::Outcome> {
    use std::io::Write;
    let mut file = tempfile::tempfile_in(dir).context("a file in the measured directory")?;
    let record = vec![0u8; size];
    let (started, cpu_before) = (std::time::Instant::now(), report::cpu_time());
    let mut out = report::Outcome::default();
    for _ in 0..total {
        let t = std::time::Instant::now();
        file.write_all(&record)?;
        file.sync_data()?;
        out.latencies_us.push(t.elapsed().as_micros() as u64);
    }
    out.elapsed = started.elapsed();
    out.cpu = report::cpu_time() - cpu_before;
    Ok(out)
}

/// One transaction, handing the client back with the outcome (what `drive` expects).
async fn send_txn(mut client: Client, txn: Txn) -> (Client, Result<(), etcd_client::Error>) {
    let res = client.txn(txn).await.map(|_| ());
    (client, res)
}

//! `keel bench`: load against any etcd-compatible endpoint list (Keel or etcd), modelled on etcd's
//! benchmark tool, reporting throughput and latency percentiles.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use etcd_client::Client;

/// Options shared by every workload.
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
    /// Total number of requests.
    #[arg(long, default_value_t = 10_000)]
    pub total: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The workloads.
#[derive(Subcommand, Clone, Debug)]
pub enum Workload {
    /// Puts of random keys.
    Put {
        /// Common options.
        #[command(flatten)]
        common: Common,
        /// Key size in bytes.
        #[arg(long, default_value_t = 8)]
        key_size: usize,
        /// Value size in bytes.
        #[arg(long, default_value_t = 8)]
        val_size: usize,
        /// Number of distinct keys.
        #[arg(long, default_value_t = 100_000)]
        key_space_size: u64,
    },
    /// Lease keep-alives: each client grants a lease, then renews it over its keep-alive stream,
    /// one request in flight at a time.
    LeaseKeepalive {
        /// Common options.
        #[command(flatten)]
        common: Common,
    },
    /// Put-to-event latency: watchers on one key spread over watch streams, puts to that key at a
    /// fixed rate; every (watcher, put) pair is one sample.
    WatchLatency {
        /// Endpoints to send requests to (comma separated).
        #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
        endpoints: Vec<String>,
        /// Watch streams, each on its own connection.
        #[arg(long, default_value_t = 10)]
        streams: usize,
        /// Watchers per stream.
        #[arg(long, default_value_t = 100)]
        watchers_per_stream: usize,
        /// Puts to the watched key.
        #[arg(long, default_value_t = 500)]
        put_total: usize,
        /// Puts per second.
        #[arg(long, default_value_t = 100)]
        put_rate: u64,
        /// Value size in bytes.
        #[arg(long, default_value_t = 32)]
        val_size: usize,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

struct Outcome {
    latencies_us: Vec<u64>,
    errors: u64,
    elapsed: Duration,
}

/// Runs a workload and prints its report.
pub async fn run(w: Workload) -> anyhow::Result<()> {
    match w {
        Workload::Put {
            common,
            key_size,
            val_size,
            key_space_size,
        } => {
            let value = vec![b'v'; val_size];
            let setup = |client: Client| async move { Ok(client) };
            let out = drive(&common, setup, move |mut client, n| {
                let key =
                    format!("{:0width$}", n % key_space_size.max(1), width = key_size).into_bytes();
                let value = value.clone();
                async move {
                    let res = client.put(key, value, None).await.map(|_| ());
                    (client, res)
                }
            })
            .await?;
            report("put", &common, out);
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
            report("lease-keepalive", &common, out);
        }
        Workload::WatchLatency {
            endpoints,
            streams,
            watchers_per_stream,
            put_total,
            put_rate,
            val_size,
            json,
        } => {
            let out = watch_latency(
                &endpoints,
                streams,
                watchers_per_stream,
                put_total,
                put_rate,
                val_size,
            )
            .await?;
            let common = Common {
                endpoints,
                conns: streams,
                clients: streams * watchers_per_stream,
                total: (put_total * streams * watchers_per_stream) as u64,
                json,
            };
            report("watch-latency", &common, out);
        }
    }
    Ok(())
}

const WATCHED_KEY: &str = "keel-bench/watch-latency";

/// Puts carry their sequence number in the first 8 bytes of the value, so a watcher finds when
/// the put was sent without any shared clock but this process's.
async fn watch_latency(
    endpoints: &[String],
    streams: usize,
    per_stream: usize,
    put_total: usize,
    put_rate: u64,
    val_size: usize,
) -> anyhow::Result<Outcome> {
    let origin = Instant::now();
    let sent_at: Arc<Vec<AtomicU64>> =
        Arc::new((0..put_total).map(|_| AtomicU64::new(0)).collect());
    let mut receivers = Vec::new();
    for _ in 0..streams.max(1) {
        let mut client = Client::connect(endpoints, None)
            .await
            .context("connecting to the endpoints")?;
        let mut stream = client.watch(WATCHED_KEY, None).await?;
        for _ in 1..per_stream {
            stream.watch(WATCHED_KEY, None).await?;
        }
        let mut created = 0;
        while created < per_stream {
            let r = stream.message().await?.context("watch stream closed")?;
            created += usize::from(r.created());
        }
        let sent_at = sent_at.clone();
        receivers.push(tokio::spawn(async move {
            let _client = client;
            let mut lat = Vec::with_capacity(put_total * per_stream);
            while lat.len() < put_total * per_stream {
                let Ok(Ok(Some(r))) =
                    tokio::time::timeout(Duration::from_secs(10), stream.message()).await
                else {
                    break;
                };
                let now = origin.elapsed().as_micros() as u64;
                for e in r.events() {
                    let value = e.kv().map(|kv| kv.value()).unwrap_or_default();
                    let Some(seq) = value.get(..8).and_then(|b| b.try_into().ok()) else {
                        continue;
                    };
                    let seq = u64::from_be_bytes(seq) as usize;
                    if let Some(at) = sent_at.get(seq) {
                        lat.push(now.saturating_sub(at.load(Ordering::Acquire)));
                    }
                }
            }
            lat
        }));
    }
    let mut client = Client::connect(endpoints, None).await?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / put_rate.max(1) as f64));
    let started = Instant::now();
    let mut errors = 0;
    for (seq, at) in sent_at.iter().enumerate() {
        tick.tick().await;
        let mut value = (seq as u64).to_be_bytes().to_vec();
        value.resize(val_size.max(8), b'v');
        at.store(origin.elapsed().as_micros() as u64, Ordering::Release);
        if client.put(WATCHED_KEY, value, None).await.is_err() {
            errors += 1;
        }
    }
    let mut latencies_us = Vec::new();
    for r in receivers {
        latencies_us.extend(r.await?);
    }
    let expected = put_total * streams.max(1) * per_stream;
    Ok(Outcome {
        errors: errors + (expected.saturating_sub(latencies_us.len())) as u64,
        latencies_us,
        elapsed: started.elapsed(),
    })
}

/// Spreads `total` requests over `clients` tasks sharing `conns` connections. Each client first
/// builds its session with `setup` (untimed), then passes it through each `request`.
async fn drive<S, Setup, SetupFut, F, Fut>(
    c: &Common,
    setup: Setup,
    request: F,
) -> anyhow::Result<Outcome>
where
    S: Send + 'static,
    Setup: Fn(Client) -> SetupFut,
    SetupFut: std::future::Future<Output = Result<S, etcd_client::Error>>,
    F: Fn(S, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = (S, Result<(), etcd_client::Error>)> + Send,
{
    let mut conns = Vec::new();
    for _ in 0..c.conns.max(1) {
        conns.push(
            Client::connect(&c.endpoints, None)
                .await
                .context("connecting to the endpoints")?,
        );
    }
    let mut sessions = Vec::new();
    for i in 0..c.clients.max(1) {
        let session = setup(conns[i % conns.len()].clone())
            .await
            .context("setting up a client")?;
        sessions.push(session);
    }
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut session in sessions {
        let (next, errors, request, total) =
            (next.clone(), errors.clone(), request.clone(), c.total);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break lat;
                }
                let t = Instant::now();
                let (s, res) = request(session, n).await;
                session = s;
                match res {
                    Ok(()) => lat.push(t.elapsed().as_micros() as u64),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let mut latencies_us = Vec::new();
    for t in tasks {
        latencies_us.extend(t.await?);
    }
    Ok(Outcome {
        latencies_us,
        errors: errors.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    })
}

fn report(name: &str, c: &Common, mut out: Outcome) {
    out.latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        if out.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((out.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        out.latencies_us[i] as f64 / 1000.0
    };
    let ok = out.latencies_us.len();
    let rps = ok as f64 / out.elapsed.as_secs_f64();
    if c.json {
        println!(
            "{{\"workload\":\"{name}\",\"clients\":{},\"conns\":{},\"ok\":{ok},\"errors\":{},\"seconds\":{:.3},\"requests_per_sec\":{rps:.1},\"latency_ms\":{{\"min\":{:.3},\"p50\":{:.3},\"p90\":{:.3},\"p99\":{:.3},\"p999\":{:.3},\"max\":{:.3}}}}}",
            c.clients, c.conns, out.errors, out.elapsed.as_secs_f64(), pct(0.0), pct(0.5), pct(0.9), pct(0.99), pct(0.999), pct(1.0)
        );
    } else {
        println!(
            "{name}: {ok} requests ({} errors) in {:.2}s by {} clients over {} connections",
            out.errors,
            out.elapsed.as_secs_f64(),
            c.clients,
            c.conns
        );
        println!("  requests/sec: {rps:.1}");
        println!(
            "  latency ms: min {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            pct(0.0),
            pct(0.5),
            pct(0.9),
            pct(0.99),
            pct(0.999),
            pct(1.0)
        );
    }
}

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
            let out = drive(&common, move |mut client, n| {
                let key =
                    format!("{:0width$}", n % key_space_size.max(1), width = key_size).into_bytes();
                let value = value.clone();
                async move { client.put(key, value, None).await.map(|_| ()) }
            })
            .await?;
            report("put", &common, out);
        }
    }
    Ok(())
}

/// Spreads `total` requests over `clients` tasks sharing `conns` connections.
async fn drive<F, Fut>(c: &Common, request: F) -> anyhow::Result<Outcome>
where
    F: Fn(Client, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), etcd_client::Error>> + Send,
{
    let mut conns = Vec::new();
    for _ in 0..c.conns.max(1) {
        conns.push(
            Client::connect(&c.endpoints, None)
                .await
                .context("connecting to the endpoints")?,
        );
    }
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..c.clients.max(1) {
        let client = conns[i % conns.len()].clone();
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
                match request(client.clone(), n).await {
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

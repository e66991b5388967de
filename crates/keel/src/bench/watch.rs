//! Watch workloads: watchers spread over watch streams (one connection each), puts to the watched
//! keys carrying their sequence number, so a watcher knows when the event's put was sent without
//! any clock but this process's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use super::drive::connect_one;
use super::report::{cpu_time, error_kind, Outcome};

/// Options of the watch workloads.
#[derive(Args, Clone, Debug)]
pub struct WatchArgs {
    /// Endpoints to send requests to (comma separated).
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Watch streams, each on its own connection.
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// Watchers per stream.
    #[arg(long, default_value_t = 100)]
    pub watchers_per_stream: usize,
    /// Puts to the watched keys.
    #[arg(long, default_value_t = 500)]
    pub put_total: usize,
    /// Value size in bytes (at least 8: the sequence number).
    #[arg(long, default_value_t = 32)]
    pub val_size: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

fn key(i: usize) -> String {
    format!("keel-bench/watch/{i}")
}

/// Runs `a.put_total` puts over `key_space` keys by `putters` tasks (at `put_rate` per second,
/// 0: unpaced) while the watchers receive; every (watcher, event) pair is one latency sample.
pub async fn run(
    a: &WatchArgs,
    key_space: usize,
    putters: usize,
    put_rate: u64,
) -> anyhow::Result<Outcome> {
    let (streams, per_stream, key_space) =
        (a.streams.max(1), a.watchers_per_stream, key_space.max(1));
    let puts_to = |k: usize| (a.put_total + key_space - 1 - k) / key_space;
    let origin = Instant::now();
    let sent_at: Arc<Vec<AtomicU64>> =
        Arc::new((0..a.put_total).map(|_| AtomicU64::new(0)).collect());
    let mut receivers = Vec::new();
    let mut expected = 0;
    for s in 0..streams {
        let mut client = connect_one(&a.endpoints, s).await?;
        let keys: Vec<usize> = (0..per_stream)
            .map(|w| (s * per_stream + w) % key_space)
            .collect();
        let mine: usize = keys.iter().map(|&k| puts_to(k)).sum();
        expected += mine;
        let mut stream = client.watch(key(keys[0]), None).await?;
        for &k in &keys[1..] {
            stream.watch(key(k), None).await?;
        }
        let mut created = 0;
        while created < keys.len() {
            let r = stream.message().await?.context("watch stream closed")?;
            created += usize::from(r.created());
        }
        let sent_at = sent_at.clone();
        receivers.push(tokio::spawn(async move {
            let _client = client;
            let mut lat = Vec::with_capacity(mine);
            while lat.len() < mine {
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
                    if let Some(at) = sent_at.get(u64::from_be_bytes(seq) as usize) {
                        lat.push(now.saturating_sub(at.load(Ordering::Acquire)));
                    }
                }
            }
            lat
        }));
    }
    let (started, cpu_before) = (Instant::now(), cpu_time());
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for p in 0..putters.max(1) {
        let mut client = connect_one(&a.endpoints, p).await?;
        let (next, sent_at, total, val_size) =
            (next.clone(), sent_at.clone(), a.put_total, a.val_size);
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome::default();
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed) as usize;
                if seq >= total {
                    break out;
                }
                if put_rate > 0 {
                    let at = started + Duration::from_secs_f64(seq as f64 / put_rate as f64);
                    tokio::time::sleep_until(at.into()).await;
                }
                let mut value = (seq as u64).to_be_bytes().to_vec();
                value.resize(val_size.max(8), b'v');
                sent_at[seq].store(origin.elapsed().as_micros() as u64, Ordering::Release);
                if let Err(e) = client.put(key(seq % key_space), value, None).await {
                    out.error(error_kind(&e));
                }
            }
        }));
    }
    let mut out = Outcome::default();
    for t in tasks {
        for (kind, n) in t.await?.errors {
            *out.errors.entry(kind).or_default() += n;
        }
    }
    for r in receivers {
        out.latencies_us.extend(r.await?);
    }
    out.elapsed = started.elapsed();
    out.cpu = cpu_time() - cpu_before;
    let missing = expected.saturating_sub(out.latencies_us.len()) as u64;
    if missing > 0 {
        *out.errors.entry("event never arrived".into()).or_default() += missing;
    }
    out.extra = Some((
        "events_per_sec",
        out.latencies_us.len() as f64 / out.elapsed.as_secs_f64(),
    ));
    Ok(out)
}

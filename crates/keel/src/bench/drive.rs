//! Closed-loop load: `clients` tasks sharing `conns` connections, each with one request in flight,
//! until a total count or a duration is reached, optionally paced to a target rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use etcd_client::Client;
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;

use super::report::{cpu_time, error_kind, Outcome};
use super::Common;

/// Opens `c.conns` connections, handing the endpoints out in turn as etcd's benchmark does: each
/// connection talks to one member, so a 3-member cluster gets a third of them each.
pub async fn connect(c: &Common) -> anyhow::Result<Vec<Client>> {
    let mut conns = Vec::new();
    for i in 0..c.conns.max(1) {
        conns.push(connect_one(&c.endpoints, i).await?);
    }
    Ok(conns)
}

/// One connection to the `i`-th endpoint (in turn): a plain gRPC channel, without the client
/// library's load balancer, whose extra queue and task hop per request would cost the tool
/// more CPU than a one-endpoint connection needs.
pub async fn connect_one(endpoints: &[String], i: usize) -> anyhow::Result<Client> {
    anyhow::ensure!(!endpoints.is_empty(), "no endpoints given");
    let endpoint = &endpoints[i % endpoints.len()];
    let url = if endpoint.contains("://") {
        endpoint.clone()
    } else {
        format!("http://{endpoint}")
    };
    let channel = tonic::transport::Endpoint::from_shared(url)
        .with_context(|| format!("endpoint {endpoint}"))?
        .connect()
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    Ok(Client::from_channel(etcd_client::Channel::Tonic(channel), None).await?)
}

/// Runs the load. Each client first builds its session with `setup` (untimed), then passes it
/// through each `request`, which gets the request's sequence number.
pub async fn drive<S, Setup, SetupFut, F, Fut>(
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
    let conns = connect(c).await?;
    let mut sessions = Vec::new();
    for i in 0..c.clients.max(1) {
        let session = setup(conns[i % conns.len()].clone())
            .await
            .context("setting up a client")?;
        sessions.push(session);
    }
    let total = if c.duration.is_some() {
        u64::MAX
    } else {
        c.total
    };
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Outcome::default()));
    let progress = Progress::start(c, next.clone());
    let (started, cpu_before) = (Instant::now(), cpu_time());
    let deadline = c.duration.map(|d| started + d);
    // Request n starts no earlier than n / rate seconds in.
    let pace = (c.rate > 0).then(|| Duration::from_secs_f64(1.0 / c.rate as f64));
    let mut tasks = Vec::new();
    for mut session in sessions {
        let (next, errors, request) = (next.clone(), errors.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total || deadline.is_some_and(|d| Instant::now() >= d) {
                    break lat;
                }
                if let Some(pace) = pace {
                    tokio::time::sleep_until((started + pace.mul_f64(n as f64)).into()).await;
                }
                let t = Instant::now();
                let (s, res) = request(session, n).await;
                session = s;
                match res {
                    Ok(()) => lat.push(t.elapsed().as_micros() as u64),
                    Err(e) => errors.lock().error(error_kind(&e)),
                }
            }
        }));
    }
    let mut latencies_us = Vec::new();
    for t in tasks {
        latencies_us.extend(t.await?);
    }
    let elapsed = started.elapsed();
    progress.finish();
    let mut out = std::mem::take(&mut *errors.lock());
    out.latencies_us = latencies_us;
    out.elapsed = elapsed;
    out.cpu = cpu_time() - cpu_before;
    Ok(out)
}

/// A progress bar on stderr (hidden when stderr is not a terminal), fed from the request counter.
pub struct Progress {
    bar: ProgressBar,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Shows progress toward the total (or through the duration) of `c`.
    pub fn start(c: &Common, done: Arc<AtomicU64>) -> Progress {
        let (len, by_time) = match c.duration {
            Some(d) => (d.as_secs().max(1), true),
            None => (c.total, false),
        };
        let bar = ProgressBar::new(len);
        let template = if by_time {
            "{bar:40} {pos}/{len} s  {msg}"
        } else {
            "{bar:40} {pos}/{len}  ETA {eta}  {msg}"
        };
        bar.set_style(ProgressStyle::with_template(template).expect("a valid template"));
        let (b, started) = (bar.clone(), Instant::now());
        // Without a terminal (a script's log), a line every 10 s instead of the bar.
        let lines = bar.is_hidden();
        let task = tokio::spawn(async move {
            for tick in 1u64.. {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let n = done.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                let rate = n as f64 / secs;
                b.set_position(if by_time { secs as u64 } else { n.min(len) });
                b.set_message(format!("{rate:.0} req/s"));
                if lines && tick % 40 == 0 {
                    let left = if by_time {
                        len as f64 - secs
                    } else {
                        len.saturating_sub(n) as f64 / rate.max(1.0)
                    };
                    eprintln!("{n}/{len} requests, {rate:.0} req/s, ETA {left:.0} s");
                }
            }
        });
        Progress { bar, task }
    }

    /// Removes the bar.
    pub fn finish(self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}

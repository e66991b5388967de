//! `keel gateway start`: etcd's L4 gateway. It accepts TCP connections on --listen-addr and
//! splices each to one of --endpoints, picked round robin; an endpoint that refuses a connection
//! is set aside for --retry-delay and the next one is tried, so clients that know only the
//! gateway's address survive a member going down. It never looks inside the bytes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};

/// The flags of `keel gateway start`, as etcd's.
#[derive(Args, Debug, Clone)]
pub struct GatewayArgs {
    /// listen address
    #[arg(long, default_value = "127.0.0.1:23790", global = true)]
    pub listen_addr: String,
    /// comma separated etcd cluster endpoints
    #[arg(
        long,
        default_value = "127.0.0.1:2379",
        value_delimiter = ',',
        global = true
    )]
    pub endpoints: Vec<String>,
    /// duration of delay before retrying failed endpoints
    #[arg(long, default_value = "1m", value_parser = crate::flags::go_duration, global = true)]
    pub retry_delay: Duration,
    /// DNS domain used to bootstrap initial cluster
    #[arg(long, global = true)]
    pub discovery_srv: Option<String>,
    /// service name to query when using DNS discovery
    #[arg(long, global = true)]
    pub discovery_srv_name: Option<String>,
    /// accept insecure SRV records
    #[arg(long, value_parser = crate::flags::go_bool, num_args = 0..=1, default_missing_value = "true", default_value = "false", global = true)]
    pub insecure_discovery: bool,
    /// path to the client server TLS CA file for verifying the discovered endpoints when
    /// discovery-srv is provided.
    #[arg(long, global = true)]
    pub trusted_ca_file: Option<String>,
}

/// One upstream endpoint and when it may be tried again after a failure.
struct Remote {
    addr: String,
    down_until: Mutex<Option<Instant>>,
}

impl Remote {
    fn usable(&self) -> bool {
        self.down_until.lock().is_none_or(|t| Instant::now() >= t)
    }
}

/// The proxy: its endpoints and the round-robin position.
pub struct TcpProxy {
    remotes: Vec<Remote>,
    next: AtomicUsize,
    retry_delay: Duration,
}

/// etcd accepts endpoints with or without a scheme; the gateway dials host:port.
fn strip_scheme(endpoint: &str) -> String {
    let rest = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    rest.trim_end_matches('/').to_string()
}

impl TcpProxy {
    /// A proxy to `endpoints`.
    pub fn new(endpoints: &[String], retry_delay: Duration) -> TcpProxy {
        TcpProxy {
            remotes: endpoints
                .iter()
                .map(|e| Remote {
                    addr: strip_scheme(e),
                    down_until: Mutex::new(None),
                })
                .collect(),
            next: AtomicUsize::new(0),
            retry_delay,
        }
    }

    /// Dials the next usable endpoint, setting aside those that refuse.
    async fn dial(&self) -> Option<TcpStream> {
        for _ in 0..self.remotes.len() {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.remotes.len();
            let remote = &self.remotes[i];
            if !remote.usable() {
                continue;
            }
            match TcpStream::connect(&remote.addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Some(s);
                }
                Err(e) => {
                    *remote.down_until.lock() = Some(Instant::now() + self.retry_delay);
                    tracing::warn!(address = %remote.addr, interval = ?self.retry_delay, error = %e, "deactivated endpoint");
                }
            }
        }
        None
    }

    /// Serves `listener` until the process ends.
    pub async fn run(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        let eps: Vec<&str> = self.remotes.iter().map(|r| r.addr.as_str()).collect();
        tracing::info!(endpoints = ?eps, "ready to proxy client requests");
        loop {
            let (mut inbound, _) = listener.accept().await?;
            let _ = inbound.set_nodelay(true);
            let proxy = self.clone();
            tokio::spawn(async move {
                let Some(mut outbound) = proxy.dial().await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    }
}

/// Runs `keel gateway start`.
pub async fn run(mut args: GatewayArgs) -> anyhow::Result<()> {
    args.endpoints = super::endpoints(
        args.discovery_srv.as_deref(),
        args.discovery_srv_name.as_deref(),
        args.insecure_discovery,
        std::mem::take(&mut args.endpoints),
    )
    .await?;
    if args.endpoints.is_empty() {
        anyhow::bail!("no endpoints found");
    }
    let listen_port = args
        .listen_addr
        .rsplit_once(':')
        .map(|(_, p)| p.to_string());
    let listener = TcpListener::bind(&args.listen_addr)
        .await
        .map_err(|e| anyhow::anyhow!("failed to listen on {}: {e}", args.listen_addr))?;
    let local = listener.local_addr()?;
    for e in &args.endpoints {
        // etcd refuses an endpoint that is the gateway itself (it would forward to itself).
        let addr = strip_scheme(e);
        let same_port = addr.rsplit_once(':').map(|(_, p)| p.to_string()) == listen_port;
        if same_port {
            let resolved = tokio::net::lookup_host(addr.as_str()).await.ok();
            if resolved.is_some_and(|mut r| r.any(|a| a.ip() == local.ip())) {
                anyhow::bail!(
                    "SRV or endpoint ({addr}) should not resolve to the gateway listen addr ({})",
                    args.listen_addr
                );
            }
        }
    }
    let proxy = Arc::new(TcpProxy::new(&args.endpoints, args.retry_delay));
    proxy.run(listener).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_lose_their_scheme() {
        assert_eq!(strip_scheme("http://127.0.0.1:2379"), "127.0.0.1:2379");
        assert_eq!(strip_scheme("127.0.0.1:2379"), "127.0.0.1:2379");
        assert_eq!(strip_scheme("https://a:1/"), "a:1");
    }

    #[tokio::test]
    async fn a_refusing_endpoint_is_set_aside_and_the_next_is_used() {
        let good = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good_addr = good.local_addr().unwrap().to_string();
        // A port nobody listens on: bind, read the port, close.
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_addr = dead.local_addr().unwrap().to_string();
        drop(dead);
        let proxy = TcpProxy::new(&[dead_addr, good_addr], Duration::from_secs(60));
        for _ in 0..3 {
            assert!(proxy.dial().await.is_some());
        }
        assert!(!proxy.remotes[0].usable());
        assert!(proxy.remotes[1].usable());
    }
}

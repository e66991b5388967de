//! etcd's proxies, as `keel gateway start` (L4: TCP connections spliced to the endpoints) and
//! `keel grpc-proxy start` (L7: etcd's gRPC API served and forwarded, identical watches and lease
//! keep-alives coalesced upstream).

pub mod gateway;
pub mod grpc;
mod watch;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tonic::transport::Channel;

/// The endpoints a proxy forwards to: those the SRV records of `domain` name (etcd's
/// discoverEndpoints), or `given` (--endpoints) when no domain is given or no discovered endpoint
/// survives the check. Unless `insecure`, only https endpoints that accept a connection are
/// kept, as etcd keeps them. A domain without any client records is an error.
pub async fn endpoints(
    domain: Option<&str>,
    service_name: Option<&str>,
    insecure: bool,
    given: Vec<String>,
) -> anyhow::Result<Vec<String>> {
    let found = discover_endpoints(domain, service_name, insecure).await?;
    Ok(if found.is_empty() { given } else { found })
}

async fn discover_endpoints(
    domain: Option<&str>,
    service_name: Option<&str>,
    insecure: bool,
) -> anyhow::Result<Vec<String>> {
    use keel_server::startup::srv;
    let Some(domain) = domain.filter(|d| !d.is_empty()) else {
        return Ok(Vec::new());
    };
    let resolver = srv::system_resolver().map_err(anyhow::Error::msg)?;
    let found = srv::client_endpoints(&resolver, domain, service_name)
        .await
        .map_err(anyhow::Error::msg)?;
    tracing::info!(srv_server = domain, endpoints = ?found, "discovered cluster from SRV");
    if insecure {
        return Ok(found);
    }
    let mut endpoints = Vec::new();
    let mut errors = Vec::new();
    for e in found {
        let Some(addr) = e.strip_prefix("https://") else {
            errors.push(format!("{e:?} is insecure"));
            continue;
        };
        let dial = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::net::TcpStream::connect(addr),
        )
        .await;
        match dial {
            Ok(Ok(_)) => endpoints.push(e),
            Ok(Err(err)) => errors.push(format!("{e:?} failed to dial ({err})")),
            Err(_) => errors.push(format!("{e:?} failed to dial (timeout)")),
        }
    }
    if errors.is_empty() {
        tracing::info!(srv_server = domain, endpoints = ?endpoints, "using validated discovered SRV endpoints");
    } else {
        tracing::warn!(srv_server = domain, endpoints = ?endpoints, error = %errors.join(","), "failed to validate discovered endpoints");
    }
    Ok(endpoints)
}

/// The upstream members: one lazily connected channel per endpoint, picked round robin.
#[derive(Clone)]
pub struct Upstream {
    channels: Arc<Vec<Channel>>,
    next: Arc<AtomicUsize>,
}

impl Upstream {
    /// Channels to `endpoints` (`host:port` or URLs); TLS with `dialer`'s settings for https
    /// endpoints, and for scheme-less ones when `dialer` has TLS.
    pub fn new(endpoints: &[String], dialer: &keel_raft::Dialer) -> anyhow::Result<Upstream> {
        let mut channels = Vec::new();
        for e in endpoints.iter().filter(|e| !e.is_empty()) {
            let url = if e.contains("://") {
                e.clone()
            } else if dialer.has_tls() {
                format!("https://{e}")
            } else {
                format!("http://{e}")
            };
            let channel = dialer
                .lazy_channel(&url)
                .map_err(|err| anyhow::anyhow!("endpoint {e:?}: {err}"))?;
            channels.push(channel);
        }
        if channels.is_empty() {
            anyhow::bail!("no endpoints found");
        }
        Ok(Upstream {
            channels: Arc::new(channels),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The next endpoint's channel.
    pub fn pick(&self) -> Channel {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        self.channels[i].clone()
    }
}

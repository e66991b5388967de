//! etcd's proxies, as `keel gateway start` (L4: TCP connections spliced to the endpoints) and
//! `keel grpc-proxy start` (L7: etcd's gRPC API served and forwarded, identical watches and lease
//! keep-alives coalesced upstream).

pub mod gateway;
pub mod grpc;
mod watch;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tonic::transport::Channel;

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

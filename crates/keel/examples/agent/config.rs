//! The agent's cluster configuration file (YAML), checked field by field so that a mistake is
//! reported with the field it is in.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    cluster_name: String,
    node_name: String,
    #[serde(default = "localhost")]
    listen_host: String,
    client_port: u16,
    peer_port: u16,
    pod_cidr: String,
    service_cidr: String,
    data_dir: PathBuf,
    backup_path: PathBuf,
    lease_ttl_seconds: u64,
}

fn localhost() -> String {
    "127.0.0.1".into()
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub listen_host: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub lease_ttl: Duration,
    /// What the cluster shares (stored at /keel/config/cluster_config).
    pub cluster: ClusterConfig,
}

/// The cluster-wide part, normalized: no node's own addresses or paths.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClusterConfig {
    pub cluster_name: String,
    pub pod_cidr: String,
    pub service_cidr: String,
    pub backup_path: PathBuf,
    pub lease_ttl_seconds: u64,
}

impl Config {
    pub fn client_url(&self) -> String {
        format!("http://{}:{}", self.listen_host, self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://{}:{}", self.listen_host, self.peer_port)
    }
}

/// Reads and checks `path`; an error names the file and the field.
pub fn load(path: &Path) -> Result<Config, String> {
    let at = |what: String| format!("{}: {what}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| at(e.to_string()))?;
    let f: File = serde_yaml::from_str(&text).map_err(|e| at(e.to_string()))?;
    let field = |name: &str, why: String| at(format!("{name}: {why}"));
    if !is_dns_label(&f.cluster_name) {
        return Err(field(
            "cluster_name",
            format!("{:?} is not a DNS label (a-z, 0-9, '-')", f.cluster_name),
        ));
    }
    if !is_dns_label(&f.node_name) {
        return Err(field(
            "node_name",
            format!("{:?} is not a DNS label (a-z, 0-9, '-')", f.node_name),
        ));
    }
    f.listen_host.parse::<IpAddr>().map_err(|_| {
        field(
            "listen_host",
            format!("{:?} is not an IP address", f.listen_host),
        )
    })?;
    for (name, port) in [("client_port", f.client_port), ("peer_port", f.peer_port)] {
        if port == 0 {
            return Err(field(name, "must be 1..65535".into()));
        }
    }
    if f.client_port == f.peer_port {
        return Err(field("peer_port", "must differ from client_port".into()));
    }
    let pod_cidr = cidr(&f.pod_cidr).map_err(|e| field("pod_cidr", e))?;
    let service_cidr = cidr(&f.service_cidr).map_err(|e| field("service_cidr", e))?;
    if overlaps(&pod_cidr, &service_cidr) {
        return Err(field(
            "service_cidr",
            format!("{} overlaps pod_cidr {}", f.service_cidr, f.pod_cidr),
        ));
    }
    if f.data_dir.as_os_str().is_empty() {
        return Err(field("data_dir", "must not be empty".into()));
    }
    if f.backup_path.as_os_str().is_empty() {
        return Err(field("backup_path", "must not be empty".into()));
    }
    if !(1..=3600).contains(&f.lease_ttl_seconds) {
        return Err(field(
            "lease_ttl_seconds",
            format!("{} is not within 1..=3600", f.lease_ttl_seconds),
        ));
    }
    Ok(Config {
        node_name: f.node_name,
        listen_host: f.listen_host,
        client_port: f.client_port,
        peer_port: f.peer_port,
        data_dir: f.data_dir,
        lease_ttl: Duration::from_secs(f.lease_ttl_seconds),
        cluster: ClusterConfig {
            cluster_name: f.cluster_name,
            pod_cidr: pod_cidr.to_string(),
            service_cidr: service_cidr.to_string(),
            backup_path: f.backup_path,
            lease_ttl_seconds: f.lease_ttl_seconds,
        },
    })
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// An IPv4 or IPv6 network in CIDR notation, its address reduced to the network's.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cidr {
    net: u128,
    len: u32,
    v4: bool,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.v4 {
            write!(
                f,
                "{}/{}",
                std::net::Ipv4Addr::from(self.net as u32),
                self.len
            )
        } else {
            write!(f, "{}/{}", std::net::Ipv6Addr::from(self.net), self.len)
        }
    }
}

fn cidr(s: &str) -> Result<Cidr, String> {
    let bad = || format!("{s:?} is not a CIDR (like 10.244.0.0/16)");
    let (addr, len) = s.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let len: u32 = len.parse().map_err(|_| bad())?;
    let (bits, value, v4) = match addr {
        IpAddr::V4(a) => (32, u32::from(a) as u128, true),
        IpAddr::V6(a) => (128, u128::from(a), false),
    };
    if len > bits {
        return Err(format!("{s:?}: prefix length {len} is more than {bits}"));
    }
    let host_bits = bits - len;
    let mask = if host_bits >= 128 {
        0
    } else {
        !0u128 << host_bits
    };
    Ok(Cidr {
        net: value & mask,
        len,
        v4,
    })
}

fn overlaps(a: &Cidr, b: &Cidr) -> bool {
    if a.v4 != b.v4 {
        return false;
    }
    let bits = if a.v4 { 32 } else { 128 };
    let len = a.len.min(b.len);
    let host_bits = bits - len;
    let mask = if host_bits >= 128 {
        0
    } else {
        !0u128 << host_bits
    };
    a.net & mask == b.net & mask
}

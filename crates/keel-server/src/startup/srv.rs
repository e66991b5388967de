//! DNS SRV discovery (etcd's --discovery-srv): a cluster's members are named by SRV records of
//! a domain. Members bootstrap from `_etcd-server-ssl._tcp.<domain>` (https peers) and
//! `_etcd-server._tcp.<domain>` (http peers); proxies and gateways find client endpoints under
//! `_etcd-client-ssl._tcp` and `_etcd-client._tcp`. `--discovery-srv-name NAME` appends
//! `-NAME` to each service, so several clusters can share a domain.
//!
//! Names resolve through the system's resolver configuration (`/etc/resolv.conf`, `/etc/hosts`),
//! as Go's resolver does for etcd.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

/// One SRV record: a host (without the trailing dot) and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvTarget {
    pub host: String,
    pub port: u16,
}

impl SrvTarget {
    fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A resolver with the system's configuration.
pub fn system_resolver() -> Result<TokioResolver, String> {
    TokioResolver::builder_tokio()
        .and_then(|b| b.build())
        .map_err(|e| format!("reading the system's DNS configuration: {e}"))
}

/// The SRV service name: `etcd-server`, `etcd-server-ssl`, `etcd-client-ssl-NAME`, ...
pub fn service(base: &str, secure: bool, service_name: Option<&str>) -> String {
    let mut s = base.to_string();
    if secure {
        s.push_str("-ssl");
    }
    if let Some(name) = service_name.filter(|n| !n.is_empty()) {
        s.push('-');
        s.push_str(name);
    }
    s
}

/// The SRV records of `_<service>._tcp.<domain>`, by priority, then by weight (heaviest first).
pub async fn lookup(
    resolver: &TokioResolver,
    service: &str,
    domain: &str,
) -> Result<Vec<SrvTarget>, String> {
    let name = format!("_{service}._tcp.{}.", domain.trim_end_matches('.'));
    let answer = resolver
        .srv_lookup(name.as_str())
        .await
        .map_err(|e| format!("lookup {name}: {e}"))?;
    let mut records: Vec<(u16, u16, SrvTarget)> = answer
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some((
                srv.priority,
                srv.weight,
                SrvTarget {
                    host: srv.target.to_utf8().trim_end_matches('.').to_string(),
                    port: srv.port,
                },
            )),
            _ => None,
        })
        .collect();
    records.sort_by_key(|(priority, weight, _)| (*priority, std::cmp::Reverse(*weight)));
    Ok(records.into_iter().map(|(_, _, t)| t).collect())
}

/// The address `host:port` resolves to first (IPv4 first, as Go's ResolveTCPAddr).
async fn resolve(resolver: &TokioResolver, host: &str, port: u16) -> Result<SocketAddr, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let ips = resolver
        .lookup_ip(host)
        .await
        .map_err(|e| format!("lookup {host}: {e}"))?;
    let ips: Vec<IpAddr> = ips.iter().collect();
    ips.iter()
        .find(|ip| ip.is_ipv4())
        .or(ips.first())
        .map(|ip| SocketAddr::new(*ip, port))
        .ok_or_else(|| format!("lookup {host}: no addresses"))
}

/// The initial cluster the SRV records of `domain` describe, as etcd builds it: the member
/// whose advertised peer URL resolves to a record's address is `name`; the others are named
/// `0`, `1`, ... until they publish their names. Peer URLs use the records' host names.
/// https records come first; a member must be among the records.
pub async fn initial_cluster(
    resolver: &TokioResolver,
    domain: &str,
    service_name: Option<&str>,
    name: &str,
    advertise_peer_urls: &[String],
) -> Result<Vec<(String, Vec<String>)>, String> {
    let mut own = Vec::new();
    for url in advertise_peer_urls {
        let target = keel_raft::Target::parse(url)?;
        let keel_raft::dial::Address::Tcp(host_port) = &target.address else {
            continue;
        };
        let port = host_port
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .ok_or_else(|| format!("URL {url:?} has no port"))?;
        let scheme = if target.secure { "https" } else { "http" };
        own.push((resolve(resolver, &target.host, port).await?, scheme, url));
    }
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    let mut errors = Vec::new();
    let mut unnamed = 0;
    for (secure, scheme) in [(true, "https"), (false, "http")] {
        let service = service("etcd-server", secure, service_name);
        let records = match lookup(resolver, &service, domain).await {
            Ok(records) => records,
            Err(e) => {
                tracing::info!(service = %service, discovery_srv = domain, error = %e, "no SRV records for the service");
                errors.push(format!("_{service}: {e}"));
                continue;
            }
        };
        for record in records {
            let addr = match resolve(resolver, &record.host, record.port).await {
                Ok(addr) => addr,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let url = format!("{scheme}://{}", record.host_port());
            let member = match own.iter().find(|(a, _, _)| *a == addr) {
                Some((_, own_scheme, own_url)) if *own_scheme != scheme => {
                    errors.push(format!(
                        "bootstrap at {url} from DNS for {service} has scheme mismatch with expected peer {own_url}"
                    ));
                    continue;
                }
                Some(_) => name.to_string(),
                None => {
                    unnamed += 1;
                    (unnamed - 1).to_string()
                }
            };
            tracing::info!(node = %format!("{member}={url}"), "got bootstrap from DNS for etcd-server");
            match members.iter_mut().find(|(n, _)| *n == member) {
                Some((_, urls)) => urls.push(url),
                None => members.push((member, vec![url])),
            }
        }
    }
    if members.is_empty() {
        return Err(format!(
            "error querying DNS SRV records for {domain}: {}",
            errors.join("; ")
        ));
    }
    if !members.iter().any(|(n, _)| n == name) {
        return Err(format!(
            "cannot find local etcd member {name:?} in SRV records"
        ));
    }
    Ok(members)
}

/// The client endpoints the SRV records of `domain` name (`https://` then `http://` ones), for
/// proxies and gateways.
pub async fn client_endpoints(
    resolver: &TokioResolver,
    domain: &str,
    service_name: Option<&str>,
) -> Result<Vec<String>, String> {
    let mut endpoints = Vec::new();
    let mut errors = Vec::new();
    for (secure, scheme) in [(true, "https"), (false, "http")] {
        let service = service("etcd-client", secure, service_name);
        match lookup(resolver, &service, domain).await {
            Ok(records) => endpoints.extend(
                records
                    .iter()
                    .map(|r| format!("{scheme}://{}", r.host_port())),
            ),
            Err(e) => errors.push(e),
        }
    }
    if errors.len() == 2 {
        return Err(format!("dns lookup errors: {}", errors.join(" and ")));
    }
    Ok(endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_follow_etcd() {
        assert_eq!(service("etcd-server", true, None), "etcd-server-ssl");
        assert_eq!(service("etcd-server", false, Some("")), "etcd-server");
        assert_eq!(
            service("etcd-client", true, Some("prod")),
            "etcd-client-ssl-prod"
        );
    }
}

//! How a new member learns its initial cluster when --initial-cluster does not say it:
//!
//! - etcd's discovery service protocol (--discovery): a new cluster's members find each other
//!   through a token directory of a v2 keys API (discovery.etcd.io, or any etcd serving v2). The
//!   directory's `_config/size` says how many members the cluster has; each member registers
//!   `<member id>` = `name=peerURL,...` (only if absent) and waits until `size` members have; the
//!   first `size` registrations, in creation order, are the initial cluster. A member beyond them
//!   is refused (`discovery: cluster is full`). Requests go through --discovery-proxy when set
//!   (absolute-form requests for http, a CONNECT tunnel for https, as Go's HTTP client does).
//! - DNS SRV records (--discovery-srv, see [`super::srv`]).
//!
//! Used only to bootstrap a new data dir.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use keel_raft::{Dialer, Target};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::{Discovery as Source, ServerConfig};
use crate::startup::{srv, tls};
use keel_state::membership::member_id;

/// How long one request may take (etcd's client.DefaultRequestTimeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a watch for more members may wait before it is asked again.
const WAIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts at an unreachable discovery service before giving up (etcd: nRetries).
const RETRIES: u32 = 8;

/// The initial cluster (member name, peer URLs) that `cfg`'s discovery source gives; `None`
/// when the configuration names the cluster itself.
pub async fn initial_cluster(
    cfg: &ServerConfig,
) -> Result<Option<Vec<(String, Vec<String>)>>, String> {
    let cluster = match &cfg.discovery {
        None => return Ok(None),
        Some(Source::Srv {
            domain,
            service_name,
        }) => {
            let resolver = srv::system_resolver()?;
            srv::initial_cluster(
                &resolver,
                domain,
                service_name.as_deref(),
                &cfg.name,
                &cfg.initial_advertise_peer_urls,
            )
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "failed to resolve during SRV discovery");
                e
            })?
        }
        Some(Source::Service { url, proxy }) => {
            let tls = tls::client_only(None, None, false, &cfg.tls)?;
            let mut http1 = (*tls).clone();
            http1.alpn_protocols = vec![b"http/1.1".to_vec()];
            let client = Client::new(Arc::new(http1), proxy.as_deref())?;
            let me: Vec<String> = cfg
                .initial_advertise_peer_urls
                .iter()
                .map(|u| format!("{}={u}", cfg.name))
                .collect();
            let id = member_id(&cfg.initial_advertise_peer_urls, &cfg.initial_cluster_token);
            let cluster = join(url, &client, id, &me.join(",")).await?;
            tracing::info!(%cluster, discovery_url = %url, "discovered the initial cluster");
            parse_cluster(&cluster)
        }
    };
    Ok(Some(cluster))
}

/// `name=url,name=url2,...` grouped by name, in order of first appearance.
fn parse_cluster(cluster: &str) -> Vec<(String, Vec<String>)> {
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    for part in cluster.split(',') {
        let Some((name, url)) = part.split_once('=') else {
            continue;
        };
        match members.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => members.push((name.to_string(), vec![url.to_string()])),
        }
    }
    members
}

/// Joins the cluster of `durl` as member `id` (hex key) with `me` (`name=url,...`); the initial
/// cluster (`name=url,...` for every member).
async fn join(durl: &str, client: &Client, id: u64, me: &str) -> Result<String, String> {
    let d = Discovery {
        url: durl.trim_end_matches('/').to_string(),
        client,
        self_key: format!("{id:x}"),
    };
    let (_, size, _) = d.check().await?;
    d.create_self(me).await?;
    let (nodes, size2, index) = d.check().await?;
    let nodes = d.wait(nodes, size.max(size2), index).await?;
    to_cluster(&nodes, size)
}

/// An HTTP/1.1 client for the discovery service: direct, or through an HTTP proxy.
struct Client {
    tls: Arc<rustls::ClientConfig>,
    dialer: Dialer,
    proxy: Option<Target>,
}

impl Client {
    fn new(tls: Arc<rustls::ClientConfig>, proxy: Option<&str>) -> Result<Client, String> {
        let proxy = match proxy.filter(|p| !p.is_empty()) {
            None => None,
            Some(p) => {
                // Go's net/http takes a proxy without a scheme as http://.
                let url = if p.starts_with("http://") || p.starts_with("https://") {
                    p.to_string()
                } else {
                    format!("http://{p}")
                };
                let target =
                    Target::parse(&url).map_err(|e| format!("invalid proxy address {p:?}: {e}"))?;
                tracing::info!(proxy_url = %url, "running proxy with discovery");
                Some(target)
            }
        };
        Ok(Client {
            dialer: Dialer::new(Some(tls.clone())),
            tls,
            proxy,
        })
    }

    /// One request; the status and the JSON answer.
    async fn call(
        &self,
        method: &str,
        url: &str,
        form: Option<String>,
    ) -> Result<(u16, Value), String> {
        let target = Target::parse(url).map_err(|_| "discovery: invalid URL".to_string())?;
        let uri: hyper::Uri = url.parse().map_err(|_| "discovery: invalid URL")?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let host = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let request = Request {
            method,
            host: &host,
            form,
        };
        let dial_error = |e: Box<dyn std::error::Error + Send + Sync>| {
            keel_raft::dial::describe_error(e.as_ref())
        };
        match &self.proxy {
            None => {
                let conn = self.dialer.connect(&target).await.map_err(dial_error)?;
                request.send(conn, &path).await
            }
            // A plain request goes to the proxy whole, its URI in absolute form.
            Some(proxy) if !target.secure => {
                let conn = self.dialer.connect(proxy).await.map_err(dial_error)?;
                request.send(conn, url).await
            }
            Some(proxy) => {
                let mut conn = self.dialer.connect(proxy).await.map_err(dial_error)?;
                tunnel(&mut conn, &host).await?;
                let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                    .map_err(|e| e.to_string())?;
                let conn = tokio_rustls::TlsConnector::from(self.tls.clone())
                    .connect(name, conn)
                    .await
                    .map_err(|e| e.to_string())?;
                request.send(conn, &path).await
            }
        }
    }
}

/// Asks an HTTP proxy for a tunnel to `host` (`CONNECT`), reading its answer's head.
async fn tunnel<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut S, host: &str) -> Result<(), String> {
    conn.write_all(format!("CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 || conn.read_u8().await.map(|b| head.push(b)).is_err() {
            return Err("discovery: the proxy closed the tunnel".into());
        }
    }
    let status = String::from_utf8_lossy(&head);
    let line = status.lines().next().unwrap_or_default();
    match line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        _ => Err(format!("discovery: the proxy refused the tunnel ({line})")),
    }
}

/// One HTTP/1.1 request's parts other than its target.
struct Request<'a> {
    method: &'a str,
    host: &'a str,
    form: Option<String>,
}

impl Request<'_> {
    /// Sends the request for `uri` over `conn`; the status and the JSON answer.
    async fn send<S>(self, conn: S, uri: &str) -> Result<(u16, Value), String>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (mut send, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(conn))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let mut req = hyper::Request::builder()
            .method(self.method)
            .uri(uri)
            .header(hyper::header::HOST, self.host);
        if self.form.is_some() {
            req = req.header(
                hyper::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        }
        let req = req
            .body(Full::new(Bytes::from(self.form.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let code = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let json = serde_json::from_slice(&body)
            .map_err(|_| "discovery: bad discovery endpoint".to_string())?;
        Ok((code, json))
    }
}

/// A registered member: its key's last part, value and creation index.
#[derive(Clone, Debug, PartialEq)]
struct Node {
    name: String,
    value: String,
    created: u64,
}

struct Discovery<'a> {
    url: String,
    client: &'a Client,
    self_key: String,
}

impl Discovery<'_> {
    /// The size, the members registered so far (in creation order, at most `size` once self is
    /// among them) and the directory's index; `cluster is full` when `size` others came first.
    async fn check(&self) -> Result<(Vec<Node>, usize, u64), String> {
        let (code, size) = self.get(&format!("{}/_config/size", self.url)).await?;
        if code == 404 {
            return Err("discovery: size key not found".into());
        }
        let size: usize = size["node"]["value"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .ok_or("discovery: size key is bad")?;
        let (code, dir) = self.get(&self.url).await?;
        if code == 404 {
            return Err("discovery: token not found".into());
        }
        let index = dir["node"]["modifiedIndex"].as_u64().unwrap_or(0);
        let nodes = nodes_of(&dir);
        for (i, n) in nodes.iter().enumerate() {
            if n.name == self.self_key {
                break;
            }
            if i + 1 >= size {
                return Err("discovery: cluster is full".into());
            }
        }
        Ok((nodes, size, index))
    }

    async fn create_self(&self, me: &str) -> Result<(), String> {
        let url = format!("{}/{}?prevExist=false", self.url, self.self_key);
        let body = format!("value={}", form_encode(me));
        let (code, answer) = self.call("PUT", &url, Some(body), REQUEST_TIMEOUT).await?;
        match code {
            200..=299 => Ok(()),
            // 105: the key exists (etcd's ErrorCodeNodeExist).
            412 if answer["errorCode"] == 105 => Err("discovery: found duplicate id".into()),
            _ => Err(format!("discovery: registering failed ({code}: {answer})")),
        }
    }

    /// Waits until `size` members registered.
    async fn wait(
        &self,
        mut nodes: Vec<Node>,
        size: usize,
        mut index: u64,
    ) -> Result<Vec<Node>, String> {
        while nodes.len() < size {
            tracing::info!(
                registered = nodes.len(),
                size,
                "waiting for other members on the discovery service"
            );
            let url = format!(
                "{}?wait=true&recursive=true&waitIndex={}",
                self.url,
                index + 1
            );
            // A watch that timed out: look again all the same.
            if let Ok((_, v)) = self.call("GET", &url, None, WAIT_TIMEOUT).await {
                index = v["node"]["modifiedIndex"].as_u64().unwrap_or(index + 1);
            }
            let (fresh, _, i) = self.check().await?;
            nodes = fresh;
            index = index.max(i);
        }
        nodes.truncate(size);
        for n in &nodes {
            if n.name == self.self_key {
                tracing::info!(self = %n.name, "found self from discovery server");
            } else {
                tracing::info!(peer = %n.name, "found peer from discovery server");
            }
        }
        Ok(nodes)
    }

    async fn get(&self, url: &str) -> Result<(u16, Value), String> {
        let mut last = String::new();
        for attempt in 0..RETRIES {
            match self.call("GET", url, None, REQUEST_TIMEOUT).await {
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    tracing::warn!(discovery_url = %self.url, error = %e, attempt, "failed to get from discovery server");
                    last = e;
                    tokio::time::sleep(Duration::from_millis(500 << attempt.min(4))).await;
                }
            }
        }
        Err(format!("discovery: too many retries ({last})"))
    }

    /// One request that may take `timeout`.
    async fn call(
        &self,
        method: &str,
        url: &str,
        form: Option<String>,
        timeout: Duration,
    ) -> Result<(u16, Value), String> {
        tokio::time::timeout(timeout, self.client.call(method, url, form))
            .await
            .map_err(|_| "discovery: request timed out".to_string())?
    }
}

/// The registered members of a directory listing, in creation order (`_config` left out).
fn nodes_of(dir: &Value) -> Vec<Node> {
    let mut nodes: Vec<Node> = dir["node"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| {
            let key = n["key"].as_str()?;
            let name = key.rsplit('/').next()?.to_string();
            (name != "_config").then(|| Node {
                name,
                value: n["value"].as_str().unwrap_or_default().to_string(),
                created: n["createdIndex"].as_u64().unwrap_or(0),
            })
        })
        .collect();
    nodes.sort_by_key(|n| n.created);
    nodes
}

/// The initial cluster the registrations make; every name must be distinct.
fn to_cluster(nodes: &[Node], size: usize) -> Result<String, String> {
    let cluster: Vec<&str> = nodes.iter().map(|n| n.value.as_str()).collect();
    let mut names: Vec<&str> = cluster
        .iter()
        .flat_map(|v| v.split(','))
        .filter_map(|pair| pair.split_once('=').map(|(name, _)| name))
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.len() != size {
        return Err("discovery: found duplicate name".into());
    }
    Ok(cluster.join(","))
}

/// `application/x-www-form-urlencoded` for a value.
fn form_encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_make_the_initial_cluster_in_creation_order() {
        let dir = serde_json::json!({"node": {"nodes": [
            {"key": "/d/tok/b2", "value": "m2=http://10.0.0.2:2380", "createdIndex": 9},
            {"key": "/d/tok/_config", "dir": true, "createdIndex": 1},
            {"key": "/d/tok/a1", "value": "m1=http://10.0.0.1:2380", "createdIndex": 7},
        ]}});
        let nodes = nodes_of(&dir);
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].name, "a1");
        assert_eq!(
            to_cluster(&nodes, 2).unwrap(),
            "m1=http://10.0.0.1:2380,m2=http://10.0.0.2:2380"
        );
        assert!(to_cluster(&nodes, 3).is_err());
        assert_eq!(form_encode("m1=http://a:1"), "m1%3Dhttp%3A%2F%2Fa%3A1");
    }
}

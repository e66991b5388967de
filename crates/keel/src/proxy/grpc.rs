//! `keel grpc-proxy start`: etcd's gRPC proxy. It serves etcd's v3 API on --listen-addr and
//! forwards every call to the members in --endpoints (round robin): unary calls and streams pass
//! through as they are (metadata, and so auth tokens, included); identical watches share one
//! upstream watch (`watch.rs`) and lease keep-alives share one upstream keep-alive stream. TLS
//! towards the members with --cert/--key/--cacert, towards clients with --cert-file/--key-file/
//! --trusted-ca-file/--auto-tls/--client-crl-file/--listen-cipher-suites. /metrics and /health
//! over HTTP beside gRPC (and on --metrics-addr).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use clap::Args;
use futures::StreamExt;
use keel_rpc::etcd::{
    PbLeaseGrantRequest as LeaseGrantRequest, PbLeaseGrantResponse as LeaseGrantResponse,
    PbLeaseKeepAliveRequest as KeepAliveRequest, PbLeaseKeepAliveResponse as KeepAliveResponse,
    PbLeaseLeasesRequest as LeaseLeasesRequest, PbLeaseLeasesResponse as LeaseLeasesResponse,
    PbLeaseRevokeRequest as LeaseRevokeRequest, PbLeaseRevokeResponse as LeaseRevokeResponse,
    PbLeaseServer, PbLeaseService, PbLeaseTimeToLiveRequest as TimeToLiveRequest,
    PbLeaseTimeToLiveResponse as TimeToLiveResponse, PbRangeRequest, PbRangeResponse,
    PbWatchServer,
};
use keel_server::startup::tls::{self, Side};
use keel_server::startup::{incoming, Listener};
use keel_server::{TlsCommon, TlsConfig};
use parking_lot::Mutex;
use prometheus::{Encoder, IntCounter, IntGauge, Registry, TextEncoder};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tower::ServiceExt;

use super::watch::{WatchMetrics, WatchProxy};
use super::Upstream;
use crate::flags::go_bool;

/// The flags of `keel grpc-proxy start`, as etcd's.
#[derive(Args, Debug, Clone)]
pub struct GrpcProxyArgs {
    /// listen address
    #[arg(long, default_value = "127.0.0.1:23790", global = true)]
    pub listen_addr: String,
    /// domain name to query for SRV records describing cluster endpoints
    #[arg(long, global = true)]
    pub discovery_srv: Option<String>,
    /// service name to query when using DNS discovery
    #[arg(long, global = true)]
    pub discovery_srv_name: Option<String>,
    /// listen for endpoint /metrics requests on an additional interface
    #[arg(long, global = true)]
    pub metrics_addr: Option<String>,
    /// accept insecure SRV records
    #[arg(long, value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", default_value = "false", global = true)]
    pub insecure_discovery: bool,
    /// comma separated etcd cluster endpoints
    #[arg(
        long,
        default_value = "127.0.0.1:2379",
        value_delimiter = ',',
        global = true
    )]
    pub endpoints: Vec<String>,
    /// advertise address to register (must be reachable by client)
    #[arg(long, default_value = "127.0.0.1:23790", global = true)]
    pub advertise_client_url: String,
    /// prefix to use for registering proxy (must be shared with other grpc-proxy members)
    #[arg(long, default_value = "", global = true)]
    pub resolver_prefix: String,
    /// specify TTL, in seconds, when registering proxy endpoints
    #[arg(long, default_value_t = 0, global = true)]
    pub resolver_ttl: i64,
    /// string to prefix to all keys for namespacing requests
    #[arg(long, default_value = "", global = true)]
    pub namespace: String,
    /// Enable runtime profiling data via HTTP server
    #[arg(long, value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", default_value = "false", global = true)]
    pub enable_pprof: bool,
    /// Data directory for persistent data (self-signed certificates of --auto-tls)
    #[arg(long, default_value = "default.proxy", global = true)]
    pub data_dir: PathBuf,
    /// message send limits in bytes
    #[arg(long, default_value_t = 1536 * 1024, global = true)]
    pub max_send_bytes: usize,
    /// message receive limits in bytes
    #[arg(long, default_value_t = i32::MAX as usize, global = true)]
    pub max_recv_bytes: usize,
    /// identify secure connections with etcd servers using this TLS certificate file
    #[arg(long, global = true)]
    pub cert: Option<PathBuf>,
    /// identify secure connections with etcd servers using this TLS key file
    #[arg(long, global = true)]
    pub key: Option<PathBuf>,
    /// verify certificates of TLS-enabled secure etcd servers using this CA bundle
    #[arg(long, global = true)]
    pub cacert: Option<PathBuf>,
    /// skip authentication of etcd server TLS certificates
    #[arg(long, value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", default_value = "false", global = true)]
    pub insecure_skip_tls_verify: bool,
    /// identify secure connections to the proxy using this TLS certificate file
    #[arg(long, global = true)]
    pub cert_file: Option<PathBuf>,
    /// identify secure connections to the proxy using this TLS key file
    #[arg(long, global = true)]
    pub key_file: Option<PathBuf>,
    /// verify certificates of TLS-enabled secure proxy using this CA bundle
    #[arg(long, global = true)]
    pub trusted_ca_file: Option<PathBuf>,
    /// Comma-separated list of supported TLS cipher suites between client/proxy
    #[arg(long, value_delimiter = ',', global = true)]
    pub listen_cipher_suites: Vec<String>,
    /// proxy TLS using generated certificates
    #[arg(long, value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", default_value = "false", global = true)]
    pub auto_tls: bool,
    /// proxy client certificate revocation list file.
    #[arg(long, global = true)]
    pub client_crl_file: Option<PathBuf>,
    /// Ensure serializable reads have monotonically increasing store revisions across endpoints.
    #[arg(long, value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", default_value = "false", global = true)]
    pub experimental_serializable_ordering: bool,
    /// leasing metadata prefix for disconnected linearized reads.
    #[arg(long, default_value = "", global = true)]
    pub experimental_leasing_prefix: String,
    /// Enable debug-level logging for grpc-proxy.
    #[arg(long, value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", default_value = "false", global = true)]
    pub debug: bool,
    /// Maximum concurrent streams that each client can open at a time.
    #[arg(long, default_value_t = u32::MAX, global = true)]
    pub max_concurrent_streams: u32,
}

/// Refuses what this proxy does not do, naming it.
fn check_args(a: &GrpcProxyArgs) -> anyhow::Result<()> {
    if !a.resolver_prefix.is_empty() && a.resolver_ttl < 1 {
        anyhow::bail!("invalid resolver-ttl {}", a.resolver_ttl);
    }
    if a.resolver_prefix.is_empty() && a.resolver_ttl > 0 {
        anyhow::bail!("invalid resolver-prefix {:?}", a.resolver_prefix);
    }
    let not_yet: Vec<&str> = [
        ("--resolver-prefix", !a.resolver_prefix.is_empty()),
        ("--namespace", !a.namespace.is_empty()),
        (
            "--experimental-leasing-prefix",
            !a.experimental_leasing_prefix.is_empty(),
        ),
        (
            "--experimental-serializable-ordering",
            a.experimental_serializable_ordering,
        ),
        ("--enable-pprof", a.enable_pprof),
    ]
    .into_iter()
    .filter(|(_, on)| *on)
    .map(|(f, _)| f)
    .collect();
    if !not_yet.is_empty() {
        anyhow::bail!(
            "grpc-proxy flags not supported by this build of keel yet: {}",
            not_yet.join(", ")
        );
    }
    Ok(())
}

/// The upstream TLS, as etcd's proxy builds it: a client certificate must not name a user (its
/// common name would make every proxied request that user's).
fn upstream_tls(a: &GrpcProxyArgs) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
    if a.cert.is_none() && a.key.is_none() && a.cacert.is_none() && !a.insecure_skip_tls_verify {
        return Ok(None);
    }
    let cert = match (&a.cert, &a.key) {
        (Some(c), Some(k)) => {
            let pem = std::fs::read(c)?;
            let der = rustls::pki_types::pem::PemObject::from_pem_slice(&pem)
                .map_err(|e| anyhow::anyhow!("{}: {e}", c.display()))?;
            if let Some(cn) = common_name(&der).filter(|cn| !cn.is_empty()) {
                anyhow::bail!("cert has non empty Common Name ({cn})");
            }
            Some((c.clone(), k.clone()))
        }
        (None, None) => None,
        _ => anyhow::bail!("--cert and --key go together"),
    };
    let config = tls::client_only(
        a.cacert.as_deref(),
        cert,
        a.insecure_skip_tls_verify,
        &TlsCommon::default(),
    )
    .map_err(anyhow::Error::msg)?;
    Ok(Some(config))
}

fn common_name(der: &rustls::pki_types::CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// Runs `keel grpc-proxy start`.
pub async fn run(mut a: GrpcProxyArgs) -> anyhow::Result<()> {
    check_args(&a)?;
    a.endpoints = super::endpoints(
        a.discovery_srv.as_deref(),
        a.discovery_srv_name.as_deref(),
        a.insecure_discovery,
        std::mem::take(&mut a.endpoints),
    )
    .await?;
    let dialer = keel_raft::Dialer::new(upstream_tls(&a)?);
    let upstream = Upstream::new(&a.endpoints, &dialer)?;
    let listen_tls = TlsConfig {
        cert_file: a.cert_file.clone(),
        key_file: a.key_file.clone(),
        trusted_ca_file: a.trusted_ca_file.clone(),
        client_cert_auth: a.trusted_ca_file.is_some(),
        crl_file: a.client_crl_file.clone(),
        auto_tls: a.auto_tls,
        ..Default::default()
    };
    let common = TlsCommon {
        cipher_suites: a
            .listen_cipher_suites
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect(),
        ..Default::default()
    };
    let host = a
        .listen_addr
        .rsplit_once(':')
        .map_or("127.0.0.1", |(h, _)| h)
        .to_string();
    let server_tls = tls::build(Side::Client, &listen_tls, &common, &a.data_dir, &[host])
        .map_err(anyhow::Error::msg)?;
    let scheme = if server_tls.is_some() {
        "https"
    } else {
        "http"
    };
    let listener = Listener::bind(
        &format!("{scheme}://{}", a.listen_addr),
        server_tls.as_ref().map(|t| &t.server),
        "--listen-addr",
    )
    .await?;
    let metrics = Arc::new(ProxyMetrics::new());
    let http = http_routes(upstream.clone(), metrics.clone());
    if let Some(addr) = &a.metrics_addr {
        let l = Listener::bind(addr, None, "--metrics-addr").await?;
        let routes = tonic::service::Routes::from(http.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .accept_http1(true)
                .add_routes(routes)
                .serve_with_incoming(incoming(vec![l], "serving metrics")),
        );
    }
    let watch = PbWatchServer::new(WatchProxy::new(upstream.clone(), metrics.watch.clone()))
        .max_decoding_message_size(a.max_recv_bytes)
        .max_encoding_message_size(a.max_send_bytes.max(i32::MAX as usize));
    let lease = PbLeaseServer::new(LeaseProxy::new(upstream.clone()))
        .max_decoding_message_size(a.max_recv_bytes);
    let forward = upstream.clone();
    let routes = tonic::service::Routes::new(watch)
        .add_service(lease)
        .into_axum_router()
        .merge(http)
        .fallback(move |req: axum::extract::Request| {
            let upstream = forward.clone();
            async move { forward_raw(upstream, req).await }
        });
    tracing::info!(address = %a.listen_addr, endpoints = ?a.endpoints, "started gRPC proxy");
    tonic::transport::Server::builder()
        .accept_http1(true)
        .max_concurrent_streams(a.max_concurrent_streams)
        .add_routes(tonic::service::Routes::from(routes))
        .serve_with_incoming_shutdown(incoming(vec![listener], "gRPC proxy listening"), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// Forwards a call the proxy does not serve itself to a member, as it came (headers, body and
/// trailers, so streams and auth tokens pass through).
async fn forward_raw(upstream: Upstream, req: axum::extract::Request) -> axum::response::Response {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
    if !grpc {
        return (StatusCode::NOT_FOUND, "404 page not found\n").into_response();
    }
    let (mut parts, body) = req.into_parts();
    // The channel adds the member's scheme and authority.
    parts.uri = parts.uri.path_and_query().map_or_else(
        || "/".parse().expect("a path"),
        |p| p.as_str().parse().unwrap_or_default(),
    );
    let out = axum::http::Request::from_parts(parts, tonic::body::Body::new(body));
    let channel = upstream.pick();
    match channel.oneshot(out).await {
        Ok(resp) => resp.map(Body::new),
        Err(e) => Status::unavailable(format!("grpc-proxy: {e}"))
            .into_http::<Body>()
            .into_response(),
    }
}

/// The proxy's /metrics (its coalescing counters, etcd's names) and /health (a member answers a
/// read through the proxy).
fn http_routes(upstream: Upstream, metrics: Arc<ProxyMetrics>) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = metrics.render();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body) }
            }),
        )
        .route(
            "/health",
            get(move || {
                let upstream = upstream.clone();
                async move {
                    let read = PbRangeRequest {
                        key: b"health".to_vec(),
                        ..Default::default()
                    };
                    let ok = tokio::time::timeout(
                        Duration::from_secs(1),
                        unary::<_, PbRangeResponse>(
                            &upstream,
                            "/etcdserverpb.KV/Range",
                            Request::new(read),
                        ),
                    )
                    .await
                    .is_ok_and(|r| {
                        r.is_ok() || r.is_err_and(|s| s.code() == tonic::Code::PermissionDenied)
                    });
                    if ok {
                        (StatusCode::OK, r#"{"health":"true"}"#)
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, r#"{"health":"false"}"#)
                    }
                }
            }),
        )
}

/// etcd's grpc-proxy metrics Keel keeps.
struct ProxyMetrics {
    registry: Registry,
    watch: Arc<WatchMetrics>,
}

impl ProxyMetrics {
    fn new() -> ProxyMetrics {
        let registry = Registry::new();
        let coalescing = IntGauge::new(
            "etcd_grpc_proxy_watchers_coalescing_total",
            "Total number of current watchers coalescing",
        )
        .expect("valid metric");
        let events = IntCounter::new(
            "etcd_grpc_proxy_events_coalescing_total",
            "Total number of events coalescing",
        )
        .expect("valid metric");
        registry
            .register(Box::new(coalescing.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(events.clone()))
            .expect("unique metric");
        ProxyMetrics {
            registry,
            watch: Arc::new(WatchMetrics {
                coalescing,
                events_coalesced: events,
            }),
        }
    }

    fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Calls `path` on a member with `req` (its metadata included).
async fn unary<Req, Resp>(
    upstream: &Upstream,
    path: &'static str,
    req: Request<Req>,
) -> Result<Response<Resp>, Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(upstream.pick());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("grpc-proxy: {e}")))?;
    grpc.unary(
        req,
        axum::http::uri::PathAndQuery::from_static(path),
        tonic_prost::ProstCodec::default(),
    )
    .await
}

/// The Lease service: calls forwarded, keep-alives of every client coalesced onto one upstream
/// keep-alive stream (a lease kept alive by many clients at once is renewed once).
struct LeaseProxy {
    upstream: Upstream,
    keepalive: Arc<KeepAlives>,
}

impl LeaseProxy {
    fn new(upstream: Upstream) -> LeaseProxy {
        LeaseProxy {
            keepalive: Arc::new(KeepAlives::default()),
            upstream,
        }
    }
}

type KeepAliveTx = mpsc::Sender<Result<KeepAliveResponse, Status>>;

/// The shared upstream keep-alive stream and who waits for which lease's answer.
#[derive(Default)]
struct KeepAlives {
    inner: Mutex<KeepAliveState>,
}

#[derive(Default)]
struct KeepAliveState {
    upstream: Option<mpsc::Sender<KeepAliveRequest>>,
    waiting: HashMap<i64, Vec<KeepAliveTx>>,
}

impl KeepAlives {
    /// Renews `id` for `reply`: joins a renewal in flight, or sends one.
    fn renew(self: &Arc<Self>, upstream: &Upstream, id: i64, reply: KeepAliveTx) {
        let send = {
            let mut s = self.inner.lock();
            let waiters = s.waiting.entry(id).or_default();
            waiters.push(reply);
            if waiters.len() > 1 {
                return;
            }
            match &s.upstream {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let tx = self.clone().open(upstream.clone());
                    s.upstream = Some(tx.clone());
                    tx
                }
            }
        };
        if send.try_send(KeepAliveRequest { id }).is_err() {
            self.fail_all(Status::unavailable("grpc-proxy: keep-alive stream is busy"));
        }
    }

    /// Opens the upstream stream; answers go to their waiters as they arrive.
    fn open(self: Arc<Self>, upstream: Upstream) -> mpsc::Sender<KeepAliveRequest> {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            let ended = async {
                let mut grpc = tonic::client::Grpc::new(upstream.pick());
                grpc.ready()
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                let path = axum::http::uri::PathAndQuery::from_static(
                    "/etcdserverpb.Lease/LeaseKeepAlive",
                );
                let mut answers = grpc
                    .streaming(
                        Request::new(ReceiverStream::new(rx)),
                        path,
                        tonic_prost::ProstCodec::<KeepAliveRequest, KeepAliveResponse>::default(),
                    )
                    .await?
                    .into_inner();
                while let Some(resp) = answers.message().await? {
                    let waiters = self.inner.lock().waiting.remove(&resp.id);
                    for w in waiters.into_iter().flatten() {
                        let _ = w.send(Ok(resp)).await;
                    }
                }
                Ok::<(), Status>(())
            }
            .await;
            let status = ended
                .err()
                .unwrap_or_else(|| Status::unavailable("keep-alive stream ended"));
            self.inner.lock().upstream = None;
            self.fail_all(status);
        });
        tx
    }

    fn fail_all(&self, status: Status) {
        let waiting = std::mem::take(&mut self.inner.lock().waiting);
        for w in waiting.into_values().flatten() {
            let _ = w.try_send(Err(status.clone()));
        }
    }
}

#[tonic::async_trait]
impl PbLeaseService for LeaseProxy {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        unary(&self.upstream, "/etcdserverpb.Lease/LeaseGrant", req).await
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        unary(&self.upstream, "/etcdserverpb.Lease/LeaseRevoke", req).await
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<KeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<KeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let keepalive = self.keepalive.clone();
        let upstream = self.upstream.clone();
        tokio::spawn(async move {
            while let Some(Ok(r)) = inbound.next().await {
                if tx.is_closed() {
                    break;
                }
                keepalive.renew(&upstream, r.id, tx.clone());
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<TimeToLiveRequest>,
    ) -> Result<Response<TimeToLiveResponse>, Status> {
        unary(&self.upstream, "/etcdserverpb.Lease/LeaseTimeToLive", req).await
    }

    async fn lease_leases(
        &self,
        req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        unary(&self.upstream, "/etcdserverpb.Lease/LeaseLeases", req).await
    }
}

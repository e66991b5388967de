//! `/metrics` (Prometheus text format), `/health`, `/readyz` and `/livez` on the client URLs.
//! Gauges are read from the member's state when scraped, so the request paths pay nothing for them;
//! the request paths only count and time (gRPC requests, WAL fsyncs, backend commits, failed
//! proposals). Names follow etcd's (and go-grpc-prometheus's) where etcd has the metric;
//! replication per member is Keel's own (`keel_raft_member_*`).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http;
use parking_lot::RwLock;
use prometheus::{
    exponential_buckets, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// gRPC status codes by number, as Go names them (go-grpc-prometheus's `grpc_code` label).
const GRPC_CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// Process-wide request metrics (every member in a process counts into them, as etcd's default
/// registry does); each member's registry exposes them.
struct RequestMetrics {
    started: IntCounterVec,
    handled: IntCounterVec,
    handling: HistogramVec,
    proposals_failed: IntCounter,
    backend_commit: Histogram,
    /// Each method's series, resolved once: a request then costs one map lookup, not three.
    methods: RwLock<HashMap<String, Arc<MethodSeries>>>,
}

/// One gRPC method's series (its successes counted apart: errors are rare).
struct MethodSeries {
    labels: [String; 2],
    started: IntCounter,
    handled_ok: IntCounter,
    handling: Histogram,
}

impl RequestMetrics {
    fn known(&self, path: &str) -> Option<Arc<MethodSeries>> {
        self.methods.read().get(path).cloned()
    }

    /// The series of a method the server answered (never of one it does not have: a client
    /// inventing paths must not grow the metrics).
    fn add(&self, path: &str) -> Option<Arc<MethodSeries>> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        let labels = [service, method];
        let series = Arc::new(MethodSeries {
            labels: [service.to_string(), method.to_string()],
            started: self.started.with_label_values(&labels),
            handled_ok: self.handled.with_label_values(&[service, method, "OK"]),
            handling: self.handling.with_label_values(&labels),
        });
        let mut methods = self.methods.write();
        Some(methods.entry(path.to_string()).or_insert(series).clone())
    }
}

/// A request's series: known, or to be added once the server shows it has the method.
enum Pending {
    Known(Arc<MethodSeries>),
    New(String),
}

fn request_metrics() -> &'static RequestMetrics {
    static M: OnceLock<RequestMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let method = ["grpc_service", "grpc_method"];
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        RequestMetrics {
            started: counter(
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
                &method,
            ),
            handled: counter(
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
                &["grpc_service", "grpc_method", "grpc_code"],
            ),
            handling: HistogramVec::new(
                HistogramOpts::new(
                    "grpc_server_handling_seconds",
                    "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
                )
                .buckets(exponential_buckets(0.0001, 2.0, 18).expect("valid buckets")),
                &method,
            )
            .expect("valid metric"),
            proposals_failed: IntCounter::new(
                "etcd_server_proposals_failed_total",
                "The total number of failed proposals seen.",
            )
            .expect("valid metric"),
            backend_commit: Histogram::with_opts(
                HistogramOpts::new(
                    "etcd_disk_backend_commit_duration_seconds",
                    "The latency distributions of commit called by backend.",
                )
                .buckets(exponential_buckets(0.001, 2.0, 14).expect("valid buckets")),
            )
            .expect("valid metric"),
            methods: RwLock::default(),
        }
    })
}

/// Proposals that failed (no leader, timed out, member stopping).
pub fn proposals_failed() -> &'static IntCounter {
    &request_metrics().proposals_failed
}

/// How long each apply batch took to commit to the store.
pub fn backend_commit_seconds() -> &'static Histogram {
    &request_metrics().backend_commit
}

/// Counts and times every gRPC request (`/package.Service/Method`); the code is the `grpc-status`
/// the response starts with (errors), else OK. A stream is timed to its start. A tower layer on
/// the client server (not an axum middleware, which boxes every request and response body again);
/// it also marks each request as come through the client listener.
#[derive(Clone, Copy, Default)]
pub struct ObserveGrpc;

impl<S> tower_layer::Layer<S> for ObserveGrpc {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Observed<S> {
        Observed { inner }
    }
}

/// A service whose gRPC requests are counted and timed.
#[derive(Clone)]
pub struct Observed<S> {
    inner: S,
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for Observed<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ObservedCall<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // Only a client listener's requests may name their user by certificate (see
        // auth::Credentials); the peer listener's certificates are members'.
        req.extensions_mut().insert(crate::auth::ClientListener);
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
        let series = grpc.then(|| {
            let path = req.uri().path();
            match request_metrics().known(path) {
                Some(s) => {
                    s.started.inc();
                    Pending::Known(s)
                }
                None => Pending::New(path.to_string()),
            }
        });
        ObservedCall {
            inner: self.inner.call(req),
            series,
            started: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A call in flight; recorded when its response starts.
    pub struct ObservedCall<F> {
        #[pin]
        inner: F,
        series: Option<Pending>,
        started: Instant,
    }
}

impl<F, RB, E> Future for ObservedCall<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        if let (Some(pending), Ok(resp)) = (this.series.take(), &out) {
            let code = grpc_code(resp.headers());
            let series = match pending {
                Pending::Known(s) => Some(s),
                Pending::New(_) if code == UNIMPLEMENTED => None,
                Pending::New(path) => request_metrics().add(&path).inspect(|s| s.started.inc()),
            };
            if let Some(s) = series {
                s.record(*this.started, code);
            }
        }
        Poll::Ready(out)
    }
}

/// gRPC's Unimplemented: the server has no such method.
const UNIMPLEMENTED: usize = 12;

/// The `grpc-status` a response starts with (an error), else OK.
fn grpc_code(headers: &http::HeaderMap) -> usize {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0)
}

impl MethodSeries {
    fn record(&self, started: Instant, code: usize) {
        self.handling.observe(started.elapsed().as_secs_f64());
        if code == 0 {
            self.handled_ok.inc();
        } else {
            let name = GRPC_CODES.get(code).copied().unwrap_or("Unknown");
            let [service, method] = &self.labels;
            let handled = &request_metrics().handled;
            handled.with_label_values(&[service, method, name]).inc();
        }
    }
}

use crate::server::Core;

/// The metrics of one member.
pub struct Metrics {
    registry: Registry,
    has_leader: IntGauge,
    is_leader: IntGauge,
    is_learner: IntGauge,
    leader_changes: IntGauge,
    term: IntGauge,
    commit_index: IntGauge,
    applied_index: IntGauge,
    db_total: IntGauge,
    db_in_use: IntGauge,
    revision: IntGauge,
    compact_revision: IntGauge,
    proposals_committed: IntGauge,
    proposals_applied: IntGauge,
    proposals_pending: IntGauge,
    matched: IntGaugeVec,
    lag_entries: IntGaugeVec,
    lag_seconds: GaugeVec,
    active: IntGaugeVec,
    last_contact: GaugeVec,
    snapshot_sent: IntGaugeVec,
    snapshot_total: IntGaugeVec,
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn member_gauge(registry: &Registry, name: &str, help: &str) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), &["member", "name"]).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn member_seconds(registry: &Registry, name: &str, help: &str) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), &["member", "name"]).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        let r = Registry::new();
        Metrics {
            has_leader: gauge(
                &r,
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            ),
            is_leader: gauge(
                &r,
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            ),
            is_learner: gauge(
                &r,
                "etcd_server_is_learner",
                "Whether or not this member is a learner. 1 if is, 0 otherwise.",
            ),
            leader_changes: gauge(
                &r,
                "etcd_server_leader_changes_seen_total",
                "The number of leader changes seen.",
            ),
            term: gauge(&r, "etcd_server_raft_term", "The current raft term."),
            commit_index: gauge(
                &r,
                "etcd_server_raft_committed_index",
                "The highest raft index known committed.",
            ),
            applied_index: gauge(
                &r,
                "etcd_server_raft_applied_index",
                "The raft index the state machine has applied.",
            ),
            db_total: gauge(
                &r,
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database in bytes.",
            ),
            db_in_use: gauge(
                &r,
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "Size of the underlying database logically in use in bytes.",
            ),
            revision: gauge(
                &r,
                "etcd_mvcc_current_revision",
                "The current revision of the store.",
            ),
            compact_revision: gauge(
                &r,
                "etcd_mvcc_compact_revision",
                "The revision of the last compaction.",
            ),
            proposals_committed: gauge(
                &r,
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
            ),
            proposals_applied: gauge(
                &r,
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
            ),
            proposals_pending: gauge(
                &r,
                "etcd_server_proposals_pending",
                "The current number of pending proposals to commit.",
            ),
            matched: member_gauge(
                &r,
                "keel_raft_member_matched_index",
                "Highest raft index known replicated to the member (reported by the leader).",
            ),
            lag_entries: member_gauge(
                &r,
                "keel_raft_member_lag_entries",
                "Raft entries the member lacks of the leader's log.",
            ),
            lag_seconds: member_seconds(
                &r,
                "keel_raft_member_lag_seconds",
                "How long the member has been behind the leader's last index.",
            ),
            active: member_gauge(
                &r,
                "keel_raft_member_active",
                "Whether the member answered the leader within an election timeout.",
            ),
            last_contact: member_seconds(
                &r,
                "keel_raft_member_last_contact_seconds",
                "Seconds since the member last answered the leader.",
            ),
            snapshot_sent: member_gauge(
                &r,
                "keel_raft_member_snapshot_bytes_sent",
                "Bytes of the snapshot being sent to the member.",
            ),
            snapshot_total: member_gauge(
                &r,
                "keel_raft_member_snapshot_bytes_total",
                "Size of the snapshot being sent to the member.",
            ),
            registry: {
                let m = request_metrics();
                let shared: [Box<dyn prometheus::core::Collector>; 6] = [
                    Box::new(m.started.clone()),
                    Box::new(m.handled.clone()),
                    Box::new(m.handling.clone()),
                    Box::new(m.proposals_failed.clone()),
                    Box::new(m.backend_commit.clone()),
                    Box::new(keel_raft::wal_fsync_seconds().clone()),
                ];
                for c in shared {
                    r.register(c).expect("unique metric");
                }
                r
            },
        }
    }
}

impl Metrics {
    /// The current metrics of `core`, in Prometheus's text format.
    pub fn render(&self, core: &Core) -> String {
        self.update(core);
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    fn update(&self, core: &Core) {
        let status = core.raft_status();
        let me = core.identity.member_id;
        self.has_leader.set((status.leader_id != 0) as i64);
        self.is_leader.set((status.leader_id == me) as i64);
        self.is_learner.set(core.is_learner() as i64);
        self.leader_changes.set(status.leader_changes as i64);
        self.term.set(status.term as i64);
        self.commit_index.set(status.commit_index as i64);
        self.applied_index.set(core.store.applied_index() as i64);
        let size = core.store.size();
        self.db_total.set(size.total as i64);
        self.db_in_use.set(size.in_use as i64);
        self.revision.set(core.store.current_revision());
        self.compact_revision.set(core.store.compacted_revision());
        self.proposals_committed.set(status.commit_index as i64);
        self.proposals_applied
            .set(core.store.applied_index() as i64);
        self.proposals_pending.set(core.proposals_pending() as i64);

        let per_member: [&dyn Reset; 7] = [
            &self.matched,
            &self.lag_entries,
            &self.lag_seconds,
            &self.active,
            &self.last_contact,
            &self.snapshot_sent,
            &self.snapshot_total,
        ];
        per_member.iter().for_each(|g| g.reset_all());
        let transfers = core.transport_snapshot_transfers();
        let now = Instant::now();
        for m in core.members() {
            let id = format!("{:x}", m.id);
            let labels = [id.as_str(), m.name.as_str()];
            if let Some(p) = status.progress.iter().find(|p| p.id == m.id) {
                self.matched
                    .with_label_values(&labels)
                    .set(p.matched as i64);
                self.lag_entries
                    .with_label_values(&labels)
                    .set(status.last_index.saturating_sub(p.matched) as i64);
                self.lag_seconds
                    .with_label_values(&labels)
                    .set(p.behind_since.map_or(0.0, |t| (now - t).as_secs_f64()));
                self.active.with_label_values(&labels).set(p.active as i64);
                if let Some(t) = p.last_contact {
                    self.last_contact
                        .with_label_values(&labels)
                        .set((now - t).as_secs_f64());
                }
            }
            if let Some(t) = transfers.get(&m.id) {
                self.snapshot_sent
                    .with_label_values(&labels)
                    .set(t.sent as i64);
                self.snapshot_total
                    .with_label_values(&labels)
                    .set(t.total as i64);
            }
        }
    }
}

/// Per-member gauges forget members that left (and followers report none).
trait Reset {
    fn reset_all(&self);
}

impl Reset for IntGaugeVec {
    fn reset_all(&self) {
        self.reset();
    }
}

impl Reset for GaugeVec {
    fn reset_all(&self) {
        self.reset();
    }
}

/// etcd's /readyz checks: a leader is known, the data is not flagged corrupt.
fn ready_checks(core: &Core) -> [(&'static str, bool); 2] {
    let corrupt = core
        .alarms
        .list()
        .iter()
        .any(|a| a.alarm == crate::alarm::CORRUPT);
    [
        ("leader", core.leader_id() != 0),
        ("data_corruption", !corrupt),
    ]
}

/// The HTTP routes beside gRPC on the client URLs.
pub fn routes(core: Arc<Core>) -> axum::Router {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    let metrics = Arc::new(Metrics::default());
    let health_core = core.clone();
    let ready_core = core.clone();
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = metrics.render(&core);
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body) }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let checks = ready_checks(&ready_core);
                async move {
                    let failed = checks.iter().any(|(_, ok)| !ok);
                    let mut body: String = checks
                        .iter()
                        .map(|(name, ok)| {
                            format!(
                                "[{}]{name} {}\n",
                                if *ok { "+" } else { "-" },
                                if *ok { "ok" } else { "failed" }
                            )
                        })
                        .collect();
                    body.push_str(if failed {
                        "readyz check failed\n"
                    } else {
                        "ok\n"
                    });
                    let code = if failed {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    };
                    (code, body)
                }
            }),
        )
        .route("/livez", get(|| async { "ok\n" }))
        .route(
            "/health",
            get(move || {
                // etcd's answer: healthy while the member knows a leader.
                let healthy = health_core.leader_id() != 0;
                async move {
                    let (code, body) = if healthy {
                        (StatusCode::OK, r#"{"health":"true","reason":""}"#)
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            r#"{"health":"false","reason":"RAFT NO LEADER"}"#,
                        )
                    };
                    (code, [(header::CONTENT_TYPE, "application/json")], body)
                }
            }),
        )
}

//! The process-wide counters of gRPC requests and health checks, and the tower layer that counts
//! and times every gRPC request as go-grpc-prometheus does: started when it arrives, handled with its final code
//! (a stream when it ends: its trailers' status, or Canceled when the client went away first).
//! Must never make a request path pay more than a counter increment and a map lookup.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http;
use http_body::{Body, Frame, SizeHint};
use parking_lot::RwLock;
use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts,
};

use super::traces::RequestSpan;

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
pub(super) struct RequestMetrics {
    pub(super) started: IntCounterVec,
    pub(super) handled: IntCounterVec,
    pub(super) handling: HistogramVec,
    pub(super) health_success: IntCounter,
    pub(super) health_failures: IntCounter,
    /// Each method's series, resolved once: a request then costs one map lookup, not three.
    methods: RwLock<HashMap<String, Arc<MethodSeries>>>,
}

/// One gRPC method's series (its successes counted apart: errors are rare).
struct MethodSeries {
    labels: [String; 3],
    /// Whether calls are streams (recorded when they end).
    streaming: bool,
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
        let kind = grpc_type(path);
        let labels = [kind, service, method];
        let series = Arc::new(MethodSeries {
            labels: [kind.to_string(), service.to_string(), method.to_string()],
            streaming: kind != "unary",
            started: self.started.with_label_values(&labels),
            handled_ok: self
                .handled
                .with_label_values(&[kind, service, method, "OK"]),
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

pub(super) fn request_metrics() -> &'static RequestMetrics {
    static M: OnceLock<RequestMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let method = ["grpc_type", "grpc_service", "grpc_method"];
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
                &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
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
            health_success: IntCounter::new(
                "etcd_server_health_success",
                "The total number of successful health checks",
            )
            .expect("valid metric"),
            health_failures: IntCounter::new(
                "etcd_server_health_failures",
                "The total number of failed health checks",
            )
            .expect("valid metric"),
            methods: RwLock::default(),
        }
    })
}

/// Counts a /health answer.
pub fn health_checked(healthy: bool) {
    let m = request_metrics();
    if healthy {
        m.health_success.inc();
    } else {
        m.health_failures.inc();
    }
}

/// go-grpc-prometheus's `grpc_type` of a method.
fn grpc_type(path: &str) -> &'static str {
    match path {
        "/etcdserverpb.Watch/Watch" | "/etcdserverpb.Lease/LeaseKeepAlive" => "bidi_stream",
        "/etcdserverpb.Maintenance/Snapshot" | "/v3electionpb.Election/Observe" => "server_stream",
        _ => "unary",
    }
}

/// Counts and times every gRPC request (`/package.Service/Method`). A unary call is recorded when
/// its response starts (with the `grpc-status` it starts with, for errors, else OK); a stream when
/// it ends. A tower layer on the client server (not an axum middleware, which boxes every request
/// and response body again); it also marks each request as come through the client listener.
#[derive(Clone, Copy, Default)]
pub struct ObserveGrpc {
    /// A unary call slower than this is logged (etcd's
    /// --experimental-warning-unary-request-duration); zero: never.
    pub warn_after: std::time::Duration,
}

impl<S> tower_layer::Layer<S> for ObserveGrpc {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Observed<S> {
        Observed {
            inner,
            warn_after: self.warn_after,
        }
    }
}

/// A service whose gRPC requests are counted and timed.
#[derive(Clone)]
pub struct Observed<S> {
    inner: S,
    warn_after: std::time::Duration,
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for Observed<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
{
    type Response = http::Response<ObservedBody<RB>>;
    type Error = S::Error;
    type Future = ObservedCall<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // Only a client listener's requests may name their user by certificate (see
        // auth::Credentials); the peer listener's certificates are members'.
        req.extensions_mut().insert(crate::api::ClientListener);
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
        let span = if grpc && super::traces::enabled() {
            let peer = req
                .extensions()
                .get::<crate::api::ConnInfo>()
                .and_then(|c| c.remote);
            super::traces::start(req.headers(), req.uri().path(), peer)
        } else {
            None
        };
        ObservedCall {
            inner: self.inner.call(req),
            series,
            span,
            started: Instant::now(),
            warn_after: self.warn_after,
        }
    }
}

pin_project_lite::pin_project! {
    /// A call in flight; recorded when its response starts (a stream's when it ends).
    pub struct ObservedCall<F> {
        #[pin]
        inner: F,
        series: Option<Pending>,
        span: Option<RequestSpan>,
        started: Instant,
        warn_after: std::time::Duration,
    }
}

impl<F, RB, E> Future for ObservedCall<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = Result<http::Response<ObservedBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        let mut end = None;
        let Ok(resp) = &out else {
            if let Some(span) = this.span.take() {
                span.end(UNKNOWN);
            }
            return Poll::Ready(out.map(|resp| resp.map(|inner| ObservedBody { inner, end })));
        };
        // A status in the headers ends the call at once (an error, or a trailers-only answer);
        // otherwise a stream's status comes in its trailers.
        let code = resp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        let series = match this.series.take() {
            None => None,
            Some(Pending::Known(s)) => Some(s),
            Some(Pending::New(_)) if code == Some(UNIMPLEMENTED) => None,
            Some(Pending::New(path)) => request_metrics().add(&path).inspect(|s| s.started.inc()),
        };
        let streaming = series.as_ref().is_some_and(|s| s.streaming);
        if streaming && code.is_none() {
            end = Some(StreamEnd {
                series,
                span: this.span.take(),
                started: *this.started,
            });
        } else {
            if let Some(s) = series {
                s.record(*this.started, code.unwrap_or(0));
                s.warn_if_slow(*this.started, *this.warn_after);
            }
            if let Some(span) = this.span.take() {
                span.end(code.unwrap_or(0));
            }
        }
        Poll::Ready(out.map(|resp| resp.map(|inner| ObservedBody { inner, end })))
    }
}

/// A stream waiting for its final status.
struct StreamEnd {
    series: Option<Arc<MethodSeries>>,
    span: Option<RequestSpan>,
    started: Instant,
}

impl StreamEnd {
    fn record(self, code: usize) {
        if let Some(series) = self.series {
            series.record(self.started, code);
        }
        if let Some(span) = self.span {
            span.end(code);
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body; a stream's is watched for its trailers (or its being dropped unfinished).
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        end: Option<StreamEnd>,
    }

    impl<B> PinnedDrop for ObservedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before its trailers: the client went away (gRPC's Canceled).
            if let Some(end) = this.project().end.take() {
                end.record(CANCELED);
            }
        }
    }
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        let code = match &frame {
            Some(Ok(f)) => f.trailers_ref().map(|t| {
                t.get("grpc-status")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(0)
            }),
            Some(Err(_)) => Some(UNKNOWN),
            None => Some(0),
        };
        if let Some(code) = code {
            if let Some(end) = this.end.take() {
                end.record(code);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// gRPC's Canceled, Unknown and Unimplemented codes.
const CANCELED: usize = 1;
const UNKNOWN: usize = 2;
const UNIMPLEMENTED: usize = 12;

impl MethodSeries {
    /// etcd's "request stats" warning for a unary call slower than `limit`.
    fn warn_if_slow(&self, started: Instant, limit: std::time::Duration) {
        let took = started.elapsed();
        if !limit.is_zero() && took > limit {
            let [_, service, method] = &self.labels;
            tracing::warn!(
                took = ?took,
                expected_duration = ?limit,
                request = %format!("/{service}/{method}"),
                "request stats"
            );
        }
    }

    fn record(&self, started: Instant, code: usize) {
        self.handling.observe(started.elapsed().as_secs_f64());
        if code == 0 {
            self.handled_ok.inc();
        } else {
            let name = GRPC_CODES.get(code).copied().unwrap_or("Unknown");
            let [kind, service, method] = &self.labels;
            let handled = &request_metrics().handled;
            handled
                .with_label_values(&[kind, service, method, name])
                .inc();
        }
    }
}

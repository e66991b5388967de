//! Distributed tracing (etcd 3.5's --experimental-enable-distributed-tracing): a span per gRPC
//! request, named `package.Service/Method` and with the attributes otelgrpc's server
//! interceptor gives it, exported over OTLP/gRPC (without TLS) to the configured collector.
//!
//! As etcd, a request that carries a W3C `traceparent` continues its caller's trace and follows
//! its sampling decision; a request without one starts a trace sampled at the configured rate
//! (per million; zero, etcd's default, samples only requests whose caller sampled).
//!
//! The exporter is process-wide, as a tracer provider is in Go: the first member of a process
//! that enables tracing installs it.

use crate::config::{TracingExport, MAX_SAMPLING_PER_MILLION};
use std::net::SocketAddr;
use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TextMapCompositePropagator,
}

static TRACES: OnceLock<Traces> = OnceLock::new();

/// Starts exporting spans as `cfg` says (once per process; later calls keep the first exporter).
/// Must run inside the tokio runtime the exporter's connection lives on.
pub fn install(cfg: &TracingExport) -> Result<(), String> {
    if TRACES.get().is_some() {
        return Ok(());
    }
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{}", cfg.address))
        .build()
        .map_err(|e| format!("distributed tracing: {e}"))?;
    let mut resource = vec![KeyValue::new("service.name", cfg.service_name.clone())];
    if !cfg.instance_id.is_empty() {
        resource.push(KeyValue::new(
            "service.instance.id",
            cfg.instance_id.clone(),
        ));
    }
    let root = match cfg.sampling_per_million {
        0 => Sampler::AlwaysOff,
        n => Sampler::TraceIdRatioBased(f64::from(n) / f64::from(MAX_SAMPLING_PER_MILLION)),
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(root)))
        .with_resource(Resource::builder_empty().with_attributes(resource).build())
        .build();
    let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "keel");
    let propagator = TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]);
    let _ = TRACES.set(Traces {
        provider,
        tracer,
        propagator,
    });
    tracing::info!(
        address = %cfg.address,
        service_name = %cfg.service_name,
        service_instance_id = %cfg.instance_id,
        sampling_rate = cfg.sampling_per_million,
        "distributed tracing enabled"
    );
    Ok(())
}

/// Whether spans are exported (one atomic load: the request path asks it for every call).
pub fn enabled() -> bool {
    TRACES.get().is_some()
}

/// Sends the spans not exported yet (a member that stops).
pub fn flush() {
    if let Some(t) = TRACES.get() {
        let _ = t.provider.force_flush();
    }
}

/// A request's span, open until its call ends.
pub struct RequestSpan(opentelemetry_sdk::trace::Span);

/// The span of a gRPC request to `path` (`/package.Service/Method`), when tracing is on.
pub fn start(
    req: &axum::http::HeaderMap,
    path: &str,
    peer: Option<SocketAddr>,
) -> Option<RequestSpan> {
    let traces = TRACES.get()?;
    let parent = traces.propagator.extract(&Headers(req));
    let name = path.trim_start_matches('/');
    let (service, method) = name.split_once('/').unwrap_or((name, ""));
    let mut attributes = vec![
        KeyValue::new("rpc.system", "grpc"),
        KeyValue::new("rpc.service", service.to_string()),
        KeyValue::new("rpc.method", method.to_string()),
    ];
    if let Some(peer) = peer {
        attributes.push(KeyValue::new("net.peer.ip", peer.ip().to_string()));
        attributes.push(KeyValue::new("net.peer.port", i64::from(peer.port())));
    }
    let span = traces
        .tracer
        .span_builder(name.to_string())
        .with_kind(SpanKind::Server)
        .with_attributes(attributes)
        .start_with_context(&traces.tracer, &parent);
    Some(RequestSpan(span))
}

impl RequestSpan {
    /// Ends the span with the call's gRPC status code.
    pub fn end(mut self, code: usize) {
        self.0
            .set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
        if code != 0 {
            self.0
                .set_status(Status::error(format!("gRPC status {code}")));
        }
        self.0.end();
    }
}

/// A request's headers, read by the propagators.
struct Headers<'a>(&'a axum::http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

//! Distributed tracing (etcd 3.5's --experimental-enable-distributed-tracing): a member exports
//! a span per gRPC request to an OTLP collector (here a collector of the test's own, on the
//! OTLP protocol's generated gRPC service).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proc::{member_flags, Proc};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value::Value, KeyValue};

/// A span as the collector received it, with its resource's attributes.
#[derive(Clone, Debug)]
struct Received {
    name: String,
    trace_id: Vec<u8>,
    attributes: Vec<KeyValue>,
    resource: Vec<KeyValue>,
    status_code: i32,
}

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Received {
                    name: span.name,
                    trace_id: span.trace_id,
                    attributes: span.attributes,
                    resource: resource.clone(),
                    status_code: span.status.map_or(0, |s| s.code),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// Serves OTLP on a fresh port; its `host:port`.
    async fn start() -> (Collector, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let collector = Collector::default();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (collector, addr)
    }

    /// Waits (up to 20 s: the exporter sends batches every 5 s) for a span named `name`.
    async fn wait_for(&self, name: &str) -> Received {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.0.lock().unwrap().iter().find(|s| s.name == name) {
                return s.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no span {name}: {:?}",
                self.names()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn names(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.name.clone())
            .collect()
    }
}

/// A ready member that traces to a collector of its own, with `flags` besides; the collector,
/// the member and its client endpoint.
async fn traced_member(name: &str, flags: &[&str]) -> (Collector, Proc, String) {
    let (collector, address) = Collector::start().await;
    let (mut all, endpoint) = member_flags(name);
    all.push("--experimental-enable-distributed-tracing".into());
    all.push(format!(
        "--experimental-distributed-tracing-address={address}"
    ));
    all.extend(flags.iter().map(|f| f.to_string()));
    let mut member = Proc::start(&all, &[]);
    member.wait_ready();
    (collector, member, endpoint)
}

fn attribute<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn string(s: &str) -> Value {
    Value::StringValue(s.to_string())
}

/// Every request is traced at the full sampling rate, with otelgrpc's attributes, the gRPC
/// status of failed calls, and the configured service name and instance id.
#[tokio::test(flavor = "multi_thread")]
async fn requests_are_traced_to_the_collector() {
    let (collector, _member, endpoint) = traced_member(
        "t1",
        &[
            "--experimental-distributed-tracing-sampling-rate=1000000",
            "--experimental-distributed-tracing-instance-id=t1-instance",
        ],
    )
    .await;
    assert!(common::etcdctl_at(&endpoint, &["put", "k", "v"], None)
        .status
        .success());
    let revoke = common::etcdctl_at(&endpoint, &["lease", "revoke", "1234"], None);
    assert!(!revoke.status.success());

    let put = collector.wait_for("etcdserverpb.KV/Put").await;
    assert_eq!(
        attribute(&put.attributes, "rpc.system"),
        Some(&string("grpc"))
    );
    assert_eq!(
        attribute(&put.attributes, "rpc.service"),
        Some(&string("etcdserverpb.KV"))
    );
    assert_eq!(
        attribute(&put.attributes, "rpc.method"),
        Some(&string("Put"))
    );
    assert_eq!(
        attribute(&put.attributes, "rpc.grpc.status_code"),
        Some(&Value::IntValue(0))
    );
    assert_eq!(
        attribute(&put.resource, "service.name"),
        Some(&string("etcd"))
    );
    assert_eq!(
        attribute(&put.resource, "service.instance.id"),
        Some(&string("t1-instance"))
    );
    // etcd's ErrLeaseNotFound is gRPC NotFound (5); the span says so and is an error.
    let revoke = collector.wait_for("etcdserverpb.Lease/LeaseRevoke").await;
    assert_eq!(
        attribute(&revoke.attributes, "rpc.grpc.status_code"),
        Some(&Value::IntValue(5))
    );
    assert_eq!(revoke.status_code, 2, "status: error");
}

/// At etcd's default sampling rate (0), only requests whose caller sampled its trace (a W3C
/// `traceparent` with the sampled flag) are traced, in the caller's trace.
#[tokio::test(flavor = "multi_thread")]
async fn only_sampled_callers_are_traced_at_the_default_rate() {
    let (collector, _member, endpoint) = traced_member(
        "t2",
        &["--experimental-distributed-tracing-service-name=keel-under-test"],
    )
    .await;
    let mut grpc = common::raw_grpc(&endpoint).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    for parent in [None, Some(format!("00-{trace_id}-00f067aa0ba902b7-01"))] {
        let mut request = tonic::Request::new(keel_rpc::etcd::PbRangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        });
        if let Some(p) = parent {
            request
                .metadata_mut()
                .insert("traceparent", p.parse().unwrap());
        }
        grpc.ready().await.unwrap();
        grpc.unary::<_, keel_rpc::etcd::PbRangeResponse, _>(
            request,
            tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Range"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap();
    }
    let range = collector.wait_for("etcdserverpb.KV/Range").await;
    assert_eq!(hex(&range.trace_id), trace_id);
    assert_eq!(
        attribute(&range.resource, "service.name"),
        Some(&string("keel-under-test"))
    );
    // The exporter has sent its batch: the unsampled request (and etcdctl's, none here) left no
    // span.
    let ranges = collector
        .names()
        .iter()
        .filter(|n| *n == "etcdserverpb.KV/Range")
        .count();
    assert_eq!(ranges, 1, "{:?}", collector.names());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

//! `/metrics`, `/readyz` and `/livez` as an operator's scraper and probes see them.

mod common;

use common::{http_get, Member};

/// The value of the sample named exactly `series` (name and labels as Prometheus prints them).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_count_requests_by_outcome_and_time_the_disk() {
    let m = Member::start().await;
    let mut c = m.client().await;
    for i in 0..3 {
        c.put(format!("k{i}"), "v", None).await.unwrap();
    }
    assert!(c.put("", "v", None).await.is_err(), "empty key refused");
    let (code, metrics) = http_get(&m.endpoint(), "/metrics").await;
    assert_eq!(code, 200);
    let put = |code: &str| {
        let series = format!(
            "grpc_server_handled_total{{grpc_code=\"{code}\",grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}}"
        );
        sample(&metrics, &series)
    };
    assert_eq!(put("OK"), Some(3.0), "{metrics}");
    assert_eq!(put("InvalidArgument"), Some(1.0), "{metrics}");
    let started = "grpc_server_started_total{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}";
    assert_eq!(sample(&metrics, started), Some(4.0));
    for count in [
        "etcd_disk_wal_fsync_duration_seconds_count",
        "etcd_disk_backend_commit_duration_seconds_count",
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_applied_total",
    ] {
        let v = sample(&metrics, count).unwrap_or_else(|| panic!("no {count}:\n{metrics}"));
        assert!(v >= 3.0, "{count} = {v}");
    }
    assert_eq!(sample(&metrics, "etcd_server_proposals_pending"), Some(0.0));
    assert_eq!(
        sample(&metrics, "etcd_server_proposals_failed_total"),
        Some(0.0)
    );

    // A method the server does not have is refused and adds no series.
    let mut grpc = common::raw_grpc(&m.endpoint()).await;
    let invented = grpc
        .unary::<_, keel_rpc::etcd::PbStatusRequest, _>(
            tonic::Request::new(keel_rpc::etcd::PbStatusRequest {}),
            tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Invented"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(invented.code(), tonic::Code::Unimplemented);
    let (_, metrics) = http_get(&m.endpoint(), "/metrics").await;
    assert!(!metrics.contains("Invented"), "{metrics}");

    let (code, body) = http_get(&m.endpoint(), "/readyz").await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, body) = http_get(&m.endpoint(), "/readyz?verbose").await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("[+]linearizable_read ok") && body.ends_with("ok\n"),
        "{body}"
    );
    let (code, body) = http_get(&m.endpoint(), "/livez").await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
}

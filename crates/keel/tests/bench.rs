//! `keel bench` as an operator runs it: every workload against a running member, what it reports
//! checked against what the member holds, its connections handed to the endpoints in turn as
//! etcd's benchmark tool does, and failures reported by kind instead of a crash.

mod common;

use std::process::{Command, Output};

use common::{free_port, http_get, stderr, Cluster, Member};
use etcd_client::GetOptions;
use serde_json::Value;

/// Runs `keel bench <args>` to completion.
fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("bench")
        .args(args)
        .output()
        .unwrap()
}

/// Runs a workload with `--json` against `endpoints` and returns its report.
fn report(endpoints: &str, args: &[&str]) -> Value {
    let endpoints = format!("--endpoints={endpoints}");
    let out = bench(&[args, &[endpoints.as_str(), "--json"]].concat());
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {:?}", out.stdout))
}

/// The report's successful request count, after checking it is self-consistent.
fn ok(r: &Value) -> u64 {
    let lat = &r["latency_ms"];
    let ordered = ["min", "p50", "p90", "p99", "p999", "max"]
        .windows(2)
        .all(|w| lat[w[0]].as_f64() <= lat[w[1]].as_f64());
    assert!(ordered, "percentiles out of order: {r}");
    assert!(r["requests_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["client_cpu_cores"].as_f64().unwrap() > 0.0, "{r}");
    r["ok"].as_u64().unwrap()
}

/// Puts the member at `endpoint` answered OK, by its own `/metrics`.
async fn puts_served(endpoint: &str) -> f64 {
    let (_, metrics) = http_get(endpoint, "/metrics").await;
    let series = "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} ";
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn put_writes_each_request_once_and_reports_it() {
    let m = Member::start().await;
    let r = report(
        &m.endpoint(),
        &[
            "put",
            "--total=500",
            "--clients=8",
            "--conns=2",
            "--sequential-keys",
        ]
        .into_iter()
        .chain(["--key-space-size=500", "--key-size=6", "--val-size=16"])
        .collect::<Vec<_>>(),
    );
    assert_eq!((ok(&r), r["errors"].as_u64()), (500, Some(0)), "{r}");
    assert_eq!(
        (r["clients"].as_u64(), r["conns"].as_u64()),
        (Some(8), Some(2))
    );
    let mut c = m.client().await;
    let all = c
        .get("", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_eq!(all.count(), 500, "one key per sequential request");
    assert_eq!(all.kvs()[0].key(), b"000000");
    assert_eq!(all.kvs()[0].value(), &[b'v'; 16]);
    // Revision 1 is the empty store: one revision per put, none retried or doubled.
    assert_eq!(all.header().unwrap().revision(), 501);
}

#[tokio::test]
async fn every_workload_runs_against_a_member_without_errors() {
    let m = Member::start().await;
    let ep = m.endpoint();
    let common = ["--clients=4", "--conns=2"];
    for (workload, total) in [
        (
            &["range", "--consistency=l", "--key-space-size=50"][..],
            200,
        ),
        (&["range", "--consistency=s", "--key-space-size=50"], 200),
        // Random keys, three to a transaction, none twice in one.
        (&["txn-put", "--txn-ops=3", "--key-space-size=50"], 100),
        (
            &["txn-mixed", "--read-ratio=0.5", "--key-space-size=50"],
            100,
        ),
        (&["mixed", "--read-ratio=0.9", "--key-space-size=50"], 200),
        (&["lease-keepalive"], 200),
    ] {
        let total_flag = format!("--total={total}");
        let args = [workload, &common, &[total_flag.as_str()]].concat();
        let r = report(&ep, &args);
        assert_eq!((ok(&r), r["errors"].as_u64()), (total, Some(0)), "{r}");
    }
    // Every (watcher, put) pair is one sample: 2 streams x 5 watchers on one key, 20 puts.
    let args = ["watch-latency", "--streams=2", "--watchers-per-stream=5"];
    let r = report(
        &ep,
        &[&args[..], &["--put-total=20", "--put-rate=200"]].concat(),
    );
    assert_eq!((ok(&r), r["errors"].as_u64()), (200, Some(0)), "{r}");
    // 20 watchers over 5 keys (4 each), 50 puts over those keys (10 each): 200 events.
    let args = [
        "watch",
        "--streams=2",
        "--watchers-per-stream=10",
        "--key-space-size=5",
    ];
    let r = report(
        &ep,
        &[&args[..], &["--put-total=50", "--putters=2"]].concat(),
    );
    assert_eq!((ok(&r), r["errors"].as_u64()), (200, Some(0)), "{r}");
    assert!(r["events_per_sec"].as_f64().unwrap() > 0.0, "{r}");
}

#[tokio::test]
async fn the_fsync_floor_is_measured_in_the_given_directory() {
    let dir = tempfile::tempdir().unwrap();
    let dir_flag = format!("--dir={}", dir.path().display());
    let out = bench(&["fsync", &dir_flag, "--total=50", "--size=512", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ok(&r), 50, "{r}");
    let missing = bench(&["fsync", "--dir=/nonexistent/keel-bench", "--total=5"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("measured directory"),
        "{}",
        stderr(&missing)
    );
}

/// etcd's benchmark gives connection i to endpoint i modulo their number (and client j to
/// connection j modulo theirs), so a 3-member run loads each member with a third of the clients;
/// a balancer per connection would spread even a single connection's requests over every member.
#[tokio::test]
async fn connections_go_to_the_endpoints_in_turn() {
    let cluster = Cluster::start(3).await;
    let endpoints = cluster.endpoints();
    let all = endpoints.join(",");
    let r = report(&all, &["put", "--total=60", "--clients=2", "--conns=1"]);
    assert_eq!(ok(&r), 60);
    let mut served = Vec::new();
    for ep in &endpoints {
        served.push(puts_served(ep).await);
    }
    assert_eq!(
        served,
        [60.0, 0.0, 0.0],
        "one connection: the first endpoint only"
    );
    let r = report(&all, &["put", "--total=300", "--clients=3", "--conns=3"]);
    assert_eq!(ok(&r), 300);
    for (ep, before) in endpoints.iter().zip(served) {
        let mine = puts_served(ep).await - before;
        // Three closed-loop clients, one per member: each serves about a third.
        assert!(mine >= 50.0, "{ep} served {mine} of 300 puts");
    }
}

#[tokio::test]
async fn failures_are_reported_by_kind_and_a_dead_endpoint_by_name() {
    let m = Member::start().await;
    // Over the default 1.5 MiB request limit: every put is refused with etcd's error.
    let args = ["put", "--total=5", "--val-size=2000000"];
    let r = report(&m.endpoint(), &args);
    assert_eq!(
        (r["ok"].as_u64(), r["errors"].as_u64()),
        (Some(0), Some(5)),
        "{r}"
    );
    let kinds = r["errors_by_kind"].as_object().unwrap();
    assert_eq!(kinds.len(), 1, "{r}");
    let (kind, n) = kinds.iter().next().unwrap();
    assert!(kind.contains("etcdserver: request is too large"), "{kind}");
    assert_eq!(n.as_u64(), Some(5));

    // A transaction may not put one key twice: more puts per transaction than keys is refused.
    let ep = format!("--endpoints={}", m.endpoint());
    let out = bench(&["txn-put", "--txn-ops=5", "--key-space-size=3", &ep]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--txn-ops (5)"), "{}", stderr(&out));

    let dead = format!("--endpoints=127.0.0.1:{}", free_port());
    let out = bench(&["put", "--total=5", &dead]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&dead["--endpoints=".len()..]), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

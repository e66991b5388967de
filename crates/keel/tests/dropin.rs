//! A user replaces `etcd` with `keel` and changes nothing else: kubeadm's static-pod flags over
//! TLS with the metrics listener kubelet probes, etcdctl with endpoints written with their scheme
//! (the HTTP/2 `:authority` then carries it), the gateway routes applications use (Patroni,
//! etcd3gw), `/health` while an alarm is raised, and a lease granted right after start-up.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::certs::make_certs;
use common::proc::Proc;
use common::{free_port, http_get, http_post, stderr, stdout, Member};

fn etcdctl(args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(args)
        .output()
        .expect("etcdctl must be installed (Debian package etcd-client)")
}

/// kubeadm's etcd static-pod manifest, flag for flag (TLS client and peer URLs with client
/// certificate auth, a plain-HTTP metrics listener, the initial corruption check, HA timing).
#[tokio::test]
async fn a_kubeadm_member_serves_etcdctl_over_tls_and_kubelet_probes() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let d = dir.path().to_path_buf();
    let f = |name: &str| d.join(name).display().to_string();
    let (client, peer, metrics) = (free_port(), free_port(), free_port());
    let client_url = format!("https://127.0.0.1:{client}");
    let peer_url = format!("https://127.0.0.1:{peer}");
    let args: Vec<String> = vec![
        format!("--advertise-client-urls={client_url}"),
        format!("--cert-file={}", f("server.pem")),
        "--client-cert-auth=true".into(),
        format!("--data-dir={}", f("etcd")),
        "--experimental-initial-corrupt-check=true".into(),
        "--experimental-watch-progress-notify-interval=5s".into(),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster=cp1={peer_url}"),
        format!("--key-file={}", f("server.key")),
        format!("--listen-client-urls=https://127.0.0.1:{client}"),
        format!("--listen-metrics-urls=http://127.0.0.1:{metrics}"),
        format!("--listen-peer-urls={peer_url}"),
        "--name=cp1".into(),
        format!("--peer-cert-file={}", f("server.pem")),
        "--peer-client-cert-auth=true".into(),
        format!("--peer-key-file={}", f("server.key")),
        format!("--peer-trusted-ca-file={}", f("ca.pem")),
        "--snapshot-count=10000".into(),
        format!("--trusted-ca-file={}", f("ca.pem")),
        "--heartbeat-interval=250".into(),
        "--election-timeout=2500".into(),
    ];
    let mut p = Proc::start_in(dir, &args, &[]);
    p.wait_ready();
    assert!(
        p.log().contains("initial corruption checking passed"),
        "{}",
        p.log()
    );
    let tls = [
        format!("--endpoints={client_url}"),
        format!("--cacert={}", f("ca.pem")),
        format!("--cert={}", f("client.pem")),
        format!("--key={}", f("client.key")),
    ];
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    for cmd in [
        &["put", "k", "v"][..],
        &["endpoint", "status"],
        &["endpoint", "hashkv"],
        &["defrag"],
        &["alarm", "list"],
    ] {
        let out = etcdctl(&[&tls[..], cmd].concat());
        assert!(out.status.success(), "etcdctl {cmd:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("PROTOCOL_ERROR"), "{}", stderr(&out));
    }
    let metrics = format!("127.0.0.1:{metrics}");
    let (code, body) = http_get(&metrics, "/health?exclude=NOSPACE&serializable=true").await;
    assert_eq!((code, body.as_str()), (200, r#"{"health":"true"}"#));
    let (code, body) = http_get(&metrics, "/readyz").await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, body) = http_get(&metrics, "/livez").await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, body) = http_get(&metrics, "/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains("etcd_server_has_leader 1"), "{body}");
    assert!(
        body.contains(r#"etcd_server_version{server_version="3.4.23"} 1"#),
        "{body}"
    );
}

/// The Go client dials an endpoint written with its scheme as the gRPC target, so its
/// maintenance calls send `:authority: http://127.0.0.1:port`; h2 refused that with
/// PROTOCOL_ERROR until Keel patched it (patches/README.md).
#[tokio::test]
async fn endpoints_written_with_their_scheme_reach_every_maintenance_call() {
    let m = Member::start().await;
    let endpoint = format!("--endpoints=http://{}", m.endpoint());
    for cmd in [
        &["endpoint", "status"][..],
        &["endpoint", "hashkv"],
        &["defrag"],
        &["alarm", "list"],
        &["move-leader", "1"],
    ] {
        let out = etcdctl(&[&[endpoint.as_str()][..], cmd].concat());
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(!text.contains("PROTOCOL_ERROR"), "etcdctl {cmd:?}: {text}");
        if cmd[0] != "move-leader" {
            assert!(out.status.success(), "etcdctl {cmd:?}: {text}");
        }
    }
}

/// What an HTTP client reads first from a streamed (chunked) answer: the status and the first
/// chunk (one JSON line), without waiting for the end of a stream that may never end.
async fn first_chunk(endpoint: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(endpoint).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {endpoint}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            if let Some((size, data)) = rest.split_once("\r\n") {
                let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                if data.len() >= size {
                    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                    return (code, data[..size].to_string());
                }
            }
        }
        assert!(Instant::now() < deadline, "no first chunk: {text}");
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed: {text}");
        got.extend_from_slice(&buf[..n]);
    }
}

/// The routes Patroni (etcd3 DCS), etcd3gw and tooz use, and etcd 3.4's answers to paths it
/// does not serve.
#[tokio::test]
async fn the_gateway_serves_the_routes_applications_use() {
    let m = Member::start().await;
    let ep = m.endpoint();
    let (code, body) = http_get(&ep, "/version").await;
    assert_eq!(code, 200);
    assert_eq!(body, r#"{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}"#);
    // etcd 3.4 serves its gateway under /v3beta too.
    let (code, body) = http_post(&ep, "/v3beta/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = http_post(&ep, "/v3/kv/range", r#"{"key":"Zm9v"}"#).await;
    assert_eq!(code, 200);
    assert!(body.contains(r#""value":"YmFy""#), "{body}");
    let (code, body) = http_get(&ep, "/no/such/path").await;
    assert_eq!((code, body.as_str()), (404, "404 page not found\n"));
    let (code, body) = http_post(&ep, "/v3/no/such/route", "{}").await;
    assert_eq!((code, body.as_str()), (404, "Not Found\n"));

    // Lease keep-alive, as etcd3gw refreshes a lease: one response per request in the body.
    let (_, grant) = http_post(&ep, "/v3/lease/grant", r#"{"TTL":10}"#).await;
    let id = serde_json::from_str::<serde_json::Value>(&grant).unwrap()["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, line) =
        first_chunk(&ep, "/v3/lease/keepalive", &format!(r#"{{"ID":"{id}"}}"#)).await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["result"]["ID"], id.as_str(), "{line}");
    assert_eq!(v["result"]["TTL"], "10", "{line}");
    assert!(v["result"]["header"]["revision"].is_string(), "{line}");
    let (_, line) = first_chunk(&ep, "/v3/lease/keepalive", r#"{"ID":"42"}"#).await;
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert!(
        v["result"].get("TTL").is_none(),
        "an unknown lease has TTL 0: {line}"
    );

    // Election observe streams the leader.
    let (code, body) = http_post(
        &ep,
        "/v3/election/campaign",
        r#"{"name":"ZWw=","value":"bWU="}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, line) = first_chunk(&ep, "/v3/election/observe", r#"{"name":"ZWw="}"#).await;
    assert_eq!(code, 200);
    assert!(line.contains(r#""value":"bWU=""#), "{line}");

    // The snapshot, in pieces with the bytes still to come.
    let (code, line) = first_chunk(&ep, "/v3/maintenance/snapshot", "{}").await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert!(v["result"]["blob"].is_string(), "{line}");
}

/// `/health` answers false while an alarm is raised, unless the probe excludes it (kubelet's
/// `?exclude=NOSPACE`).
#[tokio::test]
async fn health_is_false_while_an_alarm_is_raised_unless_excluded() {
    let m = Member::start().await;
    let mut c = m.client().await;
    let id = m.id().await;
    let nospace = || {
        let mut o = etcd_client::AlarmOptions::new();
        o.with_member(id);
        o
    };
    c.alarm(
        etcd_client::AlarmAction::Activate,
        etcd_client::AlarmType::Nospace,
        Some(nospace()),
    )
    .await
    .unwrap();
    let (code, body) = http_get(&m.endpoint(), "/health").await;
    assert_eq!((code, body.as_str()), (503, "{\"health\":\"false\"}\n"));
    let (code, body) = http_get(&m.endpoint(), "/health?exclude=NOSPACE").await;
    assert_eq!((code, body.as_str()), (200, r#"{"health":"true"}"#));
    c.alarm(
        etcd_client::AlarmAction::Deactivate,
        etcd_client::AlarmType::Nospace,
        Some(nospace()),
    )
    .await
    .unwrap();
    let (code, _) = http_get(&m.endpoint(), "/health").await;
    assert_eq!(code, 200);
}

/// A lease granted as soon as a member serves runs from its grant: the lessor is promoted before
/// the term's requests are applied, not after (which renewed it).
#[tokio::test]
async fn a_lease_granted_right_after_start_up_expires_on_time() {
    let m = Member::start().await;
    let out = m.etcdctl(&["lease", "grant", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).split_whitespace().nth(1).unwrap().to_string();
    std::thread::sleep(Duration::from_secs(4));
    let out = m.etcdctl(&["lease", "timetolive", &id]);
    assert!(
        stdout(&out).contains("already expired"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}

//! etcd's proxies as `keel` subcommands: `keel gateway start` splices TCP connections to the
//! members (skipping one that is down), and `keel grpc-proxy start` serves etcd's API in front of
//! them, sharing one upstream watch between identical watchers and one keep-alive stream between
//! clients.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, http_get, stderr, stdout, Member};

struct Proxy {
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    /// `keel <kind> <flags> start`, waiting until it logs `ready` (etcd's words).
    fn start(kind: &str, flags: &[String], ready: &str) -> Proxy {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .arg(kind)
            .args(flags)
            .arg("start")
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let p = Proxy { child, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !p.text().contains(ready) {
            assert!(Instant::now() < deadline, "{kind} not ready: {}", p.text());
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    fn text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

fn etcdctl(endpoint: &str, args: &[&str]) -> std::process::Output {
    common::etcdctl_at(endpoint, args, None)
}

#[tokio::test]
async fn the_tcp_gateway_skips_a_dead_endpoint() {
    let m = Member::start().await;
    let dead = format!("127.0.0.1:{}", free_port());
    let listen = format!("127.0.0.1:{}", free_port());
    let _gw = Proxy::start(
        "gateway",
        &[
            format!("--endpoints={dead},http://{}", m.endpoint()),
            format!("--listen-addr={listen}"),
        ],
        "ready to proxy client requests",
    );
    for i in 0..4 {
        let out = etcdctl(&listen, &["put", &format!("k{i}"), "v"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = etcdctl(&m.endpoint(), &["get", "k", "--prefix", "--keys-only"]);
    assert_eq!(stdout(&out).split_whitespace().count(), 4);
}

#[tokio::test]
async fn the_grpc_proxy_forwards_and_coalesces_identical_watches() {
    let m = Member::start().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let _proxy = Proxy::start(
        "grpc-proxy",
        &[
            format!("--endpoints={}", m.endpoint()),
            format!("--listen-addr={listen}"),
            format!("--metrics-addr=http://{metrics}"),
        ],
        "started gRPC proxy",
    );
    let out = etcdctl(&listen, &["put", "foo", "bar"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = etcdctl(&listen, &["get", "foo"]);
    assert_eq!(stdout(&out), "foo\nbar\n");
    let out = etcdctl(&listen, &["endpoint", "status"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Three clients watch the same key through the proxy: one upstream watch serves them.
    let mut clients = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut c = etcd_client::Client::connect([listen.clone()], None)
            .await
            .unwrap();
        let mut s = c.watch("w", None).await.unwrap();
        let created = tokio::time::timeout(Duration::from_secs(5), s.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(created.created());
        clients.push(c);
        streams.push(s);
    }
    let (_, body) = http_get(&metrics, "/metrics").await;
    assert!(
        body.contains("etcd_grpc_proxy_watchers_coalescing_total 2"),
        "{body}"
    );
    let mut c = m.client().await;
    c.put("w", "1", None).await.unwrap();
    for s in &mut streams {
        let resp = tokio::time::timeout(Duration::from_secs(5), s.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(resp.events().len(), 1);
        assert_eq!(resp.events()[0].kv().unwrap().value(), b"1");
    }

    // Keep-alives through the proxy renew the lease upstream.
    let mut pc = etcd_client::Client::connect([listen.clone()], None)
        .await
        .unwrap();
    let lease = pc.lease_grant(5, None).await.unwrap().id();
    let (mut keeper, mut answers) = pc.lease_keep_alive(lease).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), answers.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((answer.id(), answer.ttl()), (lease, 5));
}

#[test]
fn the_grpc_proxy_refuses_a_client_certificate_that_names_a_user() {
    let dir = tempfile::tempdir().unwrap();
    common::certs::make_certs(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["grpc-proxy", "start"])
        .arg(format!(
            "--cert={}",
            dir.path().join("client.pem").display()
        ))
        .arg(format!("--key={}", dir.path().join("client.key").display()))
        .arg(format!("--cacert={}", dir.path().join("ca.pem").display()))
        .arg(format!("--listen-addr=127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cert has non empty Common Name (client)"),
        "{}",
        stderr(&out)
    );
}

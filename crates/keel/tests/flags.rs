//! etcd's server flags, each with the behaviour an etcd user relies on: the config file and
//! ETCD_* variables, raft timing, unix sockets and several peer URLs, HTTP-only client URLs, the
//! raft log in --wal-dir, auto TLS, revoked client certificates, peers refused by CN, the gateway
//! switched off, CORS and the host whitelist, extensive metrics, capnslog logs to a file, the
//! strict reconfiguration check, the initial corruption check, and --force-new-cluster.

mod common;

use std::time::Duration;

use common::certs::{make_certs, revoke_client};
use common::proc::{is_rocksdb, member_flags, Proc};
use common::{free_port, http_get, stderr, stdout, Cluster};

fn etcdctl(endpoint: &str, args: &[&str]) -> std::process::Output {
    common::etcdctl_at(endpoint, args, None)
}

fn member_names(endpoint: &str) -> String {
    stdout(&etcdctl(endpoint, &["member", "list"]))
}

#[test]
fn a_config_file_replaces_flags_and_variables() {
    let (client, peer) = (free_port(), free_port());
    let endpoint = format!("127.0.0.1:{client}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("etcd.conf.yml");
    std::fs::write(
        &file,
        format!(
            "name: from-file\ndata-dir: {data}\nheartbeat-interval: 50\nelection-timeout: 500\n\
             listen-client-urls: http://{endpoint}\nadvertise-client-urls: http://{endpoint}\n\
             listen-peer-urls: http://127.0.0.1:{peer}\ninitial-advertise-peer-urls: http://127.0.0.1:{peer}\n\
             initial-cluster: from-file=http://127.0.0.1:{peer}\nlog-outputs: [stderr]\n",
            data = dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut p = Proc::start_in(
        dir,
        &[
            format!("--config-file={}", file.display()),
            "--name=from-flag".into(),
        ],
        &[("ETCD_NAME", "from-variable")],
    );
    p.wait_ready();
    assert!(member_names(&endpoint).contains("from-file"));
    assert!(
        p.log().contains("loaded server configuration"),
        "{}",
        p.log()
    );
    assert!(p.path("data/member/kv").exists());
}

#[test]
fn etcd_variables_set_flags_and_unknown_ones_are_named() {
    let (client, peer) = (free_port(), free_port());
    let endpoint = format!("127.0.0.1:{client}");
    let client_url = format!("http://{endpoint}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let cluster = format!("from-env={peer_url}");
    let mut p = Proc::start(
        &[],
        &[
            ("ETCD_NAME", "from-env"),
            ("ETCD_LISTEN_CLIENT_URLS", &client_url),
            ("ETCD_ADVERTISE_CLIENT_URLS", &client_url),
            ("ETCD_LISTEN_PEER_URLS", &peer_url),
            ("ETCD_INITIAL_ADVERTISE_PEER_URLS", &peer_url),
            ("ETCD_INITIAL_CLUSTER", &cluster),
            ("ETCD_HEARTBEAT_INTERVAL", "50"),
            ("ETCD_ELECTION_TIMEOUT", "500"),
            ("ETCD_NO_SUCH_SETTING", "1"),
        ],
    );
    p.wait_ready();
    assert!(member_names(&endpoint).contains("from-env"));
    assert!(
        p.log()
            .contains("unrecognized environment variable ETCD_NO_SUCH_SETTING"),
        "{}",
        p.log()
    );
    assert!(p.path("from-env.keel/member/kv").exists());
}

/// etcd's TestEtcdUnixPeers and TestEtcdMultiPeer as a user runs them: peers on a Unix socket,
/// clients on one too, and a member listening for peers on two URLs.
#[test]
fn unix_sockets_and_several_peer_urls_are_served() {
    let mut p = Proc::start(
        &[
            "--name=u1".into(),
            "--listen-peer-urls=unix://peer.sock:1".into(),
            "--initial-advertise-peer-urls=unix://peer.sock:1".into(),
            "--initial-cluster=u1=unix://peer.sock:1".into(),
            "--listen-client-urls=unix://client.sock:2".into(),
            "--advertise-client-urls=unix://client.sock:2".into(),
        ],
        &[],
    );
    p.wait_ready();
    let out = std::process::Command::new("etcdctl")
        .current_dir(p.dir.path())
        .env("ETCDCTL_API", "3")
        .args(["--endpoints=unix://client.sock:2", "put", "k", "v"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    p.stop();
    assert!(
        !p.path("client.sock:2").exists(),
        "the socket goes with the member"
    );

    let (a, b) = (free_port(), free_port());
    let (mut flags, endpoint) = member_flags("mp");
    flags[3] = format!("--listen-peer-urls=http://127.0.0.1:{a},http://127.0.0.1:{b}");
    flags[4] = format!("--initial-advertise-peer-urls=http://127.0.0.1:{a}");
    flags[5] = format!("--initial-cluster=mp=http://127.0.0.1:{a}");
    let mut p = Proc::start(&flags, &[]);
    p.wait_ready();
    assert!(etcdctl(&endpoint, &["put", "k", "v"]).status.success());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", b)).is_ok(),
        "both peer URLs listen"
    );
}

/// etcd 3.5's --listen-client-http-urls: HTTP (gateway, /metrics, /health) there, gRPC only on
/// --listen-client-urls.
#[tokio::test]
async fn http_client_urls_serve_http_and_client_urls_then_grpc_only() {
    let (mut flags, endpoint) = member_flags("h");
    let http = format!("127.0.0.1:{}", free_port());
    flags.push(format!("--listen-client-http-urls=http://{http}"));
    let mut p = Proc::start(&flags, &[]);
    p.wait_ready();
    assert!(etcdctl(&endpoint, &["put", "k", "v"]).status.success());
    let (code, body) = http_get(&http, "/version").await;
    assert_eq!(code, 200, "{body}");
    let (code, _) = http_get(&http, "/health").await;
    assert_eq!(code, 200);
    let (code, _) = http_get(&endpoint, "/version").await;
    assert_eq!(code, 404, "the gRPC URL serves no HTTP");
}

#[test]
fn the_raft_log_lives_in_wal_dir() {
    let (mut flags, endpoint) = member_flags("w");
    let wal = tempfile::tempdir().unwrap();
    flags.push(format!("--wal-dir={}", wal.path().display()));
    flags.push("--data-dir=data".into());
    let mut p = Proc::start(&flags, &[]);
    p.wait_ready();
    assert!(etcdctl(&endpoint, &["put", "k", "v"]).status.success());
    assert!(is_rocksdb(wal.path()), "the raft log is in --wal-dir");
    assert!(!p.path("data/member/raft").exists());
    assert!(is_rocksdb(&p.path("data/member/kv")));
}

/// --auto-tls: https client URLs with a certificate generated under the data dir (clients skip
/// verification, as etcd's users of auto TLS do).
#[test]
fn auto_tls_serves_https_with_a_generated_certificate() {
    let (client, peer) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{client}");
    let mut p = Proc::start(
        &[
            "--name=a".into(),
            "--auto-tls".into(),
            "--peer-auto-tls".into(),
            "--self-signed-cert-validity=2".into(),
            format!("--listen-client-urls={url}"),
            format!("--advertise-client-urls={url}"),
            format!("--listen-peer-urls=https://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=https://127.0.0.1:{peer}"),
            format!("--initial-cluster=a=https://127.0.0.1:{peer}"),
        ],
        &[],
    );
    p.wait_ready();
    let cert = p.path("a.keel/fixtures/client/cert.pem");
    assert!(cert.exists() && p.path("a.keel/fixtures/peer/key.pem").exists());
    let out = etcdctl(
        &url,
        &[
            "--insecure-transport=false",
            "--insecure-skip-tls-verify",
            "put",
            "k",
            "v",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let dates = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-enddate", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    let text = stdout(&dates);
    assert!(text.contains("O = etcd"), "{text}");
    let year = |s: &str| {
        s.split_whitespace()
            .rev()
            .nth(1)
            .unwrap()
            .parse::<i32>()
            .unwrap()
    };
    let now = std::process::Command::new("date")
        .arg("+%Y")
        .output()
        .unwrap();
    let now: i32 = stdout(&now).trim().parse().unwrap();
    assert_eq!(year(&text), now + 2, "{text}");
}

/// --client-crl-file: a revoked client certificate is refused at the handshake; another the CA
/// signed is served.
#[test]
fn a_revoked_client_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    revoke_client(dir.path());
    let f = |n: &str| dir.path().join(n).display().to_string();
    let (client, peer) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{client}");
    let mut p = Proc::start(
        &[
            format!("--listen-client-urls={url}"),
            format!("--advertise-client-urls={url}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-cluster=default=http://127.0.0.1:{peer}"),
            format!("--cert-file={}", f("server.pem")),
            format!("--key-file={}", f("server.key")),
            format!("--trusted-ca-file={}", f("ca.pem")),
            "--client-cert-auth".into(),
            format!("--client-crl-file={}", f("crl.pem")),
        ],
        &[],
    );
    p.wait_ready();
    let as_ = |cert: &str, key: &str| {
        etcdctl(
            &url,
            &[
                &format!("--cacert={}", f("ca.pem")),
                &format!("--cert={}", f(cert)),
                &format!("--key={}", f(key)),
                "--dial-timeout=2s",
                "--command-timeout=3s",
                "put",
                "k",
                "v",
            ],
        )
    };
    let revoked = as_("client.pem", "client.key");
    assert!(!revoked.status.success());
    let fine = as_("server.pem", "server.key");
    assert!(fine.status.success(), "{}", stderr(&fine));
    assert!(p.log().contains("rejected connection from"), "{}", p.log());
}

/// --peer-cert-allowed-cn: a member whose peer certificate names another CN cannot join, and
/// says why in etcd's words.
#[tokio::test]
async fn a_peer_with_a_certificate_of_another_cn_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let f = |n: &str| dir.path().join(n).display().to_string();
    // Two members expect CN "server" (the certificate's), the third expects "someone-else".
    let cluster = Cluster::spawn_with(3, |i| {
        let cn = if i < 2 { "server" } else { "someone-else" };
        vec![
            format!("--peer-cert-file={}", f("server.pem")),
            format!("--peer-key-file={}", f("server.key")),
            format!("--peer-trusted-ca-file={}", f("ca.pem")),
            "--peer-client-cert-auth".into(),
            format!("--peer-cert-allowed-cn={cn}"),
        ]
    });
    cluster.members[0].wait_ready().await;
    cluster.members[1].wait_ready().await;
    cluster.members[2]
        .wait_log(
            "client certificate authentication failed",
            Duration::from_secs(10),
        )
        .await;
    cluster.members[0]
        .wait_log(
            "remote error: tls: bad certificate",
            Duration::from_secs(10),
        )
        .await;
}

#[tokio::test]
async fn the_gateway_can_be_switched_off_and_cors_and_hosts_limited() {
    let (mut flags, endpoint) = member_flags("g");
    flags.push("--enable-grpc-gateway=false".into());
    let mut p = Proc::start(&flags, &[]);
    p.wait_ready();
    let (code, _) = common::http_post(&endpoint, "/v3/kv/range", r#"{"key":"YQ=="}"#).await;
    assert_eq!(code, 404);
    assert!(etcdctl(&endpoint, &["put", "k", "v"]).status.success());
    drop(p);

    let (mut flags, endpoint) = member_flags("c");
    flags.push("--cors=http://app.example".into());
    flags.push("--host-whitelist=localhost".into());
    let mut p = Proc::start(&flags, &[]);
    p.wait_ready();
    // The harness's HTTP client sends Host: 127.0.0.1:port, which the whitelist does not name.
    let (code, body) = http_get(&endpoint, "/version").await;
    assert_eq!(code, 421, "{body}");
    assert!(body.contains("DNS Rebinding"), "{body}");
    let local = endpoint.replace("127.0.0.1", "localhost");
    let raw = |origin: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&endpoint).unwrap();
        write!(
            s,
            "GET /version HTTP/1.1\r\nHost: {local}\r\nOrigin: {origin}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        resp
    };
    let allowed = raw("http://app.example");
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");
    assert!(
        allowed
            .to_ascii_lowercase()
            .contains("access-control-allow-origin: http://app.example"),
        "{allowed}"
    );
    let other = raw("http://evil.example");
    assert!(
        !other
            .to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "{other}"
    );
}

#[tokio::test]
async fn extensive_metrics_add_the_grpc_latency_histograms() {
    for (level, histograms) in [("basic", false), ("extensive", true)] {
        let (mut flags, endpoint) = member_flags("m");
        flags.push(format!("--metrics={level}"));
        let mut p = Proc::start(&flags, &[]);
        p.wait_ready();
        assert!(etcdctl(&endpoint, &["put", "k", "v"]).status.success());
        let (_, body) = http_get(&endpoint, "/metrics").await;
        assert_eq!(
            body.contains("grpc_server_handling_seconds_bucket"),
            histograms,
            "--metrics={level}"
        );
        assert!(body.contains("etcd_mvcc_put_total 1"), "{body}");
    }
}

#[test]
fn capnslog_lines_go_to_the_log_output_file() {
    let (mut flags, endpoint) = member_flags("l");
    flags.push("--logger=capnslog".into());
    flags.push("--log-outputs=member.log".into());
    let mut p = Proc::start(&flags, &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let file = p.path("member.log");
    while !std::fs::read_to_string(&file)
        .unwrap_or_default()
        .contains("published local member")
    {
        assert!(std::time::Instant::now() < deadline, "{}", p.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&file).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("published local member"))
        .unwrap();
    // capnslog: "2006-01-02 15:04:05.000000 I | package: message".
    assert!(line.contains(" I | "), "{line}");
    assert!(!line.starts_with('{'), "{line}");
    assert!(p.log().is_empty(), "nothing on stderr: {}", p.log());
    assert!(etcdctl(&endpoint, &["put", "k", "v"]).status.success());
    p.stop();
}

/// etcd lets a one-member cluster add a second voter before it starts, but not a third: one
/// started member of three is no quorum. --strict-reconfig-check=false lets the change through
/// (here it then waits for a quorum that never comes).
#[test]
fn the_strict_reconfiguration_check_can_be_switched_off() {
    for strict in [true, false] {
        let (mut flags, endpoint) = member_flags("s");
        flags.push(format!("--strict-reconfig-check={strict}"));
        let mut p = Proc::start(&flags, &[]);
        p.wait_ready();
        let peer = |_: u8| format!("--peer-urls=http://127.0.0.1:{}", free_port());
        let second = etcdctl(&endpoint, &["member", "add", "second", &peer(2)]);
        assert!(second.status.success(), "{}", stderr(&second));
        let third = etcdctl(
            &endpoint,
            &["--command-timeout=2s", "member", "add", "third", &peer(3)],
        );
        assert!(!third.status.success());
        let refused =
            stderr(&third).contains("re-configuration failed due to not enough started members");
        assert_eq!(refused, strict, "strict={strict}: {}", stderr(&third));
    }
}

/// etcd's TestEtcdCorruptHash: a member whose store differs from its peers' at the same
/// revision refuses to start with --experimental-initial-corrupt-check.
#[tokio::test]
async fn a_member_whose_data_differs_from_its_peers_refuses_to_start() {
    let mut cluster =
        Cluster::spawn_with(3, |_| vec!["--experimental-initial-corrupt-check".into()]);
    for m in &cluster.members {
        m.wait_ready().await;
    }
    let mut c = cluster.client().await;
    for i in 0..10 {
        c.put(format!("foo{i:05}"), format!("v{i:05}"), None)
            .await
            .unwrap();
    }
    // Every member has applied every write.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let id = cluster.members[0].id().await;
    cluster.members[0].stop();
    corrupt_one_value(&cluster.members[0].data_dir().join("member/kv"));
    cluster.members[0].start_process();
    let code = cluster.members[0].wait_exit(Duration::from_secs(30));
    assert!(
        code.is_some_and(|s| !s.success()),
        "{}",
        cluster.members[0].log()
    );
    let log = cluster.members[0].log();
    assert!(
        log.contains(&format!("{id:016x} found data inconsistency with peers")),
        "{log}"
    );
    // The healthy members checked it too and serve on.
    assert!(cluster.members[1]
        .log()
        .contains("initial corruption checking passed"));
}

/// Flips a byte in the value of the last key-value record of the store's `kv` family, offline
/// (as etcd's e2e test edits the bbolt file).
fn corrupt_one_value(kv_dir: &std::path::Path) {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(false);
    let families = rocksdb::DB::list_cf(&opts, kv_dir).unwrap();
    let db = rocksdb::DB::open_cf(&opts, kv_dir, &families).unwrap();
    let cf = db.cf_handle("kv").unwrap();
    let (key, value) = db
        .iterator_cf(cf, rocksdb::IteratorMode::End)
        .next()
        .unwrap()
        .unwrap();
    let mut value = value.to_vec();
    let last = value.len() - 1;
    value[last] ^= 0x20;
    db.put_cf(cf, key, value).unwrap();
    db.flush_cf(cf).unwrap();
}

/// --force-new-cluster: after losing two of three members for good, the survivor restarts as a
/// one-member cluster with every key it had, and takes writes again.
#[tokio::test]
async fn a_member_of_a_cluster_that_lost_its_quorum_restarts_alone_with_its_data() {
    let mut cluster = Cluster::start(3).await;
    let mut c = cluster.client().await;
    for i in 0..20 {
        c.put(format!("k{i}"), "v", None).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.members[1].kill9();
    cluster.members[2].kill9();
    let survivor = &mut cluster.members[0];
    survivor.stop();
    survivor.set_flags(&["--force-new-cluster"]);
    survivor.restart().await;
    let endpoint = survivor.endpoint();
    let out = etcdctl(&endpoint, &["get", "k", "--prefix", "--keys-only"]);
    assert_eq!(
        stdout(&out).split_whitespace().count(),
        20,
        "{}",
        stderr(&out)
    );
    assert!(etcdctl(&endpoint, &["put", "after", "1"]).status.success());
    let members = member_names(&endpoint);
    assert_eq!(members.lines().count(), 1, "{members}");
    assert!(survivor
        .log()
        .contains("forcing restart as a one-member cluster"));
    // Restarted again (the flag dropped), it stays a one-member cluster with its data.
    survivor.stop();
    survivor.set_flags(&[]);
    survivor.restart().await;
    let out = etcdctl(&survivor.endpoint(), &["get", "after"]);
    assert_eq!(stdout(&out), "after\n1\n");
}

//! TLS on the client URLs: `--cert-file`/`--key-file` serve https that etcdctl reaches with the CA;
//! `--client-cert-auth` with `--trusted-ca-file` also demands a client certificate, whose common
//! name is the user of requests without a token when auth is on. TLS between
//! members with the `--peer-*` flags: a cluster replicates over it, and a member without a
//! certificate from the peers' CA cannot take part.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::certs::make_certs;
use common::{free_port, stderr, stdout, Cluster};

struct Tls {
    dir: tempfile::TempDir,
    child: Child,
    endpoint: String,
}

impl Drop for Tls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Tls {
    fn start(client_cert_auth: bool) -> Tls {
        let dir = tempfile::tempdir().unwrap();
        make_certs(dir.path());
        let (port, peer) = (free_port(), free_port());
        let endpoint = format!("https://127.0.0.1:{port}");
        let d = dir.path();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
        cmd.arg(format!("--data-dir={}", d.join("data").display()))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer}"))
            .arg(format!("--cert-file={}", d.join("server.pem").display()))
            .arg(format!("--key-file={}", d.join("server.key").display()));
        if client_cert_auth {
            cmd.arg(format!("--trusted-ca-file={}", d.join("ca.pem").display()))
                .arg("--client-cert-auth");
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Tls {
            dir,
            child,
            endpoint,
        }
    }

    fn etcdctl(&self, tls_args: &[String], args: &[&str]) -> Output {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .arg("--dial-timeout=2s")
            .arg("--command-timeout=3s")
            .args(tls_args)
            .args(args)
            .output()
            .unwrap()
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// etcdctl put with these TLS arguments, retried while the member starts.
    fn put_eventually(&self, tls_args: &[String]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.etcdctl(tls_args, &["put", "k", "v"]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never served over TLS: {}",
                stderr(&out)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn clients_reach_keel_over_tls_with_its_ca() {
    let m = Tls::start(false);
    let ca = vec![format!("--cacert={}", m.file("ca.pem"))];
    m.put_eventually(&ca);
    assert_eq!(
        stdout(&m.etcdctl(&ca, &["get", "k", "--print-value-only"])),
        "v\n"
    );
    // Without the CA the server's certificate is not trusted.
    let out = m.etcdctl(&[], &["get", "k"]);
    assert!(!out.status.success());
}

#[test]
fn client_cert_auth_demands_a_certificate_from_the_ca() {
    let m = Tls::start(true);
    let full = vec![
        format!("--cacert={}", m.file("ca.pem")),
        format!("--cert={}", m.file("client.pem")),
        format!("--key={}", m.file("client.key")),
    ];
    m.put_eventually(&full);
    assert_eq!(
        stdout(&m.etcdctl(&full, &["get", "k", "--print-value-only"])),
        "v\n"
    );
    let out = m.etcdctl(&full[..1], &["get", "k"]);
    assert!(
        !out.status.success(),
        "a client without a certificate was served"
    );

    // With auth on, a request without a token is the user its certificate names (CN=client).
    let ok = |args: &[&str]| {
        let out = m.etcdctl(&full, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    };
    ok(&["user", "add", "root:rootpw"]);
    ok(&["user", "add", "client:clientpw"]);
    ok(&["role", "add", "app"]);
    ok(&["role", "grant-permission", "app", "readwrite", "a", "b"]);
    ok(&["user", "grant-role", "client", "app"]);
    ok(&["auth", "enable"]);
    ok(&["put", "a1", "by-certificate"]);
    let denied = m.etcdctl(&full, &["put", "z", "x"]);
    assert!(
        stderr(&denied).contains("etcdserver: permission denied"),
        "{}",
        stderr(&denied)
    );
    ok(&["--user", "root:rootpw", "put", "z", "x"]);
}

/// Peer TLS flags with the certificates in `dir` (the server certificate serves both ways).
fn peer_tls_flags(dir: &Path) -> Vec<String> {
    vec![
        format!("--peer-cert-file={}", dir.join("server.pem").display()),
        format!("--peer-key-file={}", dir.join("server.key").display()),
        format!("--peer-trusted-ca-file={}", dir.join("ca.pem").display()),
        "--peer-client-cert-auth".to_string(),
    ]
}

#[tokio::test]
async fn members_replicate_over_peer_tls_and_refuse_strangers() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let cluster = Cluster::spawn_with(3, |_| peer_tls_flags(certs.path()));
    for m in &cluster.members {
        assert!(m.peer_url().starts_with("https://"));
        m.wait_ready().await;
    }
    // A write through one member is read from another: raft traffic crossed TLS.
    let mut c0 = cluster.members[0].client().await;
    c0.put("over-tls", "yes", None).await.unwrap();
    let mut c2 = cluster.members[2].client().await;
    let r = c2.get("over-tls", None).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"yes");
    // A follower forwards `keel members` to the leader over peer TLS.
    let leader = cluster.leader().await;
    let follower = &cluster.members[(leader + 1) % 3];
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["members", "-w", "json"])
        .arg(format!("--endpoints={}", follower.endpoint()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("\"role\":\"leader\""),
        "{}",
        stdout(&out)
    );

    // A member whose certificate comes from another CA is refused by every peer.
    let strangers = tempfile::tempdir().unwrap();
    make_certs(strangers.path());
    let flags = peer_tls_flags(strangers.path());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut joiner = cluster.joiner("m3", &flags);
    c0.member_add([joiner.peer_url()], None).await.unwrap();
    joiner.start_process();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = joiner.log();
    assert!(
        !log.contains("member started") && log.contains("could not get the member list"),
        "a member with another CA's certificate joined:\n{log}"
    );
}

//! How a new cluster's members find each other without --initial-cluster: etcd's discovery
//! service (--discovery, also through --discovery-proxy) and DNS SRV records (--discovery-srv,
//! for members, `keel gateway start` and `keel grpc-proxy start`).

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::dns::{self, Zone};
use common::proc::{member_flags, Proc};
use common::{free_port, stdout};
use keel_server::startup::srv;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn etcdctl(endpoint: &str, args: &[&str]) -> std::process::Output {
    common::etcdctl_at(endpoint, args, None)
}

fn member_names(endpoint: &str) -> String {
    stdout(&etcdctl(endpoint, &["member", "list"]))
}

/// Real etcd serving its v2 keys API (a self-hosted discovery service), with a token directory
/// for a cluster of `size`: etcd and the token's URL.
fn discovery_service(size: usize) -> (common::Etcd, String) {
    let etcd = common::start_etcd_with(&["--enable-v2"]);
    let durl = format!("http://{}/v2/keys/discovery/keel-test", etcd.endpoint);
    let set = std::process::Command::new("curl")
        .args(["-sf", "-X", "PUT", "-d", &format!("value={size}")])
        .arg(format!("{durl}/_config/size"))
        .output()
        .unwrap();
    assert!(set.status.success(), "{}", common::stderr(&set));
    (etcd, durl)
}

/// --discovery: three members that know only a discovery URL find each other and bootstrap one
/// cluster; a fourth is refused.
#[tokio::test(flavor = "multi_thread")]
async fn members_find_each_other_through_a_discovery_service() {
    let (_etcd, durl) = discovery_service(3);
    let start = |name: &str| {
        let (mut flags, endpoint) = member_flags(name);
        flags.retain(|f| !f.starts_with("--initial-cluster="));
        flags.push(format!("--discovery={durl}"));
        (Proc::start(&flags, &[]), endpoint)
    };
    let mut members: Vec<(Proc, String)> = ["d1", "d2", "d3"].iter().map(|n| start(n)).collect();
    for (p, _) in &mut members {
        p.wait_ready();
    }
    let list = member_names(&members[0].1);
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(etcdctl(&members[2].1, &["put", "k", "v"]).status.success());
    let (mut late, _) = start("d4");
    let code = late.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(1), "{}", late.log());
    assert!(
        late.log().contains("discovery: cluster is full"),
        "{}",
        late.log()
    );
}

/// An HTTP forward proxy: absolute-form requests (one per connection, as the discovery client
/// sends them) and CONNECT tunnels; the request lines it was sent.
async fn forward_proxy() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let Ok(b) = inbound.read_u8().await else {
                        return;
                    };
                    head.push(b);
                }
                let head = String::from_utf8(head).unwrap();
                let (line, rest) = head.split_once("\r\n").unwrap();
                let mut parts = line.split(' ');
                let (method, uri) = (parts.next().unwrap(), parts.next().unwrap());
                log.lock().unwrap().push(line.to_string());
                if method == "CONNECT" {
                    let mut outbound = tokio::net::TcpStream::connect(uri).await.unwrap();
                    inbound
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    return;
                }
                let Some(after) = uri.strip_prefix("http://") else {
                    let _ = inbound.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                    return;
                };
                let (host, path) = after.split_at(after.find('/').unwrap_or(after.len()));
                let mut outbound = tokio::net::TcpStream::connect(host).await.unwrap();
                let forwarded = format!("{method} {path} HTTP/1.1\r\n{rest}");
                outbound.write_all(forwarded.as_bytes()).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    (addr, seen)
}

/// --discovery-proxy: the discovery service is asked through the given HTTP proxy.
#[tokio::test(flavor = "multi_thread")]
async fn the_discovery_service_is_asked_through_the_discovery_proxy() {
    let (_etcd, durl) = discovery_service(1);
    let (proxy, seen) = forward_proxy().await;
    let (mut flags, endpoint) = member_flags("p1");
    flags.retain(|f| !f.starts_with("--initial-cluster="));
    flags.push(format!("--discovery={durl}"));
    // Without a scheme, as Go's HTTP client takes it: http://.
    flags.push(format!("--discovery-proxy={proxy}"));
    let mut member = Proc::start(&flags, &[]);
    member.wait_ready();
    assert_eq!(member_names(&endpoint).lines().count(), 1);
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|l| l.starts_with("PUT ") && l.contains("/v2/keys/discovery/keel-test/")),
        "{seen:?}"
    );
    assert!(member.log().contains("running proxy with discovery"));
}

/// An https discovery service through --discovery-proxy: the member asks for a CONNECT tunnel
/// and speaks TLS inside it, trusting the service's CA through SSL_CERT_FILE (as Go does).
#[tokio::test(flavor = "multi_thread")]
async fn an_https_discovery_service_is_reached_through_a_proxy_tunnel() {
    let certs = tempfile::tempdir().unwrap();
    common::certs::make_certs(certs.path());
    let pem = |f: &str| certs.path().join(f).display().to_string();
    let (port, peer) = (free_port(), free_port());
    let data = tempfile::tempdir().unwrap();
    let mut etcd = std::process::Command::new("etcd")
        .arg("--enable-v2")
        .arg(format!("--data-dir={}", data.path().display()))
        .arg(format!("--cert-file={}", pem("server.pem")))
        .arg(format!("--key-file={}", pem("server.key")))
        .arg(format!("--listen-client-urls=https://127.0.0.1:{port}"))
        .arg(format!("--advertise-client-urls=https://127.0.0.1:{port}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
        ))
        .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("etcd (Debian package etcd-server)");
    let base = format!("https://127.0.0.1:{port}/v2/keys/discovery/tls-test");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let set = std::process::Command::new("curl")
            .args([
                "-sf",
                "--cacert",
                &pem("ca.pem"),
                "-X",
                "PUT",
                "-d",
                "value=1",
            ])
            .arg(format!("{base}/_config/size"))
            .output()
            .unwrap();
        if set.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "etcd did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (proxy, seen) = forward_proxy().await;
    let (mut flags, endpoint) = member_flags("t1");
    flags.retain(|f| !f.starts_with("--initial-cluster="));
    flags.push(format!("--discovery={base}"));
    flags.push(format!("--discovery-proxy=http://{proxy}"));
    let mut member = Proc::start(&flags, &[("SSL_CERT_FILE", pem("ca.pem").as_str())]);
    member.wait_ready();
    assert_eq!(member_names(&endpoint).lines().count(), 1);
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|l| *l == format!("CONNECT 127.0.0.1:{port} HTTP/1.1")),
        "{seen:?}"
    );
    let _ = etcd.kill();
    let _ = etcd.wait();
}

/// The initial cluster SRV records make, as etcd names it: https records first, the member
/// whose advertised peer URL resolves to a record is itself, the others `0`, `1`, ...
#[tokio::test(flavor = "multi_thread")]
async fn srv_records_name_the_initial_cluster() {
    let zone = Zone::default()
        .srv("_etcd-server-ssl._tcp.keel.test", "a.keel.test", 2380)
        .srv("_etcd-server._tcp.keel.test", "b.keel.test", 2381)
        .srv("_etcd-server._tcp.keel.test", "c.keel.test", 2382)
        .srv("_etcd-server-prod._tcp.keel.test", "c.keel.test", 2390)
        .srv("_etcd-client._tcp.keel.test", "b.keel.test", 2379)
        .a("a.keel.test", Ipv4Addr::new(127, 0, 0, 1))
        .a("b.keel.test", Ipv4Addr::new(127, 0, 0, 2))
        .a("c.keel.test", Ipv4Addr::new(127, 0, 0, 3));
    let addr = dns::serve("127.0.0.1:0".parse().unwrap(), zone)
        .await
        .unwrap();
    let resolver = dns::resolver(addr);
    let cluster = |name: &'static str, url: &'static str, service: Option<&'static str>| {
        let resolver = resolver.clone();
        async move {
            srv::initial_cluster(&resolver, "keel.test", service, name, &[url.to_string()]).await
        }
    };
    let got = cluster("b", "http://127.0.0.2:2381", None).await.unwrap();
    let want = vec![
        (
            "0".to_string(),
            vec!["https://a.keel.test:2380".to_string()],
        ),
        ("b".to_string(), vec!["http://b.keel.test:2381".to_string()]),
        ("1".to_string(), vec!["http://c.keel.test:2382".to_string()]),
    ];
    assert_eq!(got, want);
    // --discovery-srv-name picks other services.
    let got = cluster("c", "http://127.0.0.3:2390", Some("prod"))
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![("c".to_string(), vec!["http://c.keel.test:2390".to_string()])]
    );
    // A member's own record must have its scheme, and a member must be among the records.
    let err = cluster("a", "http://127.0.0.1:2380", None)
        .await
        .unwrap_err();
    assert_eq!(err, "cannot find local etcd member \"a\" in SRV records");
    let err = cluster("z", "http://127.0.0.9:2380", None)
        .await
        .unwrap_err();
    assert_eq!(err, "cannot find local etcd member \"z\" in SRV records");
    let err = srv::initial_cluster(
        &resolver,
        "other.test",
        None,
        "a",
        &["http://127.0.0.1:1".into()],
    )
    .await
    .unwrap_err();
    assert!(
        err.starts_with("error querying DNS SRV records for other.test"),
        "{err}"
    );
    let clients = srv::client_endpoints(&resolver, "keel.test", None)
        .await
        .unwrap();
    assert_eq!(clients, vec!["http://b.keel.test:2379".to_string()]);
    let err = srv::client_endpoints(&resolver, "other.test", None)
        .await
        .unwrap_err();
    assert!(err.starts_with("dns lookup errors: "), "{err}");
}

/// Where the processes of the SRV process tests resolve names: a DNS server on port 53 of a
/// loopback address, named by a resolv.conf that a private mount namespace puts over the
/// system's (`unshare -m`). None when this machine does not allow that (not root).
async fn system_dns(zone: Zone) -> Option<(tempfile::TempDir, Vec<String>)> {
    let addr: SocketAddr = "127.53.53.53:53".parse().unwrap();
    if let Err(e) = dns::serve(addr, zone).await {
        eprintln!("skipped: cannot serve DNS on {addr} ({e})");
        return None;
    }
    let unshare = std::process::Command::new("unshare")
        .args(["-m", "true"])
        .status();
    if !unshare.is_ok_and(|s| s.success()) {
        eprintln!("skipped: unshare -m is not allowed here");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("resolv.conf");
    std::fs::write(&conf, format!("nameserver {}\n", addr.ip())).unwrap();
    let wrapper = vec![
        "unshare".to_string(),
        "-m".to_string(),
        "--".to_string(),
        "sh".to_string(),
        "-c".to_string(),
        r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#.to_string(),
        conf.display().to_string(),
    ];
    Some((dir, wrapper))
}

/// --discovery-srv: three members bootstrap one cluster from the SRV records of a domain, with
/// the records' host names as peer URLs; `keel gateway start --discovery-srv` finds the members'
/// client URLs in the same domain; a member missing from the records is refused.
#[tokio::test(flavor = "multi_thread")]
async fn members_and_gateways_find_the_cluster_in_srv_records() {
    let names = ["s1", "s2", "s3"];
    let peers: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let clients: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let mut zone = Zone::default();
    for (i, name) in names.iter().enumerate() {
        let host = format!("{name}.keel.test");
        zone = zone
            .srv("_etcd-server._tcp.keel.test", &host, peers[i])
            .srv("_etcd-client._tcp.keel.test", &host, clients[i])
            .a(&host, Ipv4Addr::LOCALHOST);
    }
    let Some((_dir, wrapper)) = system_dns(zone).await else {
        return;
    };
    let flags = |name: &str, peer: u16, client: u16| {
        vec![
            format!("--name={name}"),
            "--discovery-srv=keel.test".to_string(),
            format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            format!("--listen-client-urls=http://127.0.0.1:{client}"),
            format!("--advertise-client-urls=http://127.0.0.1:{client}"),
        ]
    };
    let start =
        |args: &[String]| Proc::start_under(&wrapper, tempfile::tempdir().unwrap(), args, &[]);
    let mut members: Vec<Proc> = names
        .iter()
        .enumerate()
        .map(|(i, name)| start(&flags(name, peers[i], clients[i])))
        .collect();
    for m in &mut members {
        m.wait_ready();
    }
    assert!(members[0]
        .log()
        .contains("got bootstrap from DNS for etcd-server"));
    let first = format!("127.0.0.1:{}", clients[0]);
    let list = member_names(&first);
    assert_eq!(list.lines().count(), 3, "{list}");
    for (i, name) in names.iter().enumerate() {
        let peer = format!("{name}, http://{name}.keel.test:{}", peers[i]);
        assert!(list.contains(&peer), "{peer} not in\n{list}");
    }
    assert!(etcdctl(&first, &["put", "k", "v"]).status.success());
    let last = format!("127.0.0.1:{}", clients[2]);
    assert_eq!(stdout(&etcdctl(&last, &["get", "k"])), "k\nv\n");

    // The gateway: its --endpoints name nothing that serves; the SRV records do.
    let listen = format!("127.0.0.1:{}", free_port());
    let gateway_args: Vec<String> = [
        "gateway",
        "start",
        "--discovery-srv=keel.test",
        "--insecure-discovery",
        "--endpoints=127.0.0.1:1",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--listen-addr={listen}")])
    .collect();
    let mut gateway = start(&gateway_args);
    gateway.wait_log("discovered cluster from SRV");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = etcdctl(&listen, &["get", "k"]);
        if stdout(&got) == "k\nv\n" {
            break;
        }
        assert!(Instant::now() < deadline, "{}", gateway.log());
        std::thread::sleep(Duration::from_millis(100));
    }

    // A fourth member is in no record.
    let mut stray = start(&flags("s4", free_port(), free_port()));
    assert_eq!(
        stray.wait_exit(Duration::from_secs(20)),
        Some(1),
        "{}",
        stray.log()
    );
    let log = stray.log();
    assert!(
        log.contains("cannot find local etcd member") && log.contains("s4"),
        "{log}"
    );
}

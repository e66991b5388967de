//! Test harness: real `keel` processes on loopback ports, with real clients (the `etcd-client` crate
//! and the `etcdctl` binary).
#![allow(dead_code)]

pub mod certs;
pub mod dns;
pub mod proc;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A `keel` member process with its own data dir and ports.
pub struct Member {
    pub dir: tempfile::TempDir,
    pub name: String,
    pub port: u16,
    pub peer_port: u16,
    /// `--initial-cluster`; a single-member cluster of this member when `None`.
    initial_cluster: Option<String>,
    child: Option<Child>,
    extra: Vec<String>,
    /// Environment variables set (Some) or removed (None) for the process.
    env: Vec<(String, Option<String>)>,
}

/// A port no other test of this run uses. Ports the kernel picks (port 0) come from the ephemeral
/// range, which outgoing connections (clients, peer streams) also draw from, so one could be taken
/// between picking it and the member binding it. These come from below that range (Linux: from
/// 32768), handed out by a counter so that parallel tests never share one; the start depends on the
/// process so that test binaries run one after another do not reuse each other's ports at once.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 10_000 + (std::process::id() % 40) as u16 * 500;
    loop {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 500;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Member {
    /// Starts a single-member cluster and waits until it serves.
    pub async fn start() -> Member {
        Self::start_with(&[]).await
    }

    /// Starts with extra flags.
    pub async fn start_with(extra: &[&str]) -> Member {
        let mut m = Member::new("m1", extra);
        m.spawn();
        m.wait_ready().await;
        m
    }

    /// A member not started yet.
    pub fn new(name: &str, extra: &[&str]) -> Member {
        Member {
            dir: tempfile::tempdir().unwrap(),
            name: name.to_string(),
            port: free_port(),
            peer_port: free_port(),
            initial_cluster: None,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
        }
    }

    /// A member that will join the cluster of `others` (`name=peer-url` each) with
    /// --initial-cluster-state=existing (not started; add it with MemberAdd first).
    pub fn joining(name: &str, others: &[String], extra: &[&str]) -> Member {
        let mut m = Member::new(name, extra);
        let initial = others
            .iter()
            .cloned()
            .chain([format!("{}={}", m.name, m.peer_url())])
            .collect::<Vec<_>>()
            .join(",");
        m.initial_cluster = Some(initial);
        m.extra.push("--initial-cluster-state=existing".into());
        m
    }

    /// https when the member was given peer TLS flags.
    pub fn peer_url(&self) -> String {
        let tls = self.extra.iter().any(|f| f.starts_with("--peer-cert-file"));
        let scheme = if tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.peer_port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let url = format!("http://127.0.0.1:{}", self.port);
        let peer = self.peer_url();
        let cluster = self
            .initial_cluster
            .clone()
            .unwrap_or_else(|| format!("{}={peer}", self.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("keel.log"))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
        for (key, value) in &self.env {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        let child = cmd
            .env("KEEL_FAULT_PARTITION_FILE", self.partition_file())
            .env("KEEL_FAULT_APPLY_DELAY_FILE", self.apply_delay_file())
            .arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={cluster}"))
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning keel");
        self.child = Some(child);
    }

    /// The file the member reads the members it is cut off from (see keel-raft's fault.rs).
    pub fn partition_file(&self) -> PathBuf {
        self.dir.path().join("partition")
    }

    /// The file the member reads its apply delay from (see keel-server's fault.rs).
    pub fn apply_delay_file(&self) -> PathBuf {
        self.dir.path().join("apply-delay")
    }

    /// Makes the member's state machine wait this long before each batch (zero: no wait).
    pub fn slow_apply(&self, delay: Duration) {
        std::fs::write(self.apply_delay_file(), delay.as_millis().to_string()).unwrap();
    }

    /// Cuts this member off from the members with these ids (none: heals).
    pub fn cut_off_from(&self, ids: &[u64]) {
        let text: String = ids.iter().map(|id| format!("{id:x}\n")).collect();
        std::fs::write(self.partition_file(), text).unwrap();
    }

    /// This member's id, as it reports it.
    pub async fn id(&self) -> u64 {
        let mut c = self.client().await;
        c.status().await.unwrap().header().unwrap().member_id()
    }

    /// Sets (Some) or removes (None) an environment variable of the process from the next start on.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.push((key.to_string(), value.map(str::to_string)));
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Replaces the extra flags used from the next start on.
    pub fn set_flags(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
    }

    /// Starts the process (after `stop` or `kill9`) without waiting for it.
    pub fn start_process(&mut self) {
        self.spawn();
    }

    /// Waits for the process to exit by itself; its status, or None after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut()?.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Waits until the member answers a serializable read (learners answer no other).
    pub async fn wait_serving(&self) {
        self.wait_answering(true).await
    }

    /// Waits until the member answers a linearizable read.
    pub async fn wait_ready(&self) {
        self.wait_answering(false).await
    }

    async fn wait_answering(&self, serializable: bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let probe = async {
                let mut c = etcd_client::Client::connect([self.endpoint()], None)
                    .await
                    .ok()?;
                let opts = serializable.then(|| etcd_client::GetOptions::new().with_serializable());
                match c.get("ready-probe", opts).await {
                    Ok(_) => Some(()),
                    // With auth enabled an anonymous read is refused, by a member that serves.
                    Err(etcd_client::Error::GRpcStatus(s))
                        if s.message() == "etcdserver: user name is empty" =>
                    {
                        Some(())
                    }
                    Err(_) => None,
                }
            };
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(2), probe).await {
                return;
            }
            if Instant::now() > deadline {
                panic!("keel did not become ready; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("keel.log")).unwrap_or_default()
    }

    /// Waits until the member's log contains `text`.
    pub async fn wait_log(&self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "{} never logged {text:?}; log:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let c = self.child.take().expect("running");
        Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()
            .unwrap();
        c.wait_with_output().unwrap().status
    }

    pub async fn restart(&mut self) {
        self.spawn();
        self.wait_ready().await;
    }

    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint()], None)
            .await
            .unwrap()
    }

    /// Runs `etcdctl` (API v3) against this member.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        etcdctl_at(&self.endpoint(), args, None)
    }

    pub fn etcdctl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        etcdctl_at(&self.endpoint(), args, Some(stdin))
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Members of one cluster, each a `keel` process.
pub struct Cluster {
    pub members: Vec<Member>,
}

impl Cluster {
    /// Starts `n` members bootstrapping one cluster and waits until every one serves.
    pub async fn start(n: usize) -> Cluster {
        let cluster = Self::spawn_with(n, |_| Vec::new());
        for m in &cluster.members {
            m.wait_ready().await;
        }
        cluster
    }

    /// Spawns `n` members, member `i` with the extra flags `extra(i)`, without waiting for them.
    pub fn spawn_with(n: usize, extra: impl Fn(usize) -> Vec<String>) -> Cluster {
        let mut members: Vec<Member> = (0..n)
            .map(|i| {
                let flags = extra(i);
                let flags: Vec<&str> = flags.iter().map(|f| f.as_str()).collect();
                Member::new(&format!("m{i}"), &flags)
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.initial_cluster = Some(initial.clone());
            m.spawn();
        }
        Cluster { members }
    }

    /// A member that will join this cluster with --initial-cluster-state=existing (not started;
    /// add it with MemberAdd first, then `start_process`).
    pub fn joiner(&self, name: &str, extra: &[&str]) -> Member {
        let others: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect();
        Member::joining(name, &others, extra)
    }

    /// Every running member's endpoint.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.is_running())
            .map(|m| m.endpoint())
            .collect()
    }

    /// A client balancing over every running member.
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect(self.endpoints(), None)
            .await
            .unwrap()
    }

    /// The index of the member that leads, as the running members report it (waits for an
    /// election to settle).
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for (i, m) in self.members.iter().enumerate() {
                if !m.is_running() {
                    continue;
                }
                let Ok(mut c) = etcd_client::Client::connect([m.endpoint()], None).await else {
                    continue;
                };
                if let Ok(s) = c.status().await {
                    if s.leader() != 0 && s.leader() == s.header().map_or(0, |h| h.member_id()) {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader elected");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Adds a learner at `peer_url` (MemberAdd); its id.
pub async fn add_learner(c: &mut etcd_client::Client, peer_url: &str) -> u64 {
    let added = c
        .member_add(
            [peer_url],
            Some(etcd_client::MemberAddOptions::new().with_is_learner()),
        )
        .await
        .unwrap();
    added.member().unwrap().id()
}

/// Puts `key` = `value` and returns the revision the write got.
pub async fn put_revision(c: &mut etcd_client::Client, key: &str, value: &str) -> i64 {
    let r = c.put(key, value, None).await.unwrap();
    r.header().unwrap().revision()
}

/// A key-value with everything a client can see of it: key, value, create and mod revisions,
/// version, lease.
pub type FullKv = (Vec<u8>, Vec<u8>, i64, i64, i64, i64);

/// Every key-value of a range response, whole.
pub fn full_kvs(r: &etcd_client::GetResponse) -> Vec<FullKv> {
    r.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect()
}

/// A plain HTTP/1.1 GET (the client port also serves /metrics and /health): status and body.
pub async fn http_get(endpoint: &str, path: &str) -> (u16, String) {
    http(endpoint, "GET", path, "", None).await
}

/// A plain HTTP/1.1 POST of a JSON body (etcd's gateway): status and body.
pub async fn http_post(endpoint: &str, path: &str, body: &str) -> (u16, String) {
    http(endpoint, "POST", path, body, None).await
}

/// `http_post` with an auth token in the `Authorization` header.
pub async fn http_post_as(endpoint: &str, token: &str, path: &str, body: &str) -> (u16, String) {
    http(endpoint, "POST", path, body, Some(token)).await
}

async fn http(
    endpoint: &str,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(endpoint).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (code, body)
}

pub fn etcdctl_at(endpoint: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl must be installed (Debian package etcd-client)");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A ready gRPC client of `endpoint` for calls the etcd client cannot make (invented methods,
/// raw bytes).
pub async fn raw_grpc(endpoint: &str) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc
}

/// The gRPC status of an etcd-client error.
pub fn status(e: etcd_client::Error) -> (tonic::Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

/// Real etcd (Debian's etcd-server), single member.
pub struct Etcd {
    child: std::process::Child,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_etcd() -> Etcd {
    start_etcd_with(&[])
}

/// Real etcd with `extra` flags too.
pub fn start_etcd_with(extra: &[&str]) -> Etcd {
    let dir = tempfile::tempdir().unwrap();
    let (port, peer) = (free_port(), free_port());
    let endpoint = format!("127.0.0.1:{port}");
    let child = Command::new("etcd")
        .args(extra)
        .arg("--name=e")
        .arg(format!("--data-dir={}", dir.path().join("etcd").display()))
        .arg(format!("--listen-client-urls=http://{endpoint}"))
        .arg(format!("--advertise-client-urls=http://{endpoint}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
        ))
        .arg(format!("--initial-cluster=e=http://127.0.0.1:{peer}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd must be installed (Debian package etcd-server)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !etcdctl_at(&endpoint, &["put", "ready", "1"], None)
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "etcd did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Etcd {
        child,
        endpoint,
        _dir: dir,
    }
}

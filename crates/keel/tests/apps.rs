//! Real applications that use etcd's HTTP/JSON gateway, run against Keel as their users run them
//! (Debian's packages): OpenStack's etcd3gw refreshing a lease, and Patroni electing a PostgreSQL
//! leader with Keel as its DCS, then failing over when the leader dies. (Debian 12's tooz cannot
//! reach etcd3gw at all: it passes etcd3gw's `client()` an `api_path` it does not take.)

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{free_port, stderr, stdout, Member};

/// Debian's Python (etcd3gw and Patroni are its packages).
const PYTHON: &str = "/usr/bin/python3";

fn python(script: &str) -> std::process::Output {
    Command::new(PYTHON)
        .arg("-c")
        .arg(script)
        .output()
        .expect("python3 with python3-etcd3gw (Debian package)")
}

#[tokio::test]
async fn etcd3gw_grants_refreshes_and_revokes_a_lease() {
    let m = Member::start().await;
    let port = m.port;
    let out = python(&format!(
        r#"
from etcd3gw.client import Etcd3Client
# etcd 3.4 serves /v3 (and /v3beta), not etcd3gw's default /v3alpha.
c = Etcd3Client(host="127.0.0.1", port={port}, api_path="/v3/")
lease = c.lease(ttl=10)
assert c.put("k", "v", lease=lease)
assert [v for v in c.get("k")] == [b"v"], c.get("k")
ttl = lease.refresh()
assert ttl == 10, ttl
assert lease.ttl() <= 10
assert lease.keys() == [b"k"], lease.keys()
assert lease.revoke()
assert c.get("k") == []
assert c.status()["version"] == "3.4.23"
print("ok")
"#
    ));
    assert_eq!(stdout(&out).trim(), "ok", "{}", stderr(&out));
}

/// One Patroni node managing its own PostgreSQL, run as the `postgres` user (PostgreSQL refuses
/// to run as root).
struct PatroniNode {
    dir: std::path::PathBuf,
    api: u16,
    child: Option<Child>,
}

impl Drop for PatroniNode {
    fn drop(&mut self) {
        self.kill();
    }
}

impl PatroniNode {
    fn start(root: &Path, name: &str, etcd: &str) -> PatroniNode {
        let (api, pg) = (free_port(), free_port());
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            r#"scope: keel-test
name: {name}
restapi:
  listen: 127.0.0.1:{api}
  connect_address: 127.0.0.1:{api}
etcd3:
  hosts: {etcd}
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 5
    maximum_lag_on_failover: 1048576
  initdb:
  - encoding: UTF8
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: {data}
  bin_dir: /usr/lib/postgresql/15/bin
  pgpass: {dir}/pgpass
  authentication:
    replication:
      username: replicator
      password: rep-pass
    superuser:
      username: postgres
      password: super-pass
  parameters:
    unix_socket_directories: '{dir}'
"#,
            data = dir.join("data").display(),
            dir = dir.display(),
        );
        let file = dir.join("patroni.yml");
        std::fs::write(&file, config).unwrap();
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(root)
            .status()
            .unwrap();
        assert!(chown.success());
        let log = std::fs::File::create(dir.join("patroni.log")).unwrap();
        let child = Command::new("runuser")
            .args(["-u", "postgres", "--", "patroni"])
            .arg(&file)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("patroni and postgresql (Debian packages)");
        PatroniNode {
            dir,
            api,
            child: Some(child),
        }
    }

    /// The node's role as its REST API reports it (`master`/`primary`, `replica`), if it answers.
    fn role(&self) -> Option<String> {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "2"])
            .arg(format!("http://127.0.0.1:{}/patroni", self.api))
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["role"].as_str().map(str::to_string)
    }

    fn is_leader(&self) -> bool {
        matches!(self.role().as_deref(), Some("master" | "primary"))
    }

    /// Kills Patroni and the PostgreSQL it runs (as a machine that dies). `runuser` does not
    /// pass a kill on to its child: the processes are found by their paths.
    fn kill(&mut self) {
        for pattern in ["patroni.yml", "data"] {
            let _ = Command::new("pkill")
                .args(["-9", "-f"])
                .arg(self.dir.join(pattern))
                .status();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test]
async fn patroni_elects_a_postgres_leader_through_keel_and_fails_over() {
    let m = Member::start().await;
    let root = tempfile::tempdir().unwrap();
    let etcd = m.endpoint();
    let mut a = PatroniNode::start(root.path(), "pg-a", &etcd);
    wait_until("a first leader", Duration::from_secs(90), || a.is_leader());
    let b = PatroniNode::start(root.path(), "pg-b", &etcd);
    wait_until("a replica", Duration::from_secs(90), || {
        b.role().as_deref() == Some("replica")
    });
    // The leader key is in Keel, under Patroni's namespace.
    let leader = m.etcdctl(&["get", "/service/keel-test/leader", "--print-value-only"]);
    assert_eq!(stdout(&leader).trim(), "pg-a", "{}", stderr(&leader));
    // The leader's machine dies: its leader key's lease runs out and the replica takes over.
    a.kill();
    wait_until("the replica to take over", Duration::from_secs(60), || {
        b.is_leader()
    });
    let leader = m.etcdctl(&["get", "/service/keel-test/leader", "--print-value-only"]);
    assert_eq!(stdout(&leader).trim(), "pg-b");
}

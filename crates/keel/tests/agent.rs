//! The agent example (`examples/agent`) as an operator runs it: two agent processes (each with an
//! embedded member) and a plain `keel` member as the third vote. The first initializes the
//! cluster and leads; the second joins and observes; when the leader's process is killed, the
//! other takes over within the lease TTL; initializing again keeps the cluster's UID; a bad
//! configuration is refused naming its field.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{etcdctl_at, free_port};

const LEASE_TTL: u64 = 3;

/// The agent example, built by `cargo test` beside this test's own executable.
fn agent_binary() -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let dir = deps.parent().unwrap().parent().unwrap();
    dir.join("examples").join("agent")
}

struct Node {
    name: String,
    config: PathBuf,
    client: String,
    peer: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn new(root: &Path, name: &str) -> Node {
        let (client_port, peer_port) = (free_port(), free_port());
        let config = root.join(format!("{name}.yaml"));
        std::fs::write(
            &config,
            format!(
                "cluster_name: demo\nnode_name: {name}\nclient_port: {client_port}\npeer_port: {peer_port}\n\
                 pod_cidr: 10.244.0.0/16\nservice_cidr: 10.96.0.0/12\ndata_dir: {}\n\
                 backup_path: {}\nlease_ttl_seconds: {LEASE_TTL}\n",
                root.join(name).display(),
                root.join("backups").display()
            ),
        )
        .unwrap();
        Node {
            name: name.to_string(),
            config,
            client: format!("127.0.0.1:{client_port}"),
            peer: format!("http://127.0.0.1:{peer_port}"),
            log: root.join(format!("{name}.log")),
            child: None,
        }
    }

    fn run(&mut self, args: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(agent_binary())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("the agent example is built by cargo test");
        self.child = Some(child);
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the agent printed `line`; how long it took.
    fn wait_for(&self, line: &str, within: Duration) -> Duration {
        let started = Instant::now();
        while !self.output().lines().any(|l| l == line) {
            assert!(
                started.elapsed() < within,
                "{} never printed {line:?}:\n{}",
                self.name,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        started.elapsed()
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[test]
fn agents_elect_one_leader_and_take_over_when_it_dies() {
    let root = tempfile::tempdir().unwrap();
    let mut a = Node::new(root.path(), "node-a");
    let mut b = Node::new(root.path(), "node-b");
    a.run(&["init"]);
    a.wait_for("became leader: node-a", Duration::from_secs(30));
    let uid = a
        .output()
        .lines()
        .find_map(|l| l.strip_prefix("initialized cluster demo with uid "))
        .expect("init reports the new cluster's uid")
        .to_string();
    let stored = etcdctl_at(
        &a.client,
        &["get", "/keel/config/cluster_config", "--print-value-only"],
        None,
    );
    let stored = String::from_utf8_lossy(&stored.stdout).into_owned();
    assert!(
        stored.contains("\"pod_cidr\":\"10.244.0.0/16\"") && !stored.contains("node-a"),
        "{stored}"
    );

    // A third member (a plain keel process) keeps a quorum when one node dies.
    let witness_peer = format!("http://127.0.0.1:{}", free_port());
    let witness_client = format!("127.0.0.1:{}", free_port());
    let added = etcdctl_at(
        &a.client,
        &[
            "member",
            "add",
            "witness",
            &format!("--peer-urls={witness_peer}"),
        ],
        None,
    );
    assert!(added.status.success(), "{}", common::stderr(&added));
    let mut witness = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("--name=witness")
        .arg(format!(
            "--data-dir={}",
            root.path().join("witness").display()
        ))
        .arg(format!("--listen-client-urls=http://{witness_client}"))
        .arg(format!("--advertise-client-urls=http://{witness_client}"))
        .arg(format!("--listen-peer-urls={witness_peer}"))
        .arg(format!("--initial-advertise-peer-urls={witness_peer}"))
        .arg(format!(
            "--initial-cluster=node-a={},witness={witness_peer}",
            a.peer
        ))
        .arg("--initial-cluster-state=existing")
        .arg("--initial-cluster-token=demo")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(root.path().join("witness.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !etcdctl_at(&witness_client, &["get", "x"], None)
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "the witness did not join:\n{}\nnode-a:\n{}",
            std::fs::read_to_string(root.path().join("witness.log")).unwrap_or_default(),
            a.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    b.run(&["join", "--join", &a.client]);
    b.wait_for("observing leader node-a", Duration::from_secs(30));

    // The leader's process dies: node-b leads once node-a's lease has run out.
    a.kill9();
    // A new raft leader gives every lease its full TTL again (plus a second), as etcd's lessor
    // does, so the take-over comes after an election, the TTL and the expiry check: ~TTL + 2.5 s.
    let took = b.wait_for("became leader: node-b", Duration::from_secs(30));
    eprintln!("takeover took {took:?}");
    assert!(
        took <= Duration::from_secs(LEASE_TTL + 7),
        "took {took:?} (lease TTL {LEASE_TTL}s)"
    );

    // node-a comes back: the cluster keeps its UID, and node-b keeps leading.
    a.run(&["init"]);
    a.wait_for(
        &format!("cluster already initialized: uid {uid}"),
        Duration::from_secs(30),
    );
    a.wait_for("observing leader node-b", Duration::from_secs(30));
    let _ = witness.kill();
    let _ = witness.wait();
}

#[test]
fn a_bad_configuration_is_refused_naming_the_field() {
    let root = tempfile::tempdir().unwrap();
    let node = Node::new(root.path(), "node-x");
    let good = std::fs::read_to_string(&node.config).unwrap();
    for (bad, field) in [
        (good.replace("10.244.0.0/16", "10.244.0.0/33"), "pod_cidr"),
        (
            good.replace("10.96.0.0/12", "10.244.1.0/24"),
            "service_cidr",
        ),
        (
            good.replace("node_name: node-x", "node_name: Node_X"),
            "node_name",
        ),
        (
            good.replace("lease_ttl_seconds: 3", "lease_ttl_seconds: 0"),
            "lease_ttl_seconds",
        ),
        (format!("{good}colour: blue\n"), "colour"),
    ] {
        std::fs::write(&node.config, bad).unwrap();
        let out = Command::new(agent_binary())
            .args(["init", "--config"])
            .arg(&node.config)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(field), "{field}: {err}");
    }
}

/// Three agents, each joining as soon as the one before it observes the leader (a join that
/// comes while the previous member is still starting is retried, not refused); SIGTERM, as a
/// service manager stops a node, makes the leader resign, so another leads at once instead of
/// after the lease's TTL; and three voters fail over (two could not: a quorum of two is both).
#[test]
fn three_agents_join_back_to_back_and_sigterm_hands_leadership_over() {
    let root = tempfile::tempdir().unwrap();
    let mut a = Node::new(root.path(), "node-a");
    let mut b = Node::new(root.path(), "node-b");
    let mut c = Node::new(root.path(), "node-c");
    a.run(&["init"]);
    a.wait_for("became leader: node-a", Duration::from_secs(30));
    b.run(&["join", "--join", &a.client]);
    b.wait_for("observing leader node-a", Duration::from_secs(30));
    c.run(&["join", "--join", &a.client]);
    c.wait_for("observing leader node-a", Duration::from_secs(60));

    let pid = a.child.as_ref().unwrap().id();
    let signalled = Instant::now();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let took = loop {
        let led = [&b, &c]
            .iter()
            .any(|n| n.output().contains(&format!("became leader: {}", n.name)));
        if led {
            break signalled.elapsed();
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(20),
            "nobody took over:\nnode-b:\n{}\nnode-c:\n{}",
            b.output(),
            c.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("takeover after SIGTERM took {took:?}");
    // Well before the lease could run out (TTL + an election + the expiry check).
    assert!(
        took < Duration::from_secs(LEASE_TTL),
        "took {took:?}: the leader did not resign\nnode-a:\n{}",
        a.output()
    );
    let status = a.child.take().unwrap().wait().unwrap();
    assert!(status.success(), "{status}\n{}", a.output());
}

//! Snapshot files: `etcdctl snapshot save` against Keel, `keel snapshot restore` into a new data
//! dir, and a new member started from it with every key, revision and lease of the original.

mod common;

use std::process::Command;

use common::{stderr, stdout, Member};
use etcd_client::{GetOptions, PutOptions};

fn restore(file: &std::path::Path, m: &Member) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["snapshot", "restore"])
        .arg(file)
        .arg(format!("--name={}", m.name))
        .arg(format!("--data-dir={}", m.data_dir().display()))
        .arg(format!("--initial-cluster={}={}", m.name, m.peer_url()))
        .arg(format!("--initial-advertise-peer-urls={}", m.peer_url()))
        .arg("--initial-cluster-token=restored")
        .output()
        .unwrap()
}

#[tokio::test]
async fn etcdctl_snapshot_save_then_keel_restore_keeps_every_key_and_revision() {
    let src = Member::start().await;
    let mut c = src.client().await;
    for i in 0..100 {
        c.put(format!("k{i:03}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    c.put("k000", "again", None).await.unwrap();
    c.delete("k001", None).await.unwrap();
    let lease = c.lease_grant(600, None).await.unwrap().id();
    c.put("leased", "x", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let all = |r: etcd_client::GetResponse| common::full_kvs(&r);
    let before = all(c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap());
    let rev = c.status().await.unwrap().header().unwrap().revision();

    let file = src.dir.path().join("snap.db");
    let out = src.etcdctl(&["snapshot", "save", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Snapshot saved at"),
        "{}",
        stdout(&out)
    );

    // `keel snapshot save` writes the same kind of file.
    let own = src.dir.path().join("own.db");
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["snapshot", "save"])
        .arg(&own)
        .arg(format!("--endpoints={}", src.endpoint()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::metadata(&own).unwrap().len() % 512, 32);

    let mut fresh = Member::new("restored", &["--initial-cluster-token=restored"]);
    let out = restore(&file, &fresh);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fresh.start_process();
    fresh.wait_ready().await;
    let mut r = fresh.client().await;
    let after = all(r
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap());
    assert_eq!(after, before);
    assert_eq!(r.status().await.unwrap().header().unwrap().revision(), rev);
    // History too: k000's first value at its first revision.
    let old = r
        .get("k000", Some(GetOptions::new().with_revision(2)))
        .await
        .unwrap();
    assert_eq!(old.kvs()[0].value(), b"v0");
    // Leases came along, and the new cluster takes writes at the next revision.
    let ttl = r.lease_time_to_live(lease, None).await.unwrap();
    assert!(ttl.ttl() > 0);
    let put = r.put("new", "1", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), rev + 1);
    // A member of a different cluster: another id than the source's.
    assert_ne!(fresh.id().await, src.id().await);

    // A damaged file is refused; an existing data dir is never overwritten.
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    let damaged = src.dir.path().join("damaged.db");
    std::fs::write(&damaged, bytes).unwrap();
    let out = restore(&damaged, &Member::new("other", &[]));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("checksum mismatch"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = restore(&file, &fresh);
    assert!(!out.status.success());
}

/// The same history written to Keel and to real etcd: puts, an overwrite, a deletion, a
/// compaction, a lease with a key, users and roles, auth enabled last. Returns the lease.
async fn fill(c: &mut etcd_client::Client) -> i64 {
    for i in 0..50 {
        c.put(format!("k{i:03}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    c.put("k000", "again", None).await.unwrap();
    c.delete("k001", None).await.unwrap();
    c.compact(10, None).await.unwrap();
    let lease = c.lease_grant(600, None).await.unwrap().id();
    c.put("leased", "x", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    c.user_add("root", "rootpw", None).await.unwrap();
    c.user_grant_role("root", "root").await.unwrap();
    c.role_add("reader").await.unwrap();
    c.role_grant_permission(
        "reader",
        etcd_client::Permission::read("k").with_range_end("l"),
    )
    .await
    .unwrap();
    c.user_add("bob", "bobpw", None).await.unwrap();
    c.user_grant_role("bob", "reader").await.unwrap();
    c.auth_enable().await.unwrap();
    lease
}

async fn as_root(endpoint: &str) -> etcd_client::Client {
    let options = etcd_client::ConnectOptions::new().with_user("root", "rootpw");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let attempt = async {
            let mut c = etcd_client::Client::connect([endpoint], Some(options.clone())).await?;
            c.get("probe", None).await?;
            Ok::<_, etcd_client::Error>(c)
        };
        match attempt.await {
            Ok(c) => return c,
            Err(e) if std::time::Instant::now() > deadline => panic!("{endpoint}: {e}"),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}

/// What both sides must agree on after a migration.
#[derive(Debug, PartialEq)]
struct Seen {
    kvs: Vec<common::FullKv>,
    revision: i64,
    compacted: bool,
    lease_ttl: bool,
    bob_roles: Vec<String>,
    reader_perms: usize,
    auth: bool,
}

async fn seen(c: &mut etcd_client::Client, endpoint: &str, lease: i64) -> Seen {
    // Auth is on when a caller without a user is refused.
    let anonymous = etcd_client::Client::connect([endpoint], None)
        .await
        .unwrap()
        .get("k000", None)
        .await;
    let all = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    let old = c
        .get("k000", Some(GetOptions::new().with_revision(5)))
        .await;
    Seen {
        kvs: common::full_kvs(&all),
        revision: all.header().unwrap().revision(),
        compacted: old
            .err()
            .is_some_and(|e| e.to_string().contains("compacted")),
        lease_ttl: c.lease_time_to_live(lease, None).await.unwrap().ttl() > 0,
        bob_roles: c.user_get("bob").await.unwrap().roles().to_vec(),
        reader_perms: c.role_get("reader").await.unwrap().permissions().len(),
        auth: anonymous.is_err(),
    }
}

fn etcdctl_status(file: &std::path::Path) -> serde_json::Value {
    let out = Command::new("etcdctl")
        .args(["snapshot", "status", "-w", "json"])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn keel_status(file: &std::path::Path) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["snapshot", "status", "-w", "json"])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Real etcd on an existing data dir; killed when dropped.
struct EtcdOn(std::process::Child);

impl Drop for EtcdOn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn etcd_on(data_dir: &std::path::Path, name: &str, port: u16, peer: u16, extra: &[&str]) -> EtcdOn {
    let peer_url = format!("http://127.0.0.1:{peer}");
    let client = format!("http://127.0.0.1:{port}");
    EtcdOn(
        Command::new("etcd")
            .arg(format!("--name={name}"))
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster={name}={peer_url}"))
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("etcd (Debian's etcd-server)"),
    )
}

/// Migration out: a Keel snapshot is an etcd snapshot. etcdctl reports Keel's revision and the
/// hash `keel snapshot status` reports; `etcdctl snapshot restore` makes a data dir real etcd
/// boots, serving every key, revision, lease, user and role Keel had.
#[tokio::test]
async fn a_keel_snapshot_restores_into_real_etcd() {
    let src = Member::start().await;
    let lease = fill(&mut src.client().await).await;
    let mut c = as_root(&src.endpoint()).await;
    let before = seen(&mut c, &src.endpoint(), lease).await;

    let file = src.dir.path().join("keel.db");
    let out = src.etcdctl(&[
        "--user=root:rootpw",
        "snapshot",
        "save",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = etcdctl_status(&file);
    assert_eq!(status["revision"], before.revision, "{status}");
    assert_eq!(status, keel_status(&file));

    let target = tempfile::tempdir().unwrap();
    let data = target.path().join("etcd");
    let (port, peer) = (common::free_port(), common::free_port());
    let out = Command::new("etcdctl")
        .args(["snapshot", "restore"])
        .arg(&file)
        .arg(format!("--data-dir={}", data.display()))
        .arg("--name=e")
        .arg(format!("--initial-cluster=e=http://127.0.0.1:{peer}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let _etcd = etcd_on(&data, "e", port, peer, &[]);
    let mut e = as_root(&format!("127.0.0.1:{port}")).await;
    let after = seen(&mut e, &format!("127.0.0.1:{port}"), lease).await;
    assert_eq!(after, before);
    assert!(
        before.compacted && before.lease_ttl && before.auth,
        "{before:?}"
    );
    let put = e.put("written-in-etcd", "1", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), before.revision + 1);
}

/// Migration in: real etcd's snapshot, checked by `keel snapshot status` as etcdctl checks it and
/// restored by `keel snapshot restore`; Keel serves the same keys, revisions, leases, users and
/// roles, and takes writes. A damaged page (with a digest that matches it) and a bad digest are
/// refused, leaving no data dir behind.
#[tokio::test]
async fn a_real_etcd_snapshot_restores_into_keel() {
    let etcd = common::start_etcd();
    let lease = fill(
        &mut etcd_client::Client::connect([etcd.endpoint.as_str()], None)
            .await
            .unwrap(),
    )
    .await;
    let mut c = as_root(&etcd.endpoint).await;
    let before = seen(&mut c, &etcd.endpoint, lease).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("etcd.db");
    let out = common::etcdctl_at(
        &etcd.endpoint,
        &[
            "--user=root:rootpw",
            "snapshot",
            "save",
            file.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(keel_status(&file), etcdctl_status(&file));

    let mut fresh = Member::new("restored", &["--initial-cluster-token=restored"]);
    let out = restore(&file, &fresh);
    assert!(out.status.success(), "{}", stderr(&out));
    fresh.start_process();
    let mut k = as_root(&fresh.endpoint()).await;
    assert_eq!(seen(&mut k, &fresh.endpoint(), lease).await, before);
    let put = k.put("written-in-keel", "1", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), before.revision + 1);

    // Every page past the two meta pages overwritten, the digest made to match: the database
    // itself is refused. (One page alone may be a page etcd's freelist holds, which no reader
    // visits, so the whole tree is overwritten.)
    let mut bytes = std::fs::read(&file).unwrap();
    let body = bytes.len() - 32;
    for b in &mut bytes[2 * 4096..body] {
        *b = 0x5a;
    }
    let digest = {
        use sha2::Digest;
        sha2::Sha256::digest(&bytes[..body])
    };
    bytes[body..].copy_from_slice(&digest);
    let damaged = dir.path().join("damaged.db");
    std::fs::write(&damaged, &bytes).unwrap();
    let other = Member::new("other", &[]);
    let out = restore(&damaged, &other);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("invalid database"),
        "{}",
        stderr(&out)
    );
    assert!(
        !other.data_dir().exists(),
        "a failed restore left its data dir"
    );
    // A bad digest.
    bytes[body] ^= 1;
    std::fs::write(&damaged, &bytes).unwrap();
    let out = restore(&damaged, &other);
    assert!(
        stderr(&out).contains("checksum mismatch"),
        "{}",
        stderr(&out)
    );
    assert!(!other.data_dir().exists());
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["snapshot", "status"])
        .arg(&damaged)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Every file under `dir` with its contents, to show a tree was left untouched.
fn tree(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(tree(&path));
        } else {
            files.push((
                path.strip_prefix(dir).unwrap().to_path_buf(),
                std::fs::read(&path).unwrap(),
            ));
        }
    }
    files.sort();
    files
}

/// Migration in without a snapshot: Keel started on a stopped etcd member's own data dir. etcd
/// is killed with its last writes only in its WAL (its backend commits once an hour, and at its
/// raft snapshots every 20 entries); Keel imports the backend, replays the WAL's entries past
/// it, keeps the member and cluster ids, serves the same keys, revisions, leases, users and
/// roles, takes writes, and keeps etcd's files aside untouched. A damaged WAL is refused and
/// leaves etcd's data dir as it was.
#[tokio::test]
async fn keel_starts_on_a_stopped_etcd_members_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (port, peer) = (common::free_port(), common::free_port());
    let endpoint = format!("127.0.0.1:{port}");
    let mut etcd = etcd_on(
        &data,
        "m",
        port,
        peer,
        &[
            "--snapshot-count=20",
            "--backend-batch-interval=1h",
            "--backend-batch-limit=1000000",
        ],
    );
    let lease = fill(&mut as_client(&endpoint).await).await;
    let mut c = as_root(&endpoint).await;
    let before = seen(&mut c, &endpoint, lease).await;
    let ids = {
        let r = c.member_list().await.unwrap();
        (r.header().unwrap().cluster_id(), r.members()[0].id())
    };
    drop(c);
    etcd.0.kill().unwrap(); // SIGKILL: nothing flushed on the way out
    etcd.0.wait().unwrap();
    let etcd_files = tree(&data.join("member"));
    let copy = dir.path().join("copy");
    assert!(Command::new("cp")
        .arg("-a")
        .arg(&data)
        .arg(&copy)
        .status()
        .unwrap()
        .success());

    let flags = |data: &std::path::Path| {
        vec![
            "--name=m".to_string(),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls=http://{endpoint}"),
            format!("--advertise-client-urls=http://{endpoint}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-cluster=m=http://127.0.0.1:{peer}"),
        ]
    };
    let mut keel = common::proc::Proc::start(&flags(&data), &[]);
    keel.wait_ready();
    let log = keel.log();
    let line = log
        .lines()
        .find(|l| l.contains("imported an etcd data dir"))
        .unwrap_or_else(|| panic!("no import logged:\n{log}"));
    let line: serde_json::Value = serde_json::from_str(line).unwrap();
    assert!(line["entries_to_replay"].as_u64().unwrap() > 0, "{line}");
    let mut k = as_root(&endpoint).await;
    assert_eq!(seen(&mut k, &endpoint, lease).await, before);
    let r = k.member_list().await.unwrap();
    assert_eq!((r.header().unwrap().cluster_id(), r.members()[0].id()), ids);
    let put = k.put("written-in-keel", "1", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), before.revision + 1);
    assert_eq!(tree(&data.join("member.etcd")), etcd_files);

    // Restarted, Keel is on its own data: nothing is imported again.
    keel.stop();
    let mut keel = common::proc::Proc::start(&flags(&data), &[]);
    keel.wait_ready();
    assert!(!keel.log().contains("imported an etcd data dir"));
    let mut k = as_root(&endpoint).await;
    let got = k.get("written-in-keel", None).await.unwrap();
    assert_eq!(got.kvs().len(), 1);
    keel.stop();

    // A byte flipped inside the WAL's records: refused, etcd's files back where etcd reads them.
    let wal = std::fs::read_dir(copy.join("member/wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "wal"))
        .unwrap();
    let mut bytes = std::fs::read(&wal).unwrap();
    bytes[300] ^= 0x40;
    std::fs::write(&wal, &bytes).unwrap();
    let damaged = tree(&copy.join("member"));
    let mut keel = common::proc::Proc::start(&flags(&copy), &[]);
    assert_ne!(keel.wait_exit(std::time::Duration::from_secs(20)), Some(0));
    assert!(
        keel.log().contains("importing etcd's data dir"),
        "{}",
        keel.log()
    );
    assert!(keel.log().contains("CRC mismatch"), "{}", keel.log());
    assert_eq!(tree(&copy.join("member")), damaged);
    assert!(!copy.join("member.etcd").exists() && !copy.join("member.import").exists());
}

async fn as_client(endpoint: &str) -> etcd_client::Client {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Ok(mut c) = etcd_client::Client::connect([endpoint], None).await {
            if c.get("probe", None).await.is_ok() {
                return c;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{endpoint} never answered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A whole etcd cluster moved in place: three etcd members killed, `keel` started on each data
/// dir with that member's flags. Indexes, terms and ids are kept, so the three form the same
/// cluster again, each member serves every write etcd acknowledged, and a new write is
/// replicated to all. etcd has taken no raft snapshot here, so the members come from the conf
/// changes in its WAL alone (the single-member test above has them from a snapshot file).
#[tokio::test]
async fn an_etcd_cluster_moves_to_keel_member_by_member() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| (common::free_port(), common::free_port()))
        .collect();
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let flags = |i: usize| {
        let (c, p) = ports[i];
        vec![
            format!("--name=m{i}"),
            format!("--data-dir={}", dir.path().join(format!("m{i}")).display()),
            format!("--listen-client-urls=http://127.0.0.1:{c}"),
            format!("--advertise-client-urls=http://127.0.0.1:{c}"),
            format!("--listen-peer-urls=http://127.0.0.1:{p}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{p}"),
            format!("--initial-cluster={initial}"),
        ]
    };
    let endpoint = |i: usize| format!("127.0.0.1:{}", ports[i].0);
    let mut etcds: Vec<EtcdOn> = (0..3)
        .map(|i| {
            EtcdOn(
                Command::new("etcd")
                    .args(flags(i))
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let mut c = as_client(&endpoint(0)).await;
    for i in 0..40 {
        c.put(format!("k{i:02}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    let last = c.put("last", "x", None).await.unwrap();
    let revision = last.header().unwrap().revision();
    let cluster_id = last.header().unwrap().cluster_id();
    drop(c);
    for e in &mut etcds {
        e.0.kill().unwrap();
        e.0.wait().unwrap();
    }

    let mut keels: Vec<common::proc::Proc> = (0..3)
        .map(|i| common::proc::Proc::start(&flags(i), &[]))
        .collect();
    for k in &mut keels {
        k.wait_log("imported an etcd data dir");
    }
    let mut c = as_client(&endpoint(0)).await;
    let put = c.put("after", "1", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), revision + 1);
    assert_eq!(put.header().unwrap().cluster_id(), cluster_id);
    assert_eq!(c.member_list().await.unwrap().members().len(), 3);
    for i in 0..3 {
        let mut c = as_client(&endpoint(i)).await;
        let all = c
            .get("", Some(GetOptions::new().with_all_keys()))
            .await
            .unwrap();
        assert_eq!(all.kvs().len(), 42, "member {i}");
        assert_eq!(all.header().unwrap().revision(), revision + 1, "member {i}");
    }
}

//! Embedding: a member started inside the test's own runtime, and the `StateStore` API over it
//! (in-process) and over gRPC endpoints — a `keel` process and real etcd 3.4 — with the same
//! checks, so the API is proven portable.

mod common;

use std::time::{Duration, Instant};

use common::{etcdctl_at, free_port, start_etcd, stdout, Member as Process};
use futures::StreamExt;
use keel::{
    ClusterState, Compare, CompareOp, CompareTarget, EventKind, Keys, Member, Op, RemoteStore,
    ServerConfig, StateStore, StoreError,
};

fn config(dir: &std::path::Path, port: u16, peer: u16) -> ServerConfig {
    let client = format!("http://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{peer}");
    ServerConfig {
        name: "embedded".into(),
        data_dir: dir.join("data"),
        listen_client_urls: vec![client.clone()],
        advertise_client_urls: vec![client],
        listen_peer_urls: vec![peer.clone()],
        initial_advertise_peer_urls: vec![peer.clone()],
        initial_cluster: vec![("embedded".into(), vec![peer])],
        initial_cluster_state: ClusterState::New,
        ..Default::default()
    }
}

/// What every backend must do alike. Keys live under `ns`.
async fn conformance(store: &impl StateStore, ns: &str, endpoint: &str) {
    let k = |s: &str| format!("{ns}/{s}").into_bytes();
    assert_eq!(store.get(&k("a")).await.unwrap(), None);
    let rev = store.put(&k("a"), b"1").await.unwrap();
    let a = store.get(&k("a")).await.unwrap().unwrap();
    assert_eq!((a.value.as_slice(), a.version), (&b"1"[..], rev));
    store.put(&k("b"), b"2").await.unwrap();
    store
        .put(&format!("{ns}x").into_bytes(), b"outside")
        .await
        .unwrap();
    let listed: Vec<Vec<u8>> = store
        .list(format!("{ns}/").as_bytes())
        .await
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(listed, vec![k("a"), k("b")]);

    // Transactions: the version compare holds only for the version read.
    let put_c = vec![Op::Put(k("c"), b"3".to_vec())];
    let stale = vec![Compare::Version(k("a"), rev - 1)];
    assert!(!store
        .transaction(stale, put_c.clone(), vec![])
        .await
        .unwrap());
    let current = vec![Compare::Version(k("a"), rev), Compare::Absent(k("c"))];
    assert!(store.transaction(current, put_c, vec![]).await.unwrap());
    let checks = vec![
        Compare::Value(k("c"), b"3".to_vec()),
        Compare::Exists(k("b")),
    ];
    let ops = vec![Op::Delete(k("b"))];
    assert!(store.transaction(checks, ops, vec![]).await.unwrap());
    assert_eq!(store.get(&k("b")).await.unwrap(), None);
    assert!(matches!(
        store.delete(&k("b")).await,
        Err(StoreError::NotFound)
    ));
    transaction_compares(store, &format!("{ns}-txn")).await;

    // A watch from a past revision replays, with previous values, then follows.
    let mut events = store
        .watch(Keys::Prefix(format!("{ns}/").into_bytes()), rev)
        .await
        .unwrap();
    let first = events.next().await.unwrap().unwrap();
    assert_eq!((first.kind, first.kv.key.clone()), (EventKind::Put, k("a")));
    store.delete(&k("a")).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let e = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("watch stalled")
            .unwrap()
            .unwrap();
        seen.push((e.kind, e.kv.key.clone(), e.prev_kv.map(|p| p.value)));
    }
    assert_eq!(
        seen,
        vec![
            (EventKind::Put, k("b"), None),
            (EventKind::Put, k("c"), None),
            (EventKind::Delete, k("b"), Some(b"2".to_vec())),
            (EventKind::Delete, k("a"), Some(b"1".to_vec())),
        ]
    );

    // History compacted away is a typed error.
    let now = store.put(&k("z"), b"z").await.unwrap();
    let out = etcdctl_at(endpoint, &["compact", &now.to_string()], None);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let mut old = store.watch(Keys::Key(k("a")), 1).await.unwrap();
    match old.next().await {
        Some(Err(StoreError::Compacted(at))) => assert!(at >= now, "{at}"),
        other => panic!("expected Compacted, got {other:?}"),
    }
}

/// Every compare of etcd's (writes, create and mod revision, value, lease; =, !=, <, >), each
/// taking the success branch when it holds and the failure branch when not.
async fn transaction_compares(store: &impl StateStore, ns: &str) {
    use CompareTarget::*;
    let t = format!("{ns}/t").into_bytes();
    let first = store.put(&t, b"m").await.unwrap();
    let last = store.put(&t, b"m").await.unwrap();
    let kv = store.get(&t).await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.version, kv.writes, kv.lease),
        (first, last, 2, 0)
    );
    let cases: Vec<(CompareOp, CompareTarget, bool)> = vec![
        (CompareOp::Equal, Writes(2), true),
        (CompareOp::Equal, Writes(1), false),
        (CompareOp::NotEqual, Writes(1), true),
        (CompareOp::Greater, Writes(1), true),
        (CompareOp::Less, Writes(2), false),
        (CompareOp::Equal, CreateRevision(first), true),
        (CompareOp::Less, CreateRevision(first), false),
        (CompareOp::Greater, CreateRevision(first - 1), true),
        (CompareOp::Equal, ModRevision(last), true),
        (CompareOp::NotEqual, ModRevision(last), false),
        (CompareOp::Less, ModRevision(last + 1), true),
        (CompareOp::Equal, Value(b"m".to_vec()), true),
        (CompareOp::Less, Value(b"n".to_vec()), true),
        (CompareOp::Greater, Value(b"n".to_vec()), false),
        (CompareOp::NotEqual, Value(b"m".to_vec()), false),
        (CompareOp::Equal, Lease(0), true),
        (CompareOp::Greater, Lease(0), false),
    ];
    let branch = |name: &str| vec![Op::Put(format!("{ns}/branch").into_bytes(), name.into())];
    for (op, target, holds) in cases {
        let check = Compare::check(t.clone(), op, target.clone());
        let took = store
            .transaction(vec![check], branch("success"), branch("failure"))
            .await
            .unwrap();
        let written = store
            .get(format!("{ns}/branch").as_bytes())
            .await
            .unwrap()
            .unwrap()
            .value;
        let want: &[u8] = if holds { b"success" } else { b"failure" };
        assert_eq!(
            (took, written.as_slice()),
            (holds, want),
            "{op:?} {target:?}"
        );
    }
    // A missing key: writes and revisions 0; no value compares true.
    let missing = format!("{ns}/missing").into_bytes();
    for (target, holds) in [
        (Writes(0), true),
        (ModRevision(0), true),
        (Value(vec![]), false),
    ] {
        let check = Compare::check(missing.clone(), CompareOp::Equal, target.clone());
        let took = store
            .transaction(vec![check], vec![], vec![])
            .await
            .unwrap();
        assert_eq!(took, holds, "missing key, {target:?}");
    }
    store.delete(&t).await.unwrap();
    store
        .delete(format!("{ns}/branch").as_bytes())
        .await
        .unwrap();
}

/// Elections: one leader at a time, the next takes over when it resigns, observers see both.
async fn elections(a: &impl StateStore, b: &(impl StateStore + Clone + 'static)) {
    assert_eq!(a.leader().await.unwrap(), None);
    let lead_a = a.campaign("node-a", Duration::from_secs(5)).await.unwrap();
    assert_eq!(a.leader().await.unwrap().as_deref(), Some("node-a"));
    let mut observed = b.observe().await.unwrap();
    assert_eq!(observed.next().await.unwrap().unwrap(), "node-a");
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move { b.campaign("node-b", Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "two leaders at once");
    assert!(!lead_a.is_lost());
    let lost = lead_a.lost();
    lead_a.resign().await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), lost)
        .await
        .expect("resigning ends leadership");
    let lead_b = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the next candidate leads")
        .unwrap()
        .unwrap();
    assert_eq!(lead_b.candidate(), "node-b");
    assert_eq!(observed.next().await.unwrap().unwrap(), "node-b");
    assert_eq!(b.leader().await.unwrap().as_deref(), Some("node-b"));
    lead_b.resign().await.unwrap();
    // A leadership dropped without resigning is given up too.
    let dropped = a.campaign("node-c", Duration::from_secs(5)).await.unwrap();
    assert_eq!(a.leader().await.unwrap().as_deref(), Some("node-c"));
    drop(dropped);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while a.leader().await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "a dropped leadership kept leading"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A campaign given up while it waits (a timeout around it) never leads: its lease is no longer
/// kept alive but revoked, so the next candidate leads as soon as the leader resigns.
async fn cancelled_campaigns(a: &impl StateStore, b: &impl StateStore, endpoint: &str) {
    let holder = a.campaign("holder", Duration::from_secs(5)).await.unwrap();
    let gave_up = tokio::time::timeout(
        Duration::from_secs(1),
        b.campaign("quitter", Duration::from_secs(5)),
    )
    .await;
    assert!(gave_up.is_err(), "the campaign won while another led");
    holder.resign().await.unwrap();
    // Sooner than the quitter's lease could expire by itself.
    let next = tokio::time::timeout(
        Duration::from_secs(3),
        b.campaign("next", Duration::from_secs(5)),
    )
    .await
    .expect("an abandoned campaign holds the election")
    .unwrap();
    assert_eq!(b.leader().await.unwrap().as_deref(), Some("next"));
    assert!(!next.is_lost());
    // No lease is left kept alive for the abandoned campaign: only the leader's remains.
    let mut c = etcd_client::Client::connect([endpoint], None)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let leases = c.leases().await.unwrap().leases().len();
        if leases == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{leases} leases: the abandoned campaign's is still kept alive"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    next.resign().await.unwrap();
}

/// etcd's Election and Lock services delete the key of a call that is cancelled while it waits
/// (its lease still alive): no ghost contender leads or holds the lock later.
async fn cancelled_calls_leave_no_contender(endpoint: &str) {
    let mut c = etcd_client::Client::connect([endpoint], None)
        .await
        .unwrap();
    let holder = c.lease_grant(60, None).await.unwrap().id();
    let quitter = c.lease_grant(60, None).await.unwrap().id();
    let lead = c.campaign("cancelled", "holder", holder).await.unwrap();
    let leader = lead.leader().unwrap().clone();
    let gave_up = tokio::time::timeout(
        Duration::from_secs(1),
        c.clone().campaign("cancelled", "quitter", quitter),
    )
    .await;
    assert!(gave_up.is_err(), "the campaign won while another led");
    let lock = etcd_client::LockOptions::new().with_lease(holder);
    let locked = c.lock("cancelled-lock", Some(lock)).await.unwrap();
    let gave_up = tokio::time::timeout(
        Duration::from_secs(1),
        c.clone().lock(
            "cancelled-lock",
            Some(etcd_client::LockOptions::new().with_lease(quitter)),
        ),
    )
    .await;
    assert!(gave_up.is_err(), "the lock was taken twice");
    let deadline = Instant::now() + Duration::from_secs(5);
    for prefix in ["cancelled/", "cancelled-lock/"] {
        loop {
            let keys = c
                .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
                .await
                .unwrap();
            if keys.kvs().len() == 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the cancelled contender's key stayed: {:?}",
                keys.kvs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    c.resign(Some(etcd_client::ResignOptions::new().with_leader(leader)))
        .await
        .unwrap();
    c.unlock(locked.key()).await.unwrap();
    assert!(c.leader("cancelled").await.is_err(), "a ghost leads");
    c.lease_revoke(holder).await.unwrap();
    c.lease_revoke(quitter).await.unwrap();
}

/// `close` ends a store's background work: its leadership is resigned (another store sees no
/// leader at once), its watches end, and its calls are refused.
async fn closing(store: &impl StateStore, other: &impl StateStore) {
    let lead = store
        .campaign("closer", Duration::from_secs(5))
        .await
        .unwrap();
    let mut watch = store
        .watch(Keys::Prefix(b"/closing".to_vec()), 0)
        .await
        .unwrap();
    store.close().await;
    assert!(lead.is_lost());
    assert_eq!(other.leader().await.unwrap(), None);
    match tokio::time::timeout(Duration::from_secs(2), watch.next()).await {
        Ok(Some(Err(StoreError::Unavailable(_)))) => {}
        other => panic!("the watch outlived close: {other:?}"),
    }
    assert!(matches!(
        store.put(b"/closing/x", b"1").await,
        Err(StoreError::Unavailable(_))
    ));
}

// Multi-threaded: the member serves on the test's runtime while etcdctl blocks a thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_member_serves_the_store_in_process_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let (port, peer) = (free_port(), free_port());
    let cfg = config(dir.path(), port, peer);
    let member = Member::start(cfg.clone()).await.unwrap();
    member.ready(Duration::from_secs(20)).await.unwrap();
    assert!(member.is_leader());
    let store = member.client();
    let endpoint = format!("127.0.0.1:{port}");
    conformance(&store, "/embedded", &endpoint).await;
    elections(&store, &store.clone().with_election("keel/leader")).await;
    cancelled_campaigns(&store, &store.clone(), &endpoint).await;
    cancelled_calls_leave_no_contender(&endpoint).await;
    closing(&member.client(), &store).await;
    // It also serves its client URL, to etcdctl.
    store.put(b"kept", b"across restarts").await.unwrap();
    let out = etcdctl_at(&endpoint, &["get", "kept", "--print-value-only"], None);
    assert_eq!(stdout(&out), "across restarts\n");
    // The data dir is free again once the member and the clients it handed out are gone.
    drop(store);
    member.shutdown().await.unwrap();

    let member = Member::start(cfg).await.unwrap();
    member.ready(Duration::from_secs(20)).await.unwrap();
    let kv = member.client().get(b"kept").await.unwrap().unwrap();
    assert_eq!(kv.value, b"across restarts");
    member.shutdown().await.unwrap();
}

/// The embedding API's replication view: an embedded leader sees a `keel` process learner go
/// from connecting to ready (with the index it applied), and to disconnected once killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_leader_reports_each_replicas_state() {
    use keel::{ReplicaRole, ReplicaState};
    let dir = tempfile::tempdir().unwrap();
    let (port, peer) = (free_port(), free_port());
    let member = Member::start(config(dir.path(), port, peer)).await.unwrap();
    member.ready(Duration::from_secs(20)).await.unwrap();
    let store = member.client();
    for i in 0..50 {
        store.put(format!("r/{i}").as_bytes(), b"v").await.unwrap();
    }
    let mut learner = Process::joining(
        "learner",
        &[format!("embedded=http://127.0.0.1:{peer}")],
        &[],
    );
    let endpoint = format!("127.0.0.1:{port}");
    let mut c = etcd_client::Client::connect([endpoint.as_str()], None)
        .await
        .unwrap();
    let id = common::add_learner(&mut c, &learner.peer_url()).await;
    let state_of = |r: &keel::ClusterReplication| r.members.iter().find(|m| m.id == id).cloned();
    let r = member.replication().await.unwrap();
    let me = r
        .members
        .iter()
        .find(|m| m.role == ReplicaRole::Leader)
        .unwrap();
    assert_eq!(me.state, ReplicaState::Ready);
    assert!(me.applied_index.unwrap() >= 50);
    let joining = state_of(&r).unwrap();
    assert_eq!(
        (joining.role, joining.state),
        (ReplicaRole::Learner, ReplicaState::Connecting)
    );

    learner.start_process();
    let wait_for = |want: ReplicaState| {
        let member = &member;
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let r = member.replication().await.unwrap();
                let m = state_of(&r).unwrap();
                if m.state == want && (want != ReplicaState::Ready || m.applied_index.is_some()) {
                    return m;
                }
                assert!(Instant::now() < deadline, "never {want:?}: {m:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let ready = wait_for(ReplicaState::Ready).await;
    assert!(ready.active && ready.matched_index >= 50, "{ready:?}");
    learner.kill9();
    let gone = wait_for(ReplicaState::Disconnected).await;
    assert!(gone.reason.contains("election timeout"), "{gone:?}");
    drop(store);
    member.shutdown().await.unwrap();
}

#[tokio::test]
async fn remote_store_over_a_keel_process() {
    let m = Process::start().await;
    let store = RemoteStore::connect(&[m.endpoint()]).await.unwrap();
    conformance(&store, "/remote", &m.endpoint()).await;
    let other = RemoteStore::connect(&[m.endpoint()]).await.unwrap();
    elections(&store, &other).await;
    cancelled_campaigns(&store, &other, &m.endpoint()).await;
    cancelled_calls_leave_no_contender(&m.endpoint()).await;
    closing(&store, &other).await;
}

#[tokio::test]
async fn leadership_is_lost_when_its_member_dies() {
    let mut m = Process::start().await;
    let store = RemoteStore::connect(&[m.endpoint()]).await.unwrap();
    let lead = store
        .campaign("doomed", Duration::from_secs(2))
        .await
        .unwrap();
    let lost = lead.lost();
    m.kill9();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), lost)
        .await
        .expect("leadership outlived its member");
    assert!(started.elapsed() <= Duration::from_secs(4));
    assert!(lead.is_lost());
    assert!(matches!(
        store.get(b"x").await,
        Err(StoreError::Unavailable(_))
    ));
}

#[tokio::test]
async fn remote_store_over_real_etcd() {
    let etcd = start_etcd();
    let store = RemoteStore::connect(std::slice::from_ref(&etcd.endpoint))
        .await
        .unwrap();
    conformance(&store, "/etcd", &etcd.endpoint).await;
    let other = RemoteStore::connect(std::slice::from_ref(&etcd.endpoint))
        .await
        .unwrap();
    elections(&store, &other).await;
    cancelled_campaigns(&store, &other, &etcd.endpoint).await;
    cancelled_calls_leave_no_contender(&etcd.endpoint).await;
    closing(&store, &other).await;
}

/// Clients that keep idle streams open across a shutdown — a gRPC watch (etcdctl), an HTTP/JSON
/// watch (curl), a keep-alive stream — do not keep the member's store open: the same process
/// starts a member on the same data dir right after, and the clients see their streams end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_do_not_outlive_the_member() {
    let dir = tempfile::tempdir().unwrap();
    let (port, peer) = (free_port(), free_port());
    let cfg = config(dir.path(), port, peer);
    let member = Member::start(cfg.clone()).await.unwrap();
    member.ready(Duration::from_secs(20)).await.unwrap();
    let endpoint = format!("127.0.0.1:{port}");
    let mut grpc_watch = std::process::Command::new("etcdctl")
        .args(["--endpoints", &endpoint, "watch", "/idle"])
        .env("ETCDCTL_API", "3")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut http_watch = std::process::Command::new("curl")
        .args([
            "-sN",
            &format!("http://{endpoint}/v3/watch"),
            "-d",
            r#"{"create_request": {"key": "L2lkbGU="}}"#,
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lease = etcdctl_at(&endpoint, &["lease", "grant", "60"], None);
    let id = stdout(&lease)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    let mut keep_alive = std::process::Command::new("etcdctl")
        .args(["--endpoints", &endpoint, "lease", "keep-alive", &id])
        .env("ETCDCTL_API", "3")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Every stream is open (and idle) before the member stops.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (what, child) in [
        ("grpc watch", &mut grpc_watch),
        ("http watch", &mut http_watch),
        ("keep-alive", &mut keep_alive),
    ] {
        assert!(child.try_wait().unwrap().is_none(), "{what} ended early");
    }
    member.shutdown().await.unwrap();
    let member = Member::start(cfg)
        .await
        .expect("the data dir is free again");
    member.ready(Duration::from_secs(20)).await.unwrap();
    // The HTTP watch's response ended with the member that served it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_watch.try_wait().unwrap().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        http_watch.try_wait().unwrap().is_some(),
        "curl's watch still open"
    );
    for child in [&mut grpc_watch, &mut keep_alive] {
        let _ = child.kill();
        let _ = child.wait();
    }
    member.shutdown().await.unwrap();
}

//! Embedding: a member started inside the test's own runtime, and the `StateStore` API over it
//! (in-process) and over gRPC endpoints — a `keel` process and real etcd 3.4 — with the same
//! checks, so the API is proven portable.

mod common;

use std::time::{Duration, Instant};

use common::{etcdctl_at, free_port, start_etcd, stdout, Member as Process};
use futures::StreamExt;
use keel::{
    ClusterState, Compare, EventKind, Keys, Member, Op, RemoteStore, ServerConfig, StateStore,
    StoreError,
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

#[tokio::test]
async fn remote_store_over_a_keel_process() {
    let m = Process::start().await;
    let store = RemoteStore::connect(&[m.endpoint()]).await.unwrap();
    conformance(&store, "/remote", &m.endpoint()).await;
    let other = RemoteStore::connect(&[m.endpoint()]).await.unwrap();
    elections(&store, &other).await;
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
}

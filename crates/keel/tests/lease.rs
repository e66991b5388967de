//! Leases through `etcdctl` and the `etcd-client` crate against a real `keel` process: grant, keys
//! attached, keep-alive, time-to-live, revoke, expiry (seen by a watcher), and restarts.

mod common;

use std::time::{Duration, Instant};

use common::{status, stderr, stdout, Member};
use etcd_client::{
    EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, TxnOp,
};

/// The lease id in etcdctl's "lease 694d... granted with TTL(5s)".
fn granted_id(out: &str) -> String {
    out.split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no lease id in {out:?}"))
        .to_string()
}

#[tokio::test]
async fn etcdctl_lease_grant_attach_timetolive_keepalive_revoke() {
    let m = Member::start().await;
    let out = m.etcdctl(&["lease", "grant", "60"]);
    assert!(stdout(&out).contains("granted with TTL(60s)"), "{out:?}");
    let id = granted_id(&stdout(&out));

    assert!(m
        .etcdctl(&["put", "--lease", &id, "held/a", "1"])
        .status
        .success());
    assert!(m
        .etcdctl(&["put", "--lease", &id, "held/b", "2"])
        .status
        .success());
    let ttl = stdout(&m.etcdctl(&["lease", "timetolive", "--keys", &id]));
    assert!(ttl.contains("granted with TTL(60s)"), "{ttl}");
    assert!(ttl.contains("attached keys([held/a held/b])"), "{ttl}");

    let list = stdout(&m.etcdctl(&["lease", "list"]));
    assert!(
        list.contains("found 1 leases") && list.contains(&id),
        "{list}"
    );

    let ka = stdout(&m.etcdctl(&["lease", "keep-alive", "--once", &id]));
    assert!(
        ka.contains(&format!("lease {id} keepalived with TTL(60)")),
        "{ka}"
    );

    let revoked = m.etcdctl(&["lease", "revoke", &id]);
    assert!(stdout(&revoked).contains("revoked"), "{revoked:?}");
    assert_eq!(
        stdout(&m.etcdctl(&["get", "held/", "--prefix", "--keys-only"])).trim(),
        ""
    );
    let ttl = stdout(&m.etcdctl(&["lease", "timetolive", &id]));
    assert!(ttl.contains("already expired"), "{ttl}");
    let again = m.etcdctl(&["lease", "revoke", &id]);
    assert!(
        stderr(&again).contains("requested lease not found"),
        "{again:?}"
    );
}

#[tokio::test]
async fn grant_rules_match_etcd() {
    let m = Member::start().await;
    let mut c = m.client().await;
    // Below the minimum TTL: raised to it (2 s with etcd's default timing).
    let short = c.lease_grant(1, None).await.unwrap();
    assert_eq!(short.ttl(), 2);
    assert!(short.id() > 0);
    // Client-chosen id; the same id twice is refused.
    let mine = c
        .lease_grant(30, Some(LeaseGrantOptions::new().with_id(4242)))
        .await
        .unwrap();
    assert_eq!((mine.id(), mine.ttl()), (4242, 30));
    let dup = c
        .lease_grant(30, Some(LeaseGrantOptions::new().with_id(4242)))
        .await
        .unwrap_err();
    assert_eq!(
        status(dup),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: lease already exists".into()
        )
    );
    let huge = c.lease_grant(9_000_000_001, None).await.unwrap_err();
    assert_eq!(
        status(huge),
        (
            tonic::Code::OutOfRange,
            "etcdserver: too large lease TTL".into()
        )
    );
    // A put naming a lease that does not exist changes nothing.
    let rev = c.get("x", None).await.unwrap().header().unwrap().revision();
    let err = c
        .put("x", "v", Some(PutOptions::new().with_lease(777)))
        .await
        .unwrap_err();
    assert_eq!(
        status(err),
        (
            tonic::Code::NotFound,
            "etcdserver: requested lease not found".into()
        )
    );
    let after = c.get("x", None).await.unwrap();
    assert_eq!(after.header().unwrap().revision(), rev);
    assert!(after.kvs().is_empty());
    // Unknown lease: time-to-live answers TTL -1, keep-alive TTL 0 (which the client reports as
    // "lease not found").
    let ttl = c.lease_time_to_live(99, None).await.unwrap();
    assert_eq!(ttl.ttl(), -1);
    let err = c.lease_keep_alive(99).await.unwrap_err();
    assert!(err.to_string().contains("lease not found"), "{err}");
}

#[tokio::test]
async fn expired_lease_deletes_its_keys_in_one_revision_and_watchers_see_it() {
    let m = Member::start().await;
    let mut c = m.client().await;
    let lease = c.lease_grant(2, None).await.unwrap().id();
    let opts = || Some(PutOptions::new().with_lease(lease));
    c.put("exp/a", "1", opts()).await.unwrap();
    // A txn put attaches too; a re-put without the lease detaches.
    c.txn(etcd_client::Txn::new().and_then([
        TxnOp::put("exp/b", "2", opts()),
        TxnOp::put("exp/c", "3", opts()),
    ]))
    .await
    .unwrap();
    c.put("exp/c", "kept", None).await.unwrap();
    let mut watch = c
        .watch("exp/", Some(etcd_client::WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let created = watch.message().await.unwrap().unwrap();
    assert!(created.created());

    let granted = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("expiry in time")
        .unwrap()
        .unwrap();
    // Never before the TTL (2 s), and not much after it.
    let waited = granted.elapsed();
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");
    let events = r.events();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events.iter().all(|e| e.event_type() == EventType::Delete));
    let keys: Vec<&[u8]> = events.iter().map(|e| e.kv().unwrap().key()).collect();
    assert_eq!(keys, [b"exp/a".as_slice(), b"exp/b".as_slice()]);
    assert_eq!(
        events[0].kv().unwrap().mod_revision(),
        events[1].kv().unwrap().mod_revision()
    );
    let left = c
        .get("exp/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(left.kvs().len(), 1);
    assert_eq!(left.kvs()[0].value(), b"kept");
    assert_eq!(c.lease_time_to_live(lease, None).await.unwrap().ttl(), -1);
}

#[tokio::test]
async fn kept_alive_lease_outlives_its_ttl() {
    let m = Member::start().await;
    let mut c = m.client().await;
    let lease = c.lease_grant(2, None).await.unwrap().id();
    c.put("alive", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let (mut keeper, mut responses) = c.lease_keep_alive(lease).await.unwrap();
    for _ in 0..8 {
        keeper.keep_alive().await.unwrap();
        let r = responses.message().await.unwrap().unwrap();
        assert_eq!(r.ttl(), 2);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // 4 s after the grant, twice the TTL: still there.
    assert_eq!(c.get("alive", None).await.unwrap().kvs().len(), 1);
    let ttl = c
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(ttl.granted_ttl(), 2);
    assert_eq!(ttl.keys(), [b"alive".to_vec()]);
}

#[tokio::test]
async fn leases_survive_restart_with_their_ttl_refreshed() {
    let mut m = Member::start().await;
    let mut c = m.client().await;
    let short = c.lease_grant(5, None).await.unwrap().id();
    let long = c.lease_grant(600, None).await.unwrap().id();
    c.put("short", "v", Some(PutOptions::new().with_lease(short)))
        .await
        .unwrap();
    c.put("long", "v", Some(PutOptions::new().with_lease(long)))
        .await
        .unwrap();
    // Down for longer than the short lease's TTL: it must not expire because of the downtime.
    m.kill9();
    tokio::time::sleep(Duration::from_secs(6)).await;
    m.restart().await;
    let mut c = m.client().await;
    let ttl = c
        .lease_time_to_live(short, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert!(ttl.ttl() >= 1, "remaining {} after restart", ttl.ttl());
    assert_eq!(ttl.keys(), [b"short".to_vec()]);
    assert_eq!(c.get("short", None).await.unwrap().kvs().len(), 1);
    // Not kept alive after the restart: it runs out, and its key with it.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !c.get("short", None).await.unwrap().kvs().is_empty() {
        assert!(Instant::now() < deadline, "short lease never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(c.get("long", None).await.unwrap().kvs().len(), 1);
    let leases = c.leases().await.unwrap();
    let ids: Vec<i64> = leases.leases().iter().map(|l| l.id()).collect();
    assert_eq!(ids, [long]);
}

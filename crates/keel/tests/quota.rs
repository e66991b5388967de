//! The backend space quota: past `--quota-backend-bytes` a member raises NOSPACE; writes that grow
//! the store are refused with etcd's error while reads, deletes and compaction work; after making
//! room (delete, compact: no defragmentation needed) and disarming, writes work again. Nothing
//! acknowledged is lost.

mod common;

use common::{status, stderr, stdout, Member};
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};

const NOSPACE: (tonic::Code, &str) = (
    tonic::Code::ResourceExhausted,
    "etcdserver: mvcc: database space exceeded",
);

#[tokio::test]
async fn nospace_alarm_refuses_growth_until_room_is_made_and_disarmed() {
    let m = Member::start_with(&["--quota-backend-bytes=16777216"]).await;
    let mut c = m.client().await;
    let value = vec![b'x'; 512 * 1024];
    let mut acked = 0;
    let err = loop {
        match c.put(format!("big/{acked:04}"), value.clone(), None).await {
            Ok(_) => acked += 1,
            Err(e) => break e,
        }
        assert!(acked < 200, "the quota was never enforced");
    };
    let (code, msg) = status(err);
    assert_eq!((code, msg.as_str()), NOSPACE);
    assert!(acked > 0);

    // The alarm is raised and listed, also in Status.
    let list = stdout(&m.etcdctl(&["alarm", "list"]));
    assert!(list.contains("alarm:NOSPACE"), "{list}");
    let s = c.status().await.unwrap();
    assert!(
        s.errors().iter().any(|e| e.contains("NOSPACE")),
        "{:?}",
        s.errors()
    );
    // Growth is refused: small puts, txns with puts, lease grants.
    assert_eq!(
        status(c.put("small", "v", None).await.unwrap_err()),
        (NOSPACE.0, NOSPACE.1.to_string())
    );
    let txn = Txn::new()
        .when([Compare::version("small", CompareOp::Equal, 0)])
        .and_then([TxnOp::put("small", "v", None)]);
    assert_eq!(
        status(c.txn(txn).await.unwrap_err()),
        (NOSPACE.0, NOSPACE.1.to_string())
    );
    assert_eq!(
        status(c.lease_grant(60, None).await.unwrap_err()),
        (NOSPACE.0, NOSPACE.1.to_string())
    );
    // Every acknowledged write is there; reads work.
    let r = c
        .get(
            "big/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(r.count(), acked);

    // Make room: delete, compact, disarm. Then writes work again: the quota counts the live data,
    // which compaction deletes (in the background), not RocksDB's files (etcd needs a defrag).
    let del = c
        .delete(
            "big/",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(del.deleted(), acked);
    let rev = del.header().unwrap().revision();
    c.compact(rev, None).await.unwrap();
    let in_use = || {
        let out = stdout(&m.etcdctl(&["endpoint", "status", "-w", "json"]));
        let v: serde_json::Value = serde_json::from_str(&out).expect(&out);
        // Left out of etcd's JSON when 0.
        assert!(v[0]["Status"]["dbSize"].as_i64().is_some(), "{out}");
        v[0]["Status"]["dbSizeInUse"].as_i64().unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while in_use() >= 16 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "compaction freed nothing"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let out = m.etcdctl(&["alarm", "disarm"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&m.etcdctl(&["alarm", "list"])), "");
    // The size the quota sees is refreshed in the background.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    c.put("small", "v", None).await.unwrap();
    assert_eq!(c.get("small", None).await.unwrap().kvs()[0].value(), b"v");
}

#[tokio::test]
async fn alarms_can_be_raised_and_cleared_by_hand() {
    let m = Member::start().await;
    let mut c = m.client().await;
    let mut opts = etcd_client::AlarmOptions::new();
    opts.with_member(m.id().await);
    let raised = c
        .alarm(
            etcd_client::AlarmAction::Activate,
            etcd_client::AlarmType::Nospace,
            Some(opts),
        )
        .await
        .unwrap();
    assert_eq!(raised.alarms().len(), 1);
    assert_eq!(
        status(c.put("k", "v", None).await.unwrap_err()),
        (NOSPACE.0, NOSPACE.1.to_string())
    );
    // Deletes still work while it is raised.
    c.delete("k", None).await.unwrap();
    let out = m.etcdctl(&["alarm", "disarm"]);
    assert!(stdout(&out).contains("alarm:NOSPACE"), "{}", stdout(&out));
    c.put("k", "v", None).await.unwrap();
}

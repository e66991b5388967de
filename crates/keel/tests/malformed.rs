//! Odd and malformed requests, sent to Keel and to real etcd 3.4 side by side: each gets the same
//! answer (the same result, or the same gRPC code and message), and Keel keeps serving.

mod common;

use common::{start_etcd, Member};
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};

/// What a request came back with, comparable across servers (revisions and ids left out).
async fn answers(c: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    let mut note = |what: &str, r: String| out.push(format!("{what}: {r}"));
    let err = |e: etcd_client::Error| match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?} {}", s.code(), s.message()),
        other => format!("client error {other}"),
    };
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3")] {
        c.put(k, v, None).await.unwrap();
    }
    let get = |opts: GetOptions| opts;
    let cases: Vec<(&str, &str, GetOptions)> = vec![
        (
            "range end before key",
            "c",
            get(GetOptions::new().with_range("a")),
        ),
        (
            "negative limit",
            "a",
            get(GetOptions::new().with_range("d").with_limit(-5)),
        ),
        (
            "negative revision",
            "a",
            get(GetOptions::new().with_revision(-1)),
        ),
        (
            "future revision",
            "a",
            get(GetOptions::new().with_revision(1_000_000)),
        ),
        (
            "negative min mod revision",
            "a",
            get(GetOptions::new().with_range("d").with_min_mod_revision(-3)),
        ),
        ("empty key", "", get(GetOptions::new())),
    ];
    for (what, key, opts) in cases {
        let r = match c.get(key, Some(opts)).await {
            Ok(r) => {
                let keys: Vec<String> = r
                    .kvs()
                    .iter()
                    .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                    .collect();
                format!("{keys:?} count={} more={}", r.count(), r.more())
            }
            Err(e) => err(e),
        };
        note(what, r);
    }
    let r = c
        .put("x", "y", Some(PutOptions::new().with_lease(424242)))
        .await;
    note(
        "put with unknown lease",
        r.map(|_| "ok".into()).unwrap_or_else(err),
    );
    let r = c
        .put("nope", "", Some(PutOptions::new().with_ignore_value()))
        .await;
    note(
        "ignore_value on absent key",
        r.map(|_| "ok".into()).unwrap_or_else(err),
    );
    let r = c
        .delete("c", Some(DeleteOptions::new().with_range("a")))
        .await;
    note(
        "delete range end before key",
        r.map(|r| format!("deleted={}", r.deleted()))
            .unwrap_or_else(err),
    );
    let r = c.compact(-1, None).await;
    note(
        "compact negative",
        r.map(|_| "ok".into()).unwrap_or_else(err),
    );
    let r = c.compact(1_000_000, None).await;
    note("compact future", r.map(|_| "ok".into()).unwrap_or_else(err));
    let r = c.lease_grant(-5, None).await;
    note(
        "lease with negative ttl",
        r.map(|r| format!("ttl={}", r.ttl())).unwrap_or_else(err),
    );
    let r = c.lease_revoke(987654).await;
    note(
        "revoke unknown lease",
        r.map(|_| "ok".into()).unwrap_or_else(err),
    );
    let txn = Txn::new()
        .when([Compare::mod_revision("a", CompareOp::Greater, -7)])
        .and_then([TxnOp::put("t", "1", None), TxnOp::delete("t", None)]);
    let r = c.txn(txn).await;
    note(
        "txn writing one key twice",
        r.map(|r| format!("succeeded={}", r.succeeded()))
            .unwrap_or_else(err),
    );
    let txn = Txn::new()
        .when([Compare::mod_revision("a", CompareOp::Greater, -7)])
        .and_then([TxnOp::get("z", Some(GetOptions::new().with_range("a")))]);
    let r = c.txn(txn).await;
    note(
        "txn with an inverted range",
        r.map(|r| format!("succeeded={}", r.succeeded()))
            .unwrap_or_else(err),
    );
    // A watch from a negative revision starts now, like 0.
    let mut s = c
        .watch("w", Some(WatchOptions::new().with_start_revision(-9)))
        .await
        .unwrap();
    c.put("w", "1", None).await.unwrap();
    let first = s.message().await.unwrap().unwrap();
    let second = if first.events().is_empty() {
        s.message().await.unwrap().unwrap()
    } else {
        first
    };
    note(
        "watch from a negative revision",
        format!(
            "events={} canceled={} compact={} reason={}",
            second.events().len(),
            second.canceled(),
            second.compact_revision(),
            second.cancel_reason()
        ),
    );
    out
}

#[tokio::test]
async fn odd_requests_get_the_answers_etcd_gives() {
    let keel = Member::start().await;
    let etcd = start_etcd();
    let mut k = keel.client().await;
    let mut e = Client::connect([etcd.endpoint.as_str()], None)
        .await
        .unwrap();
    let (ours, theirs) = (answers(&mut k).await, answers(&mut e).await);
    for (o, t) in ours.iter().zip(&theirs) {
        assert_eq!(o, t, "Keel and etcd differ");
    }
    assert_eq!(ours.len(), theirs.len());
    assert!(keel.is_running(), "keel survived");
    k.put("still", "serving", None).await.unwrap();
}

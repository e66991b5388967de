//! etcd's KV semantics through the `etcd-client` crate against a real `keel` process. Expected values
//! are what etcd 3.4 answers to the same requests.

mod common;

use common::{status, Member};
use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};
use tonic::Code;

fn keys(resp: &etcd_client::GetResponse) -> Vec<String> {
    resp.kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn put_get_history_and_headers() {
    let m = Member::start().await;
    let mut c = m.client().await;
    // A new store is at revision 1; each put makes a new revision.
    let r = c.get("a", None).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 1);
    assert!(r.kvs().is_empty());
    assert_eq!(
        c.put("a", "1", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision(),
        2
    );
    let p = c
        .put("a", "2", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(p.prev_key().unwrap().value(), b"1");
    let h = p.header().unwrap();
    assert_eq!(h.revision(), 3);
    assert!(h.cluster_id() != 0 && h.member_id() != 0 && h.raft_term() >= 1);

    let got = c.get("a", None).await.unwrap();
    let kv = &got.kvs()[0];
    assert_eq!(
        (
            kv.create_revision(),
            kv.mod_revision(),
            kv.version(),
            kv.value()
        ),
        (2, 3, 2, &b"2"[..])
    );
    // History: the value at revision 2, with the header at the current revision.
    let old = c
        .get("a", Some(GetOptions::new().with_revision(2)))
        .await
        .unwrap();
    assert_eq!(old.kvs()[0].value(), b"1");
    assert_eq!(old.header().unwrap().revision(), 3);
    let (code, msg) = status(
        c.get("a", Some(GetOptions::new().with_revision(10)))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, msg.as_str()),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision"
        )
    );
    // Serializable reads are served locally and see the same data.
    let s = c
        .get("a", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert_eq!(s.kvs()[0].value(), b"2");
}

#[tokio::test]
async fn ranges_prefix_limit_sort_count_and_filters() {
    let m = Member::start().await;
    let mut c = m.client().await;
    for (k, v) in [("k/b", "2"), ("k/a", "3"), ("k/c", "1"), ("l", "x")] {
        c.put(k, v, None).await.unwrap();
    }
    c.put("k/a", "33", None).await.unwrap(); // k/a: create 3, mod 6, version 2

    let all = c
        .get("k/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(keys(&all), ["k/a", "k/b", "k/c"]);
    assert_eq!((all.count(), all.more()), (3, false));

    let lim = c
        .get("k/", Some(GetOptions::new().with_prefix().with_limit(2)))
        .await
        .unwrap();
    assert_eq!(keys(&lim), ["k/a", "k/b"]);
    assert_eq!((lim.count(), lim.more()), (3, true));

    let from = c
        .get("k/b", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_eq!(keys(&from), ["k/b", "k/c", "l"]);
    let span = c
        .get("k/b", Some(GetOptions::new().with_range("l")))
        .await
        .unwrap();
    assert_eq!(keys(&span), ["k/b", "k/c"]);
    let everything = c
        .get("\0", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_eq!(everything.count(), 4);

    let by_value = c
        .get(
            "k/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Value, SortOrder::Descend),
            ),
        )
        .await
        .unwrap();
    assert_eq!(keys(&by_value), ["k/a", "k/b", "k/c"]); // "33" > "2" > "1"
    let by_mod_limited = c
        .get(
            "k/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Mod, SortOrder::Descend)
                    .with_limit(1),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        (keys(&by_mod_limited), by_mod_limited.more()),
        (vec!["k/a".to_string()], true)
    );
    // A target with no order sorts ascending, as etcd does.
    let by_create = c
        .get(
            "k/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Create, SortOrder::None),
            ),
        )
        .await
        .unwrap();
    assert_eq!(keys(&by_create), ["k/b", "k/a", "k/c"]);

    let count = c
        .get(
            "k/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!((count.count(), count.kvs().len()), (3, 0));
    let ko = c
        .get("k/", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .unwrap();
    assert!(ko.kvs().iter().all(|kv| kv.value().is_empty()) && ko.kvs().len() == 3);

    // Revision filters drop keys but `count` still counts the whole span (etcd's behaviour).
    let recent = c
        .get(
            "k/",
            Some(GetOptions::new().with_prefix().with_min_mod_revision(4)),
        )
        .await
        .unwrap();
    assert_eq!(keys(&recent), ["k/a", "k/c"]);
    assert_eq!(recent.count(), 3);
    let early = c
        .get(
            "k/",
            Some(GetOptions::new().with_prefix().with_max_create_revision(2)),
        )
        .await
        .unwrap();
    assert_eq!(keys(&early), ["k/b"]);
}

#[tokio::test]
async fn delete_range_counts_and_returns_previous_values() {
    let m = Member::start().await;
    let mut c = m.client().await;
    for k in ["d/1", "d/2", "d/3", "e"] {
        c.put(k, "v", None).await.unwrap();
    }
    let none = c.delete("nope", None).await.unwrap();
    // Deleting nothing does not make a revision.
    assert_eq!((none.deleted(), none.header().unwrap().revision()), (0, 5));
    let d = c
        .delete(
            "d/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(d.deleted(), 3);
    assert_eq!(d.prev_kvs().len(), 3);
    assert_eq!(d.header().unwrap().revision(), 6);
    assert!(c
        .get("d/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap()
        .kvs()
        .is_empty());
    // Recreated keys start a new life: version 1, new create revision.
    c.put("d/1", "again", None).await.unwrap();
    let got = c.get("d/1", None).await.unwrap();
    let kv = &got.kvs()[0];
    assert_eq!((kv.create_revision(), kv.version()), (7, 1));
}

#[tokio::test]
async fn txn_compares_branches_and_nesting() {
    let m = Member::start().await;
    let mut c = m.client().await;
    c.put("t", "1", None).await.unwrap(); // rev 2

    let ok = c
        .txn(
            Txn::new()
                .when([
                    Compare::value("t", CompareOp::Equal, "1"),
                    Compare::version("t", CompareOp::Greater, 0),
                ])
                .and_then([
                    TxnOp::get("t", None),
                    TxnOp::put("t", "2", None),
                    TxnOp::get("t", None),
                    TxnOp::put("u", "x", None),
                ])
                .or_else([TxnOp::put("failed", "1", None)]),
        )
        .await
        .unwrap();
    assert!(ok.succeeded());
    // One revision for the whole txn; reads after a write in the txn see it.
    assert_eq!(ok.header().unwrap().revision(), 3);
    let rs = ok.op_responses();
    match (&rs[0], &rs[2]) {
        (TxnOpResponse::Get(before), TxnOpResponse::Get(after)) => {
            assert_eq!(before.kvs()[0].value(), b"1");
            assert_eq!(after.kvs()[0].value(), b"2");
        }
        other => panic!("unexpected responses {other:?}"),
    }
    assert_eq!(c.get("t", None).await.unwrap().kvs()[0].mod_revision(), 3);
    assert_eq!(c.get("u", None).await.unwrap().kvs()[0].mod_revision(), 3);

    // A missing key compares as zero; VALUE never matches a missing key.
    let missing = c
        .txn(
            Txn::new()
                .when([Compare::create_revision("nokey", CompareOp::Equal, 0)])
                .and_then([TxnOp::put("created", "1", None)]),
        )
        .await
        .unwrap();
    assert!(missing.succeeded());
    let value_missing = c
        .txn(
            Txn::new()
                .when([Compare::value("nokey", CompareOp::NotEqual, "x")])
                .or_else([TxnOp::get("t", None)]),
        )
        .await
        .unwrap();
    assert!(!value_missing.succeeded());
    // A read-only txn makes no revision.
    assert_eq!(value_missing.header().unwrap().revision(), 4);

    // Compares over a range hold only if they hold for every key in it.
    let range_cmp = c
        .txn(
            Txn::new()
                .when([Compare::mod_revision("t", CompareOp::Less, 4).with_range("v")])
                .and_then([TxnOp::put("r", "1", None)]),
        )
        .await
        .unwrap();
    assert!(range_cmp.succeeded());

    // Nested txns: the inner compare is decided on the state before the outer txn runs.
    let nested = c
        .txn(
            Txn::new().and_then([
                TxnOp::put("n", "1", None),
                TxnOp::txn(
                    Txn::new()
                        .when([Compare::version("n", CompareOp::Equal, 0)])
                        .and_then([TxnOp::put("inner", "yes", None)]),
                ),
            ]),
        )
        .await
        .unwrap();
    assert!(nested.succeeded());
    assert_eq!(c.get("inner", None).await.unwrap().kvs()[0].value(), b"yes");
}

#[tokio::test]
async fn bad_requests_get_etcd_errors() {
    let m = Member::start_with(&["--max-txn-ops=4", "--max-request-bytes=1024"]).await;
    let mut c = m.client().await;
    let expect = |r: Result<(), etcd_client::Error>, code: Code, msg: &str| {
        let (got_code, got_msg) = status(r.unwrap_err());
        assert_eq!((got_code, got_msg.as_str()), (code, msg));
    };
    expect(
        c.put("", "v", None).await.map(|_| ()),
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    expect(
        c.get("", None).await.map(|_| ()),
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    expect(
        c.delete("", None).await.map(|_| ()),
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    expect(
        c.put("k", "v", Some(PutOptions::new().with_ignore_value()))
            .await
            .map(|_| ()),
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );
    expect(
        c.put("k", "", Some(PutOptions::new().with_ignore_value()))
            .await
            .map(|_| ()),
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    expect(
        c.put("k", "v", Some(PutOptions::new().with_lease(12345)))
            .await
            .map(|_| ()),
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    let many: Vec<TxnOp> = (0..5)
        .map(|i| TxnOp::put(format!("k{i}"), "v", None))
        .collect();
    expect(
        c.txn(Txn::new().and_then(many)).await.map(|_| ()),
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    expect(
        c.txn(Txn::new().and_then([TxnOp::put("dup", "1", None), TxnOp::put("dup", "2", None)]))
            .await
            .map(|_| ()),
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    expect(
        c.put("big", vec![b'x'; 2000], None).await.map(|_| ()),
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    // Past the gRPC limit (max-request-bytes + 512 KiB) the transport itself refuses, before the
    // request is decoded (grpc-go says ResourceExhausted here, tonic says OutOfRange).
    let (code, msg) = status(
        c.put("huge", vec![b'x'; 600 * 1024], None)
            .await
            .unwrap_err(),
    );
    assert!(
        matches!(code, Code::OutOfRange | Code::ResourceExhausted),
        "{code:?} {msg}"
    );
    assert!(msg.contains("too large"), "{msg}");
    // None of the refused writes happened; the member still serves.
    let r = c
        .get("\0", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_eq!(r.count(), 0);
    c.put("k", "v", None).await.unwrap();
    c.put("k", "", Some(PutOptions::new().with_ignore_value()))
        .await
        .unwrap();
    assert_eq!(c.get("k", None).await.unwrap().kvs()[0].value(), b"v");
}

#[tokio::test]
async fn compaction_errors_and_physical_compaction() {
    let m = Member::start().await;
    let mut c = m.client().await;
    for i in 0..5 {
        c.put("c", format!("{i}"), None).await.unwrap(); // revs 2..=6
    }
    let (code, msg) = status(c.compact(100, None).await.unwrap_err());
    assert_eq!(
        (code, msg.as_str()),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision"
        )
    );
    c.compact(
        4,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .unwrap();
    let (code, msg) = status(c.compact(4, None).await.unwrap_err());
    assert_eq!(
        (code, msg.as_str()),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted"
        )
    );
    let (code, msg) = status(
        c.get("c", Some(GetOptions::new().with_revision(3)))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, msg.as_str()),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted"
        )
    );
    // The compacted revision itself and later ones stay readable.
    assert_eq!(
        c.get("c", Some(GetOptions::new().with_revision(4)))
            .await
            .unwrap()
            .kvs()[0]
            .value(),
        b"2"
    );
    assert_eq!(c.get("c", None).await.unwrap().kvs()[0].value(), b"4");
}

#[tokio::test]
async fn periodic_auto_compaction_drops_history_older_than_the_retention() {
    let m = Member::start_with(&[
        "--auto-compaction-mode=periodic",
        "--auto-compaction-retention=2s",
    ])
    .await;
    let mut c = m.client().await;
    let first = common::put_revision(&mut c, "k", "1").await;
    c.put("k", "2", None).await.unwrap();
    // Readable now; gone once the retention has passed (plus a sampling step).
    assert!(c
        .get("k", Some(GetOptions::new().with_revision(first)))
        .await
        .is_ok());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match c
            .get("k", Some(GetOptions::new().with_revision(first)))
            .await
        {
            Err(e) => {
                assert_eq!(
                    status(e),
                    (
                        Code::OutOfRange,
                        "etcdserver: mvcc: required revision has been compacted".into()
                    )
                );
                break;
            }
            Ok(_) => assert!(
                std::time::Instant::now() < deadline,
                "history was never compacted"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // The latest value stays.
    assert_eq!(c.get("k", None).await.unwrap().kvs()[0].value(), b"2");
}

/// A range over many keys runs beside the member's other requests, not on the runtime's worker:
/// with one worker (what a 2-core machine runs), a get sent while a count of every key is in
/// progress is answered before the count (before, it waited the whole count out: 23 s at 50M
/// keys, longer than the 6 s for which etcdctl waits on a ping before closing the connection).
#[tokio::test]
async fn a_long_range_does_not_hold_up_other_requests() {
    let mut m = Member::new("m1", &[]);
    m.set_env("TOKIO_WORKER_THREADS", Some("1"));
    m.start_process();
    m.wait_ready().await;
    let mut c = m.client().await;
    for chunk in 0..800 {
        let puts: Vec<TxnOp> = (0..125)
            .map(|i| TxnOp::put(format!("k/{chunk:04}/{i:03}"), "v", None))
            .collect();
        c.txn(Txn::new().and_then(puts)).await.unwrap();
    }
    let mut counter = m.client().await;
    let count = tokio::spawn(async move {
        let opts = GetOptions::new().with_prefix().with_count_only();
        counter.get("k/", Some(opts)).await.unwrap().count()
    });
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let got = c.get("k/0000/000", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"v");
    assert!(
        !count.is_finished(),
        "the count of 100,000 keys ended before a get sent during it"
    );
    assert_eq!(count.await.unwrap(), 100_000);
}

//! Durability: a member killed with SIGKILL at any moment keeps every acknowledged write and its
//! revision, and continues from there.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Member;
use etcd_client::GetOptions;

#[tokio::test]
async fn kill9_during_writes_loses_no_acknowledged_write() {
    let mut m = Member::start().await;
    let acked: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..8 {
        let mut c = m.client().await;
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let key = format!("w{w}/{i:06}");
                match c.put(key.clone(), format!("v{i}"), None).await {
                    Ok(r) => acked
                        .lock()
                        .unwrap()
                        .push((key, r.header().unwrap().revision())),
                    Err(_) => break, // the member died under us
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    m.kill9();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "too few writes acknowledged before the kill: {}",
        acked.len()
    );
    let max_rev = acked.iter().map(|(_, r)| *r).max().unwrap();

    m.restart().await;
    let mut c = m.client().await;
    let all = c
        .get("w", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .unwrap();
    let present: std::collections::HashSet<Vec<u8>> =
        all.kvs().iter().map(|kv| kv.key().to_vec()).collect();
    for (key, rev) in &acked {
        assert!(
            present.contains(key.as_bytes()),
            "acknowledged write {key} at revision {rev} lost"
        );
    }
    let rev = all.header().unwrap().revision();
    assert!(rev >= max_rev, "revision went back: {rev} < {max_rev}");
    // Revisions continue: the next write gets the next revision.
    assert_eq!(common::put_revision(&mut c, "after", "1").await, rev + 1);
}

#[tokio::test]
async fn graceful_restart_keeps_data_history_and_compaction() {
    let mut m = Member::start().await;
    let mut c = m.client().await;
    for i in 0..20 {
        c.put("k", format!("{i}"), None).await.unwrap(); // revs 2..=21
    }
    c.delete("k", None).await.unwrap(); // rev 22
    c.compact(10, None).await.unwrap();
    assert!(m.stop().success());
    m.restart().await;
    let mut c = m.client().await;
    assert!(c.get("k", None).await.unwrap().kvs().is_empty());
    let at15 = c
        .get("k", Some(GetOptions::new().with_revision(15)))
        .await
        .unwrap();
    assert_eq!(at15.kvs()[0].value(), b"13");
    assert_eq!(at15.header().unwrap().revision(), 22);
    assert!(c
        .get("k", Some(GetOptions::new().with_revision(9)))
        .await
        .is_err());
    assert_eq!(common::put_revision(&mut c, "k", "new").await, 23);
}

#[tokio::test]
async fn restart_after_raft_log_compaction_keeps_everything() {
    // With --snapshot-count=100 the log is compacted as soon as more than the 5,000 catch-up entries
    // it always keeps are applied.
    let mut m = Member::start_with(&["--snapshot-count=100"]).await;
    let mut writers = Vec::new();
    for w in 0..8 {
        let mut c = m.client().await;
        writers.push(tokio::spawn(async move {
            for i in 0..800 {
                c.put(format!("lc/{w}/{i}"), "v", None).await.unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        m.log().contains("raft log compacted"),
        "the raft log was never compacted"
    );
    m.kill9();
    m.restart().await;
    let mut c = m.client().await;
    let all = c
        .get(
            "lc/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(all.count(), 6400);
    assert_eq!(all.header().unwrap().revision(), 6401);
    assert_eq!(common::put_revision(&mut c, "after", "1").await, 6402);
}

/// A compaction is carried out in the background after it is acknowledged: killed in the middle,
/// the member resumes it after the restart, and nothing a read can see differs (the same HashKV
/// before the kill and after, the same values, the compacted revisions refused).
#[tokio::test]
async fn kill9_during_a_compaction_resumes_it_and_changes_nothing_readable() {
    let mut m = Member::start().await;
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut c = m.client().await;
        writers.push(tokio::spawn(async move {
            for i in 0..1000 {
                c.put(
                    format!("hot/{}", (w * 1000 + i) % 50),
                    format!("{w}-{i}"),
                    None,
                )
                .await
                .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let mut c = m.client().await;
    for k in 0..10 {
        c.delete(format!("hot/{k}"), None).await.unwrap();
    }
    let before = c
        .get("hot/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let rev = before.header().unwrap().revision();
    assert_eq!(before.kvs().len(), 40);
    c.compact(rev, None).await.unwrap();
    let hash = c.hash_kv(0).await.unwrap().hash();
    m.kill9();
    m.restart().await;
    let mut c = m.client().await;
    assert_eq!(c.hash_kv(0).await.unwrap().hash(), hash);
    let after = c
        .get("hot/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let pairs = |r: &etcd_client::GetResponse| -> Vec<_> {
        r.kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.value().to_vec(), kv.version()))
            .collect()
    };
    assert_eq!(pairs(&after), pairs(&before));
    let old = c
        .get("hot/11", Some(GetOptions::new().with_revision(rev - 1)))
        .await;
    assert!(old.is_err(), "a compacted revision was served");
    // The background half finishes (before the kill or after the restart).
    m.wait_log(
        "finished scheduled compaction",
        std::time::Duration::from_secs(10),
    )
    .await;
}

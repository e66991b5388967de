//! Watched values over a `keel` process: the current value first, then every newer one in order,
//! through restarts of the member (resuming where it left off), compaction (reading again),
//! values that do not decode (that `get`'s error), an absent key (waited for, or `None` at once
//! when asked), a second concurrent `get` (refused) and cancellation.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{etcdctl_at, Member};
use keel::{RemoteStore, StateStore, Value, ValueError, ValueWatcher};

fn number(b: &[u8]) -> Result<u64, String> {
    std::str::from_utf8(b)
        .map_err(|e| e.to_string())?
        .parse()
        .map_err(|e: std::num::ParseIntError| e.to_string())
}

async fn value_of(m: &Member) -> (Arc<dyn StateStore>, Value<u64>) {
    let store: Arc<dyn StateStore> = Arc::new(RemoteStore::connect(&[m.endpoint()]).await.unwrap());
    let value = Value::new(store.clone(), "/cfg/n", number);
    (store, value)
}

async fn next(w: &ValueWatcher<u64>) -> Option<u64> {
    tokio::time::timeout(Duration::from_secs(15), w.get())
        .await
        .expect("no value came")
        .unwrap()
}

#[tokio::test]
async fn current_value_then_each_change_and_each_decoding_error() {
    let m = Member::start().await;
    let (store, value) = value_of(&m).await;
    let w = value.watch();
    // Absent: the first get waits for the key to be created (or answers None at once, asked to).
    assert!(tokio::time::timeout(Duration::from_millis(300), w.get())
        .await
        .is_err());
    let eager = Value::new(store.clone(), "/cfg/n", number).absent_as_none();
    assert_eq!(next(&eager.watch()).await, None);
    store.put(b"/cfg/n", b"1").await.unwrap();
    assert_eq!(next(&w).await, Some(1));
    let bad = store.put(b"/cfg/n", b"not a number").await.unwrap();
    store.put(b"/cfg/n", b"2").await.unwrap();
    match tokio::time::timeout(Duration::from_secs(15), w.get()).await {
        Ok(Err(ValueError::Decode { revision, message })) => {
            assert_eq!(revision, bad);
            assert!(message.contains("invalid digit"), "{message}");
        }
        other => panic!("expected the decoding error, got {other:?}"),
    }
    assert_eq!(next(&w).await, Some(2), "the next get goes on after it");
    store.delete(b"/cfg/n").await.unwrap();
    assert_eq!(next(&w).await, None, "a deletion");

    // A new watcher starts from the current value.
    store.put(b"/cfg/n", b"3").await.unwrap();
    let w2 = Arc::new(value.watch());
    assert_eq!(next(&w2).await, Some(3));

    // One reader per watcher: a second get while one waits is refused.
    let pending = {
        let w2 = w2.clone();
        tokio::spawn(async move { w2.get().await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(matches!(w2.get().await, Err(ValueError::ConcurrentGet)));
    store.put(b"/cfg/n", b"4").await.unwrap();
    assert_eq!(pending.await.unwrap().unwrap(), Some(4));

    // Cancellation: a get dropped while waiting loses nothing.
    assert!(tokio::time::timeout(Duration::from_millis(200), w2.get())
        .await
        .is_err());
    store.put(b"/cfg/n", b"5").await.unwrap();
    assert_eq!(next(&w2).await, Some(5));
}

#[tokio::test]
async fn no_value_is_lost_between_the_first_read_and_the_watch() {
    let m = Member::start().await;
    let (store, value) = value_of(&m).await;
    store.put(b"/cfg/n", b"0").await.unwrap();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 1..=60u64 {
                store
                    .put(b"/cfg/n", i.to_string().as_bytes())
                    .await
                    .unwrap();
            }
        })
    };
    // Started while the writer runs: whatever it reads first, every later value follows.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let w = value.watch();
    let mut last = next(&w).await.unwrap();
    while last < 60 {
        let v = next(&w).await.unwrap();
        assert_eq!(v, last + 1, "a value was skipped");
        last = v;
    }
    writer.await.unwrap();
}

#[tokio::test]
async fn resumes_after_restarts_and_reads_again_after_compaction() {
    let mut m = Member::start().await;
    let (store, value) = value_of(&m).await;
    store.put(b"/cfg/n", b"1").await.unwrap();
    let w = Arc::new(value.watch());
    assert_eq!(next(&w).await, Some(1));

    // The member goes away; the watcher waits (with backoff) and resumes where it was: values
    // written before it reconnects are not lost.
    m.kill9();
    let waiting = {
        let w = w.clone();
        tokio::spawn(async move { (next(&w).await, next(&w).await) })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    m.restart().await;
    store.put(b"/cfg/n", b"2").await.unwrap();
    store.put(b"/cfg/n", b"3").await.unwrap();
    assert_eq!(waiting.await.unwrap(), (Some(2), Some(3)));

    // Down again, and while nobody reads, the history it needs is compacted away: it reads the
    // current value instead.
    m.kill9();
    m.restart().await;
    store.put(b"/cfg/n", b"4").await.unwrap();
    let rev = store.put(b"/cfg/n", b"5").await.unwrap();
    let out = etcdctl_at(&m.endpoint(), &["compact", &rev.to_string()], None);
    assert!(out.status.success());
    assert_eq!(next(&w).await, Some(5));
}

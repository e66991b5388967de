//! Watch through the `etcd-client` crate and `etcdctl` against a real `keel` process.

mod common;

use std::time::Duration;

use common::{stdout, Member};
use etcd_client::{EventType, WatchFilterType, WatchOptions, WatchResponse};

async fn next(stream: &mut etcd_client::WatchStream) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("watch response in time")
        .unwrap()
        .expect("stream open")
}

#[tokio::test]
async fn catch_up_then_live_with_concurrent_writers_has_no_gap_or_duplicate() {
    let m = Member::start().await;
    let mut c = m.client().await;
    let writer = {
        let mut c = m.client().await;
        tokio::spawn(async move {
            for i in 0..600 {
                c.put(format!("w/{}", i % 7), format!("{i}"), None)
                    .await
                    .unwrap();
            }
        })
    };
    // Start watching from revision 2 while writes are under way: history first, then live.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut stream = c
        .watch(
            "w/",
            Some(WatchOptions::new().with_prefix().with_start_revision(2)),
        )
        .await
        .unwrap();
    assert!(next(&mut stream).await.created());
    let mut revs = Vec::new();
    while revs.len() < 600 {
        let r = next(&mut stream).await;
        for e in r.events() {
            assert_eq!(e.event_type(), EventType::Put);
            revs.push(e.kv().unwrap().mod_revision());
        }
    }
    writer.await.unwrap();
    assert_eq!(revs, (2..602).collect::<Vec<i64>>());
}

#[tokio::test]
async fn prev_kv_filters_deletes_and_cancel() {
    let m = Member::start().await;
    let mut c = m.client().await;
    let mut all = c
        .watch("k", Some(WatchOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert!(next(&mut all).await.created());
    let id = all
        .watch(
            "k",
            Some(WatchOptions::new().with_filters([WatchFilterType::NoPut])),
        )
        .await;
    id.unwrap();
    let created = next(&mut all).await;
    assert!(created.created());
    let deletes_only = created.watch_id();

    c.put("k", "1", None).await.unwrap();
    c.put("k", "2", None).await.unwrap();
    c.delete("k", None).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let r = next(&mut all).await;
        for e in r.events() {
            let prev = e.prev_kv().map(|kv| kv.value().to_vec());
            seen.push((
                r.watch_id(),
                e.event_type(),
                e.kv().unwrap().mod_revision(),
                prev,
            ));
        }
    }
    // Each watcher's events are in order; between watchers no order is promised.
    seen.sort_by_key(|(id, ..)| *id == deletes_only);
    let first = seen[0].0;
    assert_ne!(first, deletes_only);
    assert_eq!(
        seen,
        vec![
            (first, EventType::Put, 2, None),
            (first, EventType::Put, 3, Some(b"1".to_vec())),
            (first, EventType::Delete, 4, Some(b"2".to_vec())),
            (deletes_only, EventType::Delete, 4, None),
        ]
    );
    all.cancel(deletes_only).await.unwrap();
    let canceled = next(&mut all).await;
    assert!(canceled.canceled());
    assert_eq!(canceled.watch_id(), deletes_only);
}

#[tokio::test]
async fn watch_on_a_compacted_revision_is_canceled_with_the_compact_revision() {
    let m = Member::start().await;
    let mut c = m.client().await;
    for i in 0..5 {
        c.put("c", format!("{i}"), None).await.unwrap();
    }
    c.compact(4, None).await.unwrap();
    let mut stream = c
        .watch("c", Some(WatchOptions::new().with_start_revision(2)))
        .await
        .unwrap();
    assert!(next(&mut stream).await.created());
    let r = next(&mut stream).await;
    assert!(r.canceled());
    assert_eq!(r.compact_revision(), 4);
    // From the compacted revision on, history is still there.
    let mut ok = c
        .watch("c", Some(WatchOptions::new().with_start_revision(5)))
        .await
        .unwrap();
    assert!(next(&mut ok).await.created());
    assert_eq!(next(&mut ok).await.events()[0].kv().unwrap().value(), b"3");
}

#[tokio::test]
async fn a_thousand_watchers_on_one_stream_each_see_their_key() {
    let m = Member::start().await;
    let mut c = m.client().await;
    let mut stream = c.watch("key/0", None).await.unwrap();
    assert!(next(&mut stream).await.created());
    for i in 1..1000 {
        stream.watch(format!("key/{i}"), None).await.unwrap();
    }
    let mut created = 1;
    while created < 1000 {
        assert!(next(&mut stream).await.created());
        created += 1;
    }
    for i in 0..1000 {
        c.put(format!("key/{i}"), "v", None).await.unwrap();
    }
    let mut events = 0;
    let mut ids = std::collections::HashSet::new();
    while events < 1000 {
        let r = next(&mut stream).await;
        for e in r.events() {
            assert_eq!(
                e.kv().unwrap().key_str().unwrap(),
                format!("key/{}", r.watch_id())
            );
            events += 1;
        }
        ids.insert(r.watch_id());
    }
    assert_eq!(ids.len(), 1000);
    // Progress: every watcher has delivered everything through the current revision.
    stream.request_progress().await.unwrap();
    let p = next(&mut stream).await;
    assert_eq!(p.header().unwrap().revision(), 1001);
}

#[tokio::test]
async fn etcdctl_watch_with_rev_prefix_and_prev_kv() {
    let m = Member::start().await;
    m.etcdctl(&["put", "p/a", "1"]);
    m.etcdctl(&["put", "p/b", "2"]);
    m.etcdctl(&["del", "p/a"]);
    let ep = m.endpoint();
    let watch = tokio::task::spawn_blocking(move || {
        std::process::Command::new("timeout")
            .args([
                "3",
                "etcdctl",
                &format!("--endpoints={ep}"),
                "watch",
                "p/",
                "--prefix",
                "--rev=1",
                "--prev-kv",
            ])
            .env("ETCDCTL_API", "3")
            .output()
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    m.etcdctl(&["put", "p/c", "3"]);
    let out = stdout(&watch.await.unwrap());
    assert_eq!(
        out,
        "PUT\np/a\n1\nPUT\np/b\n2\nDELETE\np/a\n1\np/a\n\nPUT\np/c\n3\n"
    );
}

#[tokio::test]
async fn a_watcher_that_does_not_read_never_blocks_writes_and_loses_nothing() {
    let m = Member::start().await;
    let mut c = m.client().await;
    let mut stream = c
        .watch("slow/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(next(&mut stream).await.created());
    // Write far more than the stream's buffers hold while nobody reads the watch.
    let value = vec![b'x'; 16 * 1024];
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut wc = m.client().await;
        let value = value.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..250 {
                wc.put(format!("slow/{w}/{i}"), value.clone(), None)
                    .await
                    .unwrap();
            }
        }));
    }
    let writes = async {
        for w in writers {
            w.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), writes)
        .await
        .expect("writes finish while the watcher is stalled");
    // Now read: every revision exactly once, in order (the watcher went back to history).
    let mut revs = Vec::new();
    while revs.len() < 1000 {
        for e in next(&mut stream).await.events() {
            assert_eq!(e.kv().unwrap().value().len(), 16 * 1024);
            revs.push(e.kv().unwrap().mod_revision());
        }
    }
    assert_eq!(revs, (2..1002).collect::<Vec<i64>>());
}

#[tokio::test]
async fn idle_watchers_that_ask_get_progress_notifications() {
    let m = Member::start_with(&["--experimental-watch-progress-notify-interval=300ms"]).await;
    let mut c = m.client().await;
    let mut notified = c
        .watch("quiet", Some(WatchOptions::new().with_progress_notify()))
        .await
        .unwrap();
    assert!(next(&mut notified).await.created());
    let mut silent = c.watch("quiet", None).await.unwrap();
    assert!(next(&mut silent).await.created());
    // Writes elsewhere move the revision; the watched key stays quiet.
    let rev = c
        .put("other", "v", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let r = loop {
        let r = next(&mut notified).await;
        if r.header().unwrap().revision() >= rev {
            break r;
        }
    };
    assert!(r.events().is_empty() && !r.created() && !r.canceled());
    assert_eq!(r.header().unwrap().revision(), rev);
    // A watcher that did not ask gets nothing.
    assert!(
        tokio::time::timeout(Duration::from_millis(900), silent.message())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn fragment_splits_a_large_revision_across_responses() {
    let m = Member::start_with(&["--max-request-bytes=65536"]).await;
    let mut c = m.client().await;
    let value = "x".repeat(40 * 1024);
    for i in 0..6 {
        c.put(format!("big/{i}"), value.as_str(), None)
            .await
            .unwrap();
    }
    let opts = || WatchOptions::new().with_prefix().with_prev_key();
    let mut whole = c.watch("big/", Some(opts())).await.unwrap();
    let mut pieces = c.watch("big/", Some(opts().with_fragment())).await.unwrap();
    assert!(next(&mut whole).await.created());
    assert!(next(&mut pieces).await.created());
    // One revision deletes six keys; with prev_kv each event carries 40 KiB.
    c.delete(
        "big/",
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .unwrap();
    assert_eq!(next(&mut whole).await.events().len(), 6);
    let mut sizes = Vec::new();
    while sizes.iter().sum::<usize>() < 6 {
        sizes.push(next(&mut pieces).await.events().len());
    }
    assert!(sizes.len() >= 3, "one revision in {sizes:?} pieces");
}

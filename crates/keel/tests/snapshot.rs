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

//! The writer's files read back by this crate's reader and by real etcd's tools (`etcdctl
//! snapshot status` opens them with bbolt and runs its consistency check), and damage refused.

use std::io::Write;
use std::path::Path;

use keel_bbolt::{Bucket, Reader, Writer};

/// etcd's revision key: main (8 bytes BE), '_', sub (8 bytes BE).
fn rev_key(main: u64) -> Vec<u8> {
    let mut k = main.to_be_bytes().to_vec();
    k.push(b'_');
    k.extend_from_slice(&0u64.to_be_bytes());
    k
}

/// A database with an empty bucket, a bucket of small keys deep enough for branch pages of
/// branch pages, and values larger than a page (overflow pages).
fn write_db(path: &Path, keys: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut w = Writer::new(std::fs::File::create(path).unwrap()).unwrap();
    w.bucket(b"alarm").unwrap().finish().unwrap();
    let mut expected = Vec::new();
    let mut b = w.bucket(b"key").unwrap();
    for i in 1..=keys {
        let value = if i % 1000 == 0 {
            vec![(i % 251) as u8; 10_000]
        } else {
            format!("value-{i}").into_bytes()
        };
        b.put(&rev_key(i), &value).unwrap();
        expected.push((rev_key(i), value));
    }
    b.finish().unwrap();
    let mut m = w.bucket(b"meta").unwrap();
    m.put(b"consistent_index", &7u64.to_be_bytes()).unwrap();
    m.finish().unwrap();
    w.finish().unwrap();
    expected
}

#[test]
fn written_files_read_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let expected = write_db(&path, 50_000);
    let r = Reader::open(&path).unwrap();
    let names: Vec<Vec<u8>> = r.buckets().unwrap().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        vec![b"alarm".to_vec(), b"key".to_vec(), b"meta".to_vec()]
    );
    let mut got = Vec::new();
    r.for_each(&r.bucket(b"key").unwrap().unwrap(), |k, v| {
        got.push((k.to_vec(), v.to_vec()));
        Ok(())
    })
    .unwrap();
    assert!(
        got == expected,
        "{} keys read of {}",
        got.len(),
        expected.len()
    );
    assert!(matches!(
        r.bucket(b"alarm").unwrap(),
        Some(Bucket::Inline(_))
    ));
    let mut alarms = 0;
    r.for_each(&r.bucket(b"alarm").unwrap().unwrap(), |_, _| {
        alarms += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(alarms, 0);
    assert_eq!(r.size(), std::fs::metadata(&path).unwrap().len());
}

#[test]
fn etcdctl_reads_written_files_as_valid_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    write_db(&path, 50_000);
    // etcdctl wants the snapshot's SHA-256 trailer after the database.
    let db = std::fs::read(&path).unwrap();
    let digest = sha256(&path);
    let snap = dir.path().join("snap.db");
    let mut f = std::fs::File::create(&snap).unwrap();
    f.write_all(&db).unwrap();
    f.write_all(&digest).unwrap();
    drop(f);
    let out = std::process::Command::new("etcdctl")
        .args(["snapshot", "status", "-w", "json"])
        .arg(&snap)
        .env("ETCDCTL_API", "3")
        .output()
        .expect("etcdctl (Debian's etcd-client) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["revision"], 50_000, "{v}");
    assert_eq!(v["totalKey"], 50_001, "{v}");
    assert_eq!(v["totalSize"], db.len(), "{v}");
}

/// SHA-256 by coreutils, to keep the crate free of a hashing dependency it does not need.
fn sha256(path: &Path) -> Vec<u8> {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    let hex = String::from_utf8_lossy(&out.stdout);
    let hex = hex.split_whitespace().next().unwrap();
    (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[test]
fn damaged_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    write_db(&path, 5_000);
    let whole = std::fs::read(&path).unwrap();

    // Truncated: pages the meta counts are missing.
    std::fs::write(&path, &whole[..whole.len() - 4096]).unwrap();
    let err = Reader::open(&path)
        .err()
        .expect("a truncated file is refused");
    assert!(err.to_string().contains("truncated"), "{err}");

    // Both meta pages damaged.
    let mut bad = whole.clone();
    bad[16] ^= 0xff;
    bad[4096 + 16] ^= 0xff;
    std::fs::write(&path, &bad).unwrap();
    assert!(Reader::open(&path).is_err());

    // A page in the middle of the tree overwritten: found while walking it.
    let mut bad = whole.clone();
    for b in &mut bad[3 * 4096..4 * 4096] {
        *b = 0xa5;
    }
    std::fs::write(&path, &bad).unwrap();
    let r = Reader::open(&path).unwrap();
    let walked = r.buckets().and_then(|buckets| {
        for (_, b) in buckets {
            r.for_each(&b, |_, _| Ok(()))?;
        }
        Ok(())
    });
    assert!(walked.is_err(), "a clobbered page went unnoticed");

    // Keys out of order are refused at write time.
    let mut w = Writer::new(std::fs::File::create(dir.path().join("x")).unwrap()).unwrap();
    let mut b = w.bucket(b"key").unwrap();
    b.put(b"b", b"1").unwrap();
    assert!(b.put(b"a", b"2").is_err());
}

//! Snapshot files, as `etcdctl snapshot save` writes them and `etcdctl snapshot restore`, `keel
//! snapshot restore` and `keel snapshot status` read them: etcd's backend database (a bbolt file
//! with etcd's buckets, `etcd.rs`) followed by the SHA-256 of everything before it. `keel
//! snapshot restore` also reads Keel's first format (`keel_format.rs`).

pub mod data_dir;
mod etcd;
mod etcd_entries;
mod etcd_wal;
mod keel_format;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use keel_mvcc::Store;

use sha2::{Digest, Sha256};

pub use etcd::{export, SnapshotStatus};

/// Bytes of the SHA-256 trailer.
pub const DIGEST_LEN: u64 = 32;

/// Errors reading or writing snapshot files.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The file is not a snapshot, or is damaged.
    #[error("not a valid snapshot file: {0}")]
    Invalid(String),
}

impl From<keel_bbolt::BoltError> for BackupError {
    fn from(e: keel_bbolt::BoltError) -> BackupError {
        match e {
            keel_bbolt::BoltError::Io(e) => BackupError::Io(e),
            other => BackupError::Invalid(other.to_string()),
        }
    }
}

impl From<keel_mvcc::MvccError> for BackupError {
    fn from(e: keel_mvcc::MvccError) -> BackupError {
        BackupError::Invalid(e.to_string())
    }
}

/// Checks the snapshot file at `path`, then fills the empty `store` with its state and the meta
/// record `note`. Keel's first format is unpacked as a checkpoint in `scratch` (created; must not
/// exist, and is removed) and installed; etcd's is imported in place.
pub fn restore(
    path: &Path,
    store: &Store,
    scratch: &Path,
    note: (&[u8], &[u8]),
) -> Result<(), BackupError> {
    let mut head = vec![0u8; keel_format::MAGIC.len()];
    let n = File::open(path)?.read(&mut head)?;
    if n == head.len() && head == keel_format::MAGIC {
        keel_format::decode(path, scratch)?;
        store.install(scratch, note.0, note.1, &mut |_, _| {})?;
        std::fs::remove_dir_all(scratch)?;
        return Ok(());
    }
    check_digest(path)?;
    etcd::import(path, store, note, None)
}

/// The status `etcdctl snapshot status` prints, of the snapshot (or etcd database) at `path`.
pub fn status(path: &Path) -> Result<SnapshotStatus, BackupError> {
    check_digest(path)?;
    etcd::status(path)
}

/// Checks the digest of an etcd snapshot at `path`, if it has one (an etcd data dir's
/// `member/snap/db` has none). The database is read in place: bbolt, and this reader, ignore the
/// bytes after its last page.
fn check_digest(path: &Path) -> Result<(), BackupError> {
    let invalid = |why: String| BackupError::Invalid(format!("{}: {why}", path.display()));
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    // etcdctl's rule: a snapshot with a digest is whole 512-byte sectors plus the 32 bytes.
    if len % 512 != DIGEST_LEN {
        return Ok(());
    }
    let body = len - DIGEST_LEN;
    let mut hash = Sha256::new();
    let mut reader = (&mut f).take(body);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    let mut digest = [0u8; DIGEST_LEN as usize];
    f.seek(SeekFrom::Start(body))?;
    f.read_exact(&mut digest)?;
    if hash.finalize().as_slice() != digest {
        return Err(invalid(
            "sha256 checksum mismatch (damaged or truncated)".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(dir: &Path, key: &[u8]) -> Store {
        let s = Store::open(dir).unwrap();
        let mut wb = s.write_batch();
        wb.begin();
        wb.put(key, b"v".to_vec(), 0).unwrap();
        wb.end();
        wb.commit(5).unwrap();
        s
    }

    fn keys(s: &Store) -> Vec<Vec<u8>> {
        let all = keel_mvcc::KeySpan::Range {
            start: b"",
            end: None,
        };
        let r = s.range(all, &keel_mvcc::RangeOptions::default()).unwrap();
        r.kvs.into_iter().map(|kv| kv.key).collect()
    }

    #[test]
    fn both_formats_restore_into_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let src = store_with(&dir.path().join("src"), b"k");
        let checkpoint = dir.path().join("checkpoint");
        src.checkpoint(&checkpoint).unwrap();

        // Keel's first format.
        let mut bytes = Vec::new();
        keel_format::encode(&checkpoint, |p| {
            bytes.extend(p);
            true
        })
        .unwrap();
        let old = dir.path().join("old.snap");
        std::fs::write(&old, &bytes).unwrap();
        let a = Store::open(&dir.path().join("a")).unwrap();
        restore(&old, &a, &dir.path().join("scratch"), (b"local/note", b"n")).unwrap();
        assert_eq!(keys(&a), vec![b"k".to_vec()]);
        assert_eq!(a.get_meta(b"local/note").unwrap().unwrap(), b"n");
        assert!(!dir.path().join("scratch").exists());

        // etcd's, with its digest.
        let db = dir.path().join("etcd.db");
        export(&checkpoint, &db).unwrap();
        let mut snap = std::fs::read(&db).unwrap();
        let digest = Sha256::digest(&snap);
        snap.extend_from_slice(&digest);
        let file = dir.path().join("etcd.snap");
        std::fs::write(&file, &snap).unwrap();
        let b = Store::open(&dir.path().join("b")).unwrap();
        restore(
            &file,
            &b,
            &dir.path().join("scratch"),
            (b"local/note", b"n"),
        )
        .unwrap();
        assert_eq!(keys(&b), vec![b"k".to_vec()]);
        assert_eq!(b.current_revision(), src.current_revision());
        assert_eq!(b.applied_index(), 5);
        assert_eq!(status(&file).unwrap().revision, src.current_revision());
    }
}

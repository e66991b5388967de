//! Snapshot files, as `etcdctl snapshot save` writes them and `etcdctl snapshot restore`, `keel
//! snapshot restore` and `keel snapshot status` read them: etcd's backend database (a bbolt file
//! with etcd's buckets, `etcd.rs`) followed by the SHA-256 of everything before it. `keel
//! snapshot restore` also reads Keel's first format (`keel_format.rs`).

mod etcd;
mod keel_format;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

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

/// Checks the snapshot file at `path`, then unpacks its state as a store checkpoint in `into`
/// (created; must not exist).
pub fn decode(path: &Path, into: &Path) -> Result<PathBuf, BackupError> {
    let mut head = vec![0u8; keel_format::MAGIC.len()];
    let n = File::open(path)?.read(&mut head)?;
    if n == head.len() && head == keel_format::MAGIC {
        return keel_format::decode(path, into);
    }
    check_digest(path)?;
    etcd::import(path, into)?;
    Ok(into.to_path_buf())
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

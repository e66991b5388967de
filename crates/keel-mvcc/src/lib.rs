//! Keel's multi-version key-value storage: every change gets a revision, history is kept until
//! compaction, and reads can be served at any retained revision. It knows nothing of raft or the
//! network: the apply loop above it decides what to write and when.

mod compaction;
mod export;
mod hash;
mod index;
mod revision;
mod snapshot;
mod store;

pub use export::{Import, Part};
pub use hash::KvHash;
pub use index::KeySpan;
pub use revision::Revision;
pub use snapshot::{CheckpointReader, LOCAL_META_PREFIX};
pub use store::{
    Change, RangeOptions, RangeResult, ReadView, Store, StoreSize, StoreView, Table, WriteBatch,
};

/// Errors of the MVCC layer.
#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    /// The requested revision is below the compacted revision.
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is above the current revision.
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// RocksDB failed.
    #[error("mvcc: storage: {0}")]
    Storage(#[from] rocksdb::Error),
    /// A stored record could not be decoded.
    #[error("mvcc: corrupt data: {0}")]
    Corrupt(String),
}

/// Result of MVCC operations.
pub type Result<T> = std::result::Result<T, MvccError>;

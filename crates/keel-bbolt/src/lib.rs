//! bbolt's file format, the one etcd keeps its backend in (`member/snap/db`) and `etcdctl snapshot
//! save` writes: a B+tree of pages with two meta pages, buckets of sorted keys.
//!
//! This crate does the two things Keel needs and no more:
//! - [`Writer`] builds a fresh database from buckets whose keys come in ascending order (a
//!   snapshot of a sorted store), writing each page once, bottom-up, so memory stays bounded by
//!   the tree's height whatever the database's size. The result is a valid bbolt database that
//!   bbolt (and so etcd) opens read-write: every page is reachable, the freelist is empty.
//! - [`Reader`] reads any bbolt database read-only (branch, leaf and overflow pages, inline
//!   buckets), checking what it walks, so damage is an error and never a panic.
//!
//! Layout constants follow bbolt 1.3 (`page.go`, `db.go`, `bucket.go`), whose format etcd 3.4 and
//! 3.5 both use.

mod page;
mod read;
mod write;

pub use read::{Bucket, Reader};
pub use write::{BucketWriter, Writer};

/// The page size Keel writes (etcd's: the OS page size, 4096 on Linux).
pub const PAGE_SIZE: usize = 4096;

/// Errors reading or writing a bbolt file.
#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    /// The file could not be read or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The file is not a bbolt database, or is damaged.
    #[error("invalid database: {0}")]
    Invalid(String),
    /// Keys or buckets were given out of order, or a name twice.
    #[error("out of order: {0}")]
    Order(String),
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, BoltError>;

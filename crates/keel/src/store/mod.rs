//! `StateStore`: the state layer an application programs against, the same over an embedded
//! member (`Member::client`, in-process, no TCP) and over any etcd-compatible endpoints
//! (`RemoteStore::connect`, gRPC): key-values with versions, watches, transactions and leader
//! election. Both backends are one implementation (`GrpcStore`) over etcd's gRPC API; they differ
//! only in how a request reaches the member.

mod grpc;
mod leadership;
mod value;

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;

pub use grpc::{EmbeddedStore, GrpcStore, RemoteStore};
pub use leadership::Leadership;
pub use value::{Value, ValueError, ValueWatcher};

/// A key-value as a store holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// The revision of its last change (etcd's mod revision; compare with `Compare::Version`
    /// or `CompareTarget::ModRevision`).
    pub version: i64,
    /// The revision that created it (since it last did not exist).
    pub create_revision: i64,
    /// How many times it was written since it was created (etcd's version: 1 after the
    /// first put).
    pub writes: i64,
    /// The lease it is attached to (0: none).
    pub lease: i64,
}

/// What a watch saw happen to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The key was written.
    Put,
    /// The key was deleted.
    Delete,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: EventKind,
    /// The key-value after the change (for a delete: the key, and the deletion's revision).
    pub kv: Kv,
    /// The key-value before the change, if it existed.
    pub prev_kv: Option<Kv>,
}

/// The keys a watch follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keys {
    /// One key.
    Key(Vec<u8>),
    /// Every key starting with these bytes.
    Prefix(Vec<u8>),
}

/// A condition of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key exists with this version (revision of its last change).
    Version(Vec<u8>, i64),
    /// The key exists with this value.
    Value(Vec<u8>, Vec<u8>),
    /// The key exists.
    Exists(Vec<u8>),
    /// The key does not exist.
    Absent(Vec<u8>),
    /// Any of etcd's comparisons: the key's `target` compared by `op` with the target's value.
    /// A missing key has writes, create revision, mod revision and lease 0; a comparison of
    /// a missing key's value is false whatever the operator.
    Check {
        key: Vec<u8>,
        op: CompareOp,
        target: CompareTarget,
    },
}

impl Compare {
    /// `Compare::Check` of `key`.
    pub fn check(key: impl Into<Vec<u8>>, op: CompareOp, target: CompareTarget) -> Compare {
        Compare::Check {
            key: key.into(),
            op,
            target,
        }
    }
}

/// How a transaction's check compares (the key's side first: `Less` holds when the key's
/// target is below the given value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// What of a key a transaction's check compares, and the value compared with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    /// How many times it was written since created (etcd's version; `Kv::writes`).
    Writes(i64),
    /// The revision that created it (`Kv::create_revision`).
    CreateRevision(i64),
    /// The revision of its last change (`Kv::version`).
    ModRevision(i64),
    /// Its value, compared byte by byte.
    Value(Vec<u8>),
    /// Its lease (`Kv::lease`).
    Lease(i64),
}

/// A write of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Write the key.
    Put(Vec<u8>, Vec<u8>),
    /// Delete the key.
    Delete(Vec<u8>),
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key (or lease, or leadership) does not exist.
    #[error("not found")]
    NotFound,
    /// The cluster has no leader (no quorum).
    #[error("no leader")]
    NoLeader,
    /// The member or endpoints cannot be reached (or are stopping).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The revision asked for was compacted away; the oldest left is after this one.
    #[error("required revision has been compacted (compacted at {0})")]
    Compacted(i64),
    /// Any other refusal, as the server worded it (permission denied, request too large, ...).
    #[error("{0}")]
    Rejected(String),
}

/// A stream of watch events, ending with an error when the watch cannot go on.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, StoreError>> + Send>>;

/// A stream of leaders (their candidate ids) as they change.
pub type LeaderStream = Pin<Box<dyn Stream<Item = Result<String, StoreError>> + Send>>;

/// The state layer, over an embedded member or remote endpoints.
#[async_trait::async_trait]
pub trait StateStore: Send + Sync {
    /// Writes `key`; the revision of the write.
    async fn put(&self, key: &[u8], value: &[u8]) -> Result<i64, StoreError>;

    /// The key, if it exists (a linearizable read).
    async fn get(&self, key: &[u8]) -> Result<Option<Kv>, StoreError> {
        Ok(self.read(key).await?.0)
    }

    /// The key, if it exists, and the store's revision it was read at (a watch from the revision
    /// after it misses nothing).
    async fn read(&self, key: &[u8]) -> Result<(Option<Kv>, i64), StoreError>;

    /// Deletes `key`; `NotFound` if there was nothing to delete.
    async fn delete(&self, key: &[u8]) -> Result<(), StoreError>;

    /// Every key starting with `prefix`, in key order.
    async fn list(&self, prefix: &[u8]) -> Result<Vec<Kv>, StoreError>;

    /// Changes of `keys` from `start_revision` on (0: from now), with the previous values.
    async fn watch(&self, keys: Keys, start_revision: i64) -> Result<WatchStream, StoreError>;

    /// Runs `on_success` if every check holds, else `on_failure`, atomically; whether the checks
    /// held.
    async fn transaction(
        &self,
        checks: Vec<Compare>,
        on_success: Vec<Op>,
        on_failure: Vec<Op>,
    ) -> Result<bool, StoreError>;

    /// Waits until `candidate_id` leads this store's election, holding it with a lease of
    /// `lease_ttl` kept alive in the background.
    async fn campaign(
        &self,
        candidate_id: &str,
        lease_ttl: Duration,
    ) -> Result<Leadership, StoreError>;

    /// The current leader's candidate id.
    async fn leader(&self) -> Result<Option<String>, StoreError>;

    /// The leader now (once there is one) and each new leader.
    async fn observe(&self) -> Result<LeaderStream, StoreError>;

    /// Ends the store and every clone of it: the leaderships it holds are resigned (awaited),
    /// its watches and observations end with `Unavailable`, its calls are refused from then on,
    /// and its connection is released once the calls in flight finish.
    async fn close(&self);
}

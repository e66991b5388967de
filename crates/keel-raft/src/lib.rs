//! Keel's consensus layer: the raft-rs driver, its RocksDB log store and the peer transport. It orders opaque entries;
//! what they mean (etcd's API) is the state machine's business above it.

mod bootstrap;
pub mod dial;
mod fault;
pub mod handoff;
mod log_store;
mod logger;
mod node;
mod transport;

pub use log_store::{wal_fsync_seconds, LogStore, SnapshotImage, SnapshotSource, BOOTSTRAP_INDEX};
pub use node::{
    Committed, Driver, InstallSnapshot, Installer, Node, NodeConfig, Outbox, PeerProgress,
    RaftStatus, Refused, Replication, Role, Stepper,
};
pub use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Message, MessageType,
    SnapshotMetadata,
};

/// A conf change entry at `index` of `term` carrying `cc`, encoded as raft decodes it.
pub fn conf_change_entry(index: u64, term: u64, cc: &ConfChange) -> Entry {
    use protobuf::Message as _;
    let mut e = Entry {
        index,
        term,
        data: cc.write_to_bytes().expect("a conf change encodes").into(),
        ..Default::default()
    };
    e.set_entry_type(EntryType::EntryConfChange);
    e
}

/// The membership change a conf change entry carries, if it is one (single changes only: Keel
/// proposes one at a time).
pub fn conf_change(e: &Entry) -> Option<ConfChange> {
    use protobuf::Message as _;
    match e.get_entry_type() {
        EntryType::EntryConfChange if !e.data.is_empty() => {
            ConfChange::parse_from_bytes(&e.data).ok()
        }
        _ => None,
    }
}
pub use bootstrap::{Bootstrap, BootstrapPhase, BootstrapReport};
pub use dial::{Dialer, Target};
pub use transport::{PeerService, SnapshotTransfer, Transport};

/// Errors of the consensus layer.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// There is no leader to accept the request (election under way, or quorum lost).
    #[error("no leader")]
    NoLeader,
    /// A proposal only a leader may make reached a member that does not lead.
    #[error("not leader")]
    NotLeader,
    /// The leader has a membership change that is not applied yet.
    #[error("a membership change is still in progress")]
    ConfChangePending,
    /// The node has stopped.
    #[error("raft node stopped")]
    Stopped,
    /// raft-rs refused the operation.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// RocksDB failed.
    #[error("raft storage: {0}")]
    Storage(#[from] rocksdb::Error),
    /// A raft record failed to encode or decode.
    #[error("raft encoding: {0}")]
    Encoding(#[from] protobuf::ProtobufError),
    /// The log store is inconsistent.
    #[error("raft log corrupt: {0}")]
    Corrupt(String),
    /// The driver thread could not be started.
    #[error("raft thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Result of consensus operations.
pub type Result<T> = std::result::Result<T, RaftError>;

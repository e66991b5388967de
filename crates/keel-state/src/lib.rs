//! Keel's state machine: what every member does with a committed request, deterministically. Given
//! the same requests in the same order, every member writes the same keys, revisions, leases,
//! users, alarms and members to its store; nothing here reads the wall clock for replicated state,
//! knows about the network, or runs tasks. Above it, `keel-server` proposes requests through raft,
//! feeds the committed ones to [`apply`] and turns [`StateError`]s into etcd's gRPC statuses.

pub mod alarm;
mod apply;
pub mod auth;
mod error;
pub mod lease;
pub mod membership;
pub mod metrics;
pub mod range;
pub mod txn;
pub mod validate;

pub use apply::{apply, grows, Applied, Machine, Proposal, Response};
pub use error::StateError;

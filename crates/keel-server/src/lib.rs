//! Keel's etcd-compatible server: the state machine applied from the raft log, the request paths
//! (propose and wait, linearizable reads), and etcd's gRPC services on top.

mod apply;
mod auth;
pub mod backup;
mod compactor;
mod concurrency;
mod config;
mod corrupt;
mod error;
mod expiry;
mod fault;
mod forward;
mod gateway;
mod health;
mod metrics;
mod pprof;
mod raft_conf;
mod replication;
mod server;
pub mod service;
#[cfg(feature = "sim")]
pub mod sim;
mod snapshot;
pub mod startup;
pub mod version;
mod wait;
mod watch;

// The state machine's modules, under the names the request path has always used.
use keel_state::{alarm, lease, membership, range, txn, validate};

pub use concurrency::prefix_end;
pub use config::{
    AutoCompaction, ClusterState, Discovery, GrpcKeepalive, LeaseCheckpointing, ServerConfig,
    TlsCommon, TlsConfig,
};
pub use error::ServerError;
pub use keel_raft::Replication;
pub use keel_state::membership::{cluster_id, member_id};
pub use metrics::traces::{TracingExport, MAX_SAMPLING_PER_MILLION};
pub use replication::{
    ClusterReplication, ReplicaRole, ReplicaState, ReplicaStatus, SnapshotBootstrap,
};
pub use server::{local_routes, restore, Core, ServeError, Server, StartError};

//! Keel's etcd-compatible server, in layers that point down only:
//!
//! - `member`: a running member (the state machine applied from the raft log, proposing and
//!   waiting, linearizable reads, the tasks it owns);
//! - `api`: etcd's gRPC services over a member;
//! - `gateway` (etcd's HTTP/JSON gateway) and `ops` (metrics, health, profiles) over both;
//! - `startup`: a member from etcd's configuration, served on its URLs.
//!
//! `error`, `config`, `password` and `version` sit below them all; `backup` (etcd's snapshot and
//! data-dir formats) between the member and the API.

pub mod api;
pub mod backup;
mod config;
mod error;
mod gateway;
pub mod member;
mod ops;
mod password;
pub mod startup;
pub mod version;

// The state machine's modules, under the names the request path has always used.
use keel_state::{alarm, lease, membership, range, txn, validate};

pub use api::concurrency::prefix_end;
pub use api::local_routes;
pub use config::{
    AutoCompaction, ClusterState, Discovery, GrpcKeepalive, LeaseCheckpointing, ServerConfig,
    SocketOptions, TlsCommon, TlsConfig, TracingExport, MAX_SAMPLING_PER_MILLION,
};
pub use error::{ServerError, StartError};
pub use keel_raft::Replication;
pub use keel_state::membership::{cluster_id, member_id};
pub use member::{
    ClusterReplication, Member, ReplicaRole, ReplicaState, ReplicaStatus, SnapshotBootstrap,
};
pub use startup::{restore, ServeError, Server};

//! Keel as a library: start a member inside your own tokio runtime, the way Go programs embed etcd,
//! and program against `StateStore`, the same over the embedded member or remote endpoints.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use keel::StateStore;
//! let cfg = keel::ServerConfig { data_dir: "my.keel".into(), ..Default::default() };
//! let member = keel::Member::start(cfg).await?;
//! member.ready(std::time::Duration::from_secs(10)).await?;
//! let store = member.client();
//! store.put(b"/config/mode", b"active").await?;
//! let leadership = store.campaign("node-a", std::time::Duration::from_secs(5)).await?;
//! leadership.lost().await; // leadership ended: stop leading
//! member.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod flags;
pub mod logging;
mod member;
pub mod proxy;
pub mod store;

pub use keel_server::{
    restore, ClusterReplication, ClusterState, ReplicaRole, ReplicaState, ReplicaStatus,
    Replication, ServeError, Server, ServerConfig, ServerError, SnapshotBootstrap, StartError,
};
pub use member::Member;
pub use store::{
    Compare, CompareOp, CompareTarget, EmbeddedStore, EventKind, Keys, Kv, Leadership, Op,
    RemoteStore, StateStore, StoreError, Value, ValueError, ValueWatcher, WatchEvent,
};

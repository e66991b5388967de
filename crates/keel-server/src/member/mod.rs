//! A member: its store and state machine, its raft node, and the request paths every service
//! shares (propose and wait; the linearizable read barrier; response headers), with the tasks it
//! owns. Everything above (the gRPC services, the gateway, metrics, start-up) reaches the member
//! through this handle; nothing here knows of them.
//!
//! Built by `Member::assemble` from storage that start-up (or the simulation) opened; its raft
//! driver and apply loop (`Engine`) run on their own threads in production and are turned by the
//! deterministic simulation.

mod apply;
mod assemble;
mod compactor;
mod corrupt;
mod counters;
mod fault;
mod leader_link;
mod lessor;
mod propose;
mod raft_conf;
mod read;
mod replication;
mod runtime;
mod snapshot;
mod tasks;
mod tokens;
mod wait;
mod watch;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keel_mvcc::Store;
use keel_raft::{Node, RaftStatus, Transport};
use keel_rpc::etcd::{PbMember, PbResponseHeader};
use tokio::sync::watch as signal;

use keel_state::alarm::Alarms;
use keel_state::auth::AuthStore;
use keel_state::lease::Lessor;
use keel_state::membership::{Identity, Membership};

use crate::config::ServerConfig;

pub use apply::{change_kind, Applied};
pub use assemble::{bootstrap_store, Engine, Network, Parts};
pub use corrupt::{initial_check, Inconsistent};
pub use counters::counters;
pub use lessor::{EXPIRY_CHECK, PROMOTE_EXTEND, ROLE_CHECK};
pub use raft_conf::conf_state;
pub use replication::{
    local as local_replication, to_proto as replication_proto, ClusterReplication, ReplicaRole,
    ReplicaState, ReplicaStatus, SnapshotBootstrap,
};
pub use runtime::{Job, Runtime, TokioRuntime};
pub use snapshot::{decode_position, encode_position, META_INSTALLED};
pub use tokens::Tokens;
pub use watch::{Group, Hub, Output, WatchEnd, WatchSpec};

/// How long a proposal may take to apply before the client gets `request timed out` (etcd: 5 s plus
/// two election timeouts).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);

/// A running member. Cheap to share (`Arc<Member>`); its fields are its own.
pub struct Member {
    store: Arc<Store>,
    node: Arc<Node>,
    registry: Arc<wait::Registry>,
    applied: signal::Receiver<u64>,
    hub: Arc<Hub>,
    leases: Arc<Lessor>,
    alarms: Arc<Alarms>,
    auth: Arc<AuthStore>,
    membership: Arc<Membership>,
    identity: Identity,
    /// The configuration it was started with (limits, quota, names, URLs).
    config: ServerConfig,
    /// How it reaches its peers.
    network: Network,
    /// Its clock (deadlines of requests and of the primary lessor's leases) and blocking pool.
    runtime: Arc<dyn Runtime>,
    /// Where snapshots are made and received.
    snap_dir: PathBuf,
    next_id: AtomicU64,
    /// The store's size on disk, refreshed in the background (the quota check reads it).
    db_size: AtomicU64,
    /// Where leader-only requests are forwarded.
    leader_link: leader_link::LeaderLink,
    /// What the other members last told this one (while it leads) of themselves.
    reports: replication::Reports,
    /// The tasks it owns, stopped with it.
    tasks: tasks::Tasks,
}

impl Member {
    /// What raft last reported.
    pub fn raft_status(&self) -> RaftStatus {
        self.node.status()
    }

    /// The raft term (cheap: no copy of the replication progress).
    fn term(&self) -> u64 {
        self.node.term()
    }

    /// Whether this member leads (cheap: no copy of the replication progress).
    pub fn is_leader(&self) -> bool {
        self.node.role().0 == keel_raft::Role::Leader
    }

    /// The leader this member knows, 0 for none (cheap).
    pub fn leader_id(&self) -> u64 {
        self.node.role().1
    }

    /// Whether this member is a learner (it replicates but serves only serializable reads).
    pub fn is_learner(&self) -> bool {
        self.membership.is_learner(self.identity.member_id)
    }

    /// This member's id.
    pub fn id(&self) -> u64 {
        self.identity.member_id
    }

    /// The cluster's id.
    pub fn cluster_id(&self) -> u64 {
        self.identity.cluster_id
    }

    /// This member's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The MVCC store (its read side: only the apply loop writes).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Committed changes, for watchers.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The leases (replicated; deadlines kept by the leader's lessor).
    pub fn leases(&self) -> &Lessor {
        &self.leases
    }

    /// The raised alarms (replicated).
    pub fn alarms(&self) -> &Alarms {
        &self.alarms
    }

    /// Users, roles, permissions and tokens (replicated, but for simple tokens).
    pub fn auth(&self) -> &AuthStore {
        &self.auth
    }

    /// The cluster's members as the state machine knows them (replicated).
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// How this member dials peer URLs (with its peer TLS for https ones); none when its raft
    /// messages are carried by its embedder (the simulation), which gives it no peers to dial.
    pub fn dialer(&self) -> Option<&keel_raft::Dialer> {
        self.transport().map(|t| t.dialer())
    }

    /// The peer transport, when this member has one.
    fn transport(&self) -> Option<&Arc<Transport>> {
        match &self.network {
            Network::Transport(t) => Some(t),
            Network::Carried { .. } => None,
        }
    }

    /// The snapshot this member is receiving or installing.
    fn bootstrap(&self) -> &Arc<keel_raft::Bootstrap> {
        self.network.bootstrap()
    }

    /// Where snapshots are made and received.
    pub fn snap_dir(&self) -> &std::path::Path {
        &self.snap_dir
    }

    /// Where the peer service steps incoming raft messages.
    pub fn stepper(&self) -> keel_raft::Stepper {
        self.node.stepper()
    }

    /// A response header for `revision`, with this member's identity and raft term.
    pub fn header(&self, revision: i64) -> Option<PbResponseHeader> {
        Some(PbResponseHeader {
            cluster_id: self.identity.cluster_id,
            member_id: self.identity.member_id,
            revision,
            raft_term: self.term(),
        })
    }

    /// A response header at the store's current revision.
    pub fn current_header(&self) -> Option<PbResponseHeader> {
        self.header(self.store.current_revision())
    }

    /// Completes a header the state machine filled with a revision only.
    pub fn fill_header(&self, header: &mut Option<PbResponseHeader>) {
        let revision = header.as_ref().map_or(0, |h| h.revision);
        *header = self.header(revision);
    }

    /// The members, with the client URLs each published (this member's own always current).
    pub fn members(&self) -> Vec<PbMember> {
        let mut members = self.membership.list();
        for m in members
            .iter_mut()
            .filter(|m| m.id == self.identity.member_id)
        {
            m.client_ur_ls = self.config.advertise_client_urls.clone();
        }
        members
    }

    /// A fresh id, unique across members and restarts.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Proposers waiting for their entries to be applied.
    pub fn proposals_pending(&self) -> usize {
        self.registry.pending()
    }

    /// A checkpoint of the whole store for a client's snapshot (the caller removes it).
    pub fn backup_checkpoint(&self) -> Result<PathBuf, crate::ServerError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = self.snap_dir.join(format!("backup-{nanos}"));
        self.store.checkpoint(&dir)?;
        Ok(dir)
    }

    /// Refreshes the store size the quota check reads.
    pub fn refresh_db_size(&self) {
        self.db_size
            .store(self.store.size().in_use, Ordering::Relaxed);
    }

    /// Runs `fut`, giving up after `limit` on this member's clock.
    async fn within<T>(&self, limit: Duration, fut: impl Future<Output = T>) -> Option<T> {
        runtime::within(self.runtime.as_ref(), limit, fut).await
    }

    /// Runs `f`, which may block (hashing a password, the whole store), off the request path.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, crate::ServerError> {
        runtime::blocking(self.runtime.as_ref(), f).await
    }
}

/// The first proposal id: the member id's low 16 bits, then the start time in milliseconds, so ids
/// stay unique across restarts and members (as etcd's idutil does).
pub fn first_request_id(member_id: u64) -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    ((member_id & 0xffff) << 48) | ((ms << 8) & ((1 << 48) - 1))
}

//! A member assembled for the deterministic simulation (`crates/keel-sim`): the real raft driver,
//! apply loop, lessor and watch hub over RocksDB in its data dir, with no thread, socket or clock
//! of its own. The simulation turns it at its simulated time and carries its messages; requests
//! are futures the simulation polls (they need no runtime: only tokio's sync channels).

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use keel_mvcc::Store;
use keel_raft::{Driver, LogStore, Node, NodeConfig, Outbox, RaftStatus, Stepper};
use keel_rpc::etcd::{PbEvent as Event, PbRangeRequest, PbRangeResponse};
use keel_rpc::{InternalRequest, RequestBody};
use prost::Message as _;
use tokio::sync::watch;

use crate::alarm::Alarms;
pub use crate::apply::Response;
use crate::apply::{ApplyLoop, Machine};
use crate::auth::{AuthStore, Tokens};
pub use crate::expiry::{EXPIRY_CHECK, PROMOTE_EXTEND, ROLE_CHECK};
use crate::lease::Lessor;
pub use crate::lease::{Clock, REVOKE_RETRY};
use crate::membership::Membership;
use crate::wait::Registry;
use crate::watch::{Hub, WatchEnd, WatchSpec};
use crate::{ServerError, StartError};

/// One simulated member.
pub struct SimMember {
    node: Arc<Node>,
    leases: Arc<Lessor>,
    driver: Driver,
    apply: ApplyLoop,
    registry: Arc<Registry>,
    applied: watch::Receiver<u64>,
    hub: Arc<Hub>,
    store: Arc<Store>,
    next_id: AtomicU64,
}

/// How a simulated watch ended.
pub enum SimWatchEnd {
    /// Canceled: its revision was compacted (the compacted revision).
    Compacted(i64),
    /// The member went away.
    Closed,
}

impl SimMember {
    /// Opens (or creates, as one of `voters`) member `id` in `dir`. `incarnation` tells restarts
    /// apart so proposal ids never repeat; `tick` is the length of one raft tick; the lessor keeps
    /// its deadlines on `clock` (the member's own, which may run fast or slow, or jump).
    pub fn open(
        dir: &Path,
        id: u64,
        voters: Vec<u64>,
        incarnation: u64,
        tick: Duration,
        clock: Clock,
        outbox: Arc<dyn Outbox>,
    ) -> Result<SimMember, StartError> {
        let storage = |e: &dyn std::fmt::Display| StartError::Storage(e.to_string());
        let store = Arc::new(Store::open(&dir.join("kv")).map_err(|e| storage(&e))?);
        let log = LogStore::open(&dir.join("raft"))
            .map_err(|e| storage(&e))?
            .without_fsync();
        let (committed_tx, committed_rx) = mpsc::channel();
        let cfg = NodeConfig {
            tick_interval: tick,
            random_election_timeout: false,
            ..NodeConfig::new(id, voters, store.applied_index())
        };
        let (node, driver) =
            Node::stepwise(cfg, log, committed_tx, outbox).map_err(|e| storage(&e))?;
        let (applied_tx, applied) = watch::channel(store.applied_index());
        let registry = Arc::new(Registry::default());
        let hub = Arc::new(Hub::new(store.clone()));
        let leases = Arc::new(
            Lessor::restore(&store)
                .map_err(|e| storage(&e))?
                .with_clock(clock),
        );
        let machine = Machine {
            leases: leases.clone(),
            members: Arc::new(Membership::load(&store).map_err(|e| storage(&e))?),
            alarms: Arc::new(Alarms::load(&store).map_err(|e| storage(&e))?),
            auth: Arc::new(
                AuthStore::load(
                    &store,
                    Box::new(Tokens::from_flag("simple", tick).map_err(|e| storage(&e))?),
                )
                .map_err(|e| storage(&e))?,
            ),
        };
        let node = Arc::new(node);
        let leader = node.clone();
        let apply = ApplyLoop {
            leading_at: Box::new(move |term| {
                leader.role().0 == keel_raft::Role::Leader && leader.term() == term
            }),
            catch_up_entries: 5000,
            warn_apply_after: Duration::from_millis(100),
            compacted_at: store.applied_index(),
            delay: crate::fault::ApplyDelay::from_env(),
            store: store.clone(),
            committed: committed_rx,
            registry: registry.clone(),
            applied: applied_tx,
            hub: hub.clone(),
            machine,
            // The log is never compacted: no member needs a snapshot to catch up.
            snapshot_count: u64::MAX,
            bootstrap: Arc::default(),
            compact_log: Box::new(|_| {}),
        };
        Ok(SimMember {
            node,
            leases,
            driver,
            apply,
            registry,
            applied,
            hub,
            store,
            next_id: AtomicU64::new(((id & 0xffff) << 48) | ((incarnation & 0xffff) << 32)),
        })
    }

    /// Where the network delivers this member's messages.
    pub fn stepper(&self) -> Stepper {
        self.node.stepper()
    }

    /// One turn at simulated time `now`: raft handles what arrived (ticking if `tick`), then the
    /// state machine applies what was committed.
    pub fn turn(&mut self, now: Instant, tick: bool) -> Result<(), ServerError> {
        self.driver
            .turn(now, tick)
            .map_err(|e| ServerError::Internal(e.to_string()))?;
        self.apply.drain();
        Ok(())
    }

    /// What raft's state was after the last turn.
    pub fn status(&self) -> RaftStatus {
        self.node.status()
    }

    /// The member's store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Proposes `body` and resolves once it is applied here (Core::propose's path, without its
    /// timeout: the simulation gives up on its own clock).
    pub fn propose(
        &self,
        body: RequestBody,
    ) -> impl Future<Output = Result<Response, ServerError>> + 'static {
        self.propose_with(body, false)
    }

    /// The revoke of a lease this member's lessor found expired, proposed as expiry.rs does:
    /// only into this member's log while it leads.
    pub fn revoke_expired(
        &self,
        id: i64,
    ) -> impl Future<Output = Result<Response, ServerError>> + 'static {
        let body = RequestBody::LeaseRevoke(keel_rpc::etcd::PbLeaseRevokeRequest { id });
        self.propose_with(body, true)
    }

    fn propose_with(
        &self,
        body: RequestBody,
        leader_only: bool,
    ) -> impl Future<Output = Result<Response, ServerError>> + 'static {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let data = InternalRequest {
            id,
            body: Some(body),
            auth: None,
        }
        .encode_to_vec();
        let applied = self.registry.register(id);
        let registry = self.registry.clone();
        let refused: keel_raft::Refused = Box::new(move |e| registry.fail(id, e.into()));
        let proposed = if leader_only {
            self.node.propose_as_leader(data, refused)
        } else {
            self.node.propose(data, refused)
        };
        if proposed.is_err() {
            self.registry.cancel(id);
        }
        async move {
            proposed?;
            applied.await.map_err(|_| ServerError::Stopped)?
        }
    }

    /// The role check of expiry.rs: the lessor is primary exactly while this member leads.
    /// Returns whether it is.
    pub fn sync_lessor(&self) -> bool {
        let leading = self.node.role().0 == keel_raft::Role::Leader;
        crate::expiry::sync_role(&self.leases, leading)
    }

    /// The expiry check of expiry.rs: if primary, the leases that ran out on its clock, to be
    /// revoked through raft (`propose`).
    pub fn expired_leases(&self) -> Vec<i64> {
        if !self.sync_lessor() {
            return Vec::new();
        }
        self.leases
            .expired(self.leases.now(), crate::expiry::REVOKES_PER_CHECK)
    }

    /// The leases this member knows.
    pub fn lease_ids(&self) -> Vec<i64> {
        self.leases.leases()
    }

    /// A keep-alive at this member, as service/lease.rs serves it on the leader (followers
    /// forward keep-alives there; the simulation's clients address a member that believes it
    /// leads). The TTL, or why it was not renewed.
    pub fn keep_alive(&self, id: i64) -> impl Future<Output = Result<i64, ServerError>> + 'static {
        let (node, leases, confirm) = (self.node.clone(), self.leases.clone(), self.barrier());
        async move {
            let leading = || node.role().0 == keel_raft::Role::Leader;
            match crate::expiry::renew_as_leader(&leases, leading, confirm, id).await? {
                Ok(ttl) => Ok(ttl),
                Err(crate::lease::RenewError::NotPrimary) => Err(ServerError::NotLeader),
                Err(_) => Err(ServerError::State(keel_state::StateError::LeaseNotFound)),
            }
        }
    }

    /// KV.Range: linearizable (ReadIndex, then wait until applied) or serializable (local state).
    pub fn range(
        &self,
        r: PbRangeRequest,
        linearizable: bool,
    ) -> impl Future<Output = Result<PbRangeResponse, ServerError>> + 'static {
        let (store, barrier) = (self.store.clone(), linearizable.then(|| self.barrier()));
        async move {
            if let Some(barrier) = barrier {
                barrier.await?;
            }
            Ok(crate::range::range(&store.view(), &r)?)
        }
    }

    /// ReadIndex, then wait until applied (the server's linearizable barrier, without its
    /// timeout: the simulation's clients time out themselves).
    fn barrier(&self) -> impl Future<Output = Result<(), ServerError>> + 'static {
        let (node, mut applied) = (self.node.clone(), self.applied.clone());
        async move {
            let index = node.read_index().await?;
            applied
                .wait_for(|&a| a >= index)
                .await
                .map(|_| ())
                .map_err(|_| ServerError::Stopped)
        }
    }

    /// Watches `[key, range_end)` from `start_revision`, handing each group of events to `sink`.
    pub fn watch(
        &self,
        key: Vec<u8>,
        range_end: Vec<u8>,
        start_revision: i64,
        mut sink: impl FnMut(Vec<Event>) + 'static,
    ) -> impl Future<Output = SimWatchEnd> + 'static {
        let hub = self.hub.clone();
        let spec = WatchSpec {
            key,
            range_end,
            start_revision,
            prev_kv: false,
            no_put: false,
            no_delete: false,
        };
        async move {
            let end = hub
                .run(spec, |events, _| {
                    sink(events);
                    std::future::ready(true)
                })
                .await;
            match end {
                WatchEnd::Compacted(rev) => SimWatchEnd::Compacted(rev),
                WatchEnd::Closed => SimWatchEnd::Closed,
            }
        }
    }
}

//! A simulated member: the production `keel_server::Member`, assembled over RocksDB in its data
//! dir as start-up assembles it, but with the simulation's network (its raft messages go on the
//! wire the simulation carries) and its own clock (which the simulation advances). Its engine is
//! turned by the simulation instead of running on threads; its requests are futures the
//! simulation polls every simulated millisecond (they need no runtime: the member's waits are on
//! tokio's sync channels and on this clock).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use keel_mvcc::Store;
use keel_raft::{LogStore, NodeConfig, Outbox, RaftStatus, Stepper};
use keel_rpc::etcd::PbEvent as Event;
use keel_rpc::etcd::PbMember;
use keel_server::member::{
    bootstrap_store, Engine, Job, Network, Parts, Runtime, WatchEnd, WatchSpec,
};
use keel_server::{Member, ServerConfig, ServerError, StartError};
use keel_state::membership::{Identity, Membership};

/// The simulated cluster's id.
const CLUSTER_ID: u64 = 0x5157;
/// Requests larger than this are refused (etcd's --max-request-bytes; small, so that the
/// workload's oversized requests cost little).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// How a member is configured.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    /// Its backend quota (etcd's --quota-backend-bytes).
    pub quota_bytes: u64,
    /// Whether it starts as a voter of the initial cluster (else it joins, as a learner added
    /// through MemberAdd).
    pub initial: bool,
}

impl Setup {
    /// A voter of the initial cluster with etcd's default quota.
    pub const INITIAL: Setup = Setup {
        quota_bytes: 2 * 1024 * 1024 * 1024,
        initial: true,
    };
    /// A learner joining the running cluster with etcd's default quota.
    pub const JOINING: Setup = Setup {
        initial: false,
        ..Setup::INITIAL
    };
    /// A quota every store is over (the quota check raises NOSPACE on its first growing write:
    /// whatever RocksDB's size, it is more than a byte).
    pub const OVER_QUOTA: u64 = 1;
}

/// A member's world: its clock reads the simulation's start plus the microseconds the simulation
/// has advanced it by (at its own rate; it may jump), and blocking work runs at once, on the
/// simulation's one thread.
#[derive(Clone)]
pub struct SimClock {
    base: Instant,
    micros: Arc<AtomicU64>,
}

impl SimClock {
    /// A clock reading `base` plus `micros`.
    pub fn new(base: Instant, micros: Arc<AtomicU64>) -> SimClock {
        SimClock { base, micros }
    }
}

impl Runtime for SimClock {
    fn now(&self) -> Instant {
        self.base + Duration::from_micros(self.micros.load(Ordering::Relaxed))
    }

    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(Sleep {
            clock: self.clone(),
            until: self.now() + d,
        })
    }

    fn spawn_blocking(&self, job: Job) {
        job();
    }
}

/// A sleep on a simulated clock. It registers no waker: the simulation polls every pending
/// future every simulated millisecond.
struct Sleep {
    clock: SimClock,
    until: Instant,
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if self.clock.now() >= self.until {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Member `id` as the cluster knows it (its peer URL names it; nothing dials it).
pub fn sim_member(id: u64) -> PbMember {
    PbMember {
        id,
        name: format!("m{id}"),
        peer_ur_ls: vec![format!("http://m{id}:2380")],
        ..Default::default()
    }
}

/// One simulated member: the member and the engine the simulation turns.
pub struct SimMember {
    member: Arc<Member>,
    engine: Engine,
}

impl SimMember {
    /// Opens member `id` in `dir` (created, the first time, as start-up creates a member of a
    /// new cluster of `voters`, or one joining it). `incarnation` tells restarts apart so
    /// proposal ids never repeat; `tick` is the length of one raft tick on `clock`, the member's
    /// own.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        dir: &Path,
        id: u64,
        voters: &[u64],
        setup: Setup,
        incarnation: u64,
        tick: Duration,
        clock: SimClock,
        outbox: Arc<dyn Outbox>,
    ) -> Result<SimMember, StartError> {
        let storage = |e: &dyn std::fmt::Display| StartError::Storage(e.to_string());
        let store = Arc::new(Store::open(&dir.join("kv")).map_err(|e| storage(&e))?);
        let identity = Identity {
            cluster_id: CLUSTER_ID,
            member_id: id,
            token: String::new(),
        };
        if Identity::load(&store).map_err(|e| storage(&e))?.is_none() {
            if setup.initial {
                let members: Vec<PbMember> = voters.iter().map(|&v| sim_member(v)).collect();
                bootstrap_store(&store, &identity, &members)?;
            } else {
                identity.save(&store).map_err(|e| storage(&e))?;
            }
        }
        // A joining member waits for the leader's snapshot to learn the members.
        let voters = if setup.initial {
            voters.to_vec()
        } else {
            Vec::new()
        };
        // Synced or not, the log keeps every entry across the simulation's crashes and power
        // cuts (they happen in-process); skipping the fsyncs keeps seeds fast.
        let log = LogStore::open(&dir.join("raft"))
            .map_err(|e| storage(&e))?
            .without_fsync();
        let raft = NodeConfig {
            tick_interval: tick,
            random_election_timeout: false,
            ..NodeConfig::new(id, voters, store.applied_index())
        };
        let membership = Arc::new(Membership::load(&store).map_err(|e| storage(&e))?);
        let config = ServerConfig {
            name: sim_member(id).name,
            data_dir: dir.to_path_buf(),
            advertise_client_urls: Vec::new(),
            // The log is never compacted: no member needs a snapshot to catch up.
            snapshot_count: u64::MAX,
            quota_backend_bytes: setup.quota_bytes,
            max_request_bytes: MAX_REQUEST_BYTES,
            // etcd's least: bcrypt's cost is real time, which the simulation does not advance.
            bcrypt_cost: 4,
            ..ServerConfig::default()
        };
        let (member, engine) = Member::assemble(Parts {
            config,
            store,
            log,
            identity,
            membership,
            network: Network::Carried {
                outbox,
                bootstrap: Arc::default(),
            },
            runtime: Arc::new(clock),
            raft,
            snap_dir: dir.join("snap"),
            first_request_id: ((id & 0xffff) << 48) | ((incarnation & 0xffff) << 32),
        })?;
        Ok(SimMember { member, engine })
    }

    /// The member.
    pub fn member(&self) -> &Arc<Member> {
        &self.member
    }

    /// Where the network delivers this member's messages.
    pub fn stepper(&self) -> Stepper {
        self.member.stepper()
    }

    /// One turn at simulated time `now`: raft handles what arrived (ticking if `tick`), then the
    /// state machine applies what was committed.
    pub fn turn(&mut self, now: Instant, tick: bool) -> Result<(), ServerError> {
        self.engine.turn(now, tick)
    }

    /// What raft's state was after the last turn.
    pub fn status(&self) -> RaftStatus {
        self.member.raft_status()
    }

    /// The member's store.
    pub fn store(&self) -> &Arc<Store> {
        self.member.store()
    }

    /// The leases this member knows.
    pub fn lease_ids(&self) -> Vec<i64> {
        self.member.leases().leases()
    }

    /// Watches `[key, range_end)` from `start_revision` through the member's watch hub (what the
    /// Watch service runs for each watcher), handing each group of events to `sink`.
    pub fn watch(
        &self,
        key: Vec<u8>,
        range_end: Vec<u8>,
        start_revision: i64,
        mut sink: impl FnMut(Vec<Event>) + 'static,
    ) -> impl Future<Output = WatchEnd> + 'static {
        let hub = self.member.hub().clone();
        let spec = WatchSpec {
            key,
            range_end,
            start_revision,
            prev_kv: false,
            no_put: false,
            no_delete: false,
        };
        async move {
            hub.run(spec, |events, _| {
                sink(events);
                std::future::ready(true)
            })
            .await
        }
    }
}

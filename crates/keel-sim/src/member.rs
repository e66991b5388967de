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
use keel_server::member::{Engine, Network, Parts, Timer, WatchEnd, WatchSpec};
use keel_server::{Member, ServerConfig, ServerError, StartError};
use keel_state::membership::{Identity, Membership};

/// The simulated cluster's id.
const CLUSTER_ID: u64 = 0x5157;

/// A member's clock: the simulation's start plus the microseconds the simulation has advanced
/// it by (at its own rate; it may jump).
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

impl Timer for SimClock {
    fn now(&self) -> Instant {
        self.base + Duration::from_micros(self.micros.load(Ordering::Relaxed))
    }

    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(Sleep {
            clock: self.clone(),
            until: self.now() + d,
        })
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

/// One simulated member: the member and the engine the simulation turns.
pub struct SimMember {
    member: Arc<Member>,
    engine: Engine,
}

impl SimMember {
    /// Opens (or creates, as one of `voters`) member `id` in `dir`. `incarnation` tells restarts
    /// apart so proposal ids never repeat; `tick` is the length of one raft tick on `clock`, the
    /// member's own.
    pub fn open(
        dir: &Path,
        id: u64,
        voters: Vec<u64>,
        incarnation: u64,
        tick: Duration,
        clock: SimClock,
        outbox: Arc<dyn Outbox>,
    ) -> Result<SimMember, StartError> {
        let storage = |e: &dyn std::fmt::Display| StartError::Storage(e.to_string());
        let store = Arc::new(Store::open(&dir.join("kv")).map_err(|e| storage(&e))?);
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
            name: format!("m{id}"),
            data_dir: dir.to_path_buf(),
            // The log is never compacted: no member needs a snapshot to catch up.
            snapshot_count: u64::MAX,
            ..ServerConfig::default()
        };
        let (member, engine) = Member::assemble(Parts {
            config,
            store,
            log,
            identity: Identity {
                cluster_id: CLUSTER_ID,
                member_id: id,
                token: String::new(),
            },
            membership,
            network: Network::Carried {
                outbox,
                bootstrap: Arc::default(),
            },
            timer: Arc::new(clock),
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

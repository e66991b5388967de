//! Putting a member together from storage that is open and an identity that is known: the raft
//! node over its log, the state machine over its store, the apply loop between them. Start-up
//! does this from etcd's flags (`startup::Server`); the deterministic simulation does it with its
//! own network and clocks. Both get the same `Member` and the same `Engine`.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use keel_mvcc::Store;
use keel_raft::{Bootstrap, Driver, LogStore, Node, NodeConfig, Outbox, Transport};
use keel_rpc::etcd::PbMember;
use keel_state::alarm::Alarms;
use keel_state::auth::AuthStore;
use keel_state::lease::{Clock, Lessor};
use keel_state::membership::{Identity, Membership};
use keel_state::Machine;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::apply::ApplyLoop;
use super::fault::ApplyDelay;
use super::{snapshot::Checkpoints, tasks::Tasks, wait::Registry, Hub, Member, Runtime, Tokens};
use crate::config::ServerConfig;
use crate::error::{ServerError, StartError};

/// How a member reaches its peers.
pub enum Network {
    /// The peer transport: raft messages and snapshots over gRPC to the peers' URLs.
    Transport(Arc<Transport>),
    /// Raft messages handed to the embedder, which carries them (the simulation's network); the
    /// member has no peer URLs to dial.
    Carried {
        /// Where raft messages go.
        outbox: Arc<dyn Outbox>,
        /// Where a snapshot's installation reports its progress.
        bootstrap: Arc<Bootstrap>,
    },
}

impl Network {
    fn outbox(&self) -> Arc<dyn Outbox> {
        match self {
            Network::Transport(t) => t.clone(),
            Network::Carried { outbox, .. } => outbox.clone(),
        }
    }

    /// Where a snapshot's installation reports its progress.
    pub(super) fn bootstrap(&self) -> &Arc<Bootstrap> {
        match self {
            Network::Transport(t) => t.bootstrap(),
            Network::Carried { bootstrap, .. } => bootstrap,
        }
    }
}

/// What a member is made of.
pub struct Parts {
    /// Its configuration (limits, quota, names, URLs, raft and snapshot settings).
    pub config: ServerConfig,
    /// Its MVCC store, open.
    pub store: Arc<Store>,
    /// Its raft log, open (and repaired or forced to a new cluster, as start-up decided).
    pub log: LogStore,
    /// Who it is.
    pub identity: Identity,
    /// The members its state machine knows.
    pub membership: Arc<Membership>,
    /// How it reaches its peers.
    pub network: Network,
    /// Its clock and blocking pool.
    pub runtime: Arc<dyn Runtime>,
    /// Its raft settings.
    pub raft: NodeConfig,
    /// Where snapshots are made and received.
    pub snap_dir: PathBuf,
    /// Its first proposal id (unique across members and restarts).
    pub first_request_id: u64,
}

/// The loops that move a member: raft's driver and the apply loop. In production each runs on a
/// thread of its own (`run`); the simulation turns both (`turn`).
pub struct Engine {
    driver: Driver,
    apply: Arc<Mutex<ApplyLoop>>,
    /// Whether the caller turns the engine (`turn`): the driver then has the apply loop install
    /// received snapshots within its turn.
    turned: bool,
}

impl Member {
    /// Assembles a member from `parts`; it does nothing until its engine runs.
    pub fn assemble(parts: Parts) -> Result<(Arc<Member>, Engine), StartError> {
        let storage = |e: &dyn std::fmt::Display| StartError::Storage(e.to_string());
        let Parts {
            config,
            store,
            mut log,
            identity,
            membership,
            network,
            runtime,
            raft,
            snap_dir,
            first_request_id,
        } = parts;
        let checkpoints =
            Checkpoints::new(store.clone(), snap_dir.clone()).map_err(|e| storage(&e))?;
        log.set_snapshot_source(Arc::new(checkpoints));
        let (committed_tx, committed_rx) = mpsc::channel();
        let (node, driver) =
            Node::stepwise(raft, log, committed_tx, network.outbox()).map_err(|e| storage(&e))?;
        if let Network::Transport(t) = &network {
            t.set_reporter(node.stepper());
        }
        let node = Arc::new(node);
        let (applied_tx, applied_rx) = watch::channel(store.applied_index());
        let registry = Arc::new(Registry::default());
        let hub = Arc::new(Hub::new(store.clone()));
        let clock = runtime.clone();
        let leases = Arc::new(
            Lessor::restore(&store)
                .map_err(|e| storage(&e))?
                .with_clock(Clock::new(move || clock.now())),
        );
        let alarms = Arc::new(Alarms::load(&store).map_err(|e| storage(&e))?);
        let tokens = Tokens::from_flag(&config.auth_token, config.auth_token_ttl)
            .map_err(StartError::Config)?;
        let auth = Arc::new(AuthStore::load(&store, Box::new(tokens)).map_err(|e| storage(&e))?);
        let apply = ApplyLoop {
            compacted_at: store.applied_index(),
            store: store.clone(),
            committed: committed_rx,
            registry: registry.clone(),
            applied: applied_tx,
            hub: hub.clone(),
            machine: Machine {
                leases: leases.clone(),
                members: membership.clone(),
                alarms: alarms.clone(),
                auth: auth.clone(),
            },
            snapshot_count: config.snapshot_count,
            bootstrap: network.bootstrap().clone(),
            node: Arc::downgrade(&node),
            delay: ApplyDelay::from_env(),
            catch_up_entries: config.snapshot_catch_up_entries,
            warn_apply_after: config.warning_apply_duration,
        };
        let member = Arc::new(Member {
            store,
            node,
            registry,
            applied: applied_rx,
            hub,
            leases,
            alarms,
            auth,
            membership,
            identity,
            config,
            network,
            runtime,
            snap_dir,
            next_id: AtomicU64::new(first_request_id),
            db_size: AtomicU64::new(0),
            leader_link: Default::default(),
            reports: Default::default(),
            tasks: Tasks::default(),
        });
        member.refresh_db_size();
        let engine = Engine {
            driver,
            apply: Arc::new(Mutex::new(apply)),
            turned: false,
        };
        Ok((member, engine))
    }
}

/// Records a new cluster's member in its empty store: its identity and the cluster's members, with
/// the applied index where the bootstrapped raft log starts, in one write (a crash leaves all or
/// nothing).
pub fn bootstrap_store(
    store: &Store,
    identity: &Identity,
    members: &[PbMember],
) -> Result<(), StartError> {
    let mut wb = store.write_batch();
    identity.record(&mut wb);
    Membership::bootstrap(&mut wb, members);
    wb.commit(keel_raft::BOOTSTRAP_INDEX)
        .and_then(|_| store.sync())
        .map_err(|e| StartError::Storage(e.to_string()))?;
    Ok(())
}

impl Engine {
    /// Runs the raft driver and the apply loop, each on a thread of its own, until `member`
    /// stops (`Member::stop`).
    pub fn run(self, member: &Member) -> Result<(), StartError> {
        let storage = |e: &dyn std::fmt::Display| StartError::Storage(e.to_string());
        member
            .node
            .run_on_thread(self.driver)
            .map_err(|e| storage(&e))?;
        let apply = Arc::into_inner(self.apply)
            .map(Mutex::into_inner)
            .ok_or_else(|| StartError::Storage("the apply loop is shared".into()))?;
        let thread = std::thread::Builder::new()
            .name("apply".into())
            .spawn(move || apply.run())
            .map_err(|e| storage(&e))?;
        member.tasks.own_thread(thread);
        Ok(())
    }

    /// One turn at time `now`: raft handles what arrived (ticking if `tick`), then the state
    /// machine applies what was committed (the simulation's step).
    pub fn turn(&mut self, now: Instant, tick: bool) -> Result<(), ServerError> {
        if !std::mem::replace(&mut self.turned, true) {
            let apply = self.apply.clone();
            self.driver
                .install_with(Box::new(move |install| apply.lock().install_now(install)));
        }
        self.driver
            .turn(now, tick)
            .map_err(|e| ServerError::Internal(e.to_string()))?;
        self.apply.lock().drain();
        Ok(())
    }
}

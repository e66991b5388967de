//! The raft driver: one thread owns the raft-rs `RawNode` and runs the protocol loop (tick, take
//! proposals and read requests, handle `Ready`). Proposals that arrive while a batch is being synced
//! queue up and go into the next batch together: one fsync serves them all.
//!
//! It hands committed entries, in order, to the state machine's channel and never applies them itself
//! (conf changes excepted: raft must learn the new membership from the driver).

mod driver;
mod read_index;
mod ready;
mod status;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType, Snapshot,
};
use raft::{ProgressState, RawNode, SnapshotStatus, StateRole};
use tokio::sync::oneshot;

use crate::handoff;
use crate::logger::raft_logger;
use crate::transport::Transport;
use crate::{LogStore, RaftError, Result};

/// Where the driver sends raft messages: the peer transport, or the simulation's network.
pub trait Outbox: Send + Sync {
    /// Sends messages to their members (best effort: raft retransmits what is lost).
    fn send(&self, msgs: Vec<Message>);
    /// Sends a snapshot message on its own stream; the outcome is reported through `reporter`.
    fn send_snapshot(&self, msg: Message, reporter: Stepper);
}

impl Outbox for Transport {
    fn send(&self, msgs: Vec<Message>) {
        Transport::send(self, msgs)
    }

    fn send_snapshot(&self, msg: Message, reporter: Stepper) {
        Transport::send_snapshot(self, msg, reporter)
    }
}

/// Most messages taken from the queue per loop turn, so one turn's batch stays bounded.
const MAX_DRAIN: usize = 8192;

/// How a node is set up.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This member's raft id.
    pub id: u64,
    /// The voters to bootstrap with when the log store is empty; none for a member joining a
    /// running cluster (it waits for the leader's snapshot).
    pub voters: Vec<u64>,
    /// The raft index the state machine has already applied (replay starts after it).
    pub applied: u64,
    /// Length of one raft tick.
    pub tick_interval: Duration,
    /// Ticks without a leader before an election.
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Whether raft spreads each election timeout at random over [election_ticks,
    /// 2 * election_ticks). raft-rs draws it from an unseeded thread RNG, so the deterministic
    /// simulation turns it off and spreads elections by skewing members' clocks instead.
    pub random_election_timeout: bool,
    /// Run raft's pre-vote phase before an election (a member that was cut off does not depose
    /// a healthy leader when it returns).
    pub pre_vote: bool,
    /// Start with all but one tick of the election timeout run out (etcd's
    /// --initial-election-tick-advance): a cluster starting together elects a leader sooner.
    pub initial_election_tick_advance: bool,
}

impl NodeConfig {
    /// etcd's defaults: 100 ms heartbeat, 1 s election timeout.
    pub fn new(id: u64, voters: Vec<u64>, applied: u64) -> Self {
        NodeConfig {
            id,
            voters,
            applied,
            tick_interval: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 1,
            random_election_timeout: true,
            pre_vote: true,
            initial_election_tick_advance: false,
        }
    }
}

/// This member's role in raft.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// Following a leader (or waiting for one).
    #[default]
    Follower,
    /// Asking for votes.
    Candidate,
    /// Pre-vote phase before a candidacy.
    PreCandidate,
    /// The leader.
    Leader,
}

impl Role {
    fn of(state: StateRole) -> Role {
        match state {
            StateRole::Follower => Role::Follower,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Leader => Role::Leader,
        }
    }
}

/// How the leader replicates to one member (raft-rs's progress).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replication {
    /// Finding where the member's log matches.
    Probing,
    /// Streaming entries.
    Replicating,
    /// Receiving a snapshot.
    Snapshot,
}

/// What the leader knows of one member's replication.
#[derive(Clone, Copy, Debug)]
pub struct PeerProgress {
    /// The member.
    pub id: u64,
    /// Highest index known to be in its log.
    pub matched: u64,
    /// How entries are sent to it.
    pub state: Replication,
    /// The snapshot index being sent to it (0 when none).
    pub pending_snapshot: u64,
    /// Whether it answered the leader within the last election timeout (by the time of its
    /// last message, not raft's check-quorum flag, which each check resets).
    pub active: bool,
    /// Whether it is a learner.
    pub learner: bool,
    /// When it last responded to the leader, if since this member led.
    pub last_contact: Option<Instant>,
    /// When the oldest entry it lacks was appended to the leader's log (None while caught up):
    /// its lag as a time, within one tick.
    pub behind_since: Option<Instant>,
}

/// What the node last knew of raft's state.
#[derive(Clone, Debug, Default)]
pub struct RaftStatus {
    /// This member's id.
    pub id: u64,
    /// The leader's id, 0 when there is none.
    pub leader_id: u64,
    /// The current term.
    pub term: u64,
    /// The highest index known committed.
    pub commit_index: u64,
    /// This member's role.
    pub role: Role,
    /// The last index in this member's log.
    pub last_index: u64,
    /// Leader changes this member has seen since it started.
    pub leader_changes: u64,
    /// On the leader: every member's replication, refreshed every tick.
    pub progress: Vec<PeerProgress>,
}

/// A snapshot the state machine must install before raft goes on.
pub struct InstallSnapshot {
    /// The raft index the image was applied through.
    pub index: u64,
    /// The term of that index.
    pub term: u64,
    /// Where the received image is.
    pub dir: PathBuf,
    /// Answered once the image is installed (or failed to).
    pub done: mpsc::Sender<std::result::Result<(), String>>,
}

/// What the driver hands the state machine, in log order.
pub enum Committed {
    /// Committed entries to apply.
    Entries(Vec<Entry>),
    /// A snapshot replacing the state.
    Snapshot(InstallSnapshot),
}

/// Told, on the driver thread, why raft did not take a proposal into its log.
pub type Refused = Box<dyn FnOnce(RaftError) + Send>;

enum Msg {
    Step(Message),
    Propose(Vec<u8>, Refused),
    ProposeAsLeader(Vec<u8>, Refused),
    ProposeConfChange(ConfChange, oneshot::Sender<Result<()>>),
    ReportSnapshot(u64, bool),
    Unreachable(u64),
    ReadIndex(oneshot::Sender<Result<u64>>),
    CompactLog(u64),
    TransferLeader(u64),
    Shutdown,
}

/// Feeds raft messages from peers into the local node.
#[derive(Clone)]
pub struct Stepper {
    tx: mpsc::Sender<Msg>,
}

impl Stepper {
    /// Hands a message from a peer to raft.
    pub fn step(&self, m: Message) {
        let _ = self.tx.send(Msg::Step(m));
    }

    /// Tells raft that member `to` could not be reached: the leader stops streaming entries to
    /// it and probes instead.
    pub fn report_unreachable(&self, to: u64) {
        let _ = self.tx.send(Msg::Unreachable(to));
    }

    /// Tells raft whether the snapshot sent to `to` arrived.
    pub fn report_snapshot(&self, to: u64, delivered: bool) {
        let _ = self.tx.send(Msg::ReportSnapshot(to, delivered));
    }
}

/// Handle to the raft driver thread.
pub struct Node {
    tx: mpsc::Sender<Msg>,
    status: Arc<RwLock<RaftStatus>>,
    thread: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

impl Node {
    /// Runs `driver` (this node's, from `stepwise`) on its own thread until `shutdown`.
    pub fn run_on_thread(&self, driver: Driver) -> Result<()> {
        let thread = std::thread::Builder::new()
            .name("raft".into())
            .spawn(move || driver.run())?;
        *self.thread.lock() = Some(thread);
        Ok(())
    }

    /// A node and its driver, which the caller runs on a thread of its own (`run_on_thread`) or
    /// turns itself (`Driver::turn`, on its own clock: the deterministic simulation runs whole
    /// clusters this way in one thread). Committed entries go to `committed`, in log order.
    pub fn stepwise(
        cfg: NodeConfig,
        mut store: LogStore,
        committed: mpsc::Sender<Committed>,
        outbox: Arc<dyn Outbox>,
    ) -> Result<(Node, Driver)> {
        if store.is_empty() && !cfg.voters.is_empty() {
            store.bootstrap(ConfState {
                voters: cfg.voters.clone(),
                ..Default::default()
            })?;
        }
        // The commit index is persisted lazily, but nothing is applied before it is committed: a state
        // machine that applied further than the stored HardState says proves those entries committed.
        if cfg.applied > store.hard_state().commit {
            store.raise_commit(cfg.applied)?;
        }
        let raft_cfg = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied: cfg.applied,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: cfg.pre_vote,
            // One value only: raft draws in [min, max).
            max_election_tick: if cfg.random_election_timeout {
                0
            } else {
                cfg.election_ticks + 1
            },
            // `batch_append` stays off: raft-rs 0.7 merges new entries into any unsent MsgAppend
            // to the same follower when that message has no entries, even one made for an older
            // next index; the follower then acknowledges entries it does not have (the
            // simulation found it). Proposals are batched per turn instead (propose_queued).
            ..Default::default()
        };
        let single_voter = store.conf_state().voters == [cfg.id];
        let mut raw = RawNode::new(&raft_cfg, store, &raft_logger())?;
        if single_voter {
            // Alone in the cluster: no one to wait for, lead now instead of after an election timeout.
            raw.campaign()?;
        } else if cfg.initial_election_tick_advance {
            // As etcd: a member of a starting cluster need not wait a whole election timeout
            // for a leader that does not exist yet; a running cluster's leader still reaches
            // it within the tick left (and pre-vote keeps a rejoining member from deposing it).
            for _ in 1..cfg.election_ticks {
                raw.tick();
            }
        }
        let status = Arc::new(RwLock::new(RaftStatus {
            id: cfg.id,
            ..Default::default()
        }));
        let (tx, rx) = mpsc::channel();
        let driver = Driver {
            raw,
            rx,
            reporter: Stepper { tx: tx.clone() },
            last_contact: HashMap::new(),
            appended: std::collections::VecDeque::new(),
            committed,
            outbox,
            status: status.clone(),
            tick: cfg.tick_interval,
            election_ticks: cfg.election_ticks,
            pending_reads: Vec::new(),
            reads_in_flight: HashMap::new(),
            next_read_id: 0,
            deferred_reads: Vec::new(),
            proposals: Vec::new(),
            leader_proposals: Vec::new(),
            now: Instant::now(),
            handled: 0,
            installer: None,
        };
        let node = Node {
            tx,
            status,
            thread: parking_lot::Mutex::new(None),
        };
        Ok((node, driver))
    }

    /// The handle the peer service steps incoming messages through.
    pub fn stepper(&self) -> Stepper {
        Stepper {
            tx: self.tx.clone(),
        }
    }

    /// Proposes `data` as a normal entry without waiting for raft: the caller learns the outcome
    /// when the entry is applied, or from `refused` if raft does not take it (no leader). An
    /// accepted proposal gets no answer of its own, which spares its proposer a wake-up per write.
    pub fn propose(&self, data: Vec<u8>, refused: Refused) -> Result<()> {
        self.tx
            .send(Msg::Propose(data, refused))
            .map_err(|_| RaftError::Stopped)
    }

    /// As `propose`, but only into this member's own log while it leads: refused with `NotLeader`
    /// if it does not lead when raft takes it, never forwarded. For what a leader decides from its
    /// own state (an expired lease's revoke): a deposed leader that has not noticed yet must not
    /// have its decision committed by the leader that replaced it.
    pub fn propose_as_leader(&self, data: Vec<u8>, refused: Refused) -> Result<()> {
        self.tx
            .send(Msg::ProposeAsLeader(data, refused))
            .map_err(|_| RaftError::Stopped)
    }

    /// The raft index a linearizable read must wait to see applied (ReadIndex; concurrent requests
    /// share one round).
    pub async fn read_index(&self) -> Result<u64> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Msg::ReadIndex(done))
            .map_err(|_| RaftError::Stopped)?;
        rx.await.map_err(|_| RaftError::Stopped)?
    }

    /// Proposes a membership change. Resolves once raft accepted it; the caller learns the outcome
    /// when the entry is applied. A leader with a change still unapplied refuses another.
    pub async fn propose_conf_change(&self, cc: ConfChange) -> Result<()> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Msg::ProposeConfChange(cc, done))
            .map_err(|_| RaftError::Stopped)?;
        rx.await.map_err(|_| RaftError::Stopped)?
    }

    /// Asks raft to hand leadership to `target` (effective only on the leader; watch `status`).
    pub fn transfer_leader(&self, target: u64) {
        let _ = self.tx.send(Msg::TransferLeader(target));
    }

    /// Drops the raft log up to `index`; the caller has made the state machine durable up to it.
    pub fn compact_log(&self, index: u64) {
        let _ = self.tx.send(Msg::CompactLog(index));
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.status.read().term
    }

    /// This member's role and the leader it knows (cheap: no copy of the replication progress).
    pub fn role(&self) -> (Role, u64) {
        let s = self.status.read();
        (s.role, s.leader_id)
    }

    /// What raft's state was after the last turn of the driver.
    pub fn status(&self) -> RaftStatus {
        self.status.read().clone()
    }

    /// Stops the driver and waits for it; committed entries already handed off still get applied.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Msg::Shutdown);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A linearizable read waiting for its read index.
type Reader = oneshot::Sender<Result<u64>>;

/// The raft protocol loop of one member: on its own thread (`Node::start`) or turned by the caller
/// (`Node::stepwise`).
pub struct Driver {
    raw: RawNode<LogStore>,
    rx: mpsc::Receiver<Msg>,
    /// The driver's own input, for transfers that report back (snapshots).
    reporter: Stepper,
    /// When each member last answered, while this member leads.
    last_contact: HashMap<u64, Instant>,
    /// While this member leads, its log's last index at each tick it grew: entries up to the
    /// index existed at the time. The first record past a member's matched index dates the
    /// oldest entry it lacks. Records no member needs are dropped.
    appended: std::collections::VecDeque<(u64, Instant)>,
    committed: mpsc::Sender<Committed>,
    outbox: Arc<dyn Outbox>,
    status: Arc<RwLock<RaftStatus>>,
    tick: Duration,
    election_ticks: usize,
    /// Read requests not yet sent as a ReadIndex round.
    pending_reads: Vec<Reader>,
    /// ReadIndex rounds under way, by the id carried in their context, with when they were sent.
    reads_in_flight: HashMap<u64, (Instant, Vec<Reader>)>,
    next_read_id: u64,
    /// Followers' ReadIndex requests that arrived before this leader committed in its term.
    deferred_reads: Vec<Message>,
    /// Proposals taken from the queue this turn, proposed together.
    proposals: Vec<(Vec<u8>, Refused)>,
    /// Proposals this turn that only this member's log may take, as leader.
    leader_proposals: Vec<(Vec<u8>, Refused)>,
    /// The time of the current turn.
    now: Instant,
    /// Messages the last turn took from the queue (how long to poll before sleeping).
    handled: usize,
    /// Installs a received snapshot within the driver's turn, when the caller turns the apply
    /// loop too (see `install_with`); else the apply loop's thread installs it.
    installer: Option<Installer>,
}

/// Installs a snapshot in the state machine and answers on its `done`.
pub type Installer = Box<dyn FnMut(InstallSnapshot) + Send>;

impl Driver {
    /// Has `installer` install received snapshots, at once, within the turn that takes them:
    /// for a caller that turns both this driver and the apply loop on one thread (the
    /// simulation), where handing the snapshot to the apply loop and waiting would never end.
    pub fn install_with(&mut self, installer: Installer) {
        self.installer = Some(installer);
    }
}

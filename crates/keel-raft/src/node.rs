//! The raft driver: one thread owns the raft-rs `RawNode` and runs the protocol loop (tick, take
//! proposals and read requests, handle `Ready`). Proposals that arrive while a batch is being synced
//! queue up and go into the next batch together: one fsync serves them all.
//!
//! It hands committed entries, in order, to the state machine's channel and never applies them itself
//! (conf changes excepted: raft must learn the new membership from the driver).

use std::collections::HashMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Message};
use raft::{RawNode, StateRole};
use tokio::sync::oneshot;

use crate::logger::raft_logger;
use crate::transport::Transport;
use crate::{LogStore, RaftError, Result};

/// Most messages taken from the queue per loop turn, so one turn's batch stays bounded.
const MAX_DRAIN: usize = 8192;

/// How a node is set up.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This member's raft id.
    pub id: u64,
    /// The voters to bootstrap with when the log store is empty.
    pub voters: Vec<u64>,
    /// The raft index the state machine has already applied (replay starts after it).
    pub applied: u64,
    /// Length of one raft tick.
    pub tick_interval: Duration,
    /// Ticks without a leader before an election.
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
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

/// What the node last knew of raft's state.
#[derive(Clone, Copy, Debug, Default)]
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
}

enum Msg {
    Step(Message),
    Propose(Vec<u8>, oneshot::Sender<Result<()>>),
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
}

/// Handle to the raft driver thread.
pub struct Node {
    tx: mpsc::Sender<Msg>,
    status: Arc<RwLock<RaftStatus>>,
    thread: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

impl Node {
    /// Starts the driver on its own thread. Committed entries go to `committed`, in log order.
    pub fn start(
        cfg: NodeConfig,
        mut store: LogStore,
        committed: mpsc::Sender<Vec<Entry>>,
        transport: Arc<Transport>,
    ) -> Result<Node> {
        if store.is_empty() {
            store.set_conf_state(ConfState {
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
            pre_vote: true,
            ..Default::default()
        };
        let single_voter = store.conf_state().voters == [cfg.id];
        let mut raw = RawNode::new(&raft_cfg, store, &raft_logger())?;
        if single_voter {
            // Alone in the cluster: no one to wait for, lead now instead of after an election timeout.
            raw.campaign()?;
        }
        let status = Arc::new(RwLock::new(RaftStatus {
            id: cfg.id,
            ..Default::default()
        }));
        let (tx, rx) = mpsc::channel();
        let driver = Driver {
            raw,
            rx,
            committed,
            transport,
            status: status.clone(),
            tick: cfg.tick_interval,
            election_ticks: cfg.election_ticks,
            pending_reads: Vec::new(),
            reads_in_flight: HashMap::new(),
            next_read_id: 0,
        };
        let thread = std::thread::Builder::new()
            .name("raft".into())
            .spawn(move || driver.run())?;
        Ok(Node {
            tx,
            status,
            thread: parking_lot::Mutex::new(Some(thread)),
        })
    }

    /// The handle the peer service steps incoming messages through.
    pub fn stepper(&self) -> Stepper {
        Stepper {
            tx: self.tx.clone(),
        }
    }

    /// Proposes `data` as a normal entry. Resolves once raft accepted it into the leader's log;
    /// the caller learns the outcome when the entry is applied.
    pub async fn propose(&self, data: Vec<u8>) -> Result<()> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Msg::Propose(data, done))
            .map_err(|_| RaftError::Stopped)?;
        rx.await.map_err(|_| RaftError::Stopped)?
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

    /// Asks raft to hand leadership to `target` (effective only on the leader; watch `status`).
    pub fn transfer_leader(&self, target: u64) {
        let _ = self.tx.send(Msg::TransferLeader(target));
    }

    /// Drops the raft log up to `index`; the caller has made the state machine durable up to it.
    pub fn compact_log(&self, index: u64) {
        let _ = self.tx.send(Msg::CompactLog(index));
    }

    /// What raft's state was after the last turn of the driver.
    pub fn status(&self) -> RaftStatus {
        *self.status.read()
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

struct Driver {
    raw: RawNode<LogStore>,
    rx: mpsc::Receiver<Msg>,
    committed: mpsc::Sender<Vec<Entry>>,
    transport: Arc<Transport>,
    status: Arc<RwLock<RaftStatus>>,
    tick: Duration,
    election_ticks: usize,
    /// Read requests not yet sent as a ReadIndex round.
    pending_reads: Vec<Reader>,
    /// ReadIndex rounds under way, by the id carried in their context, with when they were sent.
    reads_in_flight: HashMap<u64, (Instant, Vec<Reader>)>,
    next_read_id: u64,
}

impl Driver {
    fn run(mut self) {
        let mut next_tick = Instant::now() + self.tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(msg) => {
                    if !self.handle(msg) {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // Everything queued while the last batch was syncing joins this batch.
            for _ in 0..MAX_DRAIN {
                match self.rx.try_recv() {
                    Ok(msg) => {
                        if !self.handle(msg) {
                            return self.stop();
                        }
                    }
                    Err(_) => break,
                }
            }
            if Instant::now() >= next_tick {
                self.raw.tick();
                next_tick = Instant::now() + self.tick;
            }
            self.retry_lost_reads();
            self.start_read_round();
            if let Err(e) = self.on_ready() {
                tracing::error!(error = %e, "raft driver stopped: storage failed");
                break;
            }
            self.publish_status();
        }
        self.stop();
    }

    fn stop(&mut self) {
        for done in self.pending_reads.drain(..) {
            let _ = done.send(Err(RaftError::Stopped));
        }
        self.reads_in_flight.clear();
    }

    /// Returns false on shutdown.
    fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Step(m) => {
                // Messages from removed members or stale terms are refused by raft; nothing to do.
                if let Err(e) = self.raw.step(m) {
                    tracing::debug!(error = %e, "raft message not stepped");
                }
            }
            Msg::Propose(data, done) => {
                // A follower forwards the proposal to the leader inside raft.
                let res = if self.raw.raft.leader_id == raft::INVALID_ID {
                    Err(RaftError::NoLeader)
                } else {
                    self.raw.propose(vec![], data).map_err(RaftError::from)
                };
                let _ = done.send(res);
            }
            Msg::ReadIndex(done) => self.pending_reads.push(done),
            Msg::CompactLog(index) => {
                let index = self.compactable(index);
                if let Err(e) = self.raw.mut_store().compact(index) {
                    tracing::warn!(error = %e, index, "raft log compaction failed");
                }
            }
            Msg::TransferLeader(target) => self.raw.transfer_leader(target),
            Msg::Shutdown => return false,
        }
        true
    }

    /// A leader keeps every entry some member still needs: without raft snapshots (not built yet),
    /// a member behind the compacted log could never catch up. The log then grows while a member
    /// is down, which is the lesser harm.
    fn compactable(&self, index: u64) -> u64 {
        if self.raw.raft.state != StateRole::Leader {
            return index;
        }
        let behind = self
            .raw
            .raft
            .prs()
            .iter()
            .map(|(_, p)| p.matched)
            .min()
            .unwrap_or(index);
        index.min(behind)
    }

    fn start_read_round(&mut self) {
        if self.pending_reads.is_empty() {
            return;
        }
        if self.raw.raft.leader_id == raft::INVALID_ID {
            for done in self.pending_reads.drain(..) {
                let _ = done.send(Err(RaftError::NoLeader));
            }
            return;
        }
        self.next_read_id += 1;
        self.raw
            .read_index(self.next_read_id.to_be_bytes().to_vec());
        self.reads_in_flight.insert(
            self.next_read_id,
            (Instant::now(), std::mem::take(&mut self.pending_reads)),
        );
    }

    /// A round whose answer has not come within an election timeout was lost (sent to a leader
    /// that died, or dropped on the way): its readers join the next round, once a leader is known.
    fn retry_lost_reads(&mut self) {
        if self.raw.raft.leader_id == raft::INVALID_ID {
            return;
        }
        let lost_before = Instant::now() - self.tick * self.election_ticks as u32;
        let lost: Vec<u64> = self
            .reads_in_flight
            .iter()
            .filter(|(_, (sent, _))| *sent < lost_before)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            if let Some((_, waiters)) = self.reads_in_flight.remove(&id) {
                tracing::debug!(readers = waiters.len(), "ReadIndex round lost; retrying");
                self.pending_reads.extend(waiters);
            }
        }
    }

    /// Handles one `Ready` in the order raft requires.
    fn on_ready(&mut self) -> Result<()> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        // Messages a leader may send before its own append is durable (raft thesis 10.2.1).
        self.send(ready.take_messages());
        // Committed entries go to the state machine; they are durable already.
        self.hand_off(ready.take_committed_entries())?;
        self.finish_reads(ready.take_read_states());
        // The durability point: new entries and HardState in one synced write.
        self.raw.mut_store().append(ready.entries(), ready.hs())?;
        // Messages that promise what was just persisted (votes, append responses).
        self.send(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit);
        }
        self.send(light.take_messages());
        self.hand_off(light.take_committed_entries())?;
        self.raw.advance_apply();
        Ok(())
    }

    fn send(&mut self, msgs: Vec<Message>) {
        self.transport.send(msgs);
    }

    fn hand_off(&mut self, entries: Vec<Entry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        for e in &entries {
            self.apply_conf_change(e)?;
        }
        self.committed.send(entries).map_err(|_| RaftError::Stopped)
    }

    fn apply_conf_change(&mut self, e: &Entry) -> Result<()> {
        let cs = match e.get_entry_type() {
            EntryType::EntryConfChange if !e.data.is_empty() => self
                .raw
                .apply_conf_change(&ConfChange::parse_from_bytes(&e.data)?)?,
            EntryType::EntryConfChangeV2 if !e.data.is_empty() => self
                .raw
                .apply_conf_change(&ConfChangeV2::parse_from_bytes(&e.data)?)?,
            _ => return Ok(()),
        };
        tracing::info!(voters = ?cs.voters, learners = ?cs.learners, "membership changed");
        self.raw.mut_store().set_conf_state(cs)
    }

    fn finish_reads(&mut self, states: Vec<raft::ReadState>) {
        for rs in states {
            let Ok(id) = <[u8; 8]>::try_from(rs.request_ctx.as_slice()) else {
                continue;
            };
            let waiters = self.reads_in_flight.remove(&u64::from_be_bytes(id));
            for done in waiters.map(|(_, w)| w).unwrap_or_default() {
                let _ = done.send(Ok(rs.index));
            }
        }
    }

    fn publish_status(&self) {
        let r = &self.raw.raft;
        let role = match r.state {
            StateRole::Follower => Role::Follower,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Leader => Role::Leader,
        };
        let next = RaftStatus {
            id: r.id,
            leader_id: r.leader_id,
            term: r.term,
            commit_index: r.raft_log.committed,
            role,
        };
        let mut s = self.status.write();
        if s.leader_id != next.leader_id {
            tracing::info!(
                leader = format!("{:x}", next.leader_id),
                term = next.term,
                "raft leader changed"
            );
        }
        *s = next;
    }
}

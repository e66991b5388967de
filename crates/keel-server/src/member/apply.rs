//! The apply loop: committed entries from the raft driver applied in log order, many entries to one
//! RocksDB write batch that also records the applied index; then their proposers are completed and
//! watchers see the changes. The state machine itself (what one request does) is `keel-state`.

use std::sync::{mpsc, Arc, Weak};

use keel_mvcc::Store;
use keel_raft::{Committed, ConfChangeType, Entry, EntryType, InstallSnapshot, Node};
use keel_rpc::{InternalRequest, MemberChange};
use keel_state::apply;
use keel_state::membership::MemberChangeKind;
use keel_state::{Machine, Response};
use prost::Message;
use tokio::sync::watch;

use super::counters::counters;
use super::fault::ApplyDelay;
use super::lessor::PROMOTE_EXTEND;
use super::snapshot::{encode_position, META_INSTALLED};
use super::wait::Registry;
use super::watch::Hub;
use crate::ServerError;

/// What a proposer receives once its entry is applied.
pub type Applied = Result<Response, ServerError>;

/// The apply loop: owns the write side of the store.
pub struct ApplyLoop {
    /// The store entries are applied to.
    pub(super) store: Arc<Store>,
    /// Committed entries and snapshots from the raft driver.
    pub(super) committed: mpsc::Receiver<Committed>,
    /// Proposers waiting for their results.
    pub(super) registry: Arc<Registry>,
    /// Publishes the applied index (linearizable reads wait on it).
    pub(super) applied: watch::Sender<u64>,
    /// Where committed changes go for watchers.
    pub(super) hub: Arc<Hub>,
    /// Leases, members, alarms and auth.
    pub(super) machine: Machine,
    /// Log compaction every this many applied entries.
    pub(super) snapshot_count: u64,
    /// Where a snapshot's installation reports its progress and failure.
    pub(super) bootstrap: Arc<keel_raft::Bootstrap>,
    /// The raft node: whether it leads in a term (a new leader's lessor is promoted when its
    /// term's first, empty, entry is applied, so every lease granted in that term is granted by a
    /// primary lessor and runs from its grant: etcd promotes on becoming leader), and where the
    /// log is compacted. Weak: the member owns the node.
    pub(super) node: Weak<Node>,
    /// The applied index at the last log compaction.
    pub(super) compacted_at: u64,
    /// A slow state machine, when a test asks for one.
    pub(super) delay: ApplyDelay,
    /// Entries kept in the raft log behind a compaction, for slow followers to catch up from
    /// (etcd's --experimental-snapshot-catchup-entries).
    pub(super) catch_up_entries: u64,
    /// Applying one request for longer than this is logged (etcd's
    /// --experimental-warning-apply-duration).
    pub(super) warn_apply_after: std::time::Duration,
}

impl ApplyLoop {
    /// Runs until the raft driver goes away.
    pub fn run(mut self) {
        let mut applied = 0;
        loop {
            let poll = keel_raft::handoff::poll_after(applied);
            let Ok(first) = keel_raft::handoff::recv_until(&self.committed, None, poll) else {
                return;
            };
            applied = self.apply_from(first);
        }
    }

    /// Applies what the driver has handed off so far, without waiting (the simulation's turns).
    pub fn drain(&mut self) {
        while let Ok(first) = self.committed.try_recv() {
            self.apply_from(first);
        }
    }

    /// Applies what the driver handed off before `install`, then installs it (a snapshot the
    /// driver received within a turn of the simulation's).
    pub(super) fn install_now(&mut self, install: InstallSnapshot) {
        self.drain();
        self.apply_from(Committed::Snapshot(install));
    }

    /// Applies `first` and what else is queued behind it, many entries to one write batch; the
    /// number of entries.
    fn apply_from(&mut self, first: Committed) -> usize {
        let mut batches = Vec::new();
        let mut next = Some(first);
        while let Some(c) = next.take() {
            match c {
                Committed::Entries(entries) => batches.push(entries),
                Committed::Snapshot(install) => {
                    // What came before the snapshot is applied first, in order.
                    self.apply_or_abort(&batches);
                    batches.clear();
                    self.install(install);
                    self.compacted_at = self.store.applied_index();
                }
            }
            if batches.len() < 64 {
                next = self.committed.try_recv().ok();
            }
        }
        if batches.is_empty() {
            return 0;
        }
        self.delay.wait();
        let last = self.apply_or_abort(&batches);
        if last >= self.compacted_at.saturating_add(self.snapshot_count) {
            self.compact_raft_log(last);
            self.compacted_at = last;
        }
        batches.iter().map(Vec::len).sum()
    }

    fn apply_or_abort(&self, batches: &[Vec<Entry>]) -> u64 {
        if batches.is_empty() {
            return self.store.applied_index();
        }
        match self.apply_batch(batches.iter().flatten()) {
            Ok(last) => last,
            Err(e) => {
                // The batch was not committed: the raft log still has it and a restart replays it.
                tracing::error!(error = %e, "apply failed; stopping to keep the state machine consistent");
                std::process::abort();
            }
        }
    }

    fn reload_derived(&self) -> Result<(), ServerError> {
        let m = &self.machine;
        m.leases.reload(&self.store)?;
        m.alarms.reload(&self.store)?;
        m.auth.reload(&self.store)?;
        Ok(m.members.reload(&self.store)?)
    }

    /// Replaces the state with a received snapshot, then everything derived from it: leases,
    /// alarms, members, watchers (they catch up from the new history).
    fn install(&self, s: InstallSnapshot) {
        self.bootstrap.installing(s.index);
        let position = encode_position(s.index, s.term);
        let mut progress = |done, total| self.bootstrap.advanced(done, total);
        let res = self
            .store
            .install(&s.dir, META_INSTALLED, &position, &mut progress)
            .map_err(|e| e.to_string())
            .and_then(|()| self.reload_derived().map_err(|e| e.to_string()));
        match &res {
            Ok(()) => {
                self.bootstrap.finished();
                self.hub.resync();
                self.applied.send_replace(self.store.applied_index());
                let _ = std::fs::remove_dir_all(&s.dir);
            }
            Err(e) => self
                .bootstrap
                .failed(format!("installing a snapshot failed: {e}")),
        }
        let _ = s.done.send(res);
    }

    fn apply_batch<'e>(
        &self,
        entries: impl Iterator<Item = &'e Entry>,
    ) -> Result<u64, ServerError> {
        let mut wb = self.store.write_batch();
        let mut results = Vec::new();
        let mut last = self.store.applied_index();
        for e in entries {
            if e.index <= last {
                continue;
            }
            last = e.index;
            if let Some(cc) = keel_raft::conf_change(e) {
                let Ok(change) = MemberChange::decode(cc.get_context()) else {
                    tracing::error!(index = e.index, "skipping a conf change without its member");
                    continue;
                };
                let mut member = change.member.unwrap_or_default();
                member.id = cc.node_id;
                let res = self
                    .machine
                    .members
                    .apply_conf_change(&mut wb, change_kind(cc.get_change_type()), member)
                    .map(Response::Members)
                    .map_err(ServerError::from);
                results.push((change.id, res));
                continue;
            }
            if e.get_entry_type() != EntryType::EntryNormal {
                continue;
            }
            if e.data.is_empty() {
                if self.leading_at(e.term) {
                    self.machine.leases.promote(PROMOTE_EXTEND);
                }
                continue;
            }
            let req = match InternalRequest::decode(&e.data[..]) {
                Ok(req) => req,
                Err(err) => {
                    // Every member skips the same undecodable entry, so they stay identical.
                    tracing::error!(index = e.index, error = %err, "skipping undecodable raft entry");
                    continue;
                }
            };
            let Some(body) = req.body else { continue };
            let started = std::time::Instant::now();
            let res = apply(&mut wb, &self.machine, &body, req.auth.as_ref(), e.index);
            let took = started.elapsed();
            if took > self.warn_apply_after {
                tracing::warn!(
                    took = ?took,
                    expected_duration = ?self.warn_apply_after,
                    index = e.index,
                    request = %format!("{body:?}").chars().take(160).collect::<String>(),
                    "apply request took too long"
                );
            }
            if let Err(keel_state::StateError::Storage(msg)) = &res {
                return Err(ServerError::Internal(msg.clone()));
            }
            results.push((req.id, res.map_err(ServerError::from)));
        }
        let started = std::time::Instant::now();
        let changes = wb.commit(last)?;
        counters()
            .backend_commit
            .observe(started.elapsed().as_secs_f64());
        self.hub.publish(changes);
        self.applied.send_replace(last);
        self.registry.complete(results);
        Ok(last)
    }

    fn compact_raft_log(&self, applied: u64) {
        // The log may only go once the state it produced is durable.
        if let Err(e) = self.store.sync() {
            tracing::warn!(error = %e, "syncing the store before log compaction failed");
            return;
        }
        if applied > self.catch_up_entries {
            if let Some(node) = self.node.upgrade() {
                node.compact_log(applied - self.catch_up_entries);
            }
        }
    }

    /// Whether this member leads in `term`.
    fn leading_at(&self, term: u64) -> bool {
        self.node
            .upgrade()
            .is_some_and(|n| n.role().0 == keel_raft::Role::Leader && n.term() == term)
    }
}

/// The membership change a raft conf change makes.
pub fn change_kind(t: ConfChangeType) -> MemberChangeKind {
    match t {
        ConfChangeType::AddNode => MemberChangeKind::AddVoter,
        ConfChangeType::AddLearnerNode => MemberChangeKind::AddLearner,
        ConfChangeType::RemoveNode => MemberChangeKind::Remove,
    }
}

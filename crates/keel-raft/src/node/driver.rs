//! The driver loop: turns, the messages it takes from its queue, and proposals batched per turn.

use super::*;

impl Driver {
    pub(super) fn run(mut self) {
        let mut next_tick = Instant::now() + self.tick;
        loop {
            let poll = handoff::poll_after(self.handled);
            let first = match handoff::recv_until(&self.rx, Some(next_tick), poll) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let now = Instant::now();
            let tick = now >= next_tick;
            if tick {
                next_tick = now + self.tick;
            }
            match self.turn_with(first, now, tick) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    tracing::error!(error = %e, "raft driver stopped: storage failed");
                    break;
                }
            }
        }
        self.stop();
    }

    /// One turn of the loop at time `now`: handles what is queued (messages, proposals, reads),
    /// ticks raft if `tick`, then persists, sends and hands off what raft has ready. False once
    /// the node was shut down; an error when storage failed (the driver must not go on).
    pub fn turn(&mut self, now: Instant, tick: bool) -> Result<bool> {
        self.turn_with(None, now, tick)
    }

    pub(super) fn turn_with(
        &mut self,
        first: Option<Msg>,
        now: Instant,
        tick: bool,
    ) -> Result<bool> {
        self.now = now;
        // Everything queued while the last batch was syncing joins this batch.
        let mut first = first;
        self.handled = 0;
        for _ in 0..=MAX_DRAIN {
            let Some(msg) = first.take().or_else(|| self.rx.try_recv().ok()) else {
                break;
            };
            self.handled += 1;
            if !self.handle(msg) {
                self.stop();
                return Ok(false);
            }
        }
        self.propose_queued();
        if tick {
            self.raw.tick();
        }
        self.retry_lost_reads();
        self.release_deferred_reads();
        self.start_read_round();
        // The state machine may ask about the role while it applies what this turn hands off
        // (a new leader's lessor is promoted on its term's first entry): publish it first.
        self.publish_role();
        self.on_ready()?;
        self.publish_status(tick);
        Ok(true)
    }

    pub(super) fn stop(&mut self) {
        let leader_only = self.leader_proposals.drain(..);
        for (_, refused) in self.proposals.drain(..).chain(leader_only) {
            refused(RaftError::Stopped);
        }
        for done in self.pending_reads.drain(..) {
            let _ = done.send(Err(RaftError::Stopped));
        }
        self.reads_in_flight.clear();
    }

    /// Returns false on shutdown.
    pub(super) fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Step(m) => {
                if self.raw.raft.state == StateRole::Leader {
                    self.last_contact.insert(m.from, self.now);
                    // raft-rs drops a follower's ReadIndex until the leader has committed an
                    // entry of its term; held here, it is answered then instead of after the
                    // follower's retry.
                    if m.get_msg_type() == MessageType::MsgReadIndex
                        && !self.raw.raft.commit_to_current_term()
                    {
                        self.deferred_reads.push(m);
                        return true;
                    }
                }
                // Messages from removed members or stale terms are refused by raft; nothing to do.
                if let Err(e) = self.raw.step(m) {
                    tracing::debug!(error = %e, "raft message not stepped");
                }
            }
            Msg::Propose(data, refused) => self.proposals.push((data, refused)),
            Msg::ProposeAsLeader(data, refused) => self.leader_proposals.push((data, refused)),
            Msg::ProposeConfChange(cc, done) => {
                let res = if self.raw.raft.leader_id == raft::INVALID_ID {
                    Err(RaftError::NoLeader)
                } else if self.raw.raft.state == StateRole::Leader
                    && self.raw.raft.has_pending_conf()
                {
                    Err(RaftError::ConfChangePending)
                } else {
                    self.raw
                        .propose_conf_change(vec![], cc)
                        .map_err(RaftError::from)
                };
                let _ = done.send(res);
            }
            Msg::ReportSnapshot(to, delivered) => {
                let status = if delivered {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
                if !delivered {
                    self.raw.report_unreachable(to);
                }
            }
            Msg::Unreachable(to) => self.raw.report_unreachable(to),
            Msg::ReadIndex(done) => self.pending_reads.push(done),
            Msg::CompactLog(index) => {
                if let Err(e) = self.raw.mut_store().compact(index) {
                    tracing::warn!(error = %e, index, "raft log compaction failed");
                }
            }
            Msg::TransferLeader(target) => self.raw.transfer_leader(target),
            Msg::Shutdown => return false,
        }
        true
    }

    /// Proposes every proposal of this turn as one raft message: the leader appends them and
    /// sends them to each follower together, and a follower forwards them to the leader in one
    /// message, instead of a message per proposal (and an append response for each).
    pub(super) fn propose_queued(&mut self) {
        if self.raw.raft.state == StateRole::Leader {
            self.proposals.append(&mut self.leader_proposals);
        } else {
            for (_, refused) in self.leader_proposals.drain(..) {
                refused(RaftError::NotLeader);
            }
        }
        if self.proposals.is_empty() {
            return;
        }
        if self.raw.raft.leader_id == raft::INVALID_ID {
            for (_, refused) in self.proposals.drain(..) {
                refused(RaftError::NoLeader);
            }
            return;
        }
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = self.raw.raft.id;
        let mut refusals = Vec::with_capacity(self.proposals.len());
        let entries: Vec<Entry> = self
            .proposals
            .drain(..)
            .map(|(data, refused)| {
                refusals.push(refused);
                Entry {
                    data: data.into(),
                    ..Default::default()
                }
            })
            .collect();
        m.set_entries(entries.into());
        if let Err(e) = self.raw.step(m) {
            let mut first = Some(RaftError::from(e));
            for refused in refusals {
                let e = first
                    .take()
                    .unwrap_or(RaftError::Raft(raft::Error::ProposalDropped));
                refused(e);
            }
        }
    }
}

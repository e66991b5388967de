//! Linearizable reads: ReadIndex rounds batched per turn, retried when lost, and followers' requests held until this leader has committed in its term.

use super::*;

impl Driver {
    /// Steps the followers' ReadIndex requests held while this leader had not yet committed in its
    /// term (dropped if it no longer leads: the followers retry).
    pub(super) fn release_deferred_reads(&mut self) {
        if self.deferred_reads.is_empty() {
            return;
        }
        if self.raw.raft.state != StateRole::Leader {
            self.deferred_reads.clear();
        } else if self.raw.raft.commit_to_current_term() {
            for m in std::mem::take(&mut self.deferred_reads) {
                if let Err(e) = self.raw.step(m) {
                    tracing::debug!(error = %e, "held ReadIndex not stepped");
                }
            }
        }
    }

    pub(super) fn start_read_round(&mut self) {
        if self.pending_reads.is_empty() {
            return;
        }
        // A new leader answers reads only once it has committed in its term (raft-rs would drop
        // the round); they wait for that here.
        if self.raw.raft.state == StateRole::Leader && !self.raw.raft.commit_to_current_term() {
            return;
        }
        if self.raw.raft.leader_id == raft::INVALID_ID {
            for done in self.pending_reads.drain(..) {
                let _ = done.send(Err(RaftError::NoLeader));
            }
            return;
        }
        self.next_read_id += 1;
        // raft-rs ignores a ReadIndex whose context is already pending at the leader: the context
        // names this member too, or two members' rounds with the same number would collide and
        // one would wait an election timeout to be retried.
        let mut ctx = self.raw.raft.id.to_be_bytes().to_vec();
        ctx.extend_from_slice(&self.next_read_id.to_be_bytes());
        self.raw.read_index(ctx);
        self.reads_in_flight.insert(
            self.next_read_id,
            (self.now, std::mem::take(&mut self.pending_reads)),
        );
    }

    /// A round whose answer has not come within an election timeout was lost (sent to a leader
    /// that died, or dropped on the way): its readers join the next round, once a leader is known.
    pub(super) fn retry_lost_reads(&mut self) {
        if self.raw.raft.leader_id == raft::INVALID_ID {
            return;
        }
        let lost_before = self.now - self.tick * self.election_ticks as u32;
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

    pub(super) fn finish_reads(&mut self, states: Vec<raft::ReadState>) {
        for rs in states {
            let Some((member, id)) = rs.request_ctx.split_at_checked(8) else {
                continue;
            };
            let (Ok(member), Ok(id)) = (<[u8; 8]>::try_from(member), <[u8; 8]>::try_from(id))
            else {
                continue;
            };
            if u64::from_be_bytes(member) != self.raw.raft.id {
                continue;
            }
            let waiters = self.reads_in_flight.remove(&u64::from_be_bytes(id));
            for done in waiters.map(|(_, w)| w).unwrap_or_default() {
                let _ = done.send(Ok(rs.index));
            }
        }
    }
}

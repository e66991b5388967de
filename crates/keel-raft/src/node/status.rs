//! What the driver publishes after each turn: role, status, and how far behind each follower is.

use super::*;

impl Driver {
    /// Publishes the role, term and leader only (cheap).
    pub(super) fn publish_role(&self) {
        let r = &self.raw.raft;
        let role = Role::of(r.state);
        let mut s = self.status.write();
        if (s.role, s.term) != (role, r.term) {
            s.role = role;
            s.term = r.term;
        }
    }

    /// Most records kept of when the leader's log grew: an hour of ticks at etcd's default
    /// heartbeat; a member further behind shows at least that.
    const APPENDED_RECORDS: usize = 36_000;

    /// Notes the leader's last index at this tick, and forgets what every member has.
    pub(super) fn record_appended(&mut self, now: Instant) {
        let r = &self.raw.raft;
        let last = r.raft_log.last_index();
        if self.appended.back().is_none_or(|(index, _)| *index < last) {
            self.appended.push_back((last, now));
        }
        let everyone_has = r.prs().iter().map(|(_, p)| p.matched).min().unwrap_or(0);
        while self
            .appended
            .front()
            .is_some_and(|(index, _)| *index <= everyone_has)
            || self.appended.len() > Self::APPENDED_RECORDS
        {
            self.appended.pop_front();
        }
    }

    pub(super) fn publish_status(&mut self, ticked: bool) {
        let now = self.now;
        if self.raw.raft.state != StateRole::Leader {
            self.last_contact.clear();
            self.appended.clear();
        } else if ticked {
            self.record_appended(now);
        }
        let contact_window = self.tick * self.election_ticks as u32;
        let r = &self.raw.raft;
        let role = Role::of(r.state);
        let mut s = self.status.write();
        let progress = if !ticked {
            std::mem::take(&mut s.progress)
        } else if role == Role::Leader {
            let learners = r.prs().conf().learners();
            r.prs()
                .iter()
                .map(|(&id, p)| PeerProgress {
                    id,
                    matched: p.matched,
                    state: match p.state {
                        ProgressState::Probe => Replication::Probing,
                        ProgressState::Replicate => Replication::Replicating,
                        ProgressState::Snapshot => Replication::Snapshot,
                    },
                    pending_snapshot: p.pending_snapshot,
                    active: id == r.id
                        || self
                            .last_contact
                            .get(&id)
                            .is_some_and(|t| now.saturating_duration_since(*t) <= contact_window),
                    learner: learners.contains(&id),
                    last_contact: self.last_contact.get(&id).copied(),
                    behind_since: (p.matched < r.raft_log.last_index()).then(|| {
                        self.appended
                            .iter()
                            .find(|(index, _)| *index > p.matched)
                            .map_or(now, |(_, at)| *at)
                    }),
                })
                .collect()
        } else {
            Vec::new()
        };
        let next = RaftStatus {
            id: r.id,
            leader_id: r.leader_id,
            term: r.term,
            commit_index: r.raft_log.committed,
            role,
            last_index: r.raft_log.last_index(),
            leader_changes: s.leader_changes
                + (s.leader_id != r.leader_id && r.leader_id != 0) as u64,
            progress,
        };
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

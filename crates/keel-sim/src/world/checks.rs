//! The end-of-run checks beside linearizability: progress and convergence.

use super::*;

impl World {
    /// Progress: once the faults stopped, every client's probe write and read succeeded before
    /// the end. The longest it took any client.
    pub(super) fn check_progress(&mut self) -> u64 {
        let start = self.cfg.active_ms + PROBE_AFTER_MS;
        let mut slowest = 0;
        for (c, client) in self.clients.iter().enumerate() {
            match client.probes {
                [Some(_), Some(read)] => slowest = slowest.max(read - start),
                [put, _] => self.problems.push(format!(
                    "no progress: client {c} did not {} within {} ms after the faults stopped",
                    if put.is_none() { "write" } else { "read" },
                    self.cfg.settle_ms
                )),
            }
        }
        slowest
    }

    pub(super) fn check_convergence(&mut self) {
        let members: Vec<&SimMember> = self
            .slots
            .iter()
            .filter_map(|s| s.member.as_ref())
            .collect();
        if members.len() != self.slots.len() {
            self.problems.push("a member is down at the end".into());
            return;
        }
        let leaders: Vec<u64> = members.iter().map(|m| m.status().leader_id).collect();
        if leaders[0] == 0 || leaders.iter().any(|&l| l != leaders[0]) {
            self.problems.push(format!(
                "no leader all members agree on after the faults stopped: {leaders:?}"
            ));
        }
        let all = PbRangeRequest {
            key: b"\0".to_vec(),
            range_end: b"\0".to_vec(),
            ..Default::default()
        };
        let mut states = Vec::new();
        for m in &members {
            match keel_state::range::range(&m.store().view(), &all) {
                Ok(r) => states.push((m.store().applied_index(), r)),
                Err(e) => {
                    self.problems.push(format!("final read failed: {e}"));
                    return;
                }
            }
        }
        // Each member's store hash (HashKV, as etcd's corruption check compares it: every stored
        // revision of every key, those kept at the compaction included) and its leases.
        let digests: Vec<_> = members
            .iter()
            .map(|m| {
                let mut leases = m.lease_ids();
                leases.sort_unstable();
                (m.store().hash_kv(0).map(|k| k.hash).ok(), leases)
            })
            .collect();
        for (i, d) in digests.iter().enumerate().skip(1) {
            if d != &digests[0] {
                self.problems.push(format!(
                    "member {} differs from member 1 at the end: store hash and leases {d:?} vs {:?}",
                    i + 1,
                    digests[0]
                ));
            }
        }
        let (first_applied, first) = &states[0];
        for (i, (applied, state)) in states.iter().enumerate().skip(1) {
            if applied != first_applied || state.kvs != first.kvs {
                self.problems.push(format!(
                    "member {} differs from member 1 at the end: applied {applied} vs {first_applied}, {} keys vs {}",
                    i + 1,
                    state.kvs.len(),
                    first.kvs.len()
                ));
            }
        }
    }
}

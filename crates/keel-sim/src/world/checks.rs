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
        if members.len() != self.started().len() {
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
        // revision of every key, those kept at the compaction included), its leases, its alarms
        // and its auth state.
        let digests: Vec<_> = members.iter().map(|m| digest(m.member())).collect();
        for (i, d) in digests.iter().enumerate().skip(1) {
            if d != &digests[0] {
                self.problems.push(format!(
                    "member {} differs from member 1 at the end: {d:?} vs {:?}",
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

/// What must be equal on every member once the cluster converged: the store's hash (HashKV), the
/// leases, the raised alarms, and the auth state (on or off, its revision, every user's roles
/// and every role's permissions).
fn digest(m: &keel_server::Member) -> String {
    let mut leases = m.leases().leases();
    leases.sort_unstable();
    let auth = m.auth();
    let users: Vec<_> = auth
        .user_names()
        .into_iter()
        .map(|u| (auth.user_roles(&u).ok(), u))
        .collect();
    let roles: Vec<_> = auth
        .role_names()
        .into_iter()
        .map(|r| (format!("{:?}", auth.role_permissions(&r).ok()), r))
        .collect();
    format!(
        "hash {:?}, leases {leases:?}, alarms {:?}, auth on {} at revision {}, users {users:?}, roles {roles:?}",
        m.store().hash_kv(0).map(|k| k.hash).ok(),
        m.alarms().list(),
        auth.enabled(),
        auth.revision(),
    )
}

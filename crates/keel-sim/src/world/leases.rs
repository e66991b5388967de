//! The lease checks: leases clients asked for, the expiries members found, and when they may revoke.

use super::*;

impl World {
    /// A revoke of an expired lease came back. Only an applied one counts: a deposed leader's
    /// lessor may find a lease expired on deadlines the new leader has moved, but its revoke never
    /// commits. Applied, the lease must have run its TTL on the proposer's clock since the last
    /// grant or keep-alive that succeeded (one that succeeded after it was found expired fails
    /// this too).
    pub(super) fn expiry_revoked(
        &mut self,
        member: usize,
        lease: i64,
        found_us: u64,
        revoked: bool,
    ) {
        let Some(t) = self.lease_tracks.get_mut(&lease) else {
            return;
        };
        if !revoked {
            // Proposed again after the lessor's retry interval.
            t.retry_ms = self.now + REVOKE_RETRY.as_millis() as u64;
            return;
        }
        self.lease_expiries += 1;
        let ran_ms = found_us.saturating_sub(t.clocks_at_renewal[member]) / 1000;
        if !t.revoked && ran_ms < t.ttl_ms {
            let id = self.slots[member].id;
            self.problems.push(format!(
                "lease {lease:x} revoked as expired by member {id} {ran_ms} ms (its clock) after a keep-alive that succeeded at {} ms; TTL {} ms",
                t.renewed_ms, t.ttl_ms
            ));
        }
    }

    /// Every member's clock now (us).
    pub(super) fn clock_readings(&self) -> Vec<u64> {
        self.slots
            .iter()
            .map(|s| s.clock_us.load(Ordering::Relaxed))
            .collect()
    }

    /// A grant or keep-alive that succeeded moves the lease's checked deadline.
    pub(super) fn lease_succeeded(&mut self, op: &InFlight) {
        let Job::Lease { op: kind, id, .. } = &op.job else {
            return;
        };
        let Some(t) = self.lease_tracks.get_mut(id) else {
            return;
        };
        match kind {
            LeaseOp::Grant => t.granted_ms = Some(self.now),
            LeaseOp::KeepAlive => {
                if let Some(clocks) = &op.clocks {
                    t.clocks_at_renewal.clone_from(clocks);
                    t.renewed_ms = op.invoked_ms;
                }
            }
            LeaseOp::Revoke => {}
        }
    }

    /// After the faults stop, every short lease nobody keeps alive must expire: the primary
    /// gives it at most its TTL plus PROMOTE_EXTEND from the later of the last leader change,
    /// the end of the faults and its last grant or keep-alive, then finds it within a check and
    /// revokes it (a failed revoke is retried after 3 s).
    pub(super) fn check_lease_expiry(&mut self) {
        let Some(first) = self.slots.iter().find_map(|s| s.member.as_ref()) else {
            return;
        };
        let live = first.lease_ids();
        let calm = self.cfg.active_ms.max(self.last_leader_change_ms);
        for (id, t) in &self.lease_tracks {
            let Some(granted) = t.granted_ms else {
                continue;
            };
            if t.revoked || t.ttl_ms > workload::SHORT_TTL as u64 * 1000 || !live.contains(id) {
                continue;
            }
            let from = calm.max(granted).max(t.renewed_ms);
            let due = (from + t.ttl_ms + PROMOTE_EXTEND.as_millis() as u64 + 1_000)
                .max(t.retry_ms + 1_000);
            if due <= self.now {
                self.problems.push(format!(
                    "lease {id:x} (TTL {} ms, last kept alive at {} ms) still exists at {} ms",
                    t.ttl_ms, t.renewed_ms, self.now
                ));
            }
        }
    }

    /// The primary lessors' turns (member/lessor.rs), each on its member's clock: role checks every
    /// 100 ms, expired leases every 500 ms, each revoked through raft (checked when applied, in
    /// `expiry_revoked`).
    pub(super) fn expire_leases(&mut self) {
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            let Some(member) = &slot.member else { continue };
            let clock = slot.clock_us.load(Ordering::Relaxed);
            if clock < slot.next_role_check_us {
                continue;
            }
            slot.next_role_check_us = clock + ROLE_CHECK.as_micros() as u64;
            if !member.member().sync_lessor_role() || clock < slot.next_expiry_check_us {
                continue;
            }
            slot.next_expiry_check_us = clock + EXPIRY_CHECK.as_micros() as u64;
            for lease in member.member().expired_leases() {
                self.expiry_revokes.push(ExpiryRevoke {
                    member: i,
                    lease,
                    found_us: clock,
                    revoke: workload::send_expiry_revoke(member, lease),
                });
            }
        }
    }
}

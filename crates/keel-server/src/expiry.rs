//! The primary lessor's clock. Leadership decides which member's lessor keeps deadlines; that
//! member proposes a LeaseRevoke through raft for every lease that runs out, so expiry reaches every
//! member as an ordinary log entry.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_rpc::etcd::PbLeaseRevokeRequest as LeaseRevokeRequest;
use keel_rpc::RequestBody;

use crate::lease::{Lessor, RenewError};
use crate::server::Core;
use crate::ServerError;

/// How often leadership is checked (a new leader's lessor starts within this).
pub const ROLE_CHECK: Duration = Duration::from_millis(100);
/// How often the primary looks for expired leases (etcd: 500 ms).
pub const EXPIRY_CHECK: Duration = Duration::from_millis(500);
/// Revokes proposed per expiry check: etcd's 1,000 per second, so a mass expiry cannot flood raft.
pub(crate) const REVOKES_PER_CHECK: usize = 500;
/// Added to every lease's TTL when a member becomes primary (etcd: one election timeout), so a
/// lease kept alive through an election does not expire in the hand-over.
pub const PROMOTE_EXTEND: Duration = Duration::from_secs(1);

impl Core {
    /// Makes the lessor primary exactly while this member leads. Returns whether it is primary.
    pub fn sync_lessor_role(&self) -> bool {
        sync_role(&self.leases, self.is_leader())
    }
}

/// Proposes the leader's record of leases' remaining TTLs (leader-only, as the revokes).
fn checkpoint(core: &Arc<Core>, checkpoints: Vec<keel_rpc::LeaseRemaining>, persist: bool) {
    let core = core.clone();
    tokio::spawn(async move {
        let body = RequestBody::LeaseCheckpoint(keel_rpc::LeaseCheckpoint {
            checkpoints,
            persist,
        });
        if let Err(e) = core.propose_as_leader(body).await {
            tracing::debug!(error = %e, "lease checkpoint not recorded; the next one will be");
        }
    });
}

/// Makes `leases` primary if `leading`, else a follower's lessor; returns `leading`.
pub(crate) fn sync_role(leases: &Lessor, leading: bool) -> bool {
    if leading {
        leases.promote(PROMOTE_EXTEND);
    } else {
        leases.demote();
    }
    leading
}

/// A keep-alive at this member: renews lease `id` if this member leads and a quorum still
/// follows it. `leading` reads the raft role; `confirm` is a ReadIndex round that also waits until
/// everything committed before it is applied (so a grant another member answered is known here).
///
/// Without the confirmation a deposed leader that has not noticed yet would renew leases on its
/// own clock while the new leader's lessor expires them on its own (etcd 3.5.8's
/// `ensureLeadership`). After a quorum answered, no new leader can be elected for an election
/// timeout, and a new leader's lessor adds PROMOTE_EXTEND to every TTL: the renewal holds.
/// `Err(NotPrimary)` means another member leads (or leadership was lost meanwhile).
pub(crate) async fn renew_as_leader(
    leases: &Lessor,
    leading: impl Fn() -> bool,
    confirm: impl Future<Output = Result<(), ServerError>>,
    id: i64,
) -> Result<Result<i64, RenewError>, ServerError> {
    if !sync_role(leases, leading()) {
        return Ok(Err(RenewError::NotPrimary));
    }
    let confirmed = confirm.await;
    if !sync_role(leases, leading()) {
        return Ok(Err(RenewError::NotPrimary));
    }
    confirmed?;
    Ok(leases.renew(id))
}

/// Most leases in one checkpoint entry (etcd's maxLeaseCheckpointBatchSize).
const CHECKPOINTS_PER_ENTRY: usize = 1000;

/// Runs until aborted.
pub async fn run(core: Arc<Core>) {
    let mut tick = tokio::time::interval(ROLE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_check = Instant::now();
    let mut last_checkpoint = Instant::now();
    loop {
        tick.tick().await;
        if !core.sync_lessor_role() {
            continue;
        }
        if let Some(cp) = core.limits.lease_checkpoint {
            // Cleared at once: a new leader must not cut a renewed lease short.
            let mut due = core.leases.renewed_checkpoints();
            if last_checkpoint.elapsed() >= cp.interval {
                last_checkpoint = Instant::now();
                let min_ttl = cp.interval.as_secs() as i64;
                due.extend(core.leases.checkpoints(min_ttl, usize::MAX));
            }
            for chunk in due.chunks(CHECKPOINTS_PER_ENTRY) {
                checkpoint(&core, chunk.to_vec(), cp.persist);
            }
        }
        if last_check.elapsed() < EXPIRY_CHECK {
            continue;
        }
        last_check = Instant::now();
        for id in core.leases.expired(core.leases.now(), REVOKES_PER_CHECK) {
            let core = core.clone();
            tokio::spawn(async move {
                let revoke = RequestBody::LeaseRevoke(LeaseRevokeRequest { id });
                // Leader-only: a deposed leader's lessor may find leases expired that the new
                // leader has renewed since; its revoke must not reach that leader's log.
                match core.propose_as_leader(revoke).await {
                    Ok(_) => tracing::debug!(lease = id, "expired lease revoked"),
                    // Revoked meanwhile by a client, or no longer leading: nothing left to do.
                    Err(
                        ServerError::State(keel_state::StateError::LeaseNotFound)
                        | ServerError::NotLeader,
                    ) => {}
                    // Still expired at the next check after the retry interval: tried again then.
                    Err(e) => {
                        tracing::warn!(lease = id, error = %e, "revoking an expired lease failed")
                    }
                }
            });
        }
    }
}

//! The primary lessor's clock. Leadership decides which member's lessor keeps deadlines; that
//! member proposes a LeaseRevoke through raft for every lease that runs out, so expiry reaches every
//! member as an ordinary log entry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_rpc::etcd::PbLeaseRevokeRequest as LeaseRevokeRequest;
use keel_rpc::RequestBody;

use keel_state::lease::RenewError;

use super::{Member, REQUEST_TIMEOUT};
use crate::ServerError;

/// How often leadership is checked (a new leader's lessor starts within this).
pub const ROLE_CHECK: Duration = Duration::from_millis(100);
/// How often the primary looks for expired leases (etcd: 500 ms).
pub const EXPIRY_CHECK: Duration = Duration::from_millis(500);
/// Revokes proposed per expiry check: etcd's 1,000 per second, so a mass expiry cannot flood raft.
pub const REVOKES_PER_CHECK: usize = 500;
/// Added to every lease's TTL when a member becomes primary (etcd: one election timeout), so a
/// lease kept alive through an election does not expire in the hand-over.
pub const PROMOTE_EXTEND: Duration = Duration::from_secs(1);

/// How often a keep-alive of an expired lease checks whether its revoke has been applied.
const REVOKE_POLL: Duration = Duration::from_millis(20);
/// Most leases in one checkpoint entry (etcd's maxLeaseCheckpointBatchSize).
const CHECKPOINTS_PER_ENTRY: usize = 1000;

impl Member {
    /// Makes the lessor primary exactly while this member leads. Returns whether it is primary.
    pub fn sync_lessor_role(&self) -> bool {
        let leading = self.is_leader();
        if leading {
            self.leases.promote(PROMOTE_EXTEND);
        } else {
            self.leases.demote();
        }
        leading
    }

    /// The expiry check: the leases that ran out on this member's clock (at most
    /// REVOKES_PER_CHECK), to be revoked with `revoke_expired`. None unless the lessor is
    /// primary (a follower's keeps no deadlines): call after `sync_lessor_role`.
    pub fn expired_leases(&self) -> Vec<i64> {
        self.leases.expired(self.leases.now(), REVOKES_PER_CHECK)
    }

    /// Revokes lease `id`, which this member's lessor found expired. Leader-only: a deposed
    /// leader's lessor may find leases expired that the new leader has renewed since; its revoke
    /// must not reach that leader's log.
    pub async fn revoke_expired(&self, id: i64) -> Result<(), ServerError> {
        let revoke = RequestBody::LeaseRevoke(LeaseRevokeRequest { id });
        self.propose_as_leader(revoke).await.map(|_| ())
    }

    /// A keep-alive at this member: renews lease `id` if this member leads and a quorum still
    /// follows it (a ReadIndex round, which also waits until everything committed before it is
    /// applied, so a grant another member answered is known here).
    ///
    /// Without the confirmation a deposed leader that has not noticed yet would renew leases on its
    /// own clock while the new leader's lessor expires them on its own (etcd 3.5.8's
    /// `ensureLeadership`). After a quorum answered, no new leader can be elected for an election
    /// timeout, and a new leader's lessor adds PROMOTE_EXTEND to every TTL: the renewal holds.
    /// `Err(NotPrimary)` means another member leads (or leadership was lost meanwhile).
    pub async fn renew_as_leader(&self, id: i64) -> Result<Result<i64, RenewError>, ServerError> {
        if !self.sync_lessor_role() {
            return Ok(Err(RenewError::NotPrimary));
        }
        let confirmed = self.linearizable_barrier().await;
        if !self.sync_lessor_role() {
            return Ok(Err(RenewError::NotPrimary));
        }
        confirmed?;
        Ok(self.leases.renew(id))
    }
}

impl Member {
    /// A client's keep-alive of lease `id`, renewed by the primary lessor (the leader's: a
    /// follower forwards it there). The TTL, 0 if the lease does not exist (etcd's keep-alive
    /// answer for a lease that is gone).
    pub async fn keep_alive(&self, id: i64) -> Result<i64, ServerError> {
        match self.renew_as_leader(id).await? {
            Ok(ttl) => Ok(ttl),
            Err(RenewError::NotFound) => Ok(0),
            // Answer only once the keys are gone, so a client told "expired" never reads them.
            Err(RenewError::Expired) => self.wait_revoked(id).await.map(|()| 0),
            Err(RenewError::NotPrimary) => self.forward_renew(id).await,
        }
    }

    async fn wait_revoked(&self, id: i64) -> Result<(), ServerError> {
        let waited = self
            .within(REQUEST_TIMEOUT, async {
                while self.leases.contains(id) {
                    self.runtime.sleep(REVOKE_POLL).await;
                }
            })
            .await;
        waited.ok_or(ServerError::Timeout)
    }
}

/// Proposes the leader's record of leases' remaining TTLs (leader-only, as the revokes).
fn checkpoint(member: &Arc<Member>, checkpoints: Vec<keel_rpc::LeaseRemaining>, persist: bool) {
    let proposer = member.clone();
    member.spawn_task(async move {
        let member = proposer;
        let body = RequestBody::LeaseCheckpoint(keel_rpc::LeaseCheckpoint {
            checkpoints,
            persist,
        });
        if let Err(e) = member.propose_as_leader(body).await {
            tracing::debug!(error = %e, "lease checkpoint not recorded; the next one will be");
        }
    });
}

/// The lessor clock: checks the role every ROLE_CHECK, proposes checkpoints while primary (when
/// on), and revokes expired leases every EXPIRY_CHECK. Runs until aborted.
pub(super) async fn run(member: Arc<Member>) {
    let mut tick = tokio::time::interval(ROLE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_check = Instant::now();
    let mut last_checkpoint = Instant::now();
    loop {
        tick.tick().await;
        if !member.sync_lessor_role() {
            continue;
        }
        if let Some(cp) = member.config.lease_checkpoint {
            // Cleared at once: a new leader must not cut a renewed lease short.
            let mut due = member.leases.renewed_checkpoints();
            if last_checkpoint.elapsed() >= cp.interval {
                last_checkpoint = Instant::now();
                let min_ttl = cp.interval.as_secs() as i64;
                due.extend(member.leases.checkpoints(min_ttl, usize::MAX));
            }
            for chunk in due.chunks(CHECKPOINTS_PER_ENTRY) {
                checkpoint(&member, chunk.to_vec(), cp.persist);
            }
        }
        if last_check.elapsed() < EXPIRY_CHECK {
            continue;
        }
        last_check = Instant::now();
        for id in member.expired_leases() {
            let revoker = member.clone();
            member.spawn_task(async move {
                let member = revoker;
                match member.revoke_expired(id).await {
                    Ok(()) => tracing::debug!(lease = id, "expired lease revoked"),
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

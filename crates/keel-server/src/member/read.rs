//! Reads that must see everything committed before they began (ReadIndex, then waiting for the
//! apply loop), and leadership transfer.

use std::time::Duration;

use super::{Member, REQUEST_TIMEOUT};
use crate::ServerError;

impl Member {
    /// Hands leadership to member `target`, as etcd's MoveLeader: only the leader may, only to a
    /// voting member; returns once `target` leads.
    pub async fn move_leader(&self, target: u64) -> Result<(), ServerError> {
        let status = self.raft_status();
        if status.leader_id != self.identity.member_id {
            return Err(ServerError::NotLeader);
        }
        let voter = self.membership.get(target).is_some_and(|m| !m.is_learner);
        if !voter {
            return Err(ServerError::BadLeaderTransferee);
        }
        if target == self.identity.member_id {
            return Ok(());
        }
        tracing::info!(
            target = format!("{target:x}"),
            "leadership transfer starting"
        );
        self.node.transfer_leader(target);
        let moved = self
            .within(REQUEST_TIMEOUT, async {
                while self.leader_id() != target {
                    self.runtime.sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
        moved.ok_or(ServerError::LeaderTransferTimeout)
    }

    /// Waits until this member has applied everything committed when the call began (ReadIndex).
    pub async fn linearizable_barrier(&self) -> Result<(), ServerError> {
        if self.is_learner() {
            return Err(ServerError::NotSupportedForLearner);
        }
        let reached = self
            .within(REQUEST_TIMEOUT, async {
                let index = self.node.read_index().await?;
                let mut applied = self.applied.clone();
                let reached = applied.wait_for(|&a| a >= index).await.is_ok();
                if reached {
                    Ok(())
                } else {
                    Err(ServerError::Stopped)
                }
            })
            .await;
        reached.unwrap_or(Err(ServerError::Timeout))
    }
}

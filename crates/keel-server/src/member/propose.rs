//! Proposing: a client's request (checked for learners, size and the space quota) or the
//! member's own, encoded as one raft entry, then waited for until the apply loop answers it.

use std::sync::atomic::Ordering;

use keel_raft::{ConfChange, ConfChangeType};
use keel_rpc::etcd::PbMember;
use keel_rpc::{InternalRequest, MemberChange, RequestAuth, RequestBody};
use keel_state::{Proposal, Response, StateError};
use prost::Message;

use super::{counters, Applied, Member, REQUEST_TIMEOUT};
use crate::ServerError;

impl Member {
    /// Proposes a client's mutation through raft for `who` and waits until it is applied (the
    /// state machine checks `who`'s permissions).
    pub async fn propose<P: Proposal>(
        &self,
        who: &RequestAuth,
        request: P,
    ) -> Result<P::Reply, ServerError> {
        if self.is_learner() {
            return Err(ServerError::NotSupportedForLearner);
        }
        let body = request.into_body();
        if keel_state::grows(&body) {
            self.check_quota(body.encoded_len() as u64).await?;
        }
        let applied = self.propose_as(Some(who.clone()), body, false).await?;
        Ok(P::reply(applied)?)
    }

    /// Proposes the member's own mutation (acting with every permission) and waits for it.
    pub async fn propose_internal(&self, body: RequestBody) -> Result<Response, ServerError> {
        self.propose_as(None, body, false).await
    }

    /// As `propose_internal`, but taken only into this member's log while it leads (see
    /// `Node::propose_as_leader`): `NotLeader` otherwise.
    pub async fn propose_as_leader(&self, body: RequestBody) -> Result<Response, ServerError> {
        self.propose_as(None, body, true).await
    }

    /// etcd's quota check: a write that would take the store past the quota raises NOSPACE (for
    /// every member, through raft) and is refused, as is every growing write while it is raised.
    async fn check_quota(&self, cost: u64) -> Result<(), ServerError> {
        if self.alarms.nospace() {
            return Err(ServerError::State(StateError::NoSpace));
        }
        if self.db_size.load(Ordering::Relaxed) + cost <= self.config.quota_backend_bytes {
            return Ok(());
        }
        tracing::warn!(
            quota = self.config.quota_backend_bytes,
            size = self.db_size.load(Ordering::Relaxed),
            "backend quota exceeded; raising NOSPACE"
        );
        let raise = RequestBody::Alarm(keel_rpc::etcd::PbAlarmRequest {
            action: 1,
            member_id: self.identity.member_id,
            alarm: keel_state::alarm::NOSPACE,
        });
        if let Err(e) = self.propose_internal(raise).await {
            tracing::warn!(error = %e, "raising NOSPACE failed");
        }
        Err(ServerError::State(StateError::NoSpace))
    }

    /// Proposes a client's alarm change (Maintenance.Alarm) and waits for it; the alarms it changed.
    pub async fn propose_alarm(
        &self,
        who: &RequestAuth,
        r: keel_rpc::etcd::PbAlarmRequest,
    ) -> Result<Vec<keel_rpc::etcd::PbAlarmMember>, ServerError> {
        let applied = self
            .propose_as(Some(who.clone()), RequestBody::Alarm(r), false)
            .await?;
        Ok(keel_rpc::etcd::PbAlarmRequest::reply(applied)?)
    }

    /// Proposes a mutation (for a client, or the member's own) and waits for it.
    async fn propose_as(
        &self,
        auth: Option<RequestAuth>,
        body: RequestBody,
        leader_only: bool,
    ) -> Result<Response, ServerError> {
        let id = self.next_id();
        let data = InternalRequest {
            id,
            body: Some(body),
            auth,
        }
        .encode_to_vec();
        if data.len() > self.config.max_request_bytes {
            return Err(ServerError::RequestTooLarge);
        }
        let applied = self.registry.register(id);
        let registry = self.registry.clone();
        let refused = Box::new(move |e: keel_raft::RaftError| {
            counters::proposals_failed().inc();
            registry.fail(id, e.into());
        });
        let proposed = if leader_only {
            self.node.propose_as_leader(data, refused)
        } else {
            self.node.propose(data, refused)
        };
        if let Err(e) = proposed {
            self.registry.cancel(id);
            counters::proposals_failed().inc();
            return Err(e.into());
        }
        let res = self.wait_applied(id, applied).await;
        if matches!(res, Err(ServerError::Timeout | ServerError::Stopped)) {
            counters::proposals_failed().inc();
        }
        res
    }

    /// Proposes a raft membership change about `member` and waits until it is applied; returns
    /// the members after it.
    pub async fn propose_member_change(
        &self,
        change: ConfChangeType,
        member: PbMember,
    ) -> Result<Vec<PbMember>, ServerError> {
        let id = self.next_id();
        let mut cc = ConfChange::default();
        cc.set_change_type(change);
        cc.node_id = member.id;
        cc.context = MemberChange {
            id,
            member: Some(member),
        }
        .encode_to_vec()
        .into();
        let applied = self.registry.register(id);
        if let Err(e) = self.node.propose_conf_change(cc).await {
            self.registry.cancel(id);
            return Err(e.into());
        }
        match self.wait_applied(id, applied).await? {
            Response::Members(members) => Ok(members),
            other => Err(ServerError::Internal(format!(
                "unexpected response to a membership change: {other:?}"
            ))),
        }
    }

    async fn wait_applied(
        &self,
        id: u64,
        applied: tokio::sync::oneshot::Receiver<Applied>,
    ) -> Result<Response, ServerError> {
        match self.within(REQUEST_TIMEOUT, applied).await {
            Some(Ok(res)) => res,
            Some(Err(_)) => Err(ServerError::Stopped),
            None => {
                self.registry.cancel(id);
                Err(ServerError::Timeout)
            }
        }
    }
}

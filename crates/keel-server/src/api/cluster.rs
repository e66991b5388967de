//! etcd's Cluster service (membership changes go through raft as conf changes, one at a time), and
//! the peer-side Membership service a joining member asks for the member list.

use std::sync::Arc;
use std::time::Duration;

use keel_raft::ConfChangeType;
use keel_rpc::etcd::{
    PbClusterService, PbMember, PbMemberAddRequest as MemberAddRequest,
    PbMemberAddResponse as MemberAddResponse, PbMemberListRequest as MemberListRequest,
    PbMemberListResponse as MemberListResponse, PbMemberPromoteRequest as MemberPromoteRequest,
    PbMemberPromoteResponse as MemberPromoteResponse, PbMemberRemoveRequest as MemberRemoveRequest,
    PbMemberRemoveResponse as MemberRemoveResponse, PbMemberUpdateRequest as MemberUpdateRequest,
    PbMemberUpdateResponse as MemberUpdateResponse,
};
use keel_rpc::peer::membership_client::MembershipClient;
use keel_rpc::peer::membership_server::{Membership, MembershipServer};
use keel_rpc::peer::{HashRequest, HashResponse, MembersRequest, MembersResponse};
use prost::Message;
use tonic::{Request, Response, Status};

use super::credentials::admin;
use super::token_of;
use crate::member::Member;
use crate::membership::member_id;
use crate::ServerError;

/// A learner may be promoted once its log has this share of the leader's (etcd's readyPercent).
const LEARNER_READY: f64 = 0.9;

type Token = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

/// The Cluster service.
pub struct ClusterService {
    member: Arc<Member>,
}

impl ClusterService {
    /// A Cluster service over `member`.
    pub fn new(member: Arc<Member>) -> Self {
        ClusterService { member }
    }

    fn check_voting(&self) -> Result<(), ServerError> {
        if self.member.is_learner() {
            return Err(ServerError::NotSupportedForLearner);
        }
        Ok(())
    }

    /// etcd's strict reconfiguration check: after the change, the voters that have started
    /// (published their attributes) must still be a quorum.
    fn check_quorum_after(&self, change: VoterChange) -> Result<(), ServerError> {
        if !self.member.config().strict_reconfig_check {
            return Ok(());
        }
        let members = self.member.membership().list();
        let voters: Vec<&PbMember> = members.iter().filter(|m| !m.is_learner).collect();
        let leaving = match change {
            VoterChange::Remove(id) => Some(id),
            _ => None,
        };
        let started = voters
            .iter()
            .filter(|m| !m.name.is_empty() && Some(m.id) != leaving)
            .count();
        let (total, started) = match change {
            // Growing a one-member cluster is allowed (etcd: restoring a cluster from one member).
            VoterChange::Add if voters.len() == 1 && started == 1 => return Ok(()),
            VoterChange::Add => (voters.len() + 1, started),
            // The learner being promoted counts as started.
            VoterChange::Promote => (voters.len() + 1, started + 1),
            VoterChange::Remove(_) => (voters.len().saturating_sub(1), started),
        };
        if started < total / 2 + 1 {
            return Err(ServerError::MemberNotEnoughStarted);
        }
        Ok(())
    }

    /// URLs already used by a member other than `except`.
    fn check_urls_free(&self, urls: &[String], except: u64) -> Result<(), ServerError> {
        let taken = self
            .member
            .membership()
            .list()
            .iter()
            .any(|m| m.id != except && m.peer_ur_ls.iter().any(|u| urls.contains(u)));
        if taken {
            return Err(ServerError::PeerUrlExists);
        }
        Ok(())
    }

    fn header(&self) -> Option<keel_rpc::etcd::PbResponseHeader> {
        self.member.header(self.member.store().current_revision())
    }

    /// Whether the learner's log is close enough to the leader's; only the leader knows.
    fn check_learner_ready(&self, id: u64) -> Result<(), ServerError> {
        let status = self.member.raft_status();
        let matched = |id| {
            status
                .progress
                .iter()
                .find(|p| p.id == id)
                .map(|p| p.matched)
        };
        let leader = matched(status.id).unwrap_or(status.last_index);
        let learner = matched(id).ok_or(ServerError::LearnerNotReady)?;
        if (learner as f64) < leader as f64 * LEARNER_READY {
            return Err(ServerError::LearnerNotReady);
        }
        Ok(())
    }

    fn known_member(&self, id: u64) -> Result<PbMember, ServerError> {
        self.member
            .membership()
            .get(id)
            .ok_or(ServerError::State(keel_state::StateError::MemberNotFound))
    }

    /// Before the leader removes itself, leadership moves to the most caught-up other voter, so
    /// the cluster does not sit leaderless for an election timeout once the leader leaves.
    async fn hand_over_leadership(&self, leaving: u64) -> Result<(), ServerError> {
        let status = self.member.raft_status();
        let voters = self.member.membership().list();
        // Active members first, then the most caught up. `active` alone is not enough: raft clears
        // it for every member at each quorum check until they answer again.
        let heir = status
            .progress
            .iter()
            .filter(|p| p.id != leaving)
            .filter(|p| voters.iter().any(|m| m.id == p.id && !m.is_learner))
            .max_by_key(|p| (p.active, p.matched));
        match heir {
            Some(p) => self.member.move_leader(p.id).await,
            // No voter to hand over to: the removal itself will end leadership.
            None => Ok(()),
        }
    }

    async fn promote(&self, id: u64, token: Option<Token>) -> Result<Vec<PbMember>, ServerError> {
        self.member.linearizable_barrier().await?;
        let learner = self.known_member(id)?;
        if !learner.is_learner {
            return Err(ServerError::MemberNotLearner);
        }
        if !self.member.is_leader() {
            return self.member.forward_promote(id, token).await;
        }
        self.check_learner_ready(id)?;
        self.check_quorum_after(VoterChange::Promote)?;
        self.member
            .propose_member_change(ConfChangeType::AddNode, learner)
            .await
    }
}

/// How a membership change changes the voters.
#[derive(Clone, Copy)]
enum VoterChange {
    Add,
    Promote,
    Remove(u64),
}

/// Whether every URL is `scheme://host:port`, as etcd requires of peer URLs.
fn check_urls(urls: &[String]) -> Result<(), ServerError> {
    let valid = |u: &String| {
        let Some((scheme, rest)) = u.split_once("://") else {
            return false;
        };
        let hostport = rest.trim_end_matches('/');
        matches!(scheme, "http" | "https")
            && hostport
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
    };
    if urls.is_empty() || !urls.iter().all(valid) {
        return Err(ServerError::MemberBadUrls);
    }
    Ok(())
}

/// A new member's id: from its peer URLs and something that never repeats, as etcd's MemberAdd
/// makes it from the URLs and the time. Here a fresh request id (unique across members and
/// restarts, and the same in a replayed simulation, where the time is not).
fn new_member_id(member: &Member, urls: &[String]) -> u64 {
    member_id(urls, &member.next_id().to_string())
}

#[tonic::async_trait]
impl PbClusterService for ClusterService {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        admin(&self.member, &req)?;
        let r = req.into_inner();
        self.check_voting()?;
        // A change that would leave too few started voters is refused at once, as etcd refuses it
        // from its own view (the barrier below would only wait for a quorum the cluster may lack).
        if !r.is_learner {
            self.check_quorum_after(VoterChange::Add)?;
        }
        // The checks below read this member's membership: it must include every change already
        // acknowledged, whichever member acknowledged it.
        self.member.linearizable_barrier().await?;
        check_urls(&r.peer_ur_ls)?;
        self.check_urls_free(&r.peer_ur_ls, 0)?;
        let members = self.member.membership().list();
        if r.is_learner {
            if members.iter().filter(|m| m.is_learner).count() >= self.member.config().max_learners
            {
                return Err(ServerError::TooManyLearners.into());
            }
        } else {
            self.check_quorum_after(VoterChange::Add)?;
        }
        let id = new_member_id(&self.member, &r.peer_ur_ls);
        if members.iter().any(|m| m.id == id) || self.member.membership().is_removed(id) {
            return Err(ServerError::MemberExists.into());
        }
        let added = PbMember {
            id,
            peer_ur_ls: r.peer_ur_ls,
            is_learner: r.is_learner,
            ..Default::default()
        };
        let change = if r.is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        let members = self
            .member
            .propose_member_change(change, added.clone())
            .await?;
        tracing::info!(member = format!("{id:x}"), urls = ?added.peer_ur_ls, learner = added.is_learner, "member added");
        Ok(Response::new(MemberAddResponse {
            header: self.header(),
            member: Some(added),
            members,
        }))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        admin(&self.member, &req)?;
        let token = token_of(req.metadata());
        let id = req.into_inner().id;
        self.check_voting()?;
        self.member.linearizable_barrier().await?;
        let removed = self.known_member(id)?;
        if !removed.is_learner {
            self.check_quorum_after(VoterChange::Remove(id))?;
        }
        let status = self.member.raft_status();
        if id == status.leader_id && id != status.id {
            // Only the leader can hand its leadership over before it goes.
            let members = self.member.forward_remove(id, token).await?;
            return Ok(Response::new(MemberRemoveResponse {
                header: self.header(),
                members,
            }));
        }
        if id == status.id {
            self.hand_over_leadership(id).await?;
        }
        let members = self
            .member
            .propose_member_change(ConfChangeType::RemoveNode, removed)
            .await?;
        tracing::info!(member = format!("{id:x}"), "member removed");
        Ok(Response::new(MemberRemoveResponse {
            header: self.header(),
            members,
        }))
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let who = admin(&self.member, &req)?;
        let r = req.into_inner();
        self.check_voting()?;
        check_urls(&r.peer_ur_ls)?;
        self.known_member(r.id)?;
        self.check_urls_free(&r.peer_ur_ls, r.id)?;
        let members = self.member.propose(&who, r).await?;
        Ok(Response::new(MemberUpdateResponse {
            header: self.header(),
            members,
        }))
    }

    /// The members this member has applied; with `linearizable` (etcd 3.5), only after it has
    /// applied everything committed when the request arrived.
    async fn member_list(
        &self,
        req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if req.into_inner().linearizable {
            self.member.linearizable_barrier().await?;
        }
        Ok(Response::new(MemberListResponse {
            header: self.header(),
            members: self.member.members(),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        admin(&self.member, &req)?;
        let token = token_of(req.metadata());
        let id = req.into_inner().id;
        let members = self.promote(id, token).await?;
        tracing::info!(member = format!("{id:x}"), "learner promoted");
        Ok(Response::new(MemberPromoteResponse {
            header: self.header(),
            members,
        }))
    }
}

/// The peer-side Membership service.
pub struct PeerMembershipService {
    member: Arc<Member>,
}

impl PeerMembershipService {
    /// The service over `member`.
    pub fn server(member: Arc<Member>) -> MembershipServer<PeerMembershipService> {
        MembershipServer::new(PeerMembershipService { member })
    }
}

#[tonic::async_trait]
impl Membership for PeerMembershipService {
    async fn members(
        &self,
        _: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        Ok(Response::new(MembersResponse {
            cluster_id: self.member.cluster_id(),
            members: self
                .member
                .members()
                .iter()
                .map(|m| m.encode_to_vec())
                .collect(),
        }))
    }

    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let rev = req.into_inner().revision;
        let store = self.member.store().clone();
        let hashed = self.member.blocking(move || store.hash_kv(rev)).await?;
        let mut resp = HashResponse {
            member_id: self.member.id(),
            ..Default::default()
        };
        match hashed {
            Ok(h) => {
                resp.hash = h.hash;
                resp.compact_revision = h.compact_revision;
                resp.hash_revision = h.revision;
            }
            Err(keel_mvcc::MvccError::FutureRevision) => {
                resp.unavailable = "future revision".into()
            }
            Err(keel_mvcc::MvccError::Compacted) => resp.unavailable = "compacted".into(),
            Err(e) => return Err(ServerError::from(e).into()),
        }
        Ok(Response::new(resp))
    }
}

/// Asks the member at peer URL `url` for the cluster id and the members.
pub async fn fetch_members(
    url: &str,
    dialer: &keel_raft::Dialer,
) -> Result<(u64, Vec<PbMember>), String> {
    let channel = dialer
        .channel(url, Some(Duration::from_secs(5)))
        .await
        .map_err(|e| keel_raft::dial::describe_error(e.as_ref()))?;
    let r = MembershipClient::new(channel)
        .members(MembersRequest {})
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    let members = r
        .members
        .iter()
        .map(|b| PbMember::decode(b.as_slice()).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    Ok((r.cluster_id, members))
}

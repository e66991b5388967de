//! etcd's Cluster service. Membership changes need the peer transport of multi-member clusters; until
//! then they answer with etcd's `not capable` error, and MemberList reports the bootstrapped members.

use std::sync::Arc;

use keel_proto::etcd::{
    PbClusterService, PbMemberAddRequest as MemberAddRequest,
    PbMemberAddResponse as MemberAddResponse, PbMemberListRequest as MemberListRequest,
    PbMemberListResponse as MemberListResponse, PbMemberPromoteRequest as MemberPromoteRequest,
    PbMemberPromoteResponse as MemberPromoteResponse, PbMemberRemoveRequest as MemberRemoveRequest,
    PbMemberRemoveResponse as MemberRemoveResponse, PbMemberUpdateRequest as MemberUpdateRequest,
    PbMemberUpdateResponse as MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::not_capable;
use crate::server::Core;

/// The Cluster service.
pub struct ClusterService {
    core: Arc<Core>,
}

impl ClusterService {
    /// A Cluster service over `core`.
    pub fn new(core: Arc<Core>) -> Self {
        ClusterService { core }
    }
}

#[tonic::async_trait]
impl PbClusterService for ClusterService {
    async fn member_add(
        &self,
        _: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        not_capable()
    }

    async fn member_remove(
        &self,
        _: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        not_capable()
    }

    async fn member_update(
        &self,
        _: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        not_capable()
    }

    async fn member_list(
        &self,
        _: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(MemberListResponse {
            header: self.core.header(self.core.store.current_revision()),
            members: self.core.members(),
        }))
    }

    async fn member_promote(
        &self,
        _: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        not_capable()
    }
}

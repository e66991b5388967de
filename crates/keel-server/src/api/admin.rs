//! Keel's admin extension (`keelpb.admin.Admin`): every member's replication state, as the leader
//! sees it (a follower asks the leader over its peer URLs; without a leader it answers with what it
//! knows), and each member's own state, which the leader polls.

use std::sync::Arc;

use keel_rpc::admin::admin_server::{Admin, AdminServer};
use keel_rpc::admin::{LocalRequest, LocalResponse, MembersRequest, MembersResponse};
use tonic::{Request, Response, Status};

use crate::member::{local_replication, replication_proto, Member};

/// The Admin service.
pub struct AdminService {
    member: Arc<Member>,
}

impl AdminService {
    /// The service over `member`.
    pub fn server(member: Arc<Member>) -> AdminServer<AdminService> {
        AdminServer::new(AdminService { member })
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn members(
        &self,
        _: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let status = self.member.cluster_replication().await?;
        Ok(Response::new(replication_proto(&status)))
    }

    async fn local(&self, _: Request<LocalRequest>) -> Result<Response<LocalResponse>, Status> {
        Ok(Response::new(local_replication(&self.member)))
    }
}

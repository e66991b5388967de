//! Keel's admin extension (`keelpb.admin.Admin`): every member's replication state, as the leader
//! sees it. A follower forwards the question to the leader over its peer URLs; without a leader it
//! answers with what it knows (the members and their roles).

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_proto::admin::admin_client::AdminClient;
use keel_proto::admin::admin_server::{Admin, AdminServer};
use keel_proto::admin::{MemberReplication, MembersRequest, MembersResponse};
use keel_raft::{RaftStatus, Replication, Role};
use tonic::{Request, Response, Status};

use crate::server::Core;
use crate::ServerError;

/// The Admin service.
pub struct AdminService {
    core: Arc<Core>,
}

impl AdminService {
    /// The service over `core`.
    pub fn server(core: Arc<Core>) -> AdminServer<AdminService> {
        AdminServer::new(AdminService { core })
    }

    /// The answer from this member's own knowledge (complete only on the leader).
    fn local_view(&self, status: &RaftStatus) -> MembersResponse {
        let now = Instant::now();
        let transfers = self.core.transport_snapshot_transfers();
        let ms = |d: Duration| d.as_millis() as u64;
        let members = self
            .core
            .members()
            .into_iter()
            .map(|m| {
                let role = if m.id == status.leader_id {
                    "leader"
                } else if m.is_learner {
                    "learner"
                } else {
                    "follower"
                };
                let mut r = MemberReplication {
                    id: m.id,
                    name: m.name,
                    peer_urls: m.peer_ur_ls,
                    client_urls: m.client_ur_ls,
                    role: role.into(),
                    last_contact_ms: -1,
                    ..Default::default()
                };
                if let Some(p) = status.progress.iter().find(|p| p.id == m.id) {
                    r.matched_index = p.matched;
                    r.lag_entries = status.last_index.saturating_sub(p.matched);
                    r.lag_ms = p.behind_since.map_or(0, |t| ms(now - t));
                    r.active = p.active;
                    if m.id != status.id {
                        r.progress = match p.state {
                            Replication::Probing => "probing",
                            Replication::Replicating => "replicating",
                            Replication::Snapshot => "snapshot",
                        }
                        .into();
                        r.last_contact_ms = p.last_contact.map_or(-1, |t| ms(now - t) as i64);
                    }
                }
                if let Some(t) = transfers.get(&m.id) {
                    r.snapshot_index = t.index;
                    r.snapshot_bytes_sent = t.sent;
                    r.snapshot_bytes_total = t.total;
                }
                r
            })
            .collect();
        MembersResponse {
            cluster_id: self.core.identity.cluster_id,
            leader_id: status.leader_id,
            term: status.term,
            last_index: status.last_index,
            commit_index: status.commit_index,
            members,
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn members(
        &self,
        _: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let status = self.core.raft_status();
        if status.role == Role::Leader || status.leader_id == 0 {
            return Ok(Response::new(self.local_view(&status)));
        }
        let urls = self
            .core
            .membership
            .get(status.leader_id)
            .map(|m| m.peer_ur_ls)
            .unwrap_or_default();
        let mut last = Status::from(ServerError::NoLeader);
        for url in urls {
            let channel = self
                .core
                .dialer()
                .channel(&url, Some(Duration::from_secs(5)))
                .await;
            match channel {
                Ok(ch) => return AdminClient::new(ch).members(MembersRequest {}).await,
                Err(e) => last = Status::unavailable(format!("reaching the leader: {e}")),
            }
        }
        Err(last)
    }
}

//! etcd's Lease service. Grants and revokes go through raft; keep-alives and TTL queries are served
//! by the primary lessor (the leader's) from its clock, as in etcd: a follower forwards them.

use std::sync::Arc;

use futures::StreamExt;
use keel_rpc::etcd::{
    PbLeaseGrantRequest as LeaseGrantRequest, PbLeaseGrantResponse as LeaseGrantResponse,
    PbLeaseKeepAliveRequest as LeaseKeepAliveRequest,
    PbLeaseKeepAliveResponse as LeaseKeepAliveResponse, PbLeaseLeasesRequest as LeaseLeasesRequest,
    PbLeaseLeasesResponse as LeaseLeasesResponse, PbLeaseRevokeRequest as LeaseRevokeRequest,
    PbLeaseRevokeResponse as LeaseRevokeResponse, PbLeaseService, PbLeaseStatus as LeaseStatus,
    PbLeaseTimeToLiveRequest as LeaseTimeToLiveRequest,
    PbLeaseTimeToLiveResponse as LeaseTimeToLiveResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::credentials::caller;
use crate::lease::MAX_LEASE_TTL;
use crate::member::Member;
use crate::ServerError;

/// The smallest TTL granted, in seconds: etcd's ceil(1.5 election timeouts) with its default
/// timing (100 ms heartbeat, 1 s election timeout), which Keel's raft uses too. A shorter lease
/// could expire during a leader election.
pub const MIN_LEASE_TTL: i64 = 2;
/// Keep-alive responses buffered per stream.
const KEEPALIVE_BUFFER: usize = 64;

/// The Lease service.
pub struct LeaseService {
    member: Arc<Member>,
}

impl LeaseService {
    /// A Lease service over `member`.
    pub fn new(member: Arc<Member>) -> Self {
        LeaseService { member }
    }
}

#[tonic::async_trait]
impl PbLeaseService for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let who = caller(&self.member, &req)?;
        let mut g = req.into_inner();
        if g.ttl > MAX_LEASE_TTL {
            return Err(ServerError::LeaseTtlTooLarge.into());
        }
        // Chosen here, not in apply, so every member grants the same id and TTL.
        while g.id == 0 {
            g.id = (self.member.next_id() & i64::MAX as u64) as i64;
        }
        g.ttl = g.ttl.max(MIN_LEASE_TTL);
        let mut resp = self.member.propose(&who, g).await?;
        self.member.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let who = caller(&self.member, &req)?;
        let mut resp = self.member.propose(&who, req.into_inner()).await?;
        self.member.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = req.into_inner();
        let (out, rx) = mpsc::channel(KEEPALIVE_BUFFER);
        let member = self.member.clone();
        self.member.spawn_stream(async move {
            while let Some(Ok(req)) = inbound.next().await {
                let resp = member
                    .keep_alive(req.id)
                    .await
                    .map(|ttl| LeaseKeepAliveResponse {
                        header: member.header(member.store().current_revision()),
                        id: req.id,
                        ttl,
                    });
                let failed = resp.is_err();
                if out.send(resp.map_err(Status::from)).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let credentials = crate::api::Credentials::of(&req);
        let r = req.into_inner();
        self.member.linearizable_barrier().await?;
        let who = credentials.identify(self.member.auth())?;
        let ttl = if self.member.sync_lessor_role() {
            self.member.leases().time_to_live(r.id, r.keys)
        } else {
            self.member.forward_time_to_live(r.id, r.keys).await?
        };
        // The key names are data: only a caller that may read every one of them sees them
        // (etcd's fix of CVE-2023-32082).
        if let Some(t) = ttl.as_ref().filter(|_| r.keys) {
            for key in &t.keys {
                self.member
                    .auth()
                    .check_read(&who, key, &[])
                    .map_err(ServerError::from)?;
            }
            self.member
                .auth()
                .check_current(&who)
                .map_err(ServerError::from)?;
        }
        let header = self.member.header(self.member.store().current_revision());
        // A lease that does not exist is TTL -1, not an error, as etcd answers.
        let resp = match ttl {
            Some(t) => LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: t.remaining,
                granted_ttl: t.granted,
                keys: t.keys,
            },
            None => LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: -1,
                ..Default::default()
            },
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.member.linearizable_barrier().await?;
        let leases = self
            .member
            .leases()
            .leases()
            .into_iter()
            .map(|id| LeaseStatus { id })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: self.member.header(self.member.store().current_revision()),
            leases,
        }))
    }
}

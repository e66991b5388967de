//! etcd's Lease service. Grants and revokes go through raft; keep-alives and TTL queries are served
//! by the primary lessor (the leader's) from its clock, as in etcd: a follower forwards them.

use std::sync::Arc;
use std::time::Duration;

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

use crate::expiry::renew_as_leader;
use crate::lease::{RenewError, MAX_LEASE_TTL};
use crate::server::{Core, REQUEST_TIMEOUT};
use crate::ServerError;

/// The smallest TTL granted, in seconds: etcd's ceil(1.5 election timeouts) with its default
/// timing (100 ms heartbeat, 1 s election timeout), which Keel's raft uses too. A shorter lease
/// could expire during a leader election.
pub const MIN_LEASE_TTL: i64 = 2;
/// How often a keep-alive of an expired lease checks whether its revoke has been applied.
const REVOKE_POLL: Duration = Duration::from_millis(20);
/// Keep-alive responses buffered per stream.
const KEEPALIVE_BUFFER: usize = 64;

/// The Lease service.
pub struct LeaseService {
    core: Arc<Core>,
}

impl LeaseService {
    /// A Lease service over `core`.
    pub fn new(core: Arc<Core>) -> Self {
        LeaseService { core }
    }
}

/// Renews lease `id` on the primary lessor, the leader's (forwarded there from a follower).
/// Returns the TTL, 0 if the lease does not exist (etcd's keep-alive answer for a lease that is
/// gone).
pub(crate) async fn renew(core: &Core, id: i64) -> Result<i64, ServerError> {
    let leading = || core.is_leader();
    match renew_as_leader(&core.leases, leading, core.linearizable_barrier(), id).await? {
        Ok(ttl) => Ok(ttl),
        Err(RenewError::NotFound) => Ok(0),
        // Answer only once the keys are gone, so a client told "expired" never reads them.
        Err(RenewError::Expired) => wait_revoked(core, id).await.map(|()| 0),
        Err(RenewError::NotPrimary) => core.forward_renew(id).await,
    }
}

async fn wait_revoked(core: &Core, id: i64) -> Result<(), ServerError> {
    let waited = tokio::time::timeout(REQUEST_TIMEOUT, async {
        while core.leases.contains(id) {
            tokio::time::sleep(REVOKE_POLL).await;
        }
    })
    .await;
    waited.map_err(|_| ServerError::Timeout)
}

#[tonic::async_trait]
impl PbLeaseService for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let who = self.core.caller(&req)?;
        let mut g = req.into_inner();
        if g.ttl > MAX_LEASE_TTL {
            return Err(ServerError::LeaseTtlTooLarge.into());
        }
        // Chosen here, not in apply, so every member grants the same id and TTL.
        while g.id == 0 {
            g.id = (self.core.next_id() & i64::MAX as u64) as i64;
        }
        g.ttl = g.ttl.max(MIN_LEASE_TTL);
        let mut resp = self.core.propose(&who, g).await?;
        self.core.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let who = self.core.caller(&req)?;
        let mut resp = self.core.propose(&who, req.into_inner()).await?;
        self.core.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = req.into_inner();
        let (out, rx) = mpsc::channel(KEEPALIVE_BUFFER);
        let core = self.core.clone();
        self.core.spawn_stream(async move {
            while let Some(Ok(req)) = inbound.next().await {
                let resp = renew(&core, req.id)
                    .await
                    .map(|ttl| LeaseKeepAliveResponse {
                        header: core.header(core.store.current_revision()),
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
        let credentials = crate::auth::Credentials::of(&req);
        let r = req.into_inner();
        self.core.linearizable_barrier().await?;
        let who = credentials.identify(&self.core.auth)?;
        let ttl = if self.core.sync_lessor_role() {
            self.core.leases.time_to_live(r.id, r.keys)
        } else {
            self.core.forward_time_to_live(r.id, r.keys).await?
        };
        // The key names are data: only a caller that may read every one of them sees them
        // (etcd's fix of CVE-2023-32082).
        if let Some(t) = ttl.as_ref().filter(|_| r.keys) {
            for key in &t.keys {
                self.core
                    .auth
                    .check_read(&who, key, &[])
                    .map_err(ServerError::from)?;
            }
            self.core
                .auth
                .check_current(&who)
                .map_err(ServerError::from)?;
        }
        let header = self.core.header(self.core.store.current_revision());
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
        self.core.linearizable_barrier().await?;
        let leases = self
            .core
            .leases
            .leases()
            .into_iter()
            .map(|id| LeaseStatus { id })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: self.core.header(self.core.store.current_revision()),
            leases,
        }))
    }
}

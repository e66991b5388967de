//! etcd's Lock service (v3lockpb): `etcdctl lock` and clients' mutexes. See concurrency.rs.

use std::sync::Arc;

use keel_rpc::v3lock::lock_server::{Lock, LockServer};
use keel_rpc::v3lock::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tonic::{Request, Response, Status};

use super::credentials::caller;
use crate::api::concurrency::{
    check_contenders_readable, contender_key, create_or_get, delete_if_held, wait_turn, Contending,
};
use crate::member::Member;
use crate::ServerError;

/// The Lock service.
pub struct LockService {
    member: Arc<Member>,
}

impl LockService {
    /// The service over `member`.
    pub fn new(member: Arc<Member>) -> LockService {
        LockService { member }
    }

    /// The gRPC server of the service over `member`.
    pub fn server(member: Arc<Member>) -> LockServer<LockService> {
        LockServer::new(LockService::new(member))
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    /// Takes the lock once every holder that asked before is gone; a holder whose lease expires
    /// loses its place (its key goes with the lease).
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let who = caller(&self.member, &req)?;
        let r = req.into_inner();
        let (prefix, key) = contender_key(&r.name, r.lease);
        check_contenders_readable(&self.member, &who, &prefix)?;
        let mine = create_or_get(&self.member, &who, &key, Vec::new(), r.lease).await?;
        let contending = Contending::new(
            self.member.clone(),
            who.clone(),
            key.clone(),
            mine.create_revision,
        );
        wait_turn(&self.member, &prefix, mine.create_revision).await?;
        // The lease may have expired while waiting: then the lock is not ours.
        let (first, rev) = crate::api::concurrency::contender(&self.member, &prefix, None)?;
        if first.map(|kv| kv.key) != Some(key.clone()) {
            return Err(ServerError::State(keel_state::StateError::LeaseNotFound).into());
        }
        contending.won();
        Ok(Response::new(LockResponse {
            header: self.member.header(rev),
            key,
        }))
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let who = caller(&self.member, &req)?;
        let rev = delete_if_held(&self.member, &who, &req.into_inner().key, None).await?;
        Ok(Response::new(UnlockResponse {
            header: self.member.header(rev),
        }))
    }
}

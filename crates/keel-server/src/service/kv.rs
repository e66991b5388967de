//! etcd's KV service: validate, then read locally (after a ReadIndex barrier unless serializable) or
//! propose through raft, and fill the response header.

use std::sync::Arc;

use keel_rpc::etcd::{
    PbCompactionRequest as CompactionRequest, PbCompactionResponse as CompactionResponse,
    PbDeleteRequest as DeleteRangeRequest, PbDeleteResponse as DeleteRangeResponse, PbKvService,
    PbPutRequest as PutRequest, PbPutResponse as PutResponse, PbRangeRequest as RangeRequest,
    PbRangeResponse as RangeResponse, PbRangeStreamResponse, PbTxnOpRequest as Op,
    PbTxnRequest as TxnRequest, PbTxnResponse as TxnResponse,
};
use tonic::{Request, Response, Status};

use crate::auth::Credentials;
use crate::server::Core;
use crate::{range, txn, validate, ServerError};

/// The KV service.
pub struct KvService {
    core: Arc<Core>,
}

impl KvService {
    /// A KV service over `core`.
    pub fn new(core: Arc<Core>) -> Self {
        KvService { core }
    }

    async fn do_range(&self, req: Request<RangeRequest>) -> Result<RangeResponse, ServerError> {
        let credentials = Credentials::of(&req);
        let r = req.into_inner();
        validate::check_range(&r)?;
        if !r.serializable {
            self.core.linearizable_barrier().await?;
        }
        // Identified after the barrier, as etcd does: an auth change applied while waiting is
        // then already in the state checked against.
        let who = credentials.identify(&self.core.auth)?;
        self.core.auth.check_read(&who, &r.key, &r.range_end)?;
        let mut resp = range::range(&self.core.store.view(), &r)?;
        self.core.auth.check_current(&who)?;
        self.core.fill_header(&mut resp.header);
        Ok(resp)
    }

    /// A read-only txn, checked and served locally.
    async fn txn_read(
        &self,
        credentials: &Credentials,
        t: &TxnRequest,
    ) -> Result<TxnResponse, ServerError> {
        if !serializable(t) {
            self.core.linearizable_barrier().await?;
        }
        let who = credentials.identify(&self.core.auth)?;
        self.core.auth.check_txn(&who, t, &self.core.leases)?;
        let resp = txn::txn_read(&self.core.store.view(), t)?;
        self.core.auth.check_current(&who)?;
        Ok(resp)
    }
}

/// A txn whose every op is a serializable range needs no read barrier.
fn serializable(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| matches!(&op.request, Some(Op::RequestRange(r)) if r.serializable))
}

#[tonic::async_trait]
impl PbKvService for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        Ok(Response::new(self.do_range(req).await?))
    }

    type RangeStreamStream = tokio_stream::Once<Result<PbRangeStreamResponse, Status>>;

    async fn range_stream(
        &self,
        req: Request<RangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        let resp = self.do_range(req).await?;
        let chunk = PbRangeStreamResponse {
            range_response: Some(resp),
        };
        Ok(Response::new(tokio_stream::once(Ok(chunk))))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let who = self.core.caller(&req)?;
        let r = req.into_inner();
        validate::check_put(&r).map_err(ServerError::from)?;
        let mut resp = self.core.propose(&who, r).await?;
        self.core.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let who = self.core.caller(&req)?;
        let r = req.into_inner();
        validate::check_delete(&r).map_err(ServerError::from)?;
        let mut resp = self.core.propose(&who, r).await?;
        self.core.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let credentials = Credentials::of(&req);
        let t = req.into_inner();
        validate::check_txn(&t, self.core.max_txn_ops).map_err(ServerError::from)?;
        let mut resp = if txn::is_write(&t) {
            let who = credentials.identify(&self.core.auth)?;
            self.core.propose(&who, t).await?
        } else {
            self.txn_read(&credentials, &t).await?
        };
        self.core.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let who = self.core.caller(&req)?;
        let mut resp = self.core.propose(&who, req.into_inner()).await?;
        self.core.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }
}

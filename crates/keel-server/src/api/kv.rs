//! etcd's KV service: validate, then read locally (after a ReadIndex barrier unless serializable) or
//! propose through raft, and fill the response header.

use std::sync::Arc;

use keel_mvcc::Store;
use keel_rpc::etcd::{
    PbCompactionRequest as CompactionRequest, PbCompactionResponse as CompactionResponse,
    PbDeleteRequest as DeleteRangeRequest, PbDeleteResponse as DeleteRangeResponse, PbKvService,
    PbPutRequest as PutRequest, PbPutResponse as PutResponse, PbRangeRequest as RangeRequest,
    PbRangeResponse as RangeResponse, PbRangeStreamResponse, PbTxnOpRequest as Op,
    PbTxnRequest as TxnRequest, PbTxnResponse as TxnResponse,
};
use tonic::{Request, Response, Status};

use super::credentials::caller;
use crate::api::Credentials;
use crate::member::Member;
use crate::{range, txn, validate, ServerError};

/// The KV service.
pub struct KvService {
    member: Arc<Member>,
}

impl KvService {
    /// A KV service over `member`.
    pub fn new(member: Arc<Member>) -> Self {
        KvService { member }
    }

    async fn do_range(&self, req: Request<RangeRequest>) -> Result<RangeResponse, ServerError> {
        let credentials = Credentials::of(&req);
        let r = req.into_inner();
        validate::check_range(&r)?;
        if !r.serializable {
            self.member.linearizable_barrier().await?;
        }
        // Identified after the barrier, as etcd does: an auth change applied while waiting is
        // then already in the state checked against.
        let who = credentials.identify(self.member.auth())?;
        self.member.auth().check_read(&who, &r.key, &r.range_end)?;
        // A read of one key stays on the worker: the hand-off would cost more than the read.
        let mut resp = if r.range_end.is_empty() {
            range::range(&self.member.store().view(), &r)?
        } else {
            off_worker(self.member.store(), move |store| {
                range::range(&store.view(), &r)
            })
            .await??
        };
        self.member.auth().check_current(&who)?;
        self.member.fill_header(&mut resp.header);
        Ok(resp)
    }

    /// A read-only txn, checked and served locally.
    async fn txn_read(
        &self,
        credentials: &Credentials,
        t: &TxnRequest,
    ) -> Result<TxnResponse, ServerError> {
        if !serializable(t) {
            self.member.linearizable_barrier().await?;
        }
        let who = credentials.identify(self.member.auth())?;
        self.member
            .auth()
            .check_txn(&who, t, self.member.leases())?;
        let spans =
            t.success.iter().chain(&t.failure).any(
                |op| matches!(&op.request, Some(Op::RequestRange(r)) if !r.range_end.is_empty()),
            );
        let resp = if spans {
            let t = t.clone();
            off_worker(self.member.store(), move |store| {
                txn::txn_read(&store.view(), &t)
            })
            .await??
        } else {
            txn::txn_read(&self.member.store().view(), t)?
        };
        self.member.auth().check_current(&who)?;
        Ok(resp)
    }
}

/// Runs a read of the store that may walk many keys on the blocking pool. A range over a span can
/// take seconds (a count of 50,000,000 keys: 23 s); on the runtime's worker it would hold up every
/// other request, lease keep-alive and HTTP/2 ping of the member meanwhile (etcdctl closes a
/// connection whose pings go unanswered for 6 s, then sends the same count again, for ever).
async fn off_worker<T: Send + 'static>(
    store: &Arc<Store>,
    read: impl FnOnce(&Store) -> T + Send + 'static,
) -> Result<T, ServerError> {
    // The deterministic simulation polls the services on its own one-threaded executor, with no
    // runtime and no worker to keep free: there the read runs inline.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return Ok(read(store));
    };
    let store = store.clone();
    runtime
        .spawn_blocking(move || read(&store))
        .await
        .map_err(|e| ServerError::Internal(format!("range task: {e}")))
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
        let who = caller(&self.member, &req)?;
        let r = req.into_inner();
        validate::check_put(&r).map_err(ServerError::from)?;
        let mut resp = self.member.propose(&who, r).await?;
        self.member.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let who = caller(&self.member, &req)?;
        let r = req.into_inner();
        validate::check_delete(&r).map_err(ServerError::from)?;
        let mut resp = self.member.propose(&who, r).await?;
        self.member.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let credentials = Credentials::of(&req);
        let t = req.into_inner();
        validate::check_txn(&t, self.member.config().max_txn_ops).map_err(ServerError::from)?;
        let mut resp = if txn::is_write(&t) {
            let who = credentials.identify(self.member.auth())?;
            self.member.propose(&who, t).await?
        } else {
            self.txn_read(&credentials, &t).await?
        };
        self.member.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let who = caller(&self.member, &req)?;
        let mut resp = self.member.propose(&who, req.into_inner()).await?;
        self.member.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }
}

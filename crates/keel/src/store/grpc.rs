//! `StateStore` over etcd's gRPC API, generic over how requests travel: a TCP channel to remote
//! endpoints, or the embedded member's services called in-process.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use keel_rpc::etcd::{
    PbCompare, PbDeleteRequest, PbDeleteResponse, PbKeyValue, PbPutRequest, PbPutResponse,
    PbRangeRequest, PbRangeResponse, PbTargetUnion, PbTxnOpRequest, PbTxnRequest, PbTxnRequestOp,
    PbTxnResponse, PbWatchResponse,
};
use keel_rpc::v3election::{LeaderRequest, LeaderResponse};
use tonic::client::{Grpc, GrpcService};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::{Body, Bytes, StdError};
use tonic::transport::{Channel, Endpoint};

use keel_server::prefix_end;

use super::leadership::Leadership;
use super::{
    Compare, CompareOp, CompareTarget, EventKind, Keys, Kv, LeaderStream, Op, StateStore,
    StoreError, WatchEvent, WatchStream,
};

/// The election a store campaigns in unless told otherwise.
pub const DEFAULT_ELECTION: &str = "keel/leader";

/// A store over remote etcd-compatible endpoints.
pub type RemoteStore = GrpcStore<Channel>;

/// A store over an embedded member's services, in-process.
pub type EmbeddedStore = GrpcStore<tonic::service::Routes>;

/// `StateStore` over any gRPC transport to an etcd-compatible member. Clones share the
/// transport and its life: `close` on any of them ends them all.
#[derive(Clone)]
pub struct GrpcStore<T> {
    life: Arc<Life<T>>,
    election: Arc<Vec<u8>>,
}

/// What the clones of a store share: the transport (gone once closed) and the signal that
/// ends its background work.
struct Life<T> {
    grpc: parking_lot::RwLock<Option<Grpc<T>>>,
    closed: tokio::sync::watch::Sender<bool>,
    /// The tasks holding leaderships, awaited by `close` (each resigns when closed).
    holders: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The error of a call on a closed store.
fn closed_error() -> StoreError {
    StoreError::Unavailable("the store is closed".into())
}

impl RemoteStore {
    /// A store over `endpoints` (`host:port` or URLs); requests go to whichever answers.
    pub async fn connect(endpoints: &[String]) -> Result<RemoteStore, StoreError> {
        let endpoints = endpoints
            .iter()
            .map(|e| {
                let url = if e.contains("://") {
                    e.clone()
                } else {
                    format!("http://{e}")
                };
                Endpoint::from_shared(url)
                    .map(|e| e.connect_timeout(Duration::from_secs(3)))
                    .map_err(|e| StoreError::Unavailable(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(StoreError::Unavailable("no endpoint given".into()));
        }
        Ok(GrpcStore::new(Channel::balance_list(endpoints.into_iter())))
    }
}

/// What the transport must be for `Grpc` to call over it.
pub trait Transport:
    GrpcService<
        tonic::body::Body,
        Future: Send,
        ResponseBody: Body<Data = Bytes, Error: Into<StdError> + Send> + Send + 'static,
        Error: Into<StdError>,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> Transport for T where
    T: GrpcService<
            tonic::body::Body,
            Future: Send,
            ResponseBody: Body<Data = Bytes, Error: Into<StdError> + Send> + Send + 'static,
            Error: Into<StdError>,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// The error a call ended with, typed. A status made on this side from a broken connection (code
/// Unknown, with the transport's error as its source) is an unavailability, not a refusal.
pub(crate) fn typed(s: tonic::Status) -> StoreError {
    let m = s.message();
    if m.contains("no leader") && !m.starts_with("election") {
        StoreError::NoLeader
    } else if m.contains("required revision has been compacted") {
        StoreError::Compacted(0)
    } else if matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
    ) || (s.code() == tonic::Code::Unknown && std::error::Error::source(&s).is_some())
    {
        StoreError::Unavailable(m.to_string())
    } else {
        StoreError::Rejected(m.to_string())
    }
}

fn kv(k: PbKeyValue) -> Kv {
    Kv {
        key: k.key,
        value: k.value,
        version: k.mod_revision,
        create_revision: k.create_revision,
        writes: k.version,
        lease: k.lease,
    }
}

// etcd's Compare.CompareResult, CompareTarget and Event.EventType.
const EQUAL: i32 = 0;
const GREATER: i32 = 1;
const LESS: i32 = 2;
const NOT_EQUAL: i32 = 3;
const TARGET_VERSION: i32 = 0;
const TARGET_CREATE: i32 = 1;
const TARGET_MOD: i32 = 2;
const TARGET_VALUE: i32 = 3;
const TARGET_LEASE: i32 = 4;
const EVENT_DELETE: i32 = 1;

fn compare(c: Compare) -> PbCompare {
    let (key, result, target, union) = match c {
        Compare::Version(k, v) => (k, EQUAL, TARGET_MOD, PbTargetUnion::ModRevision(v)),
        Compare::Value(k, v) => (k, EQUAL, TARGET_VALUE, PbTargetUnion::Value(v)),
        Compare::Exists(k) => (k, GREATER, TARGET_CREATE, PbTargetUnion::CreateRevision(0)),
        Compare::Absent(k) => (k, EQUAL, TARGET_CREATE, PbTargetUnion::CreateRevision(0)),
        Compare::Check { key, op, target } => {
            let result = match op {
                CompareOp::Equal => EQUAL,
                CompareOp::NotEqual => NOT_EQUAL,
                CompareOp::Less => LESS,
                CompareOp::Greater => GREATER,
            };
            let (target, union) = match target {
                CompareTarget::Writes(v) => (TARGET_VERSION, PbTargetUnion::Version(v)),
                CompareTarget::CreateRevision(v) => {
                    (TARGET_CREATE, PbTargetUnion::CreateRevision(v))
                }
                CompareTarget::ModRevision(v) => (TARGET_MOD, PbTargetUnion::ModRevision(v)),
                CompareTarget::Value(v) => (TARGET_VALUE, PbTargetUnion::Value(v)),
                CompareTarget::Lease(v) => (TARGET_LEASE, PbTargetUnion::Lease(v)),
            };
            (key, result, target, union)
        }
    };
    PbCompare {
        result,
        target,
        key,
        target_union: Some(union),
        ..Default::default()
    }
}

fn op(o: Op) -> PbTxnRequestOp {
    let request = match o {
        Op::Put(key, value) => PbTxnOpRequest::RequestPut(PbPutRequest {
            key,
            value,
            ..Default::default()
        }),
        Op::Delete(key) => PbTxnOpRequest::RequestDeleteRange(PbDeleteRequest {
            key,
            ..Default::default()
        }),
    };
    PbTxnRequestOp {
        request: Some(request),
    }
}

/// etcd's WatchRequest with a create request, declared here by its wire format (etcd-client does
/// not export the create request's type).
#[derive(Clone, PartialEq, prost::Message)]
struct WatchCreate {
    #[prost(message, optional, tag = "1")]
    create_request: Option<WatchCreateRequest>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WatchCreateRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    range_end: Vec<u8>,
    #[prost(int64, tag = "3")]
    start_revision: i64,
    #[prost(bool, tag = "6")]
    prev_kv: bool,
}

impl<T: Transport> GrpcStore<T> {
    /// A store over `transport`, campaigning in the default election.
    pub fn new(transport: T) -> GrpcStore<T> {
        GrpcStore {
            life: Arc::new(Life {
                grpc: parking_lot::RwLock::new(Some(Grpc::new(transport))),
                closed: tokio::sync::watch::channel(false).0,
                holders: parking_lot::Mutex::new(Vec::new()),
            }),
            election: Arc::new(DEFAULT_ELECTION.as_bytes().to_vec()),
        }
    }

    /// Resolves once the store is closed.
    pub(crate) fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut closed = self.life.closed.subscribe();
        async move {
            let _ = closed.wait_for(|&c| c).await;
        }
    }

    /// Hands a leadership's holding task to the store, so `close` waits for its resignation.
    pub(crate) fn adopt(&self, holder: tokio::task::JoinHandle<()>) {
        let mut holders = self.life.holders.lock();
        holders.retain(|h| !h.is_finished());
        holders.push(holder);
    }

    /// The same store, campaigning and observing in election `name`.
    pub fn with_election(mut self, name: &str) -> GrpcStore<T> {
        self.election = Arc::new(name.as_bytes().to_vec());
        self
    }

    pub(crate) fn election_name(&self) -> Vec<u8> {
        self.election.to_vec()
    }

    /// A client ready to send on the transport.
    async fn ready(&self) -> Result<Grpc<T>, StoreError> {
        let mut grpc = self.life.grpc.read().clone().ok_or_else(closed_error)?;
        grpc.ready()
            .await
            .map_err(|e| StoreError::Unavailable(e.into().to_string()))?;
        Ok(grpc)
    }

    /// One unary call.
    pub(crate) async fn call<Req, Resp>(
        &self,
        path: &'static str,
        req: Req,
    ) -> Result<Resp, StoreError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = self.ready().await?;
        let codec = tonic_prost::ProstCodec::default();
        grpc.unary(
            tonic::Request::new(req),
            PathAndQuery::from_static(path),
            codec,
        )
        .await
        .map(tonic::Response::into_inner)
        .map_err(typed)
    }

    /// One streaming call: `requests` out, the responses back.
    pub(crate) async fn stream<Req, Resp>(
        &self,
        path: &'static str,
        requests: impl Stream<Item = Req> + Send + 'static,
    ) -> Result<tonic::Streaming<Resp>, StoreError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = self.ready().await?;
        let codec = tonic_prost::ProstCodec::default();
        grpc.streaming(
            tonic::Request::new(requests),
            PathAndQuery::from_static(path),
            codec,
        )
        .await
        .map(tonic::Response::into_inner)
        .map_err(typed)
    }

    async fn range(&self, req: PbRangeRequest) -> Result<PbRangeResponse, StoreError> {
        self.call("/etcdserverpb.KV/Range", req).await
    }
}

#[async_trait::async_trait]
impl<T: Transport> StateStore for GrpcStore<T> {
    async fn put(&self, key: &[u8], value: &[u8]) -> Result<i64, StoreError> {
        let req = PbPutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..Default::default()
        };
        let r: PbPutResponse = self.call("/etcdserverpb.KV/Put", req).await?;
        Ok(r.header.map_or(0, |h| h.revision))
    }

    async fn read(&self, key: &[u8]) -> Result<(Option<Kv>, i64), StoreError> {
        let req = PbRangeRequest {
            key: key.to_vec(),
            ..Default::default()
        };
        let r = self.range(req).await?;
        let revision = r.header.map_or(0, |h| h.revision);
        Ok((r.kvs.into_iter().next().map(kv), revision))
    }

    async fn delete(&self, key: &[u8]) -> Result<(), StoreError> {
        let req = PbDeleteRequest {
            key: key.to_vec(),
            ..Default::default()
        };
        let r: PbDeleteResponse = self.call("/etcdserverpb.KV/DeleteRange", req).await?;
        if r.deleted == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn list(&self, prefix: &[u8]) -> Result<Vec<Kv>, StoreError> {
        let req = PbRangeRequest {
            key: if prefix.is_empty() {
                vec![0]
            } else {
                prefix.to_vec()
            },
            range_end: prefix_end(prefix),
            ..Default::default()
        };
        Ok(self.range(req).await?.kvs.into_iter().map(kv).collect())
    }

    async fn watch(&self, keys: Keys, start_revision: i64) -> Result<WatchStream, StoreError> {
        let (key, range_end) = match keys {
            Keys::Key(k) => (k, Vec::new()),
            Keys::Prefix(p) if p.is_empty() => (vec![0], vec![0]),
            Keys::Prefix(p) => {
                let end = prefix_end(&p);
                (p, end)
            }
        };
        let create = WatchCreate {
            create_request: Some(WatchCreateRequest {
                key,
                range_end,
                start_revision,
                prev_kv: true,
            }),
        };
        // The request stream stays open while the watch is read: its end ends the watch (which an
        // in-process member sees no other way: there is no connection to close).
        let (requests, opened) = tokio::sync::mpsc::channel(1);
        let _ = requests.send(create).await;
        let opened = tokio_stream::wrappers::ReceiverStream::new(opened);
        let mut responses = self
            .stream::<_, PbWatchResponse>("/etcdserverpb.Watch/Watch", opened)
            .await?;
        let closed = self.closed();
        let events = async_stream(move |tx| async move {
            let _open = requests;
            tokio::pin!(closed);
            loop {
                let next = tokio::select! {
                    _ = tx.closed() => return,
                    () = &mut closed => {
                        let _ = tx.send(Err(closed_error())).await;
                        return;
                    }
                    next = responses.message() => next,
                };
                let r = match next {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        let _ = tx
                            .send(Err(StoreError::Unavailable("watch ended".into())))
                            .await;
                        return;
                    }
                    Err(s) => {
                        let _ = tx.send(Err(typed(s))).await;
                        return;
                    }
                };
                if r.compact_revision > 0 {
                    let _ = tx
                        .send(Err(StoreError::Compacted(r.compact_revision)))
                        .await;
                    return;
                }
                if r.canceled {
                    let _ = tx.send(Err(StoreError::Rejected(r.cancel_reason))).await;
                    return;
                }
                for e in r.events {
                    let Some(k) = e.kv else { continue };
                    let event = WatchEvent {
                        kind: if e.r#type == EVENT_DELETE {
                            EventKind::Delete
                        } else {
                            EventKind::Put
                        },
                        kv: kv(k),
                        prev_kv: e.prev_kv.map(kv),
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(events)
    }

    async fn transaction(
        &self,
        checks: Vec<Compare>,
        on_success: Vec<Op>,
        on_failure: Vec<Op>,
    ) -> Result<bool, StoreError> {
        let req = PbTxnRequest {
            compare: checks.into_iter().map(compare).collect(),
            success: on_success.into_iter().map(op).collect(),
            failure: on_failure.into_iter().map(op).collect(),
        };
        let r: PbTxnResponse = self.call("/etcdserverpb.KV/Txn", req).await?;
        Ok(r.succeeded)
    }

    async fn campaign(
        &self,
        candidate_id: &str,
        lease_ttl: Duration,
    ) -> Result<Leadership, StoreError> {
        Leadership::campaign(self.clone(), candidate_id, lease_ttl).await
    }

    async fn leader(&self) -> Result<Option<String>, StoreError> {
        let req = LeaderRequest {
            name: self.election_name(),
        };
        match self
            .call::<_, LeaderResponse>("/v3electionpb.Election/Leader", req)
            .await
        {
            Ok(r) => {
                Ok(r.kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
            }
            Err(StoreError::Rejected(m)) if m.contains("election: no leader") => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn observe(&self) -> Result<LeaderStream, StoreError> {
        let req = LeaderRequest {
            name: self.election_name(),
        };
        let mut responses = self
            .stream::<_, LeaderResponse>(
                "/v3electionpb.Election/Observe",
                futures::stream::iter([req]),
            )
            .await?;
        let closed = self.closed();
        Ok(async_stream(move |tx| async move {
            tokio::pin!(closed);
            loop {
                let next = tokio::select! {
                    _ = tx.closed() => return,
                    () = &mut closed => {
                        let _ = tx.send(Err(closed_error())).await;
                        return;
                    }
                    next = responses.message() => next,
                };
                let item = match next {
                    Ok(Some(r)) => match r.kv {
                        Some(kv) => Ok(String::from_utf8_lossy(&kv.value).into_owned()),
                        None => continue,
                    },
                    Ok(None) => Err(StoreError::Unavailable("observe ended".into())),
                    Err(s) => Err(typed(s)),
                };
                let end = item.is_err();
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
        }))
    }

    async fn close(&self) {
        self.life.closed.send_replace(true);
        let holders = std::mem::take(&mut *self.life.holders.lock());
        for h in holders {
            let _ = h.await;
        }
        // Calls in flight keep their clone; the transport goes with the last of them.
        self.life.grpc.write().take();
    }
}

/// Items buffered between a stream's task and its reader.
const STREAM_BUFFER: usize = 256;

/// A stream fed by a task running `produce` (it should stop once the sender is closed: the
/// stream was dropped).
fn async_stream<I, F, Fut>(produce: F) -> Pin<Box<dyn Stream<Item = I> + Send>>
where
    I: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<I>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
    tokio::spawn(produce(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

//! The gRPC proxy's Watch service: watchers that ask for the same thing from now on (same key,
//! range, filters, options and token, no start revision) share one upstream watch, as etcd's
//! proxy coalesces them (its watch broadcasts). Each client watcher keeps its own id; events are
//! fanned out to every subscriber of the broadcast. A watcher with a start revision gets an
//! upstream watch of its own. An upstream watch that breaks is resumed after the last revision it
//! delivered, so subscribers neither miss nor repeat events.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use keel_rpc::etcd::{
    PbResponseHeader as ResponseHeader, PbWatchRequest as WatchRequest,
    PbWatchRequestUnion as Union, PbWatchResponse as WatchResponse, PbWatchService,
};
use parking_lot::Mutex;
use prometheus::{IntCounter, IntGauge};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::Upstream;

/// How long to wait before resuming a broken upstream watch.
const RESUME_DELAY: Duration = Duration::from_millis(200);
/// Responses buffered per client stream.
const CLIENT_BUFFER: usize = 128;

type ClientTx = mpsc::Sender<Result<WatchResponse, Status>>;

/// One client watcher subscribed to a broadcast.
struct Subscriber {
    stream: u64,
    watch_id: i64,
    tx: ClientTx,
    /// Whether it has been told its watch was created.
    created: bool,
}

/// One upstream watch and its subscribers.
struct Broadcast {
    subscribers: Vec<Subscriber>,
    /// The header of the upstream's last response (a joining subscriber is created at it).
    header: Option<ResponseHeader>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The proxy's coalescing metrics (etcd's names).
pub struct WatchMetrics {
    /// Client watchers sharing an upstream watch with another.
    pub coalescing: IntGauge,
    /// Events fanned out beyond the first subscriber.
    pub events_coalesced: IntCounter,
}

/// The Watch service.
pub struct WatchProxy {
    upstream: Upstream,
    broadcasts: Arc<Mutex<HashMap<Vec<u8>, Broadcast>>>,
    next_stream: AtomicU64,
    metrics: Arc<WatchMetrics>,
}

impl WatchProxy {
    /// A Watch service forwarding to `upstream`.
    pub fn new(upstream: Upstream, metrics: Arc<WatchMetrics>) -> WatchProxy {
        WatchProxy {
            upstream,
            broadcasts: Arc::default(),
            next_stream: AtomicU64::new(0),
            metrics,
        }
    }
}

/// What makes two create requests the same watch: everything in it but the id, and the token
/// (watchers of different users never share), or a unique key for one with a start revision.
fn coalesce_key(create: &WatchRequest, token: Option<&str>, unique: u64) -> Vec<u8> {
    use prost::Message;
    let mut key = Vec::new();
    let Some(Union::CreateRequest(c)) = &create.request_union else {
        return key;
    };
    if c.start_revision != 0 {
        key.extend_from_slice(b"unique:");
        key.extend_from_slice(&unique.to_be_bytes());
        return key;
    }
    let mut shared = c.clone();
    shared.watch_id = 0;
    key.extend_from_slice(token.unwrap_or_default().as_bytes());
    key.push(0);
    key.extend_from_slice(
        &WatchRequest {
            request_union: Some(Union::CreateRequest(shared)),
        }
        .encode_to_vec(),
    );
    key
}

fn token_of(metadata: &MetadataMap) -> Option<String> {
    metadata
        .get("token")
        .or_else(|| metadata.get("authorization"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[tonic::async_trait]
impl PbWatchService for WatchProxy {
    type WatchStream = ReceiverStream<Result<WatchResponse, Status>>;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let token = token_of(req.metadata());
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let ctx = StreamCtx {
            upstream: self.upstream.clone(),
            broadcasts: self.broadcasts.clone(),
            metrics: self.metrics.clone(),
            token,
            stream,
            tx,
            next_id: Arc::new(AtomicI64::new(0)),
        };
        tokio::spawn(async move {
            let mut mine: HashMap<i64, Vec<u8>> = HashMap::new();
            while let Some(Ok(req)) = inbound.next().await {
                match &req.request_union {
                    Some(Union::CreateRequest(c)) => {
                        let id = if c.watch_id != 0 {
                            c.watch_id
                        } else {
                            ctx.next_id.fetch_add(1, Ordering::Relaxed)
                        };
                        if let Some(key) = ctx.subscribe(req.clone(), id).await {
                            mine.insert(id, key);
                        }
                    }
                    Some(Union::CancelRequest(c)) => {
                        if let Some(key) = mine.remove(&c.watch_id) {
                            ctx.unsubscribe(&key, c.watch_id);
                            let canceled = WatchResponse {
                                header: ctx.header(&key),
                                watch_id: c.watch_id,
                                canceled: true,
                                ..Default::default()
                            };
                            let _ = ctx.tx.send(Ok(canceled)).await;
                        }
                    }
                    Some(Union::ProgressRequest(_)) => {
                        // etcd answers a progress request with the current revision, for no
                        // watcher in particular (watch id -1).
                        let header = mine.values().find_map(|k| ctx.header(k));
                        let progress = WatchResponse {
                            header,
                            watch_id: -1,
                            ..Default::default()
                        };
                        let _ = ctx.tx.send(Ok(progress)).await;
                    }
                    None => {}
                }
            }
            for (id, key) in mine {
                ctx.unsubscribe(&key, id);
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One client stream's view of the shared broadcasts.
struct StreamCtx {
    upstream: Upstream,
    broadcasts: Arc<Mutex<HashMap<Vec<u8>, Broadcast>>>,
    metrics: Arc<WatchMetrics>,
    token: Option<String>,
    stream: u64,
    tx: ClientTx,
    next_id: Arc<AtomicI64>,
}

impl StreamCtx {
    fn header(&self, key: &[u8]) -> Option<ResponseHeader> {
        self.broadcasts.lock().get(key).and_then(|b| b.header)
    }

    /// Joins (or starts) the broadcast of `create` as watcher `id`; its key.
    async fn subscribe(&self, create: WatchRequest, id: i64) -> Option<Vec<u8>> {
        let unique = (self.stream << 20) ^ id as u64;
        let key = coalesce_key(&create, self.token.as_deref(), unique);
        let created_now = {
            let mut all = self.broadcasts.lock();
            let b = all.entry(key.clone()).or_insert_with(|| Broadcast {
                subscribers: Vec::new(),
                header: None,
                task: None,
            });
            let header = b.header;
            b.subscribers.push(Subscriber {
                stream: self.stream,
                watch_id: id,
                tx: self.tx.clone(),
                created: header.is_some(),
            });
            if b.subscribers.len() > 1 {
                self.metrics.coalescing.inc();
            }
            if b.task.is_none() {
                b.task = Some(tokio::spawn(run_upstream(
                    self.upstream.clone(),
                    self.broadcasts.clone(),
                    self.metrics.clone(),
                    key.clone(),
                    create,
                    self.token.clone(),
                )));
            }
            header
        };
        if let Some(header) = created_now {
            let created = WatchResponse {
                header: Some(header),
                watch_id: id,
                created: true,
                ..Default::default()
            };
            let _ = self.tx.send(Ok(created)).await;
        }
        Some(key)
    }

    fn unsubscribe(&self, key: &[u8], id: i64) {
        let mut all = self.broadcasts.lock();
        let Some(b) = all.get_mut(key) else { return };
        let before = b.subscribers.len();
        b.subscribers
            .retain(|s| !(s.stream == self.stream && s.watch_id == id));
        if before > 1 && b.subscribers.len() < before {
            self.metrics.coalescing.dec();
        }
        if b.subscribers.is_empty() {
            if let Some(task) = b.task.take() {
                task.abort();
            }
            all.remove(key);
        }
    }
}

/// Keeps the broadcast's upstream watch running, resuming it after its last revision when it
/// breaks, and fans its responses out.
async fn run_upstream(
    upstream: Upstream,
    broadcasts: Arc<Mutex<HashMap<Vec<u8>, Broadcast>>>,
    metrics: Arc<WatchMetrics>,
    key: Vec<u8>,
    mut create: WatchRequest,
    token: Option<String>,
) {
    if let Some(Union::CreateRequest(c)) = &mut create.request_union {
        c.watch_id = 0;
    }
    let mut next_rev = 0;
    loop {
        let mut req = create.clone();
        if let (Some(Union::CreateRequest(c)), true) = (&mut req.request_union, next_rev > 0) {
            c.start_revision = next_rev;
        }
        let ended = watch_once(
            &upstream,
            &broadcasts,
            &metrics,
            &key,
            req,
            &token,
            &mut next_rev,
        )
        .await;
        match ended {
            // The upstream canceled the watch (compacted, or refused): every subscriber hears
            // why, and the broadcast ends.
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(error = %e, "upstream watch broke; resuming");
                tokio::time::sleep(RESUME_DELAY).await;
            }
        }
    }
}

/// Runs one upstream watch until it is canceled (Ok) or breaks (Err).
async fn watch_once(
    upstream: &Upstream,
    broadcasts: &Mutex<HashMap<Vec<u8>, Broadcast>>,
    metrics: &WatchMetrics,
    key: &[u8],
    create: WatchRequest,
    token: &Option<String>,
    next_rev: &mut i64,
) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(upstream.pick());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let (tx, rx) = mpsc::channel(1);
    // Kept open (the upstream watch lives as long as its request stream).
    let _keep = tx.clone();
    tx.send(create)
        .await
        .map_err(|_| Status::internal("upstream request stream closed"))?;
    let mut request = Request::new(ReceiverStream::new(rx));
    if let Some(t) = token.as_ref().and_then(|t| t.parse().ok()) {
        request.metadata_mut().insert("token", t);
    }
    let path = axum::http::uri::PathAndQuery::from_static("/etcdserverpb.Watch/Watch");
    let mut responses = grpc
        .streaming(
            request,
            path,
            tonic_prost::ProstCodec::<WatchRequest, WatchResponse>::default(),
        )
        .await?
        .into_inner();
    while let Some(resp) = responses.message().await? {
        if let Some(h) = resp.header {
            if !resp.events.is_empty() || resp.created {
                *next_rev = (*next_rev).max(h.revision + 1);
            }
        }
        if fan_out(broadcasts, metrics, key, &resp).await {
            return Ok(());
        }
    }
    Err(Status::unavailable("upstream watch ended"))
}

/// Sends `resp` to every subscriber (a `created` answer only to those not told yet); true when
/// the upstream canceled the watch.
async fn fan_out(
    broadcasts: &Mutex<HashMap<Vec<u8>, Broadcast>>,
    metrics: &WatchMetrics,
    key: &[u8],
    resp: &WatchResponse,
) -> bool {
    let targets: Vec<(ClientTx, WatchResponse)> = {
        let mut all = broadcasts.lock();
        let Some(b) = all.get_mut(key) else {
            return true;
        };
        if resp.header.is_some() {
            b.header = resp.header;
        }
        let mut out = Vec::new();
        for s in &mut b.subscribers {
            if resp.created && s.created {
                continue;
            }
            let mut r = resp.clone();
            r.watch_id = s.watch_id;
            if !s.created {
                // A resumed upstream watch's events reach subscribers that were told already.
                r.created = true;
                s.created = true;
            }
            out.push((s.tx.clone(), r));
        }
        if resp.canceled {
            all.remove(key);
        }
        out
    };
    if !resp.events.is_empty() && targets.len() > 1 {
        metrics.events_coalesced.inc_by(targets.len() as u64 - 1);
    }
    for (tx, r) in targets {
        let _ = tx.send(Ok(r)).await;
    }
    resp.canceled
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn create(key: &[u8], start: i64, id: i64) -> WatchRequest {
        // Built from its encoding (field 1, a create request whose field 1 is the key): the
        // create request's type is not exported by name.
        let inner = [&[0x0a, key.len() as u8][..], key].concat();
        let bytes = [&[0x0a, inner.len() as u8][..], &inner].concat();
        let mut r = WatchRequest::decode(&bytes[..]).unwrap();
        let Some(Union::CreateRequest(c)) = &mut r.request_union else {
            panic!("a create request");
        };
        c.start_revision = start;
        c.watch_id = id;
        r
    }

    #[test]
    fn identical_watches_share_a_key_but_not_across_users_or_revisions() {
        let a = coalesce_key(&create(b"k", 0, 1), None, 1);
        let b = coalesce_key(&create(b"k", 0, 7), None, 2);
        assert_eq!(a, b, "the watch id does not matter");
        assert_ne!(a, coalesce_key(&create(b"j", 0, 1), None, 3));
        assert_ne!(a, coalesce_key(&create(b"k", 0, 1), Some("t"), 4));
        let from_rev = coalesce_key(&create(b"k", 5, 1), None, 5);
        assert_ne!(from_rev, coalesce_key(&create(b"k", 5, 1), None, 6));
    }
}

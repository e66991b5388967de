//! etcd's Watch service: one bidirectional stream carries many watchers. Creating a watcher answers
//! `created` before any of its events; events come in revision order, each revision whole; a watcher
//! whose start revision is compacted gets `compact_revision` and is canceled, as in etcd.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use keel_proto::etcd::PbEvent as Event;
use keel_proto::etcd::{
    PbWatchRequest as WatchRequest, PbWatchRequestUnion as Union, PbWatchResponse as WatchResponse,
    PbWatchService,
};
use prost::Message;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::server::Core;
use crate::watch::{WatchEnd, WatchSpec};

/// Responses buffered per stream before watchers wait for the client to read.
const STREAM_BUFFER: usize = 256;
/// Soft bound on the events carried by one response.
const RESPONSE_BYTES: usize = 1024 * 1024;
/// etcd's reason for a watch id already in use on the stream.
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// The Watch service.
pub struct WatchService {
    core: Arc<Core>,
}

impl WatchService {
    /// A Watch service over `core`.
    pub fn new(core: Arc<Core>) -> Self {
        WatchService { core }
    }
}

type Out = mpsc::Sender<Result<WatchResponse, Status>>;

struct Watcher {
    task: JoinHandle<()>,
    progress: Arc<AtomicI64>,
}

/// One client stream: its watchers by id.
struct Stream {
    core: Arc<Core>,
    out: Out,
    watchers: HashMap<i64, Watcher>,
    next_id: i64,
}

impl Stream {
    fn response(&self, watch_id: i64, revision: i64) -> WatchResponse {
        WatchResponse {
            header: self.core.header(revision),
            watch_id,
            ..Default::default()
        }
    }

    async fn send(&self, r: WatchResponse) -> bool {
        self.out.send(Ok(r)).await.is_ok()
    }

    async fn handle(&mut self, req: WatchRequest) -> bool {
        let current = self.core.store.current_revision();
        match req.request_union {
            Some(Union::CreateRequest(c)) => {
                let id = if c.watch_id != 0 {
                    c.watch_id
                } else {
                    while self.watchers.contains_key(&self.next_id) {
                        self.next_id += 1;
                    }
                    self.next_id
                };
                if self.watchers.contains_key(&id) {
                    let r = WatchResponse {
                        created: true,
                        canceled: true,
                        cancel_reason: DUPLICATE_ID.into(),
                        ..self.response(id, current)
                    };
                    return self.send(r).await;
                }
                if !self
                    .send(WatchResponse {
                        created: true,
                        ..self.response(id, current)
                    })
                    .await
                {
                    return false;
                }
                let spec = WatchSpec {
                    key: c.key,
                    range_end: c.range_end,
                    start_revision: c.start_revision,
                    prev_kv: c.prev_kv,
                    no_put: false,
                    no_delete: false,
                    progress: Arc::new(AtomicI64::new(current)),
                }
                .with_filters(&c.filters);
                let progress = spec.progress.clone();
                let task = tokio::spawn(run_watcher(self.core.clone(), self.out.clone(), id, spec));
                self.watchers.insert(id, Watcher { task, progress });
                true
            }
            Some(Union::CancelRequest(c)) => match self.watchers.remove(&c.watch_id) {
                Some(w) => {
                    w.task.abort();
                    self.send(WatchResponse {
                        canceled: true,
                        ..self.response(c.watch_id, current)
                    })
                    .await
                }
                None => true,
            },
            Some(Union::ProgressRequest(_)) => {
                // Every watcher on the stream has sent all its events through this revision.
                let rev = self
                    .watchers
                    .values()
                    .map(|w| w.progress.load(Ordering::Acquire))
                    .min()
                    .unwrap_or(current);
                self.send(self.response(-1, rev)).await
            }
            None => true,
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        for w in self.watchers.values() {
            w.task.abort();
        }
    }
}

/// Splits events into responses of about `RESPONSE_BYTES` at most, never splitting a revision, so
/// clients with gRPC's default 4 MiB receive limit can read any catch-up.
fn split_by_size(events: Vec<Event>) -> Vec<Vec<Event>> {
    let mut out: Vec<Vec<Event>> = Vec::new();
    let mut size = 0;
    let mut last_rev = 0;
    for e in events {
        let rev = e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
        let len = e.encoded_len();
        let full = size + len > RESPONSE_BYTES && rev != last_rev;
        match out.last_mut() {
            Some(group) if !full => group.push(e),
            _ => {
                size = 0;
                out.push(vec![e]);
            }
        }
        size += len;
        last_rev = rev;
    }
    out
}

async fn run_watcher(core: Arc<Core>, out: Out, id: i64, spec: WatchSpec) {
    let end = core
        .hub
        .run(spec, |events, rev| {
            let responses: Vec<WatchResponse> = split_by_size(events)
                .into_iter()
                .map(|events| WatchResponse {
                    header: core.header(rev),
                    watch_id: id,
                    events,
                    ..Default::default()
                })
                .collect();
            let out = out.clone();
            async move {
                for r in responses {
                    if out.send(Ok(r)).await.is_err() {
                        return false;
                    }
                }
                true
            }
        })
        .await;
    if let WatchEnd::Compacted(compacted) = end {
        let r = WatchResponse {
            header: core.header(core.store.current_revision()),
            watch_id: id,
            canceled: true,
            compact_revision: compacted,
            ..Default::default()
        };
        let _ = out.send(Ok(r)).await;
    }
}

#[tonic::async_trait]
impl PbWatchService for WatchService {
    type WatchStream = ReceiverStream<Result<WatchResponse, Status>>;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let mut inbound = req.into_inner();
        let (out, rx) = mpsc::channel(STREAM_BUFFER);
        let mut stream = Stream {
            core: self.core.clone(),
            out,
            watchers: HashMap::new(),
            next_id: 0,
        };
        tokio::spawn(async move {
            while let Some(Ok(req)) = inbound.next().await {
                if !stream.handle(req).await {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

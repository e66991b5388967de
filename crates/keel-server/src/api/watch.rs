//! etcd's Watch service: one bidirectional stream carries many watchers. Creating a watcher answers
//! `created` before any of its events; events come in revision order, each revision whole; a watcher
//! whose start revision is compacted gets `compact_revision` and is canceled, as in etcd. Watchers
//! created with `progress_notify` get an empty response carrying their progress revision after each
//! `--experimental-watch-progress-notify-interval` in which they sent nothing; with `fragment`, a
//! response above --max-request-bytes is sent in pieces flagged `fragment` but the last.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use keel_rpc::etcd::PbEvent as Event;
use keel_rpc::etcd::{
    PbWatchRequest as WatchRequest, PbWatchRequestUnion as Union, PbWatchResponse as WatchResponse,
    PbWatchService,
};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::api::Credentials;
use crate::member::Member;
use crate::member::{Group, Output, WatchEnd, WatchSpec};

/// Responses buffered per stream before watchers wait for the client to read.
const STREAM_BUFFER: usize = 256;
/// Soft bound on the events carried by one response.
const RESPONSE_BYTES: usize = 1024 * 1024;
/// etcd's reason for a watch id already in use on the stream.
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// The Watch service.
pub struct WatchService {
    member: Arc<Member>,
}

impl WatchService {
    /// A Watch service over `member`.
    pub fn new(member: Arc<Member>) -> Self {
        WatchService { member }
    }
}

type Out = mpsc::Sender<Result<WatchResponse, Status>>;

/// The stream's side of one watcher.
struct Watcher {
    fragment: bool,
    /// Whether it sent anything since the last progress tick (None: it did not ask for
    /// progress notifications).
    sent_since_tick: Option<bool>,
}

/// One client stream: its watchers, served by the stream's own task.
struct Stream {
    member: Arc<Member>,
    out: Out,
    group: Group,
    watchers: HashMap<i64, Watcher>,
    next_id: i64,
    /// What the stream was opened with (token, client certificate): it names the user each
    /// watcher is checked for when created.
    credentials: Credentials,
}

impl Stream {
    fn response(&self, watch_id: i64, revision: i64) -> WatchResponse {
        WatchResponse {
            header: self.member.header(revision),
            watch_id,
            ..Default::default()
        }
    }

    /// May the stream's user watch these keys? (An empty key is the smallest key, "\0".)
    fn check_read(&self, key: &[u8], range_end: &[u8]) -> Result<(), crate::ServerError> {
        let who = self.credentials.identify(self.member.auth())?;
        let key = if key.is_empty() { &[0][..] } else { key };
        Ok(self.member.auth().check_read(&who, key, range_end)?)
    }

    async fn send(&self, r: WatchResponse) -> bool {
        self.out.send(Ok(r)).await.is_ok()
    }

    async fn handle(&mut self, req: WatchRequest) -> bool {
        let current = self.member.store().current_revision();
        match req.request_union {
            Some(Union::CreateRequest(c)) => {
                if let Err(e) = self.check_read(&c.key, &c.range_end) {
                    let status = Status::from(e);
                    let r = WatchResponse {
                        created: true,
                        canceled: true,
                        // As etcd words it: Go's rendering of the gRPC error.
                        cancel_reason: format!(
                            "rpc error: code = {:?} desc = {}",
                            status.code(),
                            status.message()
                        ),
                        ..self.response(-1, current)
                    };
                    return self.send(r).await;
                }
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
                let created = WatchResponse {
                    created: true,
                    ..self.response(id, current)
                };
                if !self.send(created).await {
                    return false;
                }
                let spec = WatchSpec {
                    key: c.key,
                    range_end: c.range_end,
                    start_revision: c.start_revision,
                    prev_kv: c.prev_kv,
                    ..Default::default()
                }
                .with_filters(&c.filters);
                self.group.add(id, spec);
                let w = Watcher {
                    fragment: c.fragment,
                    sent_since_tick: c.progress_notify.then_some(false),
                };
                self.watchers.insert(id, w);
                true
            }
            Some(Union::CancelRequest(c)) => {
                if self.watchers.remove(&c.watch_id).is_none() {
                    return true;
                }
                self.group.remove(c.watch_id);
                self.send(WatchResponse {
                    canceled: true,
                    ..self.response(c.watch_id, current)
                })
                .await
            }
            Some(Union::ProgressRequest(_)) => {
                // Every watcher on the stream has sent all its events through this revision.
                let rev = self.group.progress().unwrap_or(current);
                self.send(self.response(-1, rev)).await
            }
            None => true,
        }
    }

    /// Sends what the group handed out: a watcher's events, or its end.
    async fn deliver(&mut self, out: Output) -> bool {
        match out {
            Output::Events {
                id,
                events,
                revision,
            } => {
                let Some(w) = self.watchers.get_mut(&id) else {
                    return true;
                };
                if let Some(sent) = w.sent_since_tick.as_mut() {
                    *sent = true;
                }
                let fragment = w.fragment;
                for events in split_by_size(events) {
                    let r = WatchResponse {
                        events,
                        ..self.response(id, revision)
                    };
                    let pieces = if fragment {
                        self::fragment(r, self.member.config().max_request_bytes)
                    } else {
                        vec![r]
                    };
                    for r in pieces {
                        if !self.send(r).await {
                            return false;
                        }
                    }
                }
                true
            }
            Output::Ended { id, end } => {
                self.watchers.remove(&id);
                let compact_revision = match end {
                    WatchEnd::Compacted(rev) => rev,
                    WatchEnd::Closed => 0,
                };
                self.send(WatchResponse {
                    canceled: true,
                    compact_revision,
                    ..self.response(id, self.member.store().current_revision())
                })
                .await
            }
        }
    }

    /// Sends a progress notification to each watcher that asked for them and sent nothing since
    /// the last tick.
    async fn progress_tick(&mut self) -> bool {
        let mut idle = Vec::new();
        for (id, w) in &mut self.watchers {
            if let Some(sent) = w.sent_since_tick.as_mut() {
                if !std::mem::take(sent) {
                    idle.push(*id);
                }
            }
        }
        for id in idle {
            let Some(rev) = self.group.progress_of(id) else {
                continue;
            };
            if !self.send(self.response(id, rev)).await {
                return false;
            }
        }
        true
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

/// Splits one response's events into pieces below `max_bytes` (at least one event each), all but
/// the last flagged as fragments, as etcd's sendFragments does; clients join them back.
fn fragment(r: WatchResponse, max_bytes: usize) -> Vec<WatchResponse> {
    if r.encoded_len() < max_bytes || r.events.len() < 2 {
        return vec![r];
    }
    let mut pieces: Vec<WatchResponse> = Vec::new();
    let mut size = 0;
    for e in r.events {
        let len = e.encoded_len();
        match pieces.last_mut() {
            Some(p) if size + len < max_bytes => p.events.push(e),
            _ => {
                size = 0;
                pieces.push(WatchResponse {
                    header: r.header,
                    watch_id: r.watch_id,
                    fragment: true,
                    events: vec![e],
                    ..Default::default()
                });
            }
        }
        size += len;
    }
    if let Some(last) = pieces.last_mut() {
        last.fragment = false;
    }
    pieces
}

#[tonic::async_trait]
impl PbWatchService for WatchService {
    type WatchStream = ReceiverStream<Result<WatchResponse, Status>>;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let credentials = Credentials::of(&req);
        let mut inbound = req.into_inner();
        let (out, rx) = mpsc::channel(STREAM_BUFFER);
        let mut stream = Stream {
            credentials,
            member: self.member.clone(),
            out,
            group: self.member.hub().group(),
            watchers: HashMap::new(),
            next_id: 0,
        };
        let interval = self.member.config().watch_progress_notify_interval;
        self.member.spawn_stream(async move {
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            loop {
                let alive = tokio::select! {
                    req = inbound.next() => match req {
                        Some(Ok(req)) => stream.handle(req).await,
                        _ => false,
                    },
                    out = stream.group.next() => stream.deliver(out).await,
                    _ = tick.tick() => stream.progress_tick().await,
                };
                if !alive {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_rpc::etcd::PbKeyValue as KeyValue;

    fn event(key: &str, value_len: usize) -> Event {
        Event {
            kv: Some(KeyValue {
                key: key.into(),
                value: vec![b'v'; value_len],
                mod_revision: 5,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn fragments_flag_all_pieces_but_the_last() {
        let r = WatchResponse {
            watch_id: 3,
            events: (0..5).map(|i| event(&format!("k{i}"), 100)).collect(),
            ..Default::default()
        };
        let pieces = fragment(r.clone(), 250);
        assert!(pieces.len() >= 3);
        let flags: Vec<bool> = pieces.iter().map(|p| p.fragment).collect();
        assert!(flags[..flags.len() - 1].iter().all(|f| *f) && !flags[flags.len() - 1]);
        let joined: Vec<Event> = pieces.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(joined, r.events);
        // Small enough, or a single event: sent whole.
        assert_eq!(fragment(r.clone(), 1 << 20), vec![r.clone()]);
        let one = WatchResponse {
            events: vec![event("k", 1000)],
            ..Default::default()
        };
        assert_eq!(fragment(one.clone(), 10), vec![one]);
    }
}

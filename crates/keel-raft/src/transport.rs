//! The peer transport: raft messages between members over gRPC (`keelpb.peer.Peer/Raft`), one
//! long-lived client stream per destination.
//!
//! Sending never blocks the raft driver: each peer has a bounded queue drained by its own task,
//! which batches whatever is queued into one stream message. A peer that is slow or down only loses
//! its own messages (raft retransmits what matters); the other peers are unaffected. A broken stream
//! is reconnected with exponential backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_proto::peer::peer_client::PeerClient;
use keel_proto::peer::peer_server::{Peer, PeerServer};
use keel_proto::peer::{RaftAck, RaftBatch};
use parking_lot::Mutex;
use protobuf::Message as _;
use raft::eraftpb::Message;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status, Streaming};

use crate::node::Stepper;

/// Messages queued per peer before new ones are dropped.
const QUEUE: usize = 4096;
/// Most messages in one stream message.
const BATCH: usize = 512;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

struct PeerQueue {
    tx: mpsc::Sender<Vec<u8>>,
    task: JoinHandle<()>,
}

/// Outgoing raft messages, by destination member.
pub struct Transport {
    runtime: tokio::runtime::Handle,
    cluster_id: u64,
    peers: Mutex<HashMap<u64, PeerQueue>>,
}

impl Transport {
    /// A transport for a member of `cluster_id` whose sender tasks run on `runtime`.
    pub fn new(runtime: tokio::runtime::Handle, cluster_id: u64) -> Arc<Transport> {
        Arc::new(Transport {
            runtime,
            cluster_id,
            peers: Mutex::default(),
        })
    }

    /// Starts (or restarts) sending to member `id` at `urls`.
    pub fn add_peer(&self, id: u64, urls: Vec<String>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = self.runtime.spawn(run_peer(id, urls, self.cluster_id, rx));
        if let Some(old) = self.peers.lock().insert(id, PeerQueue { tx, task }) {
            old.task.abort();
        }
    }

    /// Stops sending to member `id`.
    pub fn remove_peer(&self, id: u64) {
        if let Some(old) = self.peers.lock().remove(&id) {
            old.task.abort();
        }
    }

    /// Queues messages for their destinations; never blocks.
    pub fn send(&self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let peers = self.peers.lock();
        for m in msgs {
            let Some(peer) = peers.get(&m.to) else {
                tracing::debug!(to = m.to, "raft message to an unknown member dropped");
                continue;
            };
            let bytes = match m.write_to_bytes() {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "encoding a raft message failed");
                    continue;
                }
            };
            if peer.tx.try_send(bytes).is_err() {
                tracing::debug!(to = m.to, "peer queue full; raft message dropped");
            }
        }
    }

    /// Stops every sender.
    pub fn shutdown(&self) {
        for (_, p) in self.peers.lock().drain() {
            p.task.abort();
        }
    }
}

type Queue = Arc<tokio::sync::Mutex<mpsc::Receiver<Vec<u8>>>>;

/// Keeps one stream open to the peer and feeds it from the queue, reconnecting whenever it ends
/// (the peer restarting ends it cleanly; a network fault ends it with an error).
async fn run_peer(id: u64, urls: Vec<String>, cluster_id: u64, rx: mpsc::Receiver<Vec<u8>>) {
    if urls.is_empty() {
        tracing::error!(
            peer = format!("{id:x}"),
            "peer has no URL; not sending to it"
        );
        return;
    }
    let queue: Queue = Arc::new(tokio::sync::Mutex::new(rx));
    let mut backoff = BACKOFF_MIN;
    for url in urls.iter().cycle() {
        let started = Instant::now();
        let ended = stream_to(url, cluster_id, queue.clone()).await;
        // A stream that ran for a while was healthy: the next failure starts a fresh backoff.
        if started.elapsed() > BACKOFF_MAX {
            backoff = BACKOFF_MIN;
        }
        if let Err(e) = ended {
            if backoff == BACKOFF_MIN {
                tracing::warn!(peer = format!("{id:x}"), %url, error = %e, "peer unreachable; retrying");
            }
        }
        // What queued up while the peer was away is stale; raft resends what it needs.
        {
            let mut rx = queue.lock().await;
            while rx.try_recv().is_ok() {}
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn stream_to(
    url: &str,
    cluster_id: u64,
    queue: Queue,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .connect()
        .await?;
    tracing::info!(%url, "connected to peer");
    let batches = futures::stream::unfold(queue, move |queue| async move {
        let messages = {
            let mut rx = queue.lock().await;
            let first = rx.recv().await?;
            let mut messages = vec![first];
            while messages.len() < BATCH {
                match rx.try_recv() {
                    Ok(m) => messages.push(m),
                    Err(_) => break,
                }
            }
            messages
        };
        let batch = RaftBatch {
            messages,
            cluster_id,
        };
        Some((batch, queue))
    });
    PeerClient::new(channel)
        .max_encoding_message_size(usize::MAX)
        .raft(batches)
        .await?;
    Ok(())
}

/// The receiving side: every message goes to the local raft node.
pub struct PeerService {
    node: Stepper,
    cluster_id: u64,
}

impl PeerService {
    /// The gRPC service feeding `node`, a member of `cluster_id`.
    pub fn server(node: Stepper, cluster_id: u64) -> PeerServer<PeerService> {
        PeerServer::new(PeerService { node, cluster_id }).max_decoding_message_size(usize::MAX)
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(&self, req: Request<Streaming<RaftBatch>>) -> Result<Response<RaftAck>, Status> {
        let mut inbound = req.into_inner();
        while let Some(batch) = inbound.message().await? {
            if batch.cluster_id != self.cluster_id {
                tracing::error!(
                    local = format!("{:x}", self.cluster_id),
                    remote = format!("{:x}", batch.cluster_id),
                    "refused raft messages from a member of another cluster"
                );
                return Err(Status::failed_precondition(format!(
                    "cluster ID mismatch: this member belongs to {:x}, the sender to {:x}",
                    self.cluster_id, batch.cluster_id
                )));
            }
            for bytes in batch.messages {
                match Message::parse_from_bytes(&bytes) {
                    Ok(m) => self.node.step(m),
                    Err(e) => return Err(Status::invalid_argument(format!("raft message: {e}"))),
                }
            }
        }
        Ok(Response::new(RaftAck {}))
    }
}

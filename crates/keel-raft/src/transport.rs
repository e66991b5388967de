//! The peer transport: raft messages between members over gRPC (`keelpb.peer.Peer/Raft`), one
//! long-lived client stream per destination.
//!
//! Sending never blocks the raft driver: each peer has a bounded queue drained by its own task,
//! which batches whatever is queued into one stream message. A peer that is slow or down only loses
//! its own messages (raft retransmits what matters); the other peers are unaffected. A broken stream
//! is reconnected with exponential backoff.
//!
//! Snapshots go on a stream of their own (`Peer/Snapshot`), one per transfer: the image's files in
//! chunks, the raft message first. The receiver steps the message only once every file is on disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_rpc::peer::peer_client::PeerClient;
use keel_rpc::peer::peer_server::{Peer, PeerServer};
use keel_rpc::peer::{RaftAck, RaftBatch, SnapshotAck, SnapshotChunk};
use parking_lot::Mutex;
use protobuf::Message as _;
use raft::eraftpb::Message;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status, Streaming};

use crate::bootstrap::Bootstrap;
use crate::dial::{describe_error, Dialer};
use crate::fault::Partition;
use crate::node::Stepper;

/// Messages queued per peer before new ones are dropped.
const QUEUE: usize = 4096;
/// Most messages in one stream message.
const BATCH: usize = 512;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Bytes per snapshot chunk.
const SNAPSHOT_CHUNK: usize = 1024 * 1024;
/// A snapshot transfer logs its progress every this many bytes.
const SNAPSHOT_LOG_EVERY: u64 = 64 * 1024 * 1024;

struct PeerQueue {
    tx: mpsc::Sender<Vec<u8>>,
    task: JoinHandle<()>,
    urls: Vec<String>,
    /// Cuts the sender's reconnect backoff short (the peer just connected to us: it is back).
    wake: Arc<tokio::sync::Notify>,
}

/// Outgoing raft messages, by destination member.
pub struct Transport {
    runtime: tokio::runtime::Handle,
    cluster_id: u64,
    member_id: u64,
    peers: Mutex<HashMap<u64, PeerQueue>>,
    partition: Arc<Partition>,
    /// The last snapshot transfer to each member: under way, or finished (kept so that the
    /// member's own, older, report of receiving it is not taken for less progress).
    transfers: Arc<Mutex<HashMap<u64, SnapshotTransfer>>>,
    /// Why the last snapshot sent to a member failed, until one succeeds.
    snapshot_failures: Arc<Mutex<HashMap<u64, String>>>,
    /// The snapshot this member is receiving (the state machine reports its installation here).
    bootstrap: Arc<Bootstrap>,
    /// Where senders report a peer they cannot reach (the local raft node, once it runs).
    reporter: Arc<std::sync::OnceLock<Stepper>>,
    /// Dials peer URLs, with TLS for https ones: the CA peers' certificates are checked
    /// against, and this member's certificate (peers that demand client certificates get it).
    dialer: Dialer,
}

/// A snapshot sent to a member.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotTransfer {
    /// The snapshot's raft index.
    pub index: u64,
    /// Bytes sent so far.
    pub sent: u64,
    /// Bytes of the whole image.
    pub total: u64,
    /// When the transfer started.
    pub started: Instant,
    /// Whether the member acknowledged the whole image.
    pub finished: bool,
}

impl Transport {
    /// A transport for member `member_id` of `cluster_id` whose sender tasks run on `runtime`.
    pub fn new(
        runtime: tokio::runtime::Handle,
        cluster_id: u64,
        member_id: u64,
        dialer: Dialer,
    ) -> Arc<Transport> {
        Arc::new(Transport {
            member_id,
            dialer,
            partition: Partition::from_env(&runtime),
            runtime,
            cluster_id,
            peers: Mutex::default(),
            transfers: Arc::default(),
            snapshot_failures: Arc::default(),
            bootstrap: Arc::default(),
            reporter: Arc::default(),
        })
    }

    /// Starts (or restarts) sending to member `id` at `urls`.
    pub fn add_peer(&self, id: u64, urls: Vec<String>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let wake = Arc::new(tokio::sync::Notify::new());
        let link = Link {
            cluster_id: self.cluster_id,
            from: self.member_id,
            to: id,
        };
        let task = self.runtime.spawn(run_peer(
            link,
            self.dialer.clone(),
            urls.clone(),
            rx,
            wake.clone(),
            self.reporter.clone(),
        ));
        let queue = PeerQueue {
            tx,
            task,
            urls,
            wake,
        };
        if let Some(old) = self.peers.lock().insert(id, queue) {
            old.task.abort();
        }
    }

    /// How peers are dialed (with the TLS settings of https peer URLs).
    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// Sets where unreachable peers are reported (the local raft node).
    pub fn set_reporter(&self, reporter: Stepper) {
        let _ = self.reporter.set(reporter);
    }

    /// Member `id` opened a stream to us: if our sender to it is waiting to reconnect, it
    /// reconnects now instead of at the end of its backoff.
    fn peer_alive(&self, id: u64) {
        if let Some(p) = self.peers.lock().get(&id) {
            p.wake.notify_one();
        }
    }

    /// The members messages are sent to, with their URLs.
    pub fn peers(&self) -> Vec<(u64, Vec<String>)> {
        let peers = self.peers.lock();
        peers.iter().map(|(id, p)| (*id, p.urls.clone())).collect()
    }

    /// Streams the snapshot of `msg` (its data names the image directory) to its destination on a
    /// stream of its own, then reports the outcome to raft through `reporter`.
    pub fn send_snapshot(&self, msg: Message, reporter: Stepper) {
        let to = msg.to;
        let urls = self.peers.lock().get(&to).map(|p| p.urls.clone());
        let Some(urls) = urls.filter(|_| !self.partition.blocks(to)) else {
            reporter.report_snapshot(to, false);
            return;
        };
        let cluster_id = self.cluster_id;
        let transfers = self.transfers.clone();
        let failures = self.snapshot_failures.clone();
        let dialer = self.dialer.clone();
        self.runtime.spawn(async move {
            let index = msg.get_snapshot().get_metadata().index;
            let started = Instant::now();
            let mut result = Err("no peer URL".into());
            for url in &urls {
                result = stream_snapshot(url, &dialer, cluster_id, &msg, &transfers).await;
                if result.is_ok() {
                    break;
                }
            }
            match &result {
                Ok(bytes) => {
                    failures.lock().remove(&to);
                    tracing::info!(
                        to = format!("{to:x}"),
                        index,
                        bytes,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "snapshot sent"
                    )
                }
                Err(e) => {
                    let error = describe_error(e.as_ref());
                    tracing::warn!(to = format!("{to:x}"), index, %error, "sending a snapshot failed");
                    failures.lock().insert(to, format!("sending a snapshot failed: {error}"));
                }
            }
            match result {
                Ok(_) => {
                    if let Some(t) = transfers.lock().get_mut(&to) {
                        t.finished = true;
                    }
                }
                Err(_) => {
                    transfers.lock().remove(&to);
                }
            }
            reporter.report_snapshot(to, result.is_ok());
        });
    }

    /// The last snapshot transfer to each member, under way or finished (failed ones are in
    /// `snapshot_failures` instead).
    pub fn snapshot_transfers(&self) -> HashMap<u64, SnapshotTransfer> {
        self.transfers.lock().clone()
    }

    /// Why the last snapshot sent to each member failed (members whose last one succeeded, or
    /// that were never sent one, are absent).
    pub fn snapshot_failures(&self) -> HashMap<u64, String> {
        self.snapshot_failures.lock().clone()
    }

    /// The snapshot this member is receiving or installing.
    pub fn bootstrap(&self) -> &Arc<Bootstrap> {
        &self.bootstrap
    }

    /// Stops sending to member `id`.
    pub fn remove_peer(&self, id: u64) {
        if let Some(old) = self.peers.lock().remove(&id) {
            old.task.abort();
        }
        self.transfers.lock().remove(&id);
        self.snapshot_failures.lock().remove(&id);
    }

    /// Queues messages for their destinations; never blocks.
    pub fn send(&self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let peers = self.peers.lock();
        for m in msgs {
            if self.partition.blocks(m.to) {
                continue;
            }
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
/// Who sends to whom, in which cluster.
#[derive(Clone, Copy)]
struct Link {
    cluster_id: u64,
    from: u64,
    to: u64,
}

async fn run_peer(
    link: Link,
    dialer: Dialer,
    urls: Vec<String>,
    rx: mpsc::Receiver<Vec<u8>>,
    wake: Arc<tokio::sync::Notify>,
    reporter: Arc<std::sync::OnceLock<Stepper>>,
) {
    let id = link.to;
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
        let ended = stream_to(url, link, queue.clone(), &dialer).await;
        // A stream that ran for a while was healthy: the next failure starts a fresh backoff.
        if started.elapsed() > BACKOFF_MAX {
            backoff = BACKOFF_MIN;
        }
        if let Err(e) = ended {
            if backoff == BACKOFF_MIN {
                tracing::warn!(peer = format!("{id:x}"), %url, error = %describe_error(e.as_ref()), "peer unreachable; retrying");
            }
            // What was sent to it is lost: raft should probe it rather than stream on.
            if let Some(r) = reporter.get() {
                r.report_unreachable(id);
            }
        }
        // What queued up while the peer was away is stale; raft resends what it needs.
        {
            let mut rx = queue.lock().await;
            while rx.try_recv().is_ok() {}
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = wake.notified() => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn stream_to(
    url: &str,
    link: Link,
    queue: Queue,
    dialer: &Dialer,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let channel = dialer.channel(url, None).await?;
    tracing::info!(%url, "connected to peer");
    let hello = RaftBatch {
        messages: Vec::new(),
        cluster_id: link.cluster_id,
        from: link.from,
    };
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
            cluster_id: link.cluster_id,
            from: link.from,
        };
        Some((batch, queue))
    });
    PeerClient::new(channel)
        .max_encoding_message_size(usize::MAX)
        .raft(futures::StreamExt::chain(
            futures::stream::iter([hello]),
            batches,
        ))
        .await?;
    Ok(())
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Streams the image directory named by `msg`'s snapshot data, every file in chunks, the message
/// first. Returns the bytes sent.
async fn stream_snapshot(
    url: &str,
    dialer: &Dialer,
    cluster_id: u64,
    msg: &Message,
    transfers: &Arc<Mutex<HashMap<u64, SnapshotTransfer>>>,
) -> Result<u64, BoxError> {
    let dir = PathBuf::from(String::from_utf8_lossy(&msg.get_snapshot().data).into_owned());
    let mut files = Vec::new();
    let mut total = 0;
    let mut entries = tokio::fs::read_dir(&dir).await?;
    while let Some(e) = entries.next_entry().await? {
        let meta = e.metadata().await?;
        if meta.is_file() {
            files.push(e.file_name().to_string_lossy().into_owned());
            total += meta.len();
        }
    }
    files.sort();
    let index = msg.get_snapshot().get_metadata().index;
    transfers.lock().insert(
        msg.to,
        SnapshotTransfer {
            index,
            sent: 0,
            total,
            started: Instant::now(),
            finished: false,
        },
    );
    let transfers = transfers.clone();
    let channel = dialer.channel(url, None).await?;
    let header = SnapshotChunk {
        cluster_id,
        message: msg.write_to_bytes()?,
        total_bytes: total,
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel::<SnapshotChunk>(4);
    let to = msg.to;
    let reader = tokio::spawn(async move {
        tx.send(header).await?;
        let mut sent = 0u64;
        for file in files {
            let mut f = tokio::fs::File::open(dir.join(&file)).await?;
            let mut offset = 0u64;
            loop {
                let mut data = vec![0u8; SNAPSHOT_CHUNK];
                let n = tokio::io::AsyncReadExt::read(&mut f, &mut data).await?;
                // An empty file still gets one (empty) chunk, so the receiver creates it.
                if n == 0 && offset > 0 {
                    break;
                }
                data.truncate(n);
                let chunk = SnapshotChunk {
                    cluster_id,
                    file: file.clone(),
                    offset,
                    data,
                    ..Default::default()
                };
                tx.send(chunk).await?;
                offset += n as u64;
                if let Some(t) = transfers.lock().get_mut(&to) {
                    t.sent = sent + n as u64;
                }
                if sent / SNAPSHOT_LOG_EVERY != (sent + n as u64) / SNAPSHOT_LOG_EVERY {
                    tracing::info!(
                        to = format!("{to:x}"),
                        bytes = sent + n as u64,
                        "sending a snapshot"
                    );
                }
                sent += n as u64;
                if n == 0 {
                    break;
                }
            }
        }
        Ok::<u64, BoxError>(sent)
    });
    let ack = PeerClient::new(channel)
        .max_encoding_message_size(usize::MAX)
        .snapshot(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    let sent = reader.await?;
    // The receiver's answer says why first: a receiver that gave up closes the stream, and the
    // reader's own error is then only "channel closed".
    ack?;
    sent
}

/// The receiving side: every message goes to the local raft node.
pub struct PeerService {
    node: Stepper,
    cluster_id: u64,
    snap_dir: PathBuf,
    partition: Arc<Partition>,
    transport: Arc<Transport>,
    bootstrap: Arc<Bootstrap>,
}

impl Transport {
    /// The receiving side of this transport: a gRPC service feeding `node`, receiving snapshots
    /// into `snap_dir`.
    pub fn service(self: &Arc<Self>, node: Stepper, snap_dir: PathBuf) -> PeerServer<PeerService> {
        PeerServer::new(PeerService {
            node,
            cluster_id: self.cluster_id,
            snap_dir,
            partition: self.partition.clone(),
            transport: self.clone(),
            bootstrap: self.bootstrap.clone(),
        })
        .max_decoding_message_size(usize::MAX)
    }
}

impl PeerService {
    fn check_cluster(&self, remote: u64) -> Result<(), Status> {
        if remote == self.cluster_id {
            return Ok(());
        }
        tracing::error!(
            local = format!("{:x}", self.cluster_id),
            remote = format!("{remote:x}"),
            "refused raft messages from a member of another cluster"
        );
        Err(Status::failed_precondition(format!(
            "cluster ID mismatch: this member belongs to {:x}, the sender to {remote:x}",
            self.cluster_id
        )))
    }

    /// Writes the streamed image into a fresh directory; returns the message and where it is.
    /// The bootstrap tracker follows its progress, and keeps why it failed.
    async fn receive_snapshot(
        &self,
        inbound: &mut Streaming<SnapshotChunk>,
    ) -> Result<(Message, PathBuf, u64), Status> {
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        self.check_cluster(first.cluster_id)?;
        let msg = Message::parse_from_bytes(&first.message)
            .map_err(|e| Status::invalid_argument(format!("snapshot message: {e}")))?;
        self.bootstrap
            .receiving(msg.get_snapshot().get_metadata().index, first.total_bytes);
        let received = self.receive_files(&msg, first.total_bytes, inbound).await;
        if let Err(e) = &received {
            let why = e.message();
            self.bootstrap
                .failed(if why.starts_with("receiving a snapshot") {
                    why.to_string()
                } else {
                    format!("receiving a snapshot: {why}")
                });
        }
        let (dir, bytes) = received?;
        Ok((msg, dir, bytes))
    }

    async fn receive_files(
        &self,
        msg: &Message,
        total: u64,
        inbound: &mut Streaming<SnapshotChunk>,
    ) -> Result<(PathBuf, u64), Status> {
        let meta = msg.get_snapshot().get_metadata();
        let name = format!("recv-{:016x}-{:016x}", meta.index, meta.term);
        let partial = self.snap_dir.join(format!("{name}.partial"));
        let io = |e: std::io::Error| Status::internal(format!("receiving a snapshot: {e}"));
        let _ = tokio::fs::remove_dir_all(&partial).await;
        tokio::fs::create_dir_all(&partial).await.map_err(io)?;
        tracing::info!(
            from = format!("{:x}", msg.from),
            index = meta.index,
            "receiving a snapshot"
        );
        let mut received = 0u64;
        let mut current: Option<(String, tokio::fs::File)> = None;
        while let Some(chunk) = inbound.message().await? {
            if !is_plain_file_name(&chunk.file) {
                return Err(Status::invalid_argument("bad snapshot file name"));
            }
            if current.as_ref().map(|(f, _)| f) != Some(&chunk.file) {
                if let Some((_, f)) = current.take() {
                    f.sync_all().await.map_err(io)?;
                }
                let f = tokio::fs::File::create(partial.join(&chunk.file))
                    .await
                    .map_err(io)?;
                current = Some((chunk.file.clone(), f));
            }
            let (_, f) = current.as_mut().expect("opened above");
            f.write_all(&chunk.data).await.map_err(io)?;
            if received / SNAPSHOT_LOG_EVERY
                != (received + chunk.data.len() as u64) / SNAPSHOT_LOG_EVERY
            {
                tracing::info!(bytes = received, "receiving a snapshot");
            }
            received += chunk.data.len() as u64;
            self.bootstrap.advanced(received, total);
        }
        if let Some((_, f)) = current.take() {
            f.sync_all().await.map_err(io)?;
        }
        let done = self.snap_dir.join(name);
        let _ = tokio::fs::remove_dir_all(&done).await;
        tokio::fs::rename(&partial, &done).await.map_err(io)?;
        sync_dir(&self.snap_dir).map_err(io)?;
        Ok((done, received))
    }
}

fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && name != "." && name != ".."
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(&self, req: Request<Streaming<RaftBatch>>) -> Result<Response<RaftAck>, Status> {
        let mut inbound = req.into_inner();
        let mut first = true;
        while let Some(batch) = inbound.message().await? {
            self.check_cluster(batch.cluster_id)?;
            if std::mem::take(&mut first) && !self.partition.blocks(batch.from) {
                // A new stream from this peer: it is (back) up.
                self.transport.peer_alive(batch.from);
            }
            for bytes in batch.messages {
                match Message::parse_from_bytes(&bytes) {
                    Ok(m) if self.partition.blocks(m.from) => {}
                    Ok(m) => self.node.step(m),
                    Err(e) => return Err(Status::invalid_argument(format!("raft message: {e}"))),
                }
            }
        }
        Ok(Response::new(RaftAck {}))
    }

    async fn snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotAck>, Status> {
        let (mut msg, dir, bytes) = self.receive_snapshot(&mut req.into_inner()).await?;
        if self.partition.blocks(msg.from) {
            self.bootstrap.finished();
            return Err(Status::unavailable("partitioned"));
        }
        tracing::info!(
            from = format!("{:x}", msg.from),
            bytes,
            dir = %dir.display(),
            "snapshot received"
        );
        msg.mut_snapshot().data = dir.to_string_lossy().into_owned().into_bytes().into();
        self.node.step(msg);
        Ok(Response::new(SnapshotAck { bytes }))
    }
}

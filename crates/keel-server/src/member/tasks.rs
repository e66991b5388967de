//! What a member runs besides requests, all owned by it and ended by `Member::stop`: the
//! background tasks (lessor clock, compactor, corruption checks, replication polls, publishing its
//! attributes, following the membership, refreshing the store size), the tasks behind client
//! streams, and the threads of its engine. Nothing it starts may keep the store open after it
//! stopped (an idle watch included).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keel_rpc::{MemberAttributes, RequestBody};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Member;

/// How often the store size the quota check reads is refreshed (reading RocksDB's properties on
/// every write would cost the hot path more than a slightly stale size costs the quota).
const DB_SIZE_REFRESH: Duration = Duration::from_millis(100);

/// A member's tasks and threads.
#[derive(Default)]
pub(super) struct Tasks {
    /// Raised when the member stops: every client stream's task ends (see `spawn_stream`).
    stopping: watch::Sender<bool>,
    /// Raised once the cluster removed this member.
    removed: watch::Sender<bool>,
    background: Mutex<Vec<JoinHandle<()>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Tasks {
    /// Takes `thread` to be joined when the member stops.
    pub(super) fn own_thread(&self, thread: std::thread::JoinHandle<()>) {
        self.threads.lock().push(thread);
    }
}

impl Member {
    /// Spawns the task behind a client stream (a watch, keep-alives, an election observer),
    /// owned by this member: it ends with its stream, or when the member stops serving.
    pub fn spawn_stream(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut stopping = self.tasks.stopping.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                biased;
                // The guard `wait_for` returns is dropped at once (held, the future would not
                // be Send).
                _ = async { stopping.wait_for(|&s| s).await.map(|_| ()) } => {}
                () = task => {}
            }
        });
    }

    /// Ends every client stream's task (see `spawn_stream`); the member keeps running.
    pub fn stop_streams(&self) {
        self.tasks.stopping.send_replace(true);
    }

    /// Spawns a background task owned by this member (aborted by `stop`).
    pub(super) fn spawn_task(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.background.lock();
        tasks.retain(|t| !t.is_finished());
        tasks.push(tokio::spawn(task));
    }

    /// Starts the member's background tasks, as its configuration asks.
    pub fn start_tasks(self: &Arc<Self>) {
        self.spawn_task(super::lessor::run(self.clone()));
        self.spawn_task(publish_attributes(self.clone()));
        self.spawn_task(refresh_db_size(self.clone()));
        self.spawn_task(super::replication::poll(Arc::downgrade(self)));
        self.spawn_task(super::compactor::run(
            self.clone(),
            self.config.auto_compaction,
        ));
        self.spawn_task(follow_membership(self.clone()));
        let every = self.config.corrupt_check_time;
        if !every.is_zero() {
            self.spawn_task(super::corrupt::run_periodic(self.clone(), every));
        }
    }

    /// Resolves once the cluster has removed this member.
    pub async fn removed(&self) {
        let mut removed = self.tasks.removed.subscribe();
        let _ = removed.wait_for(|&r| r).await;
    }

    /// Stops the member: its client streams and background tasks end, then the peer transport,
    /// raft and the apply loop (which finishes the batch it has). Once it returns, nothing the
    /// member started holds its store.
    pub async fn stop(&self) {
        self.stop_streams();
        // Until none is left: a task may have spawned another (a revoke) before it was aborted.
        loop {
            let tasks = std::mem::take(&mut *self.tasks.background.lock());
            if tasks.is_empty() {
                break;
            }
            for task in tasks {
                task.abort();
                // Awaited once aborted, so that nothing it holds (the member) outlives `stop`.
                let _ = task.await;
            }
        }
        if let Some(t) = self.transport() {
            t.shutdown();
        }
        // Stopping raft closes the apply loop's input; it finishes the batch it has, then ends.
        self.node.shutdown();
        let threads = std::mem::take(&mut *self.tasks.threads.lock());
        for t in threads {
            let _ = t.join();
        }
    }
}

/// Publishes this member's name and client URLs through raft (as etcd does on every start),
/// retried until it is applied, and logs etcd's readiness lines on the way: the cluster version's
/// capabilities once the cluster has a leader, then the publication.
async fn publish_attributes(member: Arc<Member>) {
    let mine = MemberAttributes {
        member_id: member.id(),
        name: member.name().to_string(),
        client_urls: member.config.advertise_client_urls.clone(),
    };
    while member.leader_id() == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(
        cluster_version = crate::version::CLUSTER,
        "enabled capabilities for version {}",
        crate::version::CLUSTER_MINOR
    );
    loop {
        match member
            .propose_internal(RequestBody::MemberAttributes(mine.clone()))
            .await
        {
            Ok(_) => {
                tracing::info!(
                    local_member_id = format!("{:x}", mine.member_id),
                    local_member_attributes =
                        format!("{{Name:{} ClientURLs:{:?}}}", mine.name, mine.client_urls),
                    cluster_id = format!("{:x}", member.cluster_id()),
                    "published local member to cluster through raft"
                );
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "publishing member attributes; will retry");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Keeps the store size the quota check reads fresh.
async fn refresh_db_size(member: Arc<Member>) {
    let mut every = tokio::time::interval(DB_SIZE_REFRESH);
    loop {
        every.tick().await;
        member.refresh_db_size();
    }
}

/// Keeps the transport's peers in line with the membership (members added, removed, given new
/// peer URLs), and raises `removed` once this member is removed from the cluster.
async fn follow_membership(member: Arc<Member>) {
    let (changed, mut changes) = watch::channel(());
    member.membership.on_change(move || {
        changed.send_replace(());
    });
    let me = member.id();
    loop {
        if member.membership.is_removed(me) {
            member.tasks.removed.send_replace(true);
            return;
        }
        if let Some(transport) = member.transport() {
            follow_peers(transport, &member.membership.list(), me);
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Adds, updates and removes the transport's peers to match `members`.
fn follow_peers(transport: &keel_raft::Transport, members: &[keel_rpc::etcd::PbMember], me: u64) {
    // Until the state machine knows the members (a joining member before its first snapshot),
    // the seed peers stay.
    if members.is_empty() {
        return;
    }
    let current: std::collections::HashMap<u64, Vec<String>> =
        transport.peers().into_iter().collect();
    for m in members.iter().filter(|m| m.id != me) {
        if current.get(&m.id) != Some(&m.peer_ur_ls) {
            tracing::info!(peer = format!("{:x}", m.id), urls = ?m.peer_ur_ls, "peer added");
            transport.add_peer(m.id, m.peer_ur_ls.clone());
        }
    }
    for id in current
        .keys()
        .filter(|id| !members.iter().any(|m| m.id == **id))
    {
        tracing::info!(peer = format!("{id:x}"), "peer removed");
        transport.remove_peer(*id);
    }
}

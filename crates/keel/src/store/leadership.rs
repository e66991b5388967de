//! Leadership won in an election: held with a lease kept alive in the background, and lost when
//! the lease is (keep-alives fail for a whole TTL, or the lease is gone), when the leader key is
//! deleted (resigned elsewhere, revoked), or when it is resigned or dropped.

use std::time::{Duration, Instant};

use futures::StreamExt;
use keel_rpc::etcd::{
    PbLeaseGrantRequest, PbLeaseGrantResponse, PbLeaseKeepAliveRequest, PbLeaseKeepAliveResponse,
    PbLeaseRevokeRequest, PbLeaseRevokeResponse,
};
use keel_rpc::v3election::{
    CampaignRequest, CampaignResponse, LeaderKey, ResignRequest, ResignResponse,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::grpc::{GrpcStore, Transport};
use super::{EventKind, Keys, StateStore, StoreError};

/// How long a failed keep-alive stream waits before it is opened again.
const RETRY: Duration = Duration::from_millis(300);

/// Leadership of an election, until `lost()` resolves.
pub struct Leadership {
    candidate: String,
    lost: watch::Receiver<bool>,
    resign: mpsc::Sender<oneshot::Sender<Result<(), StoreError>>>,
}

impl Leadership {
    pub(crate) async fn campaign<T: Transport>(
        store: GrpcStore<T>,
        candidate: &str,
        ttl: Duration,
    ) -> Result<Leadership, StoreError> {
        let grant = PbLeaseGrantRequest {
            ttl: ttl.as_secs().max(1) as i64,
            id: 0,
        };
        let granted: PbLeaseGrantResponse =
            store.call("/etcdserverpb.Lease/LeaseGrant", grant).await?;
        let lease = granted.id;
        let (lost_tx, lost_rx) = watch::channel(false);
        // Kept alive from before the campaign: waiting for the current leader may take long.
        let ttl = Duration::from_secs(granted.ttl.max(1) as u64);
        let keeper = tokio::spawn(keep_alive(store.clone(), lease, ttl, lost_tx.clone()));
        let pending = Pending {
            store: store.clone(),
            lease,
            keeper: Some(keeper),
        };
        let req = CampaignRequest {
            name: store.election_name(),
            lease,
            value: candidate.as_bytes().to_vec(),
        };
        let campaigned = tokio::select! {
            r = store.call::<_, CampaignResponse>("/v3electionpb.Election/Campaign", req) => r,
            () = wait_lost(lost_rx.clone()) => {
                Err(StoreError::Unavailable("the campaign's lease was lost".into()))
            }
            () = store.closed() => Err(StoreError::Unavailable("the store is closed".into())),
        };
        let leader = match campaigned.and_then(|r| r.leader.ok_or(StoreError::NotFound)) {
            Ok(leader) => leader,
            Err(e) => {
                pending.abandon().await;
                return Err(e);
            }
        };
        let keeper = pending.keep();
        let watcher = tokio::spawn(watch_leader_key(
            store.clone(),
            leader.key.clone(),
            leader.rev,
            lost_tx.clone(),
        ));
        let (resign_tx, resign_rx) = mpsc::channel(1);
        let holder = tokio::spawn(hold(
            store.clone(),
            leader,
            [keeper, watcher],
            lost_tx,
            lost_rx.clone(),
            resign_rx,
        ));
        store.adopt(holder);
        Ok(Leadership {
            candidate: candidate.to_string(),
            lost: lost_rx,
            resign: resign_tx,
        })
    }

    /// The candidate id that leads.
    pub fn candidate(&self) -> &str {
        &self.candidate
    }

    /// Resolves when leadership has ended.
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        wait_lost(self.lost.clone())
    }

    /// Whether leadership has ended.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Gives leadership up: the leader key is deleted and the lease revoked.
    pub async fn resign(self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        if self.resign.send(tx).await.is_err() {
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }
}

/// A campaign's lease while the campaign waits. A campaign dropped before it ends (a timeout
/// around it, an aborted task) must not lead later for nobody: its lease stops being kept alive
/// and is revoked, which deletes its contender key.
struct Pending<T: Transport> {
    store: GrpcStore<T>,
    lease: i64,
    keeper: Option<JoinHandle<()>>,
}

impl<T: Transport> Pending<T> {
    /// The campaign won: the keep-alive goes on.
    fn keep(mut self) -> JoinHandle<()> {
        self.keeper.take().expect("kept once")
    }

    /// The campaign failed: the lease is revoked before the error is returned.
    async fn abandon(mut self) {
        if let Some(k) = self.keeper.take() {
            k.abort();
        }
        let _ = revoke(&self.store, self.lease).await;
    }
}

impl<T: Transport> Drop for Pending<T> {
    fn drop(&mut self) {
        let Some(keeper) = self.keeper.take() else {
            return;
        };
        keeper.abort();
        let (store, lease) = (self.store.clone(), self.lease);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = revoke(&store, lease).await;
            });
        }
    }
}

async fn wait_lost(mut lost: watch::Receiver<bool>) {
    let _ = lost.wait_for(|&l| l).await;
}

/// Holds the leadership until it is resigned (or the `Leadership` dropped, or the store closed)
/// or lost, then stops its background work.
async fn hold<T: Transport>(
    store: GrpcStore<T>,
    leader: LeaderKey,
    tasks: [JoinHandle<()>; 2],
    lost_tx: watch::Sender<bool>,
    lost_rx: watch::Receiver<bool>,
    mut resign_rx: mpsc::Receiver<oneshot::Sender<Result<(), StoreError>>>,
) {
    let reply = tokio::select! {
        r = resign_rx.recv() => r,
        () = wait_lost(lost_rx) => None,
        () = store.closed() => None,
    };
    tasks.iter().for_each(JoinHandle::abort);
    let lease = leader.lease;
    let resigned = store
        .call::<_, ResignResponse>(
            "/v3electionpb.Election/Resign",
            ResignRequest {
                leader: Some(leader),
            },
        )
        .await;
    let result = match resigned {
        Ok(_) | Err(StoreError::Rejected(_)) => revoke(&store, lease).await,
        Err(e) => Err(e),
    };
    lost_tx.send_replace(true);
    if let Some(reply) = reply {
        let _ = reply.send(result);
    }
}

async fn revoke<T: Transport>(store: &GrpcStore<T>, lease: i64) -> Result<(), StoreError> {
    let req = PbLeaseRevokeRequest { id: lease };
    match store
        .call::<_, PbLeaseRevokeResponse>("/etcdserverpb.Lease/LeaseRevoke", req)
        .await
    {
        Ok(_) | Err(StoreError::Rejected(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Renews `lease` every third of its TTL; leadership is lost when the lease is gone or no renewal
/// succeeded for a whole TTL.
async fn keep_alive<T: Transport>(
    store: GrpcStore<T>,
    lease: i64,
    ttl: Duration,
    lost: watch::Sender<bool>,
) {
    let mut renewed = Instant::now();
    while renewed.elapsed() < ttl {
        let (tx, rx) = mpsc::channel(1);
        let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
        let opened = store
            .stream::<_, PbLeaseKeepAliveResponse>("/etcdserverpb.Lease/LeaseKeepAlive", requests)
            .await;
        if let Ok(mut responses) = opened {
            loop {
                if tx
                    .send(PbLeaseKeepAliveRequest { id: lease })
                    .await
                    .is_err()
                {
                    break;
                }
                match responses.message().await {
                    Ok(Some(r)) if r.ttl > 0 => renewed = Instant::now(),
                    // The lease is gone: expired or revoked.
                    Ok(Some(_)) => {
                        lost.send_replace(true);
                        return;
                    }
                    _ => break,
                }
                tokio::time::sleep(ttl / 3).await;
            }
        }
        tokio::time::sleep(RETRY).await;
    }
    lost.send_replace(true);
}

/// Leadership ends when the leader key is deleted (by a resignation elsewhere or the lease's end).
async fn watch_leader_key<T: Transport>(
    store: GrpcStore<T>,
    key: Vec<u8>,
    created: i64,
    lost: watch::Sender<bool>,
) {
    let mut from = created + 1;
    loop {
        if let Ok(mut events) = store.watch(Keys::Key(key.clone()), from).await {
            while let Some(e) = events.next().await {
                match e {
                    Ok(e) if e.kind == EventKind::Delete => {
                        lost.send_replace(true);
                        return;
                    }
                    Ok(e) => from = e.kv.version + 1,
                    // Compacted history: whether the key still exists says it all.
                    Err(StoreError::Compacted(_)) => match store.get(&key).await {
                        Ok(None) => {
                            lost.send_replace(true);
                            return;
                        }
                        Ok(Some(kv)) => from = kv.version + 1,
                        Err(_) => {}
                    },
                    Err(_) => break,
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

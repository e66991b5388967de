//! A Keel member inside the application's own tokio runtime (as Go programs embed etcd): it serves
//! its client and peer URLs like the `keel` binary, so it forms clusters with other embedded
//! members and `keel` processes, and the application reaches it in-process through `client()`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_server::{ServeError, Server, ServerConfig, ServerError, StartError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::store::EmbeddedStore;

/// How long `ready` (and `shutdown`) wait between checks.
const READY_POLL: Duration = Duration::from_millis(50);
/// How long `shutdown` waits for in-process clients' streams to end after the member stopped.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// A running embedded member.
pub struct Member {
    /// The running member this handle embeds.
    inner: Arc<keel_server::Member>,
    stop: Option<oneshot::Sender<()>>,
    serving: JoinHandle<Result<(), ServeError>>,
}

impl Member {
    /// Starts a member with `cfg` (its data dir is created, or reused with what it holds) and
    /// serves its URLs in the background.
    pub async fn start(cfg: ServerConfig) -> Result<Member, StartError> {
        let server = Server::start(cfg).await?;
        let inner = server.member().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        Ok(Member {
            inner,
            stop: Some(stop),
            serving,
        })
    }

    /// A `StateStore` over this member, called in-process (no TCP).
    pub fn client(&self) -> EmbeddedStore {
        EmbeddedStore::new(keel_server::local_routes(&self.inner))
    }

    /// Whether this member leads the raft group.
    pub fn is_leader(&self) -> bool {
        self.inner.is_leader()
    }

    /// Every member's replication (role, state, matched and applied index, lag, last contact,
    /// bootstrap progress) as the leader sees it: asked of the leader when this member follows.
    pub async fn replication(&self) -> Result<keel_server::ClusterReplication, ServerError> {
        self.inner.cluster_replication().await
    }

    /// Waits (at most `within`) until the member serves linearizable reads: it has a leader and
    /// has applied everything committed.
    pub async fn ready(&self, within: Duration) -> Result<(), ServerError> {
        let deadline = Instant::now() + within;
        loop {
            match self.inner.linearizable_barrier().await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(READY_POLL).await,
            }
        }
    }

    /// Stops serving and waits until the member has shut down. Its data dir is free again once
    /// the clients it handed out (and leaderships won through them) are dropped too.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        let Member {
            inner,
            stop,
            serving,
        } = self;
        let released = Arc::downgrade(&inner);
        drop(inner);
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        let served = match serving.await {
            Ok(served) => served,
            Err(e) => Err(ServeError::Internal(e.to_string())),
        };
        // In-process streams and tasks wind down asynchronously once the server stops: wait a
        // little for them to let go of the store, so that the data dir can be opened again.
        let deadline = Instant::now() + RELEASE_WAIT;
        while released.strong_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(READY_POLL).await;
        }
        served
    }
}

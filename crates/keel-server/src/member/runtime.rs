//! What a member needs of the world it runs in: a clock (request deadlines, the primary lessor's
//! lease deadlines) and somewhere to run slow blocking work (password hashes, store hashes) off
//! the request path. Production reads the monotonic clock, sleeps on tokio's timer and runs
//! blocking work on tokio's blocking pool; the deterministic simulation gives each member a clock
//! of its own (running fast or slow, jumping) that it advances itself, and runs blocking work at
//! once. Nothing in the member reaches time or threads any other way on a request path.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::future::{select, Either};
use tokio::sync::oneshot;

use crate::ServerError;

/// A piece of blocking work.
pub type Job = Box<dyn FnOnce() + Send>;

/// The clock and the blocking pool a member runs on.
pub trait Runtime: Send + Sync + 'static {
    /// The time now.
    fn now(&self) -> Instant;
    /// Resolves once `d` has passed on this clock.
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>>;
    /// Runs `job`, which may block, off the async threads.
    fn spawn_blocking(&self, job: Job);
}

/// The monotonic clock, tokio's timer and tokio's blocking pool.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioRuntime;

impl Runtime for TokioRuntime {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(tokio::time::sleep(d))
    }

    fn spawn_blocking(&self, job: Job) {
        // The handle is not needed: the job reports through its channel.
        drop(tokio::task::spawn_blocking(job));
    }
}

/// Runs `fut`, giving up (None) after `limit` on `runtime`'s clock. `fut` is polled first, so
/// an answer that is ready when the time runs out still counts (and no random choice is made,
/// which the simulation's replays rely on).
pub(super) async fn within<T>(
    runtime: &dyn Runtime,
    limit: Duration,
    fut: impl Future<Output = T>,
) -> Option<T> {
    let fut = std::pin::pin!(fut);
    match select(fut, runtime.sleep(limit)).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(((), _)) => None,
    }
}

/// Runs `f` on `runtime`'s blocking pool; its result.
pub(super) async fn blocking<T: Send + 'static>(
    runtime: &dyn Runtime,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ServerError> {
    let (tx, rx) = oneshot::channel();
    runtime.spawn_blocking(Box::new(move || {
        let _ = tx.send(f());
    }));
    rx.await
        .map_err(|_| ServerError::Internal("a blocking task failed".into()))
}

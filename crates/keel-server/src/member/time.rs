//! A member's clock: what its request deadlines and its primary lessor's lease deadlines are kept
//! on. Production reads the monotonic clock and sleeps on tokio's timer; the deterministic
//! simulation gives each member a clock of its own (running fast or slow, jumping) that it
//! advances itself. Nothing in the member reads time any other way on a request path.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::future::{select, Either};

/// A clock a member reads and sleeps on.
pub trait Timer: Send + Sync + 'static {
    /// The time now.
    fn now(&self) -> Instant;
    /// Resolves once `d` has passed on this clock.
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// The monotonic clock and tokio's timer.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemTimer;

impl Timer for SystemTimer {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// Runs `fut`, giving up (None) after `limit` on `timer`. `fut` is polled first, so an answer
/// that is ready when the time runs out still counts (and no random choice is made, which the
/// simulation's replays rely on).
pub(super) async fn within<T>(
    timer: &dyn Timer,
    limit: Duration,
    fut: impl Future<Output = T>,
) -> Option<T> {
    let fut = std::pin::pin!(fut);
    match select(fut, timer.sleep(limit)).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(((), _)) => None,
    }
}

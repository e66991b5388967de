//! The watch hub: committed changes fan out to watchers without ever waiting for them. Each watcher
//! first catches up from MVCC history, then follows the live feed; a watcher that falls more than the
//! feed's bound behind goes back to catching up from history. Apply never blocks on a watcher.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use keel_mvcc::{Change, KeySpan, MvccError, RangeOptions, Store};
use keel_proto::etcd::{PbEvent as Event, PbKeyValue as KeyValue};
use tokio::sync::broadcast;

/// Batches of committed changes a lagging watcher may be behind before it reads history instead.
const FEED_CAPACITY: usize = 1024;
/// Changes read from history per step of a catch-up.
const CATCH_UP_CHUNK: usize = 1000;

// mvccpb.Event.EventType and WatchCreateRequest.FilterType.
const EVENT_DELETE: i32 = 1;
const FILTER_NOPUT: i32 = 0;
const FILTER_NODELETE: i32 = 1;

/// Publishes committed changes to watchers.
pub struct Hub {
    store: Arc<Store>,
    feed: broadcast::Sender<Arc<Vec<Change>>>,
}

/// What a watcher watches.
#[derive(Clone, Debug)]
pub struct WatchSpec {
    /// First key.
    pub key: Vec<u8>,
    /// etcd's range_end (empty = one key, "\0" = to the end).
    pub range_end: Vec<u8>,
    /// First revision to report.
    pub start_revision: i64,
    /// Report the previous key-value with each event.
    pub prev_kv: bool,
    /// Skip puts.
    pub no_put: bool,
    /// Skip deletes.
    pub no_delete: bool,
}

impl WatchSpec {
    /// Builds a spec from etcd's filter list.
    pub fn with_filters(mut self, filters: &[i32]) -> Self {
        self.no_put = filters.contains(&FILTER_NOPUT);
        self.no_delete = filters.contains(&FILTER_NODELETE);
        self
    }

    fn span(&self) -> KeySpan<'_> {
        KeySpan::from_etcd(&self.key, &self.range_end)
    }
}

/// Why a watcher stopped.
#[derive(Debug)]
pub enum WatchEnd {
    /// Its start revision (or where it had got to) was compacted; carries the compacted revision.
    Compacted(i64),
    /// The receiver went away.
    Closed,
}

impl Hub {
    /// A hub over `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Hub {
            store,
            feed: broadcast::channel(FEED_CAPACITY).0,
        }
    }

    /// Called by the apply loop after a batch is committed; never blocks.
    pub fn publish(&self, changes: Vec<Change>) {
        if !changes.is_empty() {
            let _ = self.feed.send(Arc::new(changes));
        }
    }

    /// Runs one watcher: calls `emit` with each group of events (whole revisions, in order, never
    /// repeated) and the store revision they were read at. `emit` returns false when the receiver
    /// is gone. Returns how the watch ended.
    /// `progress` is kept at the revision through which every event has been emitted.
    pub async fn run<F, Fut>(&self, spec: WatchSpec, progress: &AtomicI64, mut emit: F) -> WatchEnd
    where
        F: FnMut(Vec<Event>, i64) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        // Subscribe before reading history: whatever commits after this is in the feed.
        let mut feed = self.feed.subscribe();
        let mut next = if spec.start_revision > 0 {
            spec.start_revision
        } else {
            self.store.current_revision() + 1
        };
        progress.store(next - 1, Ordering::Release);
        loop {
            // Catch up from history to the current revision.
            loop {
                let current = self.store.current_revision();
                if next > current {
                    break;
                }
                match self
                    .store
                    .changes(spec.span(), next, current, CATCH_UP_CHUNK)
                {
                    Ok((changes, last)) => {
                        let events = self.events(&spec, changes.iter());
                        if !events.is_empty() && !emit(events, current).await {
                            return WatchEnd::Closed;
                        }
                        next = last + 1;
                        progress.store(last, Ordering::Release);
                    }
                    Err(MvccError::Compacted) => {
                        return WatchEnd::Compacted(self.store.compacted_revision())
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "watch catch-up failed");
                        return WatchEnd::Closed;
                    }
                }
            }
            // Follow the live feed until it runs ahead of us.
            loop {
                match feed.recv().await {
                    Ok(batch) => {
                        let fresh = batch.iter().filter(|c| c.kv.mod_revision >= next);
                        let events = self.events(&spec, fresh);
                        if let Some(last) = batch.last() {
                            next = next.max(last.kv.mod_revision + 1);
                        }
                        if !events.is_empty() && !emit(events, self.store.current_revision()).await
                        {
                            return WatchEnd::Closed;
                        }
                        progress.store(next - 1, Ordering::Release);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return WatchEnd::Closed,
                }
            }
        }
    }

    fn events<'c>(
        &self,
        spec: &WatchSpec,
        changes: impl Iterator<Item = &'c Change>,
    ) -> Vec<Event> {
        changes
            .filter(|c| spec.span().contains(&c.kv.key))
            .filter(|c| {
                if c.deleted {
                    !spec.no_delete
                } else {
                    !spec.no_put
                }
            })
            .map(|c| Event {
                r#type: if c.deleted { EVENT_DELETE } else { 0 },
                kv: Some(c.kv.clone()),
                prev_kv: if spec.prev_kv {
                    self.previous(&c.kv)
                } else {
                    None
                },
            })
            .collect()
    }

    /// The key's value just before `kv` changed it (None if it did not exist or is compacted away).
    fn previous(&self, kv: &KeyValue) -> Option<KeyValue> {
        let opts = RangeOptions {
            rev: kv.mod_revision - 1,
            ..Default::default()
        };
        self.store
            .range(KeySpan::Single(&kv.key), &opts)
            .ok()?
            .kvs
            .pop()
    }
}

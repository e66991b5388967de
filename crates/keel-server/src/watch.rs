//! The watch hub: committed changes fan out to watchers without ever waiting for them. Each watcher
//! first catches up from MVCC history, then follows the live feed; a watcher that falls more than the
//! feed's bound behind goes back to catching up from history. Apply never blocks on a watcher.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

use keel_mvcc::{Change, KeySpan, MvccError, RangeOptions, Store};
use keel_proto::etcd::{PbEvent as Event, PbKeyValue as KeyValue};
use parking_lot::Mutex;
use tokio::sync::mpsc;

/// Batches a watcher may have queued before it is sent back to read history instead.
const FEED_CAPACITY: usize = 64;
/// Changes read from history per step of a catch-up.
const CATCH_UP_CHUNK: usize = 1000;

// mvccpb.Event.EventType and WatchCreateRequest.FilterType.
const EVENT_DELETE: i32 = 1;
const FILTER_NOPUT: i32 = 0;
const FILTER_NODELETE: i32 = 1;

/// One committed batch of changes, shared by every watcher it touches.
type Batch = Arc<[Change]>;

/// A watcher's place in the hub, given up when dropped.
struct Registration<'h> {
    hub: &'h Hub,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.hub.unregister(self.id);
    }
}

/// Publishes committed changes to the watchers whose keys they touch.
pub struct Hub {
    store: Arc<Store>,
    watchers: Mutex<Watchers>,
}

/// The live watchers, grouped so that a change wakes only the watchers of its key.
#[derive(Default)]
struct Watchers {
    next_id: u64,
    by_key: HashMap<Vec<u8>, Vec<u64>>,
    ranges: Vec<u64>,
    entries: HashMap<u64, Feed>,
}

/// The hub's side of one watcher.
struct Feed {
    spec: WatchSpec,
    tx: mpsc::Sender<Batch>,
    state: Arc<FeedState>,
}

/// Shared between the hub and a watcher task.
#[derive(Default)]
struct FeedState {
    /// The watcher follows the live feed (it is not reading history).
    synced: AtomicBool,
    /// A batch was dropped because the watcher's queue was full: it must read history again.
    lagged: AtomicBool,
    /// Batches queued or being emitted.
    inflight: AtomicUsize,
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
    /// The revision through which every event has been emitted (for progress responses).
    pub progress: Arc<AtomicI64>,
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
            watchers: Mutex::default(),
        }
    }

    /// Called by the apply loop after a batch is committed; never blocks. Watchers whose queue is
    /// full are marked lagged and read the batch from history later.
    pub fn publish(&self, changes: Vec<Change>) {
        let Some(last_rev) = changes.last().map(|c| c.kv.mod_revision) else {
            return;
        };
        let w = self.watchers.lock();
        // The common case on the apply path: nobody watches, nothing to do.
        if w.entries.is_empty() {
            return;
        }
        // One shared copy of the batch: each touched watcher picks its own changes out of it.
        let mut touched: HashSet<u64> = HashSet::new();
        for c in &changes {
            touched.extend(w.by_key.get(&c.kv.key).into_iter().flatten());
            for id in &w.ranges {
                if w.entries[id].spec.span().contains(&c.kv.key) {
                    touched.insert(*id);
                }
            }
        }
        let batch: Batch = changes.into();
        for (id, feed) in &w.entries {
            let st = &feed.state;
            if touched.contains(id) {
                st.inflight.fetch_add(1, Ordering::AcqRel);
                if feed.tx.try_send(batch.clone()).is_err() {
                    st.inflight.fetch_sub(1, Ordering::AcqRel);
                    st.lagged.store(true, Ordering::Release);
                }
            } else if st.synced.load(Ordering::Acquire)
                && st.inflight.load(Ordering::Acquire) == 0
                && !st.lagged.load(Ordering::Acquire)
            {
                // Nothing for this watcher and nothing queued: it is current.
                feed.spec.progress.fetch_max(last_rev, Ordering::AcqRel);
            }
        }
    }

    /// Sends every watcher back to history (the store was replaced by a snapshot): each reads what
    /// it has not seen from the new state, or learns its revision was compacted.
    pub fn resync(&self) {
        let w = self.watchers.lock();
        let empty: Batch = Vec::new().into();
        for feed in w.entries.values() {
            feed.state.lagged.store(true, Ordering::Release);
            // Wakes a watcher waiting on its feed; a full queue wakes it anyway.
            feed.state.inflight.fetch_add(1, Ordering::AcqRel);
            if feed.tx.try_send(empty.clone()).is_err() {
                feed.state.inflight.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    fn register(&self, spec: WatchSpec, tx: mpsc::Sender<Batch>, state: Arc<FeedState>) -> u64 {
        let mut w = self.watchers.lock();
        w.next_id += 1;
        let id = w.next_id;
        match spec.span() {
            KeySpan::Single(k) => w.by_key.entry(k.to_vec()).or_default().push(id),
            KeySpan::Range { .. } => w.ranges.push(id),
        }
        w.entries.insert(id, Feed { spec, tx, state });
        id
    }

    fn unregister(&self, id: u64) {
        let mut w = self.watchers.lock();
        let Some(feed) = w.entries.remove(&id) else {
            return;
        };
        match feed.spec.span() {
            KeySpan::Single(k) => {
                if let Some(ids) = w.by_key.get_mut(k) {
                    ids.retain(|i| *i != id);
                    if ids.is_empty() {
                        w.by_key.remove(k);
                    }
                }
            }
            KeySpan::Range { .. } => w.ranges.retain(|i| *i != id),
        }
    }

    /// Runs one watcher: calls `emit` with each group of events (whole revisions, in order, never
    /// repeated) and the store revision they were read at. `emit` returns false when the receiver
    /// is gone. `spec.progress` is kept at the revision through which every event has been emitted.
    pub async fn run<F, Fut>(&self, spec: WatchSpec, emit: F) -> WatchEnd
    where
        F: FnMut(Vec<Event>, i64) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let (tx, rx) = mpsc::channel(FEED_CAPACITY);
        let state = Arc::new(FeedState::default());
        // Registered before reading history: whatever commits after this reaches the queue.
        // Unregistered however the watcher ends, dropped mid-way (its client gone) included.
        let _registration = Registration {
            hub: self,
            id: self.register(spec.clone(), tx, state.clone()),
        };
        self.follow(&spec, &state, rx, emit).await
    }

    async fn follow<F, Fut>(
        &self,
        spec: &WatchSpec,
        state: &FeedState,
        mut rx: mpsc::Receiver<Batch>,
        mut emit: F,
    ) -> WatchEnd
    where
        F: FnMut(Vec<Event>, i64) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let progress = &spec.progress;
        // A negative start revision is older than any compaction (etcd cancels it as compacted).
        if spec.start_revision < 0 {
            return WatchEnd::Compacted(self.store.compacted_revision());
        }
        let mut next = if spec.start_revision > 0 {
            spec.start_revision
        } else {
            self.store.current_revision() + 1
        };
        progress.store(next - 1, Ordering::Release);
        loop {
            // Catch up from history to the current revision.
            state.synced.store(false, Ordering::Release);
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
                        let events = self.events(spec, changes.iter());
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
            state.synced.store(true, Ordering::Release);
            // Follow the live feed until it drops a batch for us.
            while !state.lagged.swap(false, Ordering::AcqRel) {
                let Some(batch) = rx.recv().await else {
                    return WatchEnd::Closed;
                };
                let fresh = batch.iter().filter(|c| c.kv.mod_revision >= next);
                let events = self.events(spec, fresh);
                if let Some(last) = batch.last() {
                    next = next.max(last.kv.mod_revision + 1);
                }
                if !events.is_empty() && !emit(events, self.store.current_revision()).await {
                    return WatchEnd::Closed;
                }
                progress.fetch_max(next - 1, Ordering::AcqRel);
                state.inflight.fetch_sub(1, Ordering::AcqRel);
            }
            // What is still queued is re-read from history.
            while rx.try_recv().is_ok() {
                state.inflight.fetch_sub(1, Ordering::AcqRel);
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

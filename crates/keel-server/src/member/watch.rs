//! The watch hub: committed changes fan out to watchers without ever waiting for them.
//!
//! Watchers live in groups, one per client stream, and a group is one task's work: for each
//! committed batch the hub sends a group one notice naming those of its watchers the batch touches,
//! so a put seen by 10,000 watchers on 100 streams wakes 100 tasks, not 10,000 (as etcd's watch
//! streams share one channel per stream). Each watcher first catches up from MVCC history, then
//! follows the live notices; a group whose queue overflows sends its watchers back to history.
//! Apply never blocks on a watcher.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

use keel_mvcc::{Change, KeySpan, MvccError, RangeOptions, Store};
use keel_rpc::etcd::{PbEvent as Event, PbKeyValue as KeyValue};
use parking_lot::Mutex;
use tokio::sync::mpsc;

/// Notices a group may have queued before its watchers are sent back to read history instead.
const GROUP_QUEUE: usize = 64;
/// Changes read from history per step of a catch-up.
const CATCH_UP_CHUNK: usize = 1000;

// mvccpb.Event.EventType and WatchCreateRequest.FilterType.
const EVENT_DELETE: i32 = 1;
const FILTER_NOPUT: i32 = 0;
const FILTER_NODELETE: i32 = 1;

/// One committed batch of changes, shared by every group it touches.
type Batch = Arc<[Change]>;

/// A watcher in the hub: its group and its id within the group.
type WatcherRef = (u64, i64);

/// A committed batch and the watchers of one group it touches.
struct Notice {
    batch: Batch,
    ids: Vec<i64>,
}

/// Publishes committed changes to the groups whose watchers' keys they touch.
pub struct Hub {
    store: Arc<Store>,
    watchers: Mutex<Watchers>,
}

/// The live watchers, indexed so that a change finds only the watchers of its key.
#[derive(Default)]
struct Watchers {
    next_group: u64,
    groups: HashMap<u64, GroupFeed>,
    by_key: HashMap<Vec<u8>, Vec<WatcherRef>>,
    ranges: Vec<WatcherRef>,
    entries: HashMap<WatcherRef, Entry>,
}

/// The hub's side of a group.
struct GroupFeed {
    tx: mpsc::Sender<Notice>,
    /// A notice was dropped because the queue was full: the group's watchers read history again.
    overflowed: Arc<AtomicBool>,
}

/// The hub's side of one watcher.
struct Entry {
    key: Vec<u8>,
    range_end: Vec<u8>,
    state: Arc<WatcherState>,
    overflowed: Arc<AtomicBool>,
}

impl Entry {
    fn span(&self) -> KeySpan<'_> {
        KeySpan::from_etcd(&self.key, &self.range_end)
    }
}

/// Shared between the hub and a watcher's group.
#[derive(Default)]
struct WatcherState {
    /// The watcher follows the live notices (it is not reading history).
    synced: AtomicBool,
    /// Notices naming the watcher that its group has not delivered yet.
    inflight: AtomicUsize,
    /// The revision through which every event has been delivered.
    progress: AtomicI64,
}

/// What a watcher watches.
#[derive(Clone, Debug, Default)]
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
    /// The receiver went away, or history could not be read.
    Closed,
}

/// What a group hands its owner next.
#[derive(Debug)]
pub enum Output {
    /// Events of one watcher (whole revisions, in order, never repeated) and the store revision
    /// they were read at.
    Events {
        id: i64,
        events: Vec<Event>,
        revision: i64,
    },
    /// A watcher ended; it has left the group.
    Ended { id: i64, end: WatchEnd },
}

impl Hub {
    /// A hub over `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Hub {
            store,
            watchers: Mutex::default(),
        }
    }

    /// Called by the apply loop after a batch is committed; never blocks. A group whose queue is
    /// full is marked overflowed and its watchers read the batch from history later.
    pub fn publish(&self, changes: Vec<Change>) {
        let Some(last_rev) = changes.last().map(|c| c.kv.mod_revision) else {
            return;
        };
        let w = self.watchers.lock();
        // The common case on the apply path: nobody watches, nothing to do.
        if w.entries.is_empty() {
            return;
        }
        let mut touched: Vec<WatcherRef> = Vec::new();
        for c in &changes {
            touched.extend(w.by_key.get(&c.kv.key).into_iter().flatten());
            touched.extend(
                w.ranges
                    .iter()
                    .filter(|r| w.entries[r].span().contains(&c.kv.key)),
            );
        }
        touched.sort_unstable();
        touched.dedup();
        // One shared copy of the batch: each watcher picks its own changes out of it.
        let batch: Batch = changes.into();
        for watchers in touched.chunk_by(|a, b| a.0 == b.0) {
            let feed = &w.groups[&watchers[0].0];
            let states = watchers.iter().map(|r| &w.entries[r].state);
            states
                .clone()
                .for_each(|s| _ = s.inflight.fetch_add(1, Ordering::AcqRel));
            let notice = Notice {
                batch: batch.clone(),
                ids: watchers.iter().map(|r| r.1).collect(),
            };
            if feed.tx.try_send(notice).is_err() {
                states.for_each(|s| _ = s.inflight.fetch_sub(1, Ordering::AcqRel));
                feed.overflowed.store(true, Ordering::Release);
            }
        }
        for (r, e) in &w.entries {
            let st = &e.state;
            // Nothing for this watcher and nothing undelivered: it is current.
            if touched.binary_search(r).is_err()
                && st.synced.load(Ordering::Acquire)
                && st.inflight.load(Ordering::Acquire) == 0
                && !e.overflowed.load(Ordering::Acquire)
            {
                st.progress.fetch_max(last_rev, Ordering::AcqRel);
            }
        }
    }

    /// Sends every watcher back to history (the store was replaced by a snapshot): each reads what
    /// it has not seen from the new state, or learns its revision was compacted.
    pub fn resync(&self) {
        let w = self.watchers.lock();
        for feed in w.groups.values() {
            feed.overflowed.store(true, Ordering::Release);
            // Wakes a group waiting for notices; a full queue wakes it anyway.
            let _ = feed.tx.try_send(Notice {
                batch: Vec::new().into(),
                ids: Vec::new(),
            });
        }
    }

    /// A new, empty group of watchers.
    pub fn group(self: &Arc<Self>) -> Group {
        let (tx, rx) = mpsc::channel(GROUP_QUEUE);
        let overflowed = Arc::new(AtomicBool::new(false));
        let mut w = self.watchers.lock();
        w.next_group += 1;
        let id = w.next_group;
        let feed = GroupFeed {
            tx,
            overflowed: overflowed.clone(),
        };
        w.groups.insert(id, feed);
        Group {
            hub: self.clone(),
            id,
            rx,
            overflowed,
            watchers: HashMap::new(),
            behind: VecDeque::new(),
            ready: VecDeque::new(),
        }
    }

    fn register(&self, r: WatcherRef, spec: &WatchSpec, state: Arc<WatcherState>) {
        let mut w = self.watchers.lock();
        let overflowed = w.groups[&r.0].overflowed.clone();
        match spec.span() {
            KeySpan::Single(k) => w.by_key.entry(k.to_vec()).or_default().push(r),
            KeySpan::Range { .. } => w.ranges.push(r),
        }
        let entry = Entry {
            key: spec.key.clone(),
            range_end: spec.range_end.clone(),
            state,
            overflowed,
        };
        w.entries.insert(r, entry);
    }

    fn unregister(&self, r: WatcherRef) {
        self.watchers.lock().remove(r);
    }

    fn unregister_group(&self, group: u64, ids: impl Iterator<Item = i64>) {
        let mut w = self.watchers.lock();
        for id in ids {
            w.remove((group, id));
        }
        w.groups.remove(&group);
    }

    /// Runs one watcher on its own: calls `emit` with each group of events and the store revision
    /// they were read at, until `emit` returns false (the receiver is gone) or the watcher ends.
    pub async fn run<F, Fut>(self: &Arc<Self>, spec: WatchSpec, mut emit: F) -> WatchEnd
    where
        F: FnMut(Vec<Event>, i64) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let mut group = self.group();
        group.add(0, spec);
        loop {
            match group.next().await {
                Output::Events {
                    events, revision, ..
                } => {
                    if !emit(events, revision).await {
                        return WatchEnd::Closed;
                    }
                }
                Output::Ended { end, .. } => return end,
            }
        }
    }
}

impl Watchers {
    fn remove(&mut self, r: WatcherRef) {
        let Some(e) = self.entries.remove(&r) else {
            return;
        };
        match e.span() {
            KeySpan::Single(k) => {
                if let Some(refs) = self.by_key.get_mut(k) {
                    refs.retain(|x| *x != r);
                    if refs.is_empty() {
                        self.by_key.remove(k);
                    }
                }
            }
            KeySpan::Range { .. } => self.ranges.retain(|x| *x != r),
        }
    }
}

/// Watchers served by one task (one client stream): `next` yields their events in revision order
/// per watcher. Dropping the group ends its watchers.
pub struct Group {
    hub: Arc<Hub>,
    id: u64,
    rx: mpsc::Receiver<Notice>,
    overflowed: Arc<AtomicBool>,
    watchers: HashMap<i64, Local>,
    /// Watchers reading history, each due one more chunk.
    behind: VecDeque<i64>,
    /// Outputs not handed out yet, in order.
    ready: VecDeque<Ready>,
}

/// The group's side of one watcher.
struct Local {
    spec: WatchSpec,
    state: Arc<WatcherState>,
    /// The first revision not yet looked at.
    next: i64,
    synced: bool,
}

/// An output waiting to be handed out, and the bookkeeping due when it is.
struct Ready {
    id: i64,
    events: Vec<Event>,
    revision: i64,
    /// Every event through this revision is delivered once this output is.
    through: i64,
    /// It came from a notice (the hub counts it in flight).
    live: bool,
    /// The watcher ended (after everything before this was handed out).
    end: Option<WatchEnd>,
}

impl Group {
    /// Adds a watcher under `id` (the caller keeps ids unique). Whatever commits from now on
    /// reaches it; what committed before is read from history from `spec.start_revision`.
    pub fn add(&mut self, id: i64, spec: WatchSpec) {
        let state = Arc::new(WatcherState::default());
        // Registered before reading the current revision: a commit in between is both queued
        // and behind `next`, so it is seen once.
        self.hub.register((self.id, id), &spec, state.clone());
        let store = &self.hub.store;
        // A negative start revision is older than any compaction (etcd cancels it as compacted).
        if spec.start_revision < 0 {
            self.end(id, WatchEnd::Compacted(store.compacted_revision()));
            return;
        }
        let next = if spec.start_revision > 0 {
            spec.start_revision
        } else {
            store.current_revision() + 1
        };
        state.progress.store(next - 1, Ordering::Release);
        let local = Local {
            spec,
            state,
            next,
            synced: false,
        };
        self.watchers.insert(id, local);
        self.behind.push_back(id);
    }

    /// Removes a watcher; nothing more is handed out for it.
    pub fn remove(&mut self, id: i64) {
        self.ready.retain(|r| r.id != id);
        self.forget(id);
    }

    fn forget(&mut self, id: i64) {
        self.behind.retain(|b| *b != id);
        self.hub.unregister((self.id, id));
        self.watchers.remove(&id);
    }

    /// The revision through which every watcher of the group has been handed all its events.
    pub fn progress(&self) -> Option<i64> {
        self.watchers
            .values()
            .map(|w| w.state.progress.load(Ordering::Acquire))
            .min()
    }

    /// One watcher's progress (see `progress`).
    pub fn progress_of(&self, id: i64) -> Option<i64> {
        let w = self.watchers.get(&id)?;
        Some(w.state.progress.load(Ordering::Acquire))
    }

    /// The next output. Cancel-safe: all its work after waiting is done without waiting again.
    pub async fn next(&mut self) -> Output {
        loop {
            if let Some(out) = self.pop_ready() {
                return out;
            }
            self.check_overflow();
            // Live notices first, then one chunk of history for a watcher that is behind.
            if let Ok(n) = self.rx.try_recv() {
                self.take_notice(n);
            } else if let Some(id) = self.behind.pop_front() {
                self.catch_up(id);
            } else {
                let Some(n) = self.rx.recv().await else {
                    // The hub keeps the sender while the group lives: never happens.
                    return std::future::pending().await;
                };
                self.check_overflow();
                self.take_notice(n);
            }
        }
    }

    fn pop_ready(&mut self) -> Option<Output> {
        while let Some(r) = self.ready.pop_front() {
            if let Some(end) = r.end {
                return Some(Output::Ended { id: r.id, end });
            }
            if let Some(w) = self.watchers.get(&r.id) {
                w.state.progress.fetch_max(r.through, Ordering::AcqRel);
                if r.live {
                    w.state.inflight.fetch_sub(1, Ordering::AcqRel);
                }
            }
            if !r.events.is_empty() {
                return Some(Output::Events {
                    id: r.id,
                    events: r.events,
                    revision: r.revision,
                });
            }
        }
        None
    }

    /// After a dropped notice every following watcher reads history from where it got to.
    fn check_overflow(&mut self) {
        if !self.overflowed.load(Ordering::Acquire) {
            return;
        }
        for (id, w) in &mut self.watchers {
            if w.synced {
                w.synced = false;
                w.state.synced.store(false, Ordering::Release);
                self.behind.push_back(*id);
            }
        }
        // Cleared after the watchers are marked: the hub must not count them current meanwhile.
        self.overflowed.store(false, Ordering::Release);
    }

    fn take_notice(&mut self, n: Notice) {
        let revision = self.hub.store.current_revision();
        for id in n.ids {
            let Some(w) = self.watchers.get_mut(&id) else {
                continue;
            };
            if !w.synced {
                // Reading history: it reads this batch too (published after it was committed).
                w.state.inflight.fetch_sub(1, Ordering::AcqRel);
                continue;
            }
            let fresh = n.batch.iter().filter(|c| c.kv.mod_revision >= w.next);
            let events = events(&self.hub.store, &w.spec, fresh);
            if let Some(last) = n.batch.last() {
                w.next = w.next.max(last.kv.mod_revision + 1);
            }
            self.ready.push_back(Ready {
                id,
                events,
                revision,
                through: w.next - 1,
                live: true,
                end: None,
            });
        }
    }

    /// Reads one chunk of history for a watcher that is behind.
    fn catch_up(&mut self, id: i64) {
        let store = &self.hub.store;
        let Some(w) = self.watchers.get_mut(&id) else {
            return;
        };
        let current = store.current_revision();
        if w.next > current {
            w.synced = true;
            w.state.synced.store(true, Ordering::Release);
            return;
        }
        match store.changes(w.spec.span(), w.next, current, CATCH_UP_CHUNK) {
            Ok((changes, last)) => {
                let events = events(store, &w.spec, changes.iter());
                w.next = last + 1;
                self.ready.push_back(Ready {
                    id,
                    events,
                    revision: current,
                    through: last,
                    live: false,
                    end: None,
                });
                self.behind.push_back(id);
            }
            Err(MvccError::Compacted) => {
                let compacted = store.compacted_revision();
                self.end(id, WatchEnd::Compacted(compacted));
            }
            Err(e) => {
                tracing::error!(error = %e, "watch catch-up failed");
                self.end(id, WatchEnd::Closed);
            }
        }
    }

    /// Ends a watcher once what is ready before it has been handed out.
    fn end(&mut self, id: i64, end: WatchEnd) {
        self.forget(id);
        self.ready.push_back(Ready {
            id,
            events: Vec::new(),
            revision: 0,
            through: 0,
            live: false,
            end: Some(end),
        });
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        self.hub.unregister_group(self.id, ids.into_iter());
    }
}

/// The events of `changes` that `spec` asks for.
fn events<'c>(
    store: &Store,
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
                previous(store, &c.kv)
            } else {
                None
            },
        })
        .collect()
}

/// The key's value just before `kv` changed it (None if it did not exist or is compacted away).
fn previous(store: &Store, kv: &KeyValue) -> Option<KeyValue> {
    let opts = RangeOptions {
        rev: kv.mod_revision - 1,
        ..Default::default()
    };
    store.range(KeySpan::Single(&kv.key), &opts).ok()?.kvs.pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commits a put of `key` to the store (the apply loop's part), returning its changes.
    fn commit(store: &Store, key: &str, index: u64) -> Vec<Change> {
        let mut wb = store.write_batch();
        wb.begin();
        wb.put(key.as_bytes(), index.to_be_bytes().to_vec(), 0)
            .unwrap();
        wb.end();
        wb.commit(index).expect("commit")
    }

    fn put(store: &Store, hub: &Hub, key: &str, index: u64) {
        hub.publish(commit(store, key, index));
    }

    /// Drains what the group has ready now, as (watcher, revision) pairs.
    async fn drain(group: &mut Group) -> Vec<(i64, i64)> {
        let mut seen = Vec::new();
        while let Ok(out) =
            tokio::time::timeout(std::time::Duration::from_millis(50), group.next()).await
        {
            if let Output::Events { id, events, .. } = out {
                seen.extend(
                    events
                        .iter()
                        .map(|e| (id, e.kv.as_ref().unwrap().mod_revision)),
                );
            }
        }
        seen
    }

    #[tokio::test]
    async fn a_group_that_falls_behind_its_queue_reads_history_and_misses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let hub = Arc::new(Hub::new(store.clone()));
        let mut group = hub.group();
        let spec = |key: &str| WatchSpec {
            key: key.into(),
            ..Default::default()
        };
        group.add(1, spec("a"));
        group.add(2, spec("b"));
        assert!(drain(&mut group).await.is_empty());
        // Far more batches than the queue holds while the group's task does not run.
        let n = GROUP_QUEUE as u64 * 3;
        for i in 0..n {
            put(&store, &hub, if i % 2 == 0 { "a" } else { "b" }, i + 1);
        }
        assert!(group.overflowed.load(Ordering::Acquire));
        let seen = drain(&mut group).await;
        for (id, key_parity) in [(1, 0), (2, 1)] {
            let revs: Vec<i64> = seen.iter().filter(|s| s.0 == id).map(|s| s.1).collect();
            let want: Vec<i64> = (0..n as i64)
                .filter(|i| i % 2 == key_parity)
                .map(|i| i + 2)
                .collect();
            assert_eq!(revs, want, "watcher {id}: every revision once, in order");
        }
        // Caught up and following again: the next put arrives live, and progress covers it.
        put(&store, &hub, "a", n + 1);
        assert_eq!(drain(&mut group).await, vec![(1, n as i64 + 2)]);
        assert_eq!(group.progress(), Some(n as i64 + 2));
    }

    #[tokio::test]
    async fn a_resync_sends_following_watchers_back_to_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let hub = Arc::new(Hub::new(store.clone()));
        let mut group = hub.group();
        group.add(
            1,
            WatchSpec {
                key: b"a".to_vec(),
                ..Default::default()
            },
        );
        assert!(drain(&mut group).await.is_empty());
        // The store changes without a publish, as when a snapshot replaces it: nothing arrives
        // until the hub sends its watchers back to history.
        commit(&store, "a", 1);
        assert!(drain(&mut group).await.is_empty());
        hub.resync();
        assert_eq!(drain(&mut group).await, vec![(1, 2)]);
        assert_eq!(group.progress(), Some(2));
    }
}

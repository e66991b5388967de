//! A watched value: one key, decoded, followed from its current value on, after the model of
//! Monogon's etcd-backed event value. A watcher's `get` yields the value read when it starts
//! (waiting for the key to be created if it does not exist), then every newer value in order (a
//! deletion as `None`); it resumes from the revision after the last one it yielded when the
//! watch breaks, waits with exponential backoff while the cluster is unavailable, and reads the
//! key again when the history it needs was compacted. A value that does not decode is that
//! `get`'s error (`ValueError::Decode`); the next `get` goes on after it.
//!
//! Keel's one addition: `Value::absent_as_none` makes the first `get` on an absent key answer
//! `None` at once instead of waiting (a caller that must act on "not configured yet").

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Mutex;

use super::{EventKind, Keys, StateStore, StoreError, WatchStream};

/// First and longest wait between attempts while the store is unavailable.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What a watcher's `get` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    /// Another `get` on the same watcher is in progress (a watcher has one reader).
    #[error("another get is already waiting on this watcher")]
    ConcurrentGet,
    /// The store refused (not a passing unavailability: those are retried).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The value written at `revision` does not decode; the next `get` yields what follows it.
    #[error("the value at revision {revision} does not decode: {message}")]
    Decode { revision: i64, message: String },
}

/// A key whose values are decoded by `D`.
pub struct Value<T> {
    store: Arc<dyn StateStore>,
    key: Vec<u8>,
    decode: Decoder<T>,
    absent_as_none: bool,
}

type Decoder<T> = Arc<dyn Fn(&[u8]) -> Result<T, String> + Send + Sync>;

impl<T: Send + 'static> Value<T> {
    /// The value at `key` of `store`, decoded by `decode` (its errors are `get`'s errors).
    pub fn new<E: std::fmt::Display>(
        store: Arc<dyn StateStore>,
        key: impl Into<Vec<u8>>,
        decode: impl Fn(&[u8]) -> Result<T, E> + Send + Sync + 'static,
    ) -> Value<T> {
        Value {
            store,
            key: key.into(),
            decode: Arc::new(move |b| decode(b).map_err(|e| e.to_string())),
            absent_as_none: false,
        }
    }

    /// The same value, whose watchers' first `get` answers `None` at once when the key does not
    /// exist (instead of waiting for it to be created).
    pub fn absent_as_none(mut self) -> Value<T> {
        self.absent_as_none = true;
        self
    }

    /// A watcher starting from the current value.
    pub fn watch(&self) -> ValueWatcher<T> {
        ValueWatcher {
            store: self.store.clone(),
            key: self.key.clone(),
            decode: self.decode.clone(),
            absent_as_none: self.absent_as_none,
            state: Mutex::new(State::default()),
        }
    }
}

/// Follows one value; see `get`.
pub struct ValueWatcher<T> {
    store: Arc<dyn StateStore>,
    key: Vec<u8>,
    decode: Decoder<T>,
    absent_as_none: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The revision the next value must come after (0 until the first read).
    read_at: i64,
    /// The revision of the last value yielded (a re-read after compaction that finds the same
    /// value does not yield it twice).
    yielded: i64,
    watching: Option<WatchStream>,
    backoff: Option<Duration>,
}

impl<T> ValueWatcher<T> {
    /// The current value on the first call, then the next newer one on each call (waiting for
    /// it). Cancel-safe: a `get` dropped while waiting loses nothing.
    pub async fn get(&self) -> Result<Option<T>, ValueError> {
        let mut state = self
            .state
            .try_lock()
            .map_err(|_| ValueError::ConcurrentGet)?;
        loop {
            match self.next(&mut state).await {
                Ok(Some(v)) => {
                    state.backoff = None;
                    return match v {
                        Some(bytes) => {
                            (self.decode)(&bytes)
                                .map(Some)
                                .map_err(|message| ValueError::Decode {
                                    revision: state.yielded,
                                    message,
                                })
                        }
                        None => Ok(None),
                    };
                }
                Ok(None) => {}
                Err(StoreError::Compacted(_)) => {
                    // The history after our revision is gone: the current value is what's next.
                    state.read_at = 0;
                    state.watching = None;
                }
                Err(StoreError::Unavailable(_) | StoreError::NoLeader) => {
                    state.watching = None;
                    let wait = state
                        .backoff
                        .map_or(BACKOFF_MIN, |b| (b * 2).min(BACKOFF_MAX));
                    state.backoff = Some(wait);
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// One step: `Some(value)` (a deletion as `Some(None)`), or `None` when there is nothing to
    /// yield yet (the watch was just opened).
    #[allow(clippy::option_option)]
    async fn next(&self, state: &mut State) -> Result<Option<Option<Vec<u8>>>, StoreError> {
        if state.read_at == 0 {
            let (kv, revision) = self.store.read(&self.key).await?;
            state.read_at = revision;
            state.watching = None;
            // Already yielded (a re-read after compaction), or absent at first: nothing yet.
            let first = state.yielded == 0;
            match &kv {
                Some(kv) if kv.version <= state.yielded => return Ok(None),
                None if first && !self.absent_as_none => return Ok(None),
                Some(kv) => state.yielded = kv.version,
                None => state.yielded = revision,
            }
            return Ok(Some(kv.map(|kv| kv.value)));
        }
        let Some(watching) = state.watching.as_mut() else {
            let keys = Keys::Key(self.key.clone());
            state.watching = Some(self.store.watch(keys, state.read_at + 1).await?);
            return Ok(None);
        };
        match watching.next().await {
            Some(Ok(e)) => {
                state.read_at = e.kv.version;
                state.yielded = e.kv.version;
                Ok(Some((e.kind == EventKind::Put).then_some(e.kv.value)))
            }
            Some(Err(e)) => Err(e),
            None => Err(StoreError::Unavailable("watch ended".into())),
        }
    }
}

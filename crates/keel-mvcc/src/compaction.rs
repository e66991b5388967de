//! Compaction in two halves, as etcd does it: the apply loop records the compaction point (reads
//! below it fail from then on, and nothing the store answers depends on what is still on disk
//! below it), and a background thread deletes what no read at or after it can see, a small chunk
//! of revisions per RocksDB write, so that a compaction of millions of revisions never holds the
//! apply loop or a reader. Its progress is recorded with each chunk (a restart, or a snapshot
//! carrying a half-done compaction, resumes where it stopped).
//!
//! A change at or below the compaction point stays when it is its key's newest change at or below
//! the point and not a deletion ([`kept`]); hashes, watch history and etcd-format exports filter
//! with the same rule until the thread is done, so members agree whatever its progress.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};
use rocksdb::{ReadOptions, WriteBatch, DB};

use crate::index::{self, newest_at, Cursor, Entry};
use crate::store::{
    decode_record, meta_i64, RecordHead, CF_INDEX, CF_KV, CF_META, META_BYTES_FREED,
    META_COMPACT_DONE, META_COMPACT_NEXT, META_COMPACT_REV, META_INDEX_FORMAT,
};
use crate::{MvccError, Result, Revision};

/// Revisions examined per RocksDB write.
const CHUNK: usize = 1_000;
/// Pause between chunks: the thread takes a bounded share of a core from the request path.
const PAUSE: Duration = Duration::from_millis(1);

/// Whether the change of `key` at `rev` (at or below the compaction point `at`) is still readable.
pub(crate) fn kept(c: &mut impl Cursor, key: &[u8], rev: Revision, at: i64) -> Result<bool> {
    Ok(newest_at(c, key, at)?.is_some_and(|f| f.rev == rev && !f.entry.tombstone))
}

/// The background half of compaction: a thread woken when a compaction is committed.
pub(crate) struct Compactor {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    db: Arc<DB>,
    /// The store's installation gate: held for reading while a chunk is deleted.
    gate: Arc<RwLock<()>>,
    work: Mutex<bool>,
    wake: Condvar,
    stop: AtomicBool,
    /// Bytes deleted so far (see `Entry::footprint`), as recorded with the last chunk.
    freed: AtomicU64,
    /// Whether the thread is idle with nothing left to do (for tests and `wait_idle`).
    idle: Mutex<bool>,
    idle_cv: Condvar,
}

impl Compactor {
    pub(crate) fn start(db: Arc<DB>, gate: Arc<RwLock<()>>) -> Compactor {
        let shared = Arc::new(Shared {
            db,
            gate,
            work: Mutex::new(true),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            freed: AtomicU64::new(0),
            idle: Mutex::new(false),
            idle_cv: Condvar::new(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("mvcc-compact".into())
            .spawn(move || s.run())
            .expect("spawning the compaction thread");
        Compactor {
            shared,
            thread: Some(thread),
        }
    }

    /// A compaction was committed (or the store replaced): look for work.
    pub(crate) fn wake(&self) {
        *self.shared.idle.lock() = false;
        *self.shared.work.lock() = true;
        self.shared.wake.notify_one();
    }

    /// Bytes compaction has deleted (see `Entry::footprint`).
    pub(crate) fn freed(&self) -> u64 {
        self.shared.freed.load(Ordering::Acquire)
    }

    /// Sets the bytes deleted as the store records them (when it is loaded).
    pub(crate) fn set_freed(&self, bytes: u64) {
        self.shared.freed.store(bytes, Ordering::Release);
    }

    /// Blocks until every committed compaction is carried out on disk.
    pub(crate) fn wait_idle(&self) {
        let mut idle = self.shared.idle.lock();
        while !*idle {
            self.shared.idle_cv.wait(&mut idle);
        }
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        *self.shared.work.lock() = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn run(&self) {
        loop {
            {
                let mut work = self.work.lock();
                while !*work {
                    self.wake.wait(&mut work);
                }
                *work = false;
            }
            loop {
                if self.stop.load(Ordering::Acquire) {
                    return;
                }
                match self.step() {
                    Ok(true) => std::thread::sleep(PAUSE),
                    Ok(false) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "compaction failed; retried at the next one");
                        break;
                    }
                }
            }
            let mut idle = self.idle.lock();
            if !*self.work.lock() {
                *idle = true;
                self.idle_cv.notify_all();
            }
        }
    }

    /// Deletes one chunk; returns whether more is left.
    fn step(&self) -> Result<bool> {
        let _gate = self.gate.read();
        let db = &*self.db;
        let (meta, kv, idx) = (cf(db, CF_META), cf(db, CF_KV), cf(db, CF_INDEX));
        // Nothing to do, or the index is not built yet (an import): it is woken once it is.
        if db.get_cf(meta, META_COMPACT_REV)?.is_none()
            || db.get_cf(meta, META_INDEX_FORMAT)?.is_none()
        {
            return Ok(false);
        }
        let target = meta_i64(db, META_COMPACT_REV)?;
        let done = match db.get_cf(meta, META_COMPACT_DONE)? {
            Some(_) => meta_i64(db, META_COMPACT_DONE)?,
            None => 0,
        };
        if done >= target {
            return Ok(false);
        }
        let from = match db.get_cf(meta, META_COMPACT_NEXT)? {
            Some(k) => k,
            None => Revision::new(done + 1, 0).to_key(false),
        };
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(Revision::new(target + 1, 0).to_key(false));
        ro.fill_cache(false);
        let mut changes = db.raw_iterator_cf_opt(kv, ro);
        changes.seek(&from);
        let mut keys = db.raw_iterator_cf_opt(idx, index::read_options(true));
        let mut batch = WriteBatch::default();
        let mut freed = meta_i64(db, META_BYTES_FREED)? as u64;
        let mut examined = 0;
        while let (Some(k), Some(v)) = (changes.key(), changes.value()) {
            if examined == CHUNK {
                break;
            }
            examined += 1;
            let (rev, _) = Revision::from_key(k)
                .ok_or_else(|| MvccError::Corrupt(format!("revision key {k:?}")))?;
            let head: RecordHead = decode_record(v)?;
            // The newest change at the point: everything older goes, and it too if it is a
            // deletion. Older changes met before it in the scan were left for this moment. (A
            // change whose key the index does not know is left alone: compaction never deletes
            // what it cannot account for.)
            let newest = newest_at(&mut keys, &head.key, target)?.filter(|n| n.rev == rev);
            if let Some(newest) = newest {
                freed += drop_older(db, &mut keys, &mut batch, &head.key, rev)?;
                if newest.entry.tombstone {
                    freed += newest.entry.footprint(head.key.len());
                    batch.delete_cf(idx, index::index_key(&head.key, rev));
                    batch.delete_cf(kv, rev.to_key(true));
                }
            }
            changes.next();
        }
        changes.status()?;
        let more = changes.key().is_some();
        match changes.key() {
            Some(next) => batch.put_cf(meta, META_COMPACT_NEXT, next),
            None => {
                batch.delete_cf(meta, META_COMPACT_NEXT);
                batch.put_cf(meta, META_COMPACT_DONE, target.to_be_bytes());
                tracing::info!(revision = target, "finished scheduled compaction");
            }
        }
        batch.put_cf(meta, META_BYTES_FREED, (freed as i64).to_be_bytes());
        db.write(batch)?;
        self.freed.store(freed, Ordering::Release);
        Ok(more || target < meta_i64(db, META_COMPACT_REV)?)
    }
}

/// Deletes every change of `key` older than `rev` (index entries and values); returns their bytes.
fn drop_older(
    db: &DB,
    keys: &mut impl Cursor,
    batch: &mut WriteBatch,
    key: &[u8],
    rev: Revision,
) -> Result<u64> {
    let mut freed = 0;
    let at = index::index_key(key, rev);
    let (prefix, _) = index::split(&at)?;
    keys.seek(&at);
    keys.next();
    while let Some(k) = keys.key() {
        let (encoded, older) = index::split(k)?;
        if encoded != prefix {
            break;
        }
        let entry: Entry = keys.entry()?;
        batch.delete_cf(cf(db, CF_INDEX), k);
        batch.delete_cf(cf(db, CF_KV), older.to_key(entry.tombstone));
        freed += entry.footprint(key.len());
        keys.next();
    }
    keys.status()?;
    Ok(freed)
}

fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name).expect("column family opened at start")
}

//! Whole-store snapshots: a RocksDB checkpoint of every family (hard links, taken at one consistent
//! point), and the installation of such a checkpoint in place of the store's state.
//!
//! Meta records under [`LOCAL_META_PREFIX`] describe the member that holds the store (its own id,
//! the snapshot it last installed), not the replicated state: checkpoints carry them but
//! installation neither copies nor removes them.

use std::path::Path;

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{IteratorMode, Options, WriteOptions, DB};

use crate::store::{CF_META, FAMILIES, META_APPLIED_INDEX};
use crate::{MvccError, Result, Store};

/// Prefix of the meta records that belong to the local member rather than the replicated state.
pub const LOCAL_META_PREFIX: &[u8] = b"local/";
/// Set while an installation is under way (its value: the checkpoint directory); an installation
/// interrupted by a crash is redone at the next open.
const META_INSTALLING: &[u8] = b"local/installing";
/// Records copied per RocksDB write while installing, and the bytes that end a write sooner (a
/// batch of large values must not hold the image in memory).
const INSTALL_BATCH: usize = 10_000;
const INSTALL_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Told how an installation goes: records written (deleted or copied) so far, of an estimate of
/// the whole (RocksDB's key-count estimates; `done` can pass it, and the last call has
/// `done == total`).
pub type InstallProgress<'a> = &'a mut dyn FnMut(u64, u64);

/// A checkpoint opened for reading its metadata.
pub struct CheckpointReader {
    pub(crate) db: DB,
}

impl CheckpointReader {
    /// Opens the checkpoint in `dir` read-only.
    pub fn open(dir: &Path) -> Result<CheckpointReader> {
        // A checkpoint from an older Keel lacks the newer families (the key index is then
        // built when it is installed).
        let families = DB::list_cf(&Options::default(), dir)?;
        let db = DB::open_cf_for_read_only(&Options::default(), dir, families, false)?;
        Ok(CheckpointReader { db })
    }

    /// A meta record of the checkpoint.
    pub fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let cf = self.db.cf_handle(CF_META).ok_or_else(missing_meta)?;
        Ok(self.db.get_cf(cf, key)?)
    }

    /// The raft index the checkpoint's state was applied through.
    pub fn applied_index(&self) -> Result<u64> {
        Ok(self
            .get_meta(META_APPLIED_INDEX)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, |b| i64::from_be_bytes(b) as u64))
    }
}

fn missing_meta() -> MvccError {
    MvccError::Corrupt("checkpoint without a meta family".into())
}

fn is_local(family: &str, key: &[u8]) -> bool {
    family == CF_META && key.starts_with(LOCAL_META_PREFIX)
}

fn synced() -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    wo
}

impl Store {
    /// Writes a checkpoint of the whole store (every family, one consistent point) to `dir`, which
    /// must not exist yet.
    pub fn checkpoint(&self, dir: &Path) -> Result<()> {
        Checkpoint::new(&self.db)?.create_checkpoint(dir)?;
        Ok(())
    }

    /// Replaces the replicated state with the checkpoint in `dir`, then rebuilds the in-memory
    /// index. `note` is recorded under `note_key` (a local meta key) before anything changes, so a
    /// restart after a crash mid-way finds it, and finishes the installation. `progress` is told
    /// how the copy goes.
    pub fn install(
        &self,
        dir: &Path,
        note_key: &[u8],
        note: &[u8],
        progress: InstallProgress<'_>,
    ) -> Result<()> {
        let mut start = rocksdb::WriteBatch::default();
        start.put_cf(
            self.cf(CF_META),
            META_INSTALLING,
            dir.to_string_lossy().as_bytes(),
        );
        start.put_cf(self.cf(CF_META), note_key, note);
        self.db.write_opt(start, &synced())?;
        self.copy_checkpoint(dir, progress)
    }

    /// Finishes an installation a crash interrupted (called by `open`).
    pub(crate) fn resume_install(&self) -> Result<()> {
        let Some(dir) = self.db.get_cf(self.cf(CF_META), META_INSTALLING)? else {
            return Ok(());
        };
        let dir = String::from_utf8_lossy(&dir).into_owned();
        tracing::warn!(%dir, "finishing a snapshot installation interrupted by a restart");
        if !Path::new(&dir).exists() {
            return Err(MvccError::Corrupt(format!(
                "a snapshot installation was interrupted and its checkpoint {dir} is gone"
            )));
        }
        self.copy_checkpoint(Path::new(&dir), &mut |_, _| {})
    }

    fn copy_checkpoint(&self, dir: &Path, progress: InstallProgress<'_>) -> Result<()> {
        let src = CheckpointReader::open(dir)?;
        let estimate = |db: &DB| -> u64 {
            FAMILIES
                .iter()
                .filter_map(|f| db.cf_handle(f))
                .filter_map(|cf| {
                    db.property_int_value_cf(cf, "rocksdb.estimate-num-keys")
                        .ok()
                })
                .flatten()
                .sum()
        };
        let total = estimate(&self.db) + estimate(&src.db);
        let mut done = 0u64;
        progress(0, total);
        // Readers (and the compaction thread) must not see a half-copied store.
        let gate = self.gate.write();
        let mut batch = rocksdb::WriteBatch::default();
        let mut flush = |batch: &mut rocksdb::WriteBatch| -> Result<()> {
            if batch.len() >= INSTALL_BATCH || batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
                done += batch.len() as u64;
                self.db.write(std::mem::take(batch))?;
                progress(done, total.max(done + 1));
            }
            Ok(())
        };
        for family in FAMILIES {
            let cf = self.cf(family);
            for item in self.db.iterator_cf(cf, IteratorMode::Start) {
                let (k, _) = item?;
                if !is_local(family, &k) {
                    batch.delete_cf(cf, k);
                    flush(&mut batch)?;
                }
            }
            let Some(src_cf) = src.db.cf_handle(family) else {
                continue;
            };
            for item in src.db.iterator_cf(src_cf, IteratorMode::Start) {
                let (k, v) = item?;
                if !is_local(family, &k) {
                    batch.put_cf(cf, k, v);
                    flush(&mut batch)?;
                }
            }
        }
        done += batch.len() as u64;
        batch.delete_cf(self.cf(CF_META), META_INSTALLING);
        self.db.write(batch)?;
        self.db.flush_wal(true)?;
        drop(gate);
        self.load()?;
        progress(done, done);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeySpan, RangeOptions};

    #[test]
    fn install_replaces_everything_but_local_records() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(&dir.path().join("a")).unwrap();
        let mut wb = a.write_batch();
        wb.begin();
        wb.put(b"k1", b"v1".to_vec(), 0).unwrap();
        wb.end();
        wb.begin();
        wb.put(b"k2", b"v2".to_vec(), 0).unwrap();
        wb.end();
        wb.put_meta(b"local/who", b"a");
        wb.commit(7).unwrap();
        a.checkpoint(&dir.path().join("snap")).unwrap();
        assert_eq!(
            CheckpointReader::open(&dir.path().join("snap"))
                .unwrap()
                .applied_index()
                .unwrap(),
            7
        );

        let b = Store::open(&dir.path().join("b")).unwrap();
        let mut wb = b.write_batch();
        wb.begin();
        wb.put(b"old", b"x".to_vec(), 0).unwrap();
        wb.end();
        wb.put_meta(b"local/who", b"b");
        wb.commit(3).unwrap();
        b.install(
            &dir.path().join("snap"),
            b"local/note",
            b"n",
            &mut |_, _| {},
        )
        .unwrap();

        assert_eq!(b.applied_index(), 7);
        assert_eq!(b.current_revision(), 3);
        let all = b
            .range(
                KeySpan::Range {
                    start: b"",
                    end: None,
                },
                &RangeOptions::default(),
            )
            .unwrap();
        let keys: Vec<_> = all.kvs.iter().map(|kv| kv.key.clone()).collect();
        assert_eq!(keys, vec![b"k1".to_vec(), b"k2".to_vec()]);
        assert_eq!(b.get_meta(b"local/who").unwrap().unwrap(), b"b");
        assert_eq!(b.get_meta(b"local/note").unwrap().unwrap(), b"n");
        drop(b);
        // Reopened, it is the same store (no installation left pending).
        let b = Store::open(&dir.path().join("b")).unwrap();
        assert_eq!(b.current_revision(), 3);
        assert_eq!(b.get_meta(META_INSTALLING).unwrap(), None);
    }

    #[test]
    fn install_reports_its_progress_in_bounded_writes_up_to_done() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(&dir.path().join("a")).unwrap();
        let value = vec![7u8; 1024 * 1024];
        for i in 0..24u64 {
            let mut wb = a.write_batch();
            wb.begin();
            wb.put(format!("k{i:02}").as_bytes(), value.clone(), 0)
                .unwrap();
            wb.end();
            wb.commit(i + 1).unwrap();
        }
        a.checkpoint(&dir.path().join("snap")).unwrap();

        let b = Store::open(&dir.path().join("b")).unwrap();
        let mut seen = Vec::new();
        b.install(
            &dir.path().join("snap"),
            b"local/note",
            b"n",
            &mut |done, total| seen.push((done, total)),
        )
        .unwrap();
        // 24 MiB of values in writes of at most 4 MiB: several reports before the last.
        assert!(seen.len() >= 6, "{seen:?}");
        assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "{seen:?}");
        assert!(seen.iter().all(|(done, total)| done <= total), "{seen:?}");
        let (done, total) = *seen.last().unwrap();
        assert_eq!(done, total);
        assert!(done >= 24, "{seen:?}");
        assert_eq!(b.current_revision(), 25);
    }
}

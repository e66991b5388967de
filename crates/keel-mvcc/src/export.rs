//! The store's state read whole from a checkpoint (to write it in another format, etcd's), and
//! built whole from another store's records (an etcd backend) into an empty store, which is then
//! installed like any checkpoint.

use rocksdb::{IteratorMode, WriteBatch};

use crate::compaction::kept;
use crate::snapshot::CheckpointReader;
use crate::store::{
    decode_record, RecordHead, Table, CF_INDEX, CF_KV, CF_META, META_APPLIED_INDEX,
    META_COMPACT_DONE, META_COMPACT_REV, META_CURRENT_REV, META_INDEX_FORMAT,
};
use crate::{MvccError, Result, Revision, Store};

/// Records per write while importing, and the bytes that end a write sooner.
const IMPORT_BATCH: usize = 10_000;
const IMPORT_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// A part of the store's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// Every revision of every key, by revision: etcd's revision keys (with a tombstone's
    /// marker) to `mvccpb.KeyValue`.
    Revisions,
    /// The store's bookkeeping and the state machine's meta records.
    Meta,
    /// A state-machine table.
    Table(Table),
}

impl Part {
    fn family(self) -> &'static str {
        match self {
            Part::Revisions => CF_KV,
            Part::Meta => CF_META,
            Part::Table(t) => t.family(),
        }
    }
}

impl CheckpointReader {
    /// Calls `f` with each record of `part` in key order. Revisions are those a read can reach:
    /// what a compaction has yet to delete in the background is left out.
    pub fn for_each(
        &self,
        part: Part,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let cf = self
            .db
            .cf_handle(part.family())
            .ok_or_else(|| MvccError::Corrupt(format!("checkpoint without {}", part.family())))?;
        let point = self.compacted_revision()?;
        let done = self
            .get_meta(META_COMPACT_DONE)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, i64::from_be_bytes);
        let mut unsettled = match self.db.cf_handle(CF_INDEX) {
            Some(idx) if part == Part::Revisions && done < point => {
                Some((self.db.raw_iterator_cf(idx), point))
            }
            _ => None,
        };
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item?;
            if let Some((keys, point)) = unsettled.as_mut() {
                let (rev, _) = Revision::from_key(&k)
                    .ok_or_else(|| MvccError::Corrupt(format!("revision key {k:?}")))?;
                let head: RecordHead = decode_record(&v)?;
                if rev.main <= *point && !kept(keys, &head.key, rev, *point)? {
                    continue;
                }
            }
            f(&k, &v)?;
        }
        Ok(())
    }

    /// The revision through which the checkpoint's history is compacted (0: never).
    pub fn compacted_revision(&self) -> Result<i64> {
        Ok(self
            .get_meta(META_COMPACT_REV)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, i64::from_be_bytes))
    }
}

/// Builds an empty store's state from records given part by part (revisions in order).
pub struct Import<'s> {
    store: &'s Store,
    batch: WriteBatch,
    last_revision: i64,
}

impl Store {
    /// Starts importing into this store, which must be empty; see [`Import::finish`].
    pub fn import(&self) -> Import<'_> {
        Import {
            store: self,
            batch: WriteBatch::default(),
            last_revision: 0,
        }
    }
}

impl Import<'_> {
    /// Adds one revision of a key: `key` is etcd's revision key, `value` its `mvccpb.KeyValue`.
    pub fn revision(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let (rev, _) = Revision::from_key(key)
            .ok_or_else(|| MvccError::Corrupt(format!("revision key {key:?}")))?;
        self.last_revision = self.last_revision.max(rev.main);
        self.put(CF_KV, key, value)
    }

    /// Adds a record of a state-machine table, or a meta record.
    pub fn record(&mut self, part: Part, key: &[u8], value: &[u8]) -> Result<()> {
        self.put(part.family(), key, value)
    }

    fn put(&mut self, family: &str, key: &[u8], value: &[u8]) -> Result<()> {
        self.batch.put_cf(self.store.cf(family), key, value);
        if self.batch.len() >= IMPORT_BATCH || self.batch.size_in_bytes() >= IMPORT_BATCH_BYTES {
            self.store.db.write(std::mem::take(&mut self.batch))?;
        }
        Ok(())
    }

    /// Records the compaction point, the applied raft index and the revision (the last one
    /// imported, or the compaction's, if later), then builds the store's key index from what was
    /// imported: the store is current.
    pub fn finish(mut self, compacted: i64, applied_index: u64) -> Result<()> {
        let meta = self.store.cf(CF_META);
        let current = self.last_revision.max(compacted).max(1);
        self.batch
            .put_cf(meta, META_CURRENT_REV, current.to_be_bytes());
        if compacted > 0 {
            self.batch
                .put_cf(meta, META_COMPACT_REV, compacted.to_be_bytes());
        }
        self.batch.put_cf(
            meta,
            META_APPLIED_INDEX,
            (applied_index as i64).to_be_bytes(),
        );
        self.batch.delete_cf(meta, META_INDEX_FORMAT);
        self.store.db.write(std::mem::take(&mut self.batch))?;
        self.store.db.flush_wal(true)?;
        self.store.load()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeySpan, RangeOptions};
    use keel_proto::etcd::PbKeyValue as KeyValue;
    use prost::Message;

    /// An imported history compacted at 10 (etcd's file keeps each key's newest change at or
    /// below it): after the import every key is readable, and stays so once the compaction the
    /// import carries is carried out.
    #[test]
    fn an_imported_compacted_history_keeps_every_live_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut imp = store.import();
        for rev in 2..=14i64 {
            let key = format!("k{:03}", rev % 12).into_bytes();
            let kv = KeyValue {
                key,
                create_revision: rev,
                mod_revision: rev,
                version: 1,
                value: b"v".to_vec(),
                lease: 0,
            };
            if rev > 10 || rev % 12 >= 3 {
                imp.revision(&Revision::new(rev, 0).to_key(false), &kv.encode_to_vec())
                    .unwrap();
            }
        }
        imp.finish(10, 20).unwrap();
        let keys = |store: &Store| -> Vec<String> {
            let all = KeySpan::from_etcd(b"", b"\0");
            let res = store.range(all, &RangeOptions::default()).unwrap();
            res.kvs
                .iter()
                .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
                .collect()
        };
        let before = keys(&store);
        assert_eq!(before.len(), 12, "{before:?}");
        store.wait_compacted();
        assert_eq!(keys(&store), before);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        store.wait_compacted();
        assert_eq!(keys(&store), before);
    }
}

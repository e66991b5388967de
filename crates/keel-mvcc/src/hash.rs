//! Hashes of the store's contents, to compare members (Maintenance.Hash and HashKV): the same
//! applied log gives the same hash on every member.

use rocksdb::{IteratorMode, ReadOptions};

use crate::compaction::kept;
use crate::index;
use crate::snapshot::LOCAL_META_PREFIX;
use crate::store::{
    decode_record, RecordHead, CF_INDEX, CF_KV, CF_META, FAMILIES, META_COMPACT_DONE,
    META_COMPACT_NEXT, META_COMPACT_REV,
};
use crate::{MvccError, Result, Revision, Store};

/// A HashKV answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvHash {
    /// CRC-32 of every readable revision up to the hashed revision (keys and values).
    pub hash: u32,
    /// The revision hashed through.
    pub revision: i64,
    /// The compacted revision at the time.
    pub compact_revision: i64,
}

impl Store {
    /// The hash of the key-value history through `rev` (0 = current), as etcd's HashKV: revisions
    /// at or below the compacted revision cannot be hashed.
    pub fn hash_kv(&self, rev: i64) -> Result<KvHash> {
        let current = self.current_revision();
        let compacted = self.compacted_revision();
        if rev > 0 && rev <= compacted {
            return Err(MvccError::Compacted);
        }
        if rev > current {
            return Err(MvccError::FutureRevision);
        }
        let rev = if rev == 0 { current } else { rev };
        let mut h = crc32fast::Hasher::new();
        h.update(CF_KV.as_bytes());
        self.for_each_readable(rev, |k, v| {
            h.update(k);
            h.update(v);
        })?;
        Ok(KvHash {
            hash: h.finalize(),
            revision: rev,
            compact_revision: compacted,
        })
    }

    /// Calls `f` with every stored revision through `rev` that a read can still reach: what the
    /// background half of a compaction has yet to delete is left out, so that members agree
    /// whatever its progress.
    fn for_each_readable(&self, rev: i64, mut f: impl FnMut(&[u8], &[u8])) -> Result<()> {
        let _gate = self.gate.read();
        let snapshot = self.db.snapshot();
        let meta = |key| -> Result<i64> {
            Ok(snapshot
                .get_cf(self.cf(CF_META), key)?
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map_or(-1, i64::from_be_bytes))
        };
        let (point, done) = (meta(META_COMPACT_REV)?, meta(META_COMPACT_DONE)?);
        // Below this, a revision is checked against the index.
        let unsettled = if done >= point { 0 } else { point };
        let ro = index::read_options(true);
        let mut keys = snapshot.raw_iterator_cf_opt(self.cf(CF_INDEX), ro);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(Revision::new(rev + 1, 0).to_key(false));
        for item in snapshot.iterator_cf_opt(self.cf(CF_KV), ro, IteratorMode::Start) {
            let (k, v) = item?;
            let (r, _) = Revision::from_key(&k)
                .ok_or_else(|| MvccError::Corrupt(format!("revision key {k:?}")))?;
            if r.main <= unsettled {
                let head: RecordHead = decode_record(&v)?;
                if !kept(&mut keys, &head.key, r, unsettled)? {
                    continue;
                }
            }
            f(&k, &v);
        }
        Ok(())
    }

    /// The hash of everything the members replicate, as etcd's Hash: the readable revisions and
    /// every other family but the key index (derived from the revisions; the member's own records
    /// and the compaction's progress left out).
    pub fn hash_all(&self) -> Result<u32> {
        let mut h = crc32fast::Hasher::new();
        h.update(CF_KV.as_bytes());
        self.for_each_readable(self.current_revision(), |k, v| {
            h.update(k);
            h.update(v);
        })?;
        for family in FAMILIES {
            if family == CF_KV || family == CF_INDEX {
                continue;
            }
            h.update(family.as_bytes());
            for item in self.db.iterator_cf(self.cf(family), IteratorMode::Start) {
                let (k, v) = item?;
                let progress = [META_COMPACT_DONE, META_COMPACT_NEXT].contains(&&*k);
                if family == CF_META && (k.starts_with(LOCAL_META_PREFIX) || progress) {
                    continue;
                }
                h.update(&k);
                h.update(&v);
            }
        }
        Ok(h.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeySpan, WriteBatch};

    fn put(s: &Store, key: &[u8], applied: u64) {
        let mut wb = s.write_batch();
        wb.begin();
        wb.put(key, b"v".to_vec(), 0).unwrap();
        wb.end();
        wb.commit(applied).unwrap();
    }

    #[test]
    fn equal_histories_hash_equal_and_revisions_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(&dir.path().join("a")).unwrap();
        let b = Store::open(&dir.path().join("b")).unwrap();
        for (i, k) in [b"x", b"y", b"x"].iter().enumerate() {
            put(&a, *k, i as u64 + 1);
            put(&b, *k, i as u64 + 1);
        }
        assert_eq!(a.hash_kv(0).unwrap(), b.hash_kv(0).unwrap());
        assert_eq!(a.hash_kv(0).unwrap().revision, 4);
        // Through revision 3 the later write does not count.
        put(&b, b"z", 4);
        assert_eq!(a.hash_kv(4).unwrap(), b.hash_kv(4).unwrap());
        assert_ne!(a.hash_kv(0).unwrap().hash, b.hash_kv(0).unwrap().hash);
        assert!(matches!(a.hash_kv(9), Err(MvccError::FutureRevision)));
        let mut wb = a.write_batch();
        wb.compact(3).unwrap();
        wb.commit(5).unwrap();
        assert!(matches!(a.hash_kv(3), Err(MvccError::Compacted)));
        assert!(a.hash_kv(4).is_ok());
    }

    /// A member catching up applies many entries in one batch, a live one few: a delete and a
    /// later compaction in the same batch must leave what they leave in separate batches (seen
    /// in the simulation: a restarted member kept tombstones its peers had compacted away).
    #[test]
    fn compaction_keeps_the_same_whatever_the_batches() {
        let dir = tempfile::tempdir().unwrap();
        let apart = Store::open(&dir.path().join("apart")).unwrap();
        let together = Store::open(&dir.path().join("together")).unwrap();
        put(&apart, b"k", 1);
        put(&together, b"k", 1);
        let steps = |wb: &mut WriteBatch<'_>, step: usize| match step {
            0 => {
                wb.begin();
                wb.delete(KeySpan::Single(b"k")).unwrap();
                wb.end();
            }
            1 => {
                wb.begin();
                wb.put(b"other", b"v".to_vec(), 0).unwrap();
                wb.end();
            }
            _ => wb.compact(3).unwrap(),
        };
        for step in 0..3 {
            let mut wb = apart.write_batch();
            steps(&mut wb, step);
            wb.commit(step as u64 + 2).unwrap();
        }
        let mut wb = together.write_batch();
        for step in 0..3 {
            steps(&mut wb, step);
        }
        wb.commit(4).unwrap();
        assert_eq!(apart.hash_kv(0).unwrap(), together.hash_kv(0).unwrap());
    }
}

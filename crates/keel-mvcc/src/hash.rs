//! Hashes of the store's contents, to compare members (Maintenance.Hash and HashKV): the same
//! applied log gives the same hash on every member.

use rocksdb::{IteratorMode, ReadOptions};

use crate::snapshot::LOCAL_META_PREFIX;
use crate::store::{CF_KV, CF_META, FAMILIES};
use crate::{MvccError, Result, Revision, Store};

/// A HashKV answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvHash {
    /// CRC-32 of every stored revision up to the hashed revision (keys and values).
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
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(Revision::new(rev + 1, 0).to_key(false));
        let mut h = crc32fast::Hasher::new();
        h.update(CF_KV.as_bytes());
        for item in self
            .db
            .iterator_cf_opt(self.cf(CF_KV), ro, IteratorMode::Start)
        {
            let (k, v) = item?;
            h.update(&k);
            h.update(&v);
        }
        Ok(KvHash {
            hash: h.finalize(),
            revision: rev,
            compact_revision: compacted,
        })
    }

    /// The hash of everything the members replicate (every family; the member's own records
    /// excluded), as etcd's Hash.
    pub fn hash_all(&self) -> Result<u32> {
        let mut h = crc32fast::Hasher::new();
        for family in FAMILIES {
            h.update(family.as_bytes());
            for item in self.db.iterator_cf(self.cf(family), IteratorMode::Start) {
                let (k, v) = item?;
                if family == CF_META && k.starts_with(LOCAL_META_PREFIX) {
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
        wb.put(key, b"v".to_vec(), 0);
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
                wb.put(b"other", b"v".to_vec(), 0);
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

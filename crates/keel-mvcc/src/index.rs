//! The key index, kept on disk (family `key_index`) rather than in memory: one small record per
//! change of a key (its creation revision, version, lease, and whether it is a deletion), keyed so
//! that a key's changes sort together, newest first:
//!
//! ```text
//! memcomparable(key) ++ !main (8 bytes, big-endian) ++ !sub (8 bytes, big-endian)
//! ```
//!
//! It answers "which revision of key K is visible at store revision R" with one seek, and a range
//! with one pass in key order, whatever the number of keys: memory no longer grows with the store
//! and start-up no longer rebuilds anything (the design is TiKV's, which keeps MVCC versions as
//! keys; see docs/performance.md, "The key index on disk"). Values stay in the `kv` family, keyed
//! by revision, which watchers, hashes and etcd's snapshot format read in revision order.

use std::collections::BTreeMap;

use prost::encoding::{decode_varint, encode_varint};

use crate::{MvccError, Result, Revision};

/// Bytes after the encoded key: the inverted revision.
const SUFFIX_LEN: usize = 16;
/// Bytes of key per group of the memcomparable encoding, each followed by a marker byte.
const GROUP: usize = 8;
const GROUP_MARKER: u8 = 0xFF;

/// The keys a read covers.
#[derive(Clone, Copy, Debug)]
pub enum KeySpan<'a> {
    /// Exactly one key.
    Single(&'a [u8]),
    /// Keys from `start` (inclusive) to `end` (exclusive), or to the last key when `end` is `None`.
    Range {
        /// First key of the span.
        start: &'a [u8],
        /// Key after the last one, or `None` for no upper bound.
        end: Option<&'a [u8]>,
    },
}

impl<'a> KeySpan<'a> {
    /// etcd's reading of (key, range_end): empty end = one key, "\0" = no upper bound.
    pub fn from_etcd(key: &'a [u8], range_end: &'a [u8]) -> Self {
        match range_end {
            [] => KeySpan::Single(key),
            [0] => KeySpan::Range {
                start: key,
                end: None,
            },
            end => KeySpan::Range {
                start: key,
                end: Some(end),
            },
        }
    }

    /// Whether `key` lies in the span.
    pub fn contains(&self, key: &[u8]) -> bool {
        match *self {
            KeySpan::Single(k) => k == key,
            KeySpan::Range { start, end } => key >= start && end.is_none_or(|e| key < e),
        }
    }
}

/// What the index records of one change of a key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Revision (main) that created the key's generation; 0 for a deletion.
    pub created: i64,
    /// Puts in the generation up to this one; 0 for a deletion.
    pub version: i64,
    /// The lease the value is attached to (0: none).
    pub lease: i64,
    /// Whether the change deleted the key.
    pub tombstone: bool,
    /// Bytes of the stored record (for the live size the space quota counts).
    pub size: i64,
}

impl Entry {
    pub(crate) fn tombstone(size: usize) -> Entry {
        Entry {
            tombstone: true,
            size: size as i64,
            ..Entry::default()
        }
    }

    /// Bytes this change occupies in the store: its record and its index entry, keys included.
    /// The same count is added when it is written and taken off when compaction deletes it.
    pub(crate) fn footprint(&self, key_len: usize) -> u64 {
        let index_key = (key_len / GROUP + 1) * (GROUP + 1) + SUFFIX_LEN;
        (crate::revision::REVISION_LEN + self.size as usize + index_key + 8) as u64
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.tombstone as u8);
        for v in [self.created, self.version, self.lease, self.size] {
            encode_varint(v as u64, out);
        }
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Entry> {
        let corrupt = || MvccError::Corrupt(format!("key index entry {bytes:?}"));
        let (&flags, mut rest) = bytes.split_first().ok_or_else(corrupt)?;
        let mut next = || {
            decode_varint(&mut rest)
                .map(|v| v as i64)
                .map_err(|_| corrupt())
        };
        let entry = Entry {
            tombstone: flags & 1 == 1,
            created: next()?,
            version: next()?,
            lease: next()?,
            size: next()?,
        };
        if !rest.is_empty() {
            return Err(corrupt());
        }
        Ok(entry)
    }
}

/// Appends the memcomparable encoding of `key`: groups of 8 bytes (the last padded with zeros),
/// each followed by 0xFF, or, for the last, by 0xFF minus its padding. Encodings sort as the keys
/// do, and none is a prefix of another, so a key's entries are exactly those under its encoding.
pub(crate) fn encode_key(key: &[u8], out: &mut Vec<u8>) {
    out.reserve((key.len() / GROUP + 1) * (GROUP + 1) + SUFFIX_LEN);
    let mut chunks = key.chunks_exact(GROUP);
    for group in &mut chunks {
        out.extend_from_slice(group);
        out.push(GROUP_MARKER);
    }
    let rest = chunks.remainder();
    let pad = GROUP - rest.len();
    out.extend_from_slice(rest);
    out.extend(std::iter::repeat_n(0, pad));
    out.push(GROUP_MARKER - pad as u8);
}

/// Decodes a memcomparable key encoding (without the revision suffix).
pub(crate) fn decode_key(encoded: &[u8]) -> Result<Vec<u8>> {
    let corrupt = || MvccError::Corrupt(format!("key index key {encoded:?}"));
    let mut key = Vec::with_capacity(encoded.len());
    let groups = encoded.len() / (GROUP + 1);
    if groups == 0 || !encoded.len().is_multiple_of(GROUP + 1) {
        return Err(corrupt());
    }
    for (i, group) in encoded.chunks_exact(GROUP + 1).enumerate() {
        let (bytes, marker) = (&group[..GROUP], group[GROUP]);
        let last = i + 1 == groups;
        match (marker == GROUP_MARKER, last) {
            (true, false) => key.extend_from_slice(bytes),
            (false, true) if usize::from(GROUP_MARKER - marker) <= GROUP => {
                key.extend_from_slice(&bytes[..GROUP - usize::from(GROUP_MARKER - marker)]);
            }
            _ => return Err(corrupt()),
        }
    }
    Ok(key)
}

fn push_revision(rev: Revision, out: &mut Vec<u8>) {
    out.extend_from_slice(&(!(rev.main as u64)).to_be_bytes());
    out.extend_from_slice(&(!(rev.sub as u64)).to_be_bytes());
}

/// The index key of `key`'s change at `rev`.
pub(crate) fn index_key(key: &[u8], rev: Revision) -> Vec<u8> {
    let mut out = Vec::new();
    encode_key(key, &mut out);
    push_revision(rev, &mut out);
    out
}

/// Where `key`'s newest change at or below store revision `at` is, or the next key's first.
fn seek_target(encoded_key: &[u8], at: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_key.len() + SUFFIX_LEN);
    out.extend_from_slice(encoded_key);
    push_revision(Revision::new(at, i64::MAX), &mut out);
    out
}

/// Past every change of the key encoded as `encoded_key` (revisions start at 1, so no entry's
/// suffix is all 0xFF).
fn past_key(encoded_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_key.len() + SUFFIX_LEN);
    out.extend_from_slice(encoded_key);
    out.extend_from_slice(&[0xFF; SUFFIX_LEN]);
    out
}

/// The index family's prefix extractor: an entry's encoded key. Its bloom filters then let a
/// lookup of one key skip every file that has none of its changes (a new key's put, most of all).
pub(crate) fn prefix_extractor() -> rocksdb::SliceTransform {
    fn encoded_key(index_key: &[u8]) -> &[u8] {
        &index_key[..index_key.len() - SUFFIX_LEN]
    }
    fn has_revision(key: &[u8]) -> bool {
        key.len() > SUFFIX_LEN + GROUP
    }
    rocksdb::SliceTransform::create("keel.encoded_key", encoded_key, Some(has_revision))
}

/// How the index is read: the changes of one key (prefix filters used, the iterator ends with
/// the key), or keys in order across keys.
pub(crate) fn read_options(one_key: bool) -> rocksdb::ReadOptions {
    let mut ro = rocksdb::ReadOptions::default();
    if one_key {
        ro.set_prefix_same_as_start(true);
    } else {
        ro.set_total_order_seek(true);
    }
    ro
}

/// Splits an index key into the encoded key and the revision.
pub(crate) fn split(index_key: &[u8]) -> Result<(&[u8], Revision)> {
    if index_key.len() < SUFFIX_LEN + GROUP + 1 {
        return Err(MvccError::Corrupt(format!("key index key {index_key:?}")));
    }
    let (key, suffix) = index_key.split_at(index_key.len() - SUFFIX_LEN);
    let word = |b: &[u8]| !u64::from_be_bytes(b.try_into().expect("8 bytes")) as i64;
    Ok((key, Revision::new(word(&suffix[..8]), word(&suffix[8..]))))
}

/// A position in the index, in index-key order.
pub(crate) trait Cursor {
    fn seek(&mut self, target: &[u8]);
    fn next(&mut self);
    /// The index key here; None past the end.
    fn key(&self) -> Option<&[u8]>;
    /// The entry here (only when `key` is Some).
    fn entry(&self) -> Result<Entry>;
    /// RocksDB's error, if iterating failed.
    fn status(&self) -> Result<()>;
}

impl<D: rocksdb::DBAccess> Cursor for rocksdb::DBRawIteratorWithThreadMode<'_, D> {
    fn seek(&mut self, target: &[u8]) {
        rocksdb::DBRawIteratorWithThreadMode::seek(self, target)
    }

    fn next(&mut self) {
        rocksdb::DBRawIteratorWithThreadMode::next(self)
    }

    fn key(&self) -> Option<&[u8]> {
        rocksdb::DBRawIteratorWithThreadMode::key(self)
    }

    fn entry(&self) -> Result<Entry> {
        Entry::decode(self.value().unwrap_or_default())
    }

    fn status(&self) -> Result<()> {
        Ok(rocksdb::DBRawIteratorWithThreadMode::status(self)?)
    }
}

impl<C: Cursor + ?Sized> Cursor for &mut C {
    fn seek(&mut self, target: &[u8]) {
        (**self).seek(target)
    }

    fn next(&mut self) {
        (**self).next()
    }

    fn key(&self) -> Option<&[u8]> {
        (**self).key()
    }

    fn entry(&self) -> Result<Entry> {
        (**self).entry()
    }

    fn status(&self) -> Result<()> {
        (**self).status()
    }
}

/// The committed index under a write batch's own changes (which all have newer revisions).
pub(crate) struct Overlaid<'a, C> {
    below: C,
    over: &'a BTreeMap<Vec<u8>, Entry>,
    here: Option<(&'a Vec<u8>, &'a Entry)>,
    rest: std::collections::btree_map::Range<'a, Vec<u8>, Entry>,
}

impl<'a, C: Cursor> Overlaid<'a, C> {
    pub(crate) fn new(below: C, over: &'a BTreeMap<Vec<u8>, Entry>) -> Self {
        let mut rest = over.range::<Vec<u8>, _>(..);
        let here = rest.next();
        Overlaid {
            below,
            over,
            here,
            rest,
        }
    }

    /// Whether the overlay's entry comes first here.
    fn over_first(&self) -> bool {
        match (self.here, self.below.key()) {
            (Some((k, _)), Some(b)) => k.as_slice() < b,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

impl<C: Cursor> Cursor for Overlaid<'_, C> {
    fn seek(&mut self, target: &[u8]) {
        self.below.seek(target);
        self.rest = self.over.range::<[u8], _>((
            std::ops::Bound::Included(target),
            std::ops::Bound::Unbounded,
        ));
        self.here = self.rest.next();
    }

    fn next(&mut self) {
        if self.over_first() {
            self.here = self.rest.next();
        } else {
            self.below.next();
        }
    }

    fn key(&self) -> Option<&[u8]> {
        if self.over_first() {
            self.here.map(|(k, _)| k.as_slice())
        } else {
            self.below.key()
        }
    }

    fn entry(&self) -> Result<Entry> {
        match self.here {
            Some((_, e)) if self.over_first() => Ok(*e),
            _ => self.below.entry(),
        }
    }

    fn status(&self) -> Result<()> {
        self.below.status()
    }
}

/// A key's change as found in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Found {
    pub rev: Revision,
    pub entry: Entry,
}

/// The newest change of `key` at or below `at` (a deletion included), if any.
pub(crate) fn newest_at(c: &mut impl Cursor, key: &[u8], at: i64) -> Result<Option<Found>> {
    // One buffer: the encoded key, then the revision to seek to (the apply path's lookup).
    let mut target = Vec::new();
    encode_key(key, &mut target);
    let encoded_len = target.len();
    push_revision(Revision::new(at, i64::MAX), &mut target);
    c.seek(&target);
    let found = match c.key() {
        Some(k) => {
            let (k, rev) = split(k)?;
            (k == &target[..encoded_len]).then_some(rev)
        }
        None => None,
    };
    c.status()?;
    found
        .map(|rev| {
            Ok(Found {
                rev,
                entry: c.entry()?,
            })
        })
        .transpose()
}

/// How many changes of a key to step over one by one before seeking past the rest: most keys
/// have one or two, and a step is cheaper than a seek.
const STEPS_BEFORE_SEEK: usize = 4;

/// Visits the keys of `span` alive at `at`, in key order, with their visible change, until `f`
/// returns false. `f` gets the encoded key (see [`decode_key`]).
pub(crate) fn visit(
    c: &mut impl Cursor,
    span: KeySpan<'_>,
    at: i64,
    mut f: impl FnMut(&[u8], Found) -> Result<bool>,
) -> Result<()> {
    let (start, end) = match span {
        KeySpan::Single(key) => {
            if let Some(found) = newest_at(c, key, at)?.filter(|f| !f.entry.tombstone) {
                let mut encoded = Vec::new();
                encode_key(key, &mut encoded);
                f(&encoded, found)?;
            }
            return Ok(());
        }
        KeySpan::Range { start, end } => (start, end),
    };
    if end.is_some_and(|e| e <= start) {
        return Ok(());
    }
    let end = end.map(|e| {
        let mut out = Vec::new();
        encode_key(e, &mut out);
        out
    });
    let mut encoded = Vec::new();
    encode_key(start, &mut encoded);
    c.seek(&encoded);
    // The key whose visible change was handled (empty before the first: no encoding is), its
    // older changes skipped; one buffer for the whole pass.
    let mut done: Vec<u8> = Vec::new();
    let mut steps = 0;
    while let Some(k) = c.key() {
        let (key, rev) = split(k)?;
        if end.as_deref().is_some_and(|e| key >= e) {
            break;
        }
        if done == key {
            steps += 1;
            if steps < STEPS_BEFORE_SEEK {
                c.next();
            } else {
                let target = past_key(key);
                c.seek(&target);
            }
            continue;
        }
        if rev.main > at {
            // Newer than the read: go straight to the change visible at `at`.
            let target = seek_target(key, at);
            c.seek(&target);
            continue;
        }
        let entry = c.entry()?;
        if !entry.tombstone && !f(key, Found { rev, entry })? {
            return c.status();
        }
        done.clear();
        done.extend_from_slice(key);
        steps = 0;
        c.next();
    }
    c.status()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An index held in a map, as a write batch's overlay is.
    fn cursor(entries: &BTreeMap<Vec<u8>, Entry>) -> Overlaid<'_, Empty> {
        Overlaid::new(Empty, entries)
    }

    struct Empty;
    impl Cursor for Empty {
        fn seek(&mut self, _: &[u8]) {}
        fn next(&mut self) {}
        fn key(&self) -> Option<&[u8]> {
            None
        }
        fn entry(&self) -> Result<Entry> {
            unreachable!("an empty cursor has no entry")
        }
        fn status(&self) -> Result<()> {
            Ok(())
        }
    }

    fn put(map: &mut BTreeMap<Vec<u8>, Entry>, key: &str, main: i64, created: i64, version: i64) {
        let e = Entry {
            created,
            version,
            ..Entry::default()
        };
        map.insert(index_key(key.as_bytes(), Revision::new(main, 0)), e);
    }

    fn del(map: &mut BTreeMap<Vec<u8>, Entry>, key: &str, main: i64) {
        map.insert(
            index_key(key.as_bytes(), Revision::new(main, 0)),
            Entry::tombstone(0),
        );
    }

    fn seen(map: &BTreeMap<Vec<u8>, Entry>, span: KeySpan<'_>, at: i64) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        visit(&mut cursor(map), span, at, |k, found| {
            out.push((String::from_utf8(decode_key(k)?).unwrap(), found.rev.main));
            Ok(true)
        })
        .unwrap();
        out
    }

    #[test]
    fn encoded_keys_sort_as_keys_and_round_trip() {
        let keys: Vec<&[u8]> = vec![
            b"",
            b"\0",
            b"a",
            b"a\0",
            b"abcdefg",
            b"abcdefgh",
            b"abcdefgh\0",
            b"abcdefghi",
            b"b",
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        ];
        let encoded: Vec<Vec<u8>> = keys
            .iter()
            .map(|k| {
                let mut out = Vec::new();
                encode_key(k, &mut out);
                out
            })
            .collect();
        for (k, e) in keys.iter().zip(&encoded) {
            assert_eq!(decode_key(e).unwrap(), *k);
        }
        assert!(encoded.windows(2).all(|w| w[0] < w[1]), "{encoded:?}");
        // No encoding is a prefix of another's: a key's entries are exactly those under it.
        for a in &encoded {
            for b in &encoded {
                assert!(a == b || !b.starts_with(a));
            }
        }
        assert!(decode_key(b"abc").is_err());
    }

    #[test]
    fn entries_round_trip_and_refuse_garbage() {
        let e = Entry {
            created: 5,
            version: 300,
            lease: 0x7fff_0000_1234,
            tombstone: false,
            size: 300,
        };
        let mut buf = Vec::new();
        e.encode(&mut buf);
        assert_eq!(Entry::decode(&buf).unwrap(), e);
        buf.clear();
        Entry::tombstone(9).encode(&mut buf);
        assert_eq!(Entry::decode(&buf).unwrap(), Entry::tombstone(9));
        buf.push(1);
        assert!(Entry::decode(&buf).is_err());
        assert!(Entry::decode(&[]).is_err());
    }

    #[test]
    fn a_read_sees_each_key_as_it_was_at_its_revision() {
        let mut m = BTreeMap::new();
        put(&mut m, "a", 2, 2, 1);
        put(&mut m, "a", 4, 2, 2);
        del(&mut m, "a", 6);
        put(&mut m, "a", 8, 8, 1);
        for (i, k) in ["b", "c", "d"].iter().enumerate() {
            put(&mut m, k, 3 + i as i64, 3 + i as i64, 1);
        }
        let all = KeySpan::from_etcd(b"", b"\0");
        assert_eq!(seen(&m, all, 1), vec![]);
        assert_eq!(seen(&m, all, 3), vec![("a".into(), 2), ("b".into(), 3)]);
        assert_eq!(seen(&m, all, 5)[0], ("a".into(), 4));
        assert_eq!(seen(&m, all, 6).len(), 3, "a is deleted at 6");
        assert_eq!(seen(&m, all, 9)[0], ("a".into(), 8));
        assert_eq!(
            seen(&m, KeySpan::from_etcd(b"b", b"d"), 9),
            vec![("b".into(), 3), ("c".into(), 4)]
        );
        assert_eq!(seen(&m, KeySpan::from_etcd(b"d", b"b"), 9), vec![]);
        assert_eq!(seen(&m, KeySpan::Single(b"a"), 7), vec![]);
        assert_eq!(seen(&m, KeySpan::Single(b"a"), 5), vec![("a".into(), 4)]);
        let newest = newest_at(&mut cursor(&m), b"a", 7).unwrap().unwrap();
        assert!(newest.entry.tombstone);
        assert_eq!(newest_at(&mut cursor(&m), b"zz", 9).unwrap(), None);
    }

    #[test]
    fn a_key_with_many_changes_is_skipped_by_seeking() {
        let mut m = BTreeMap::new();
        for v in 1..=50 {
            put(&mut m, "hot", v + 1, 2, v);
        }
        put(&mut m, "later", 60, 60, 1);
        let all = KeySpan::from_etcd(b"", b"\0");
        assert_eq!(
            seen(&m, all, 61),
            vec![("hot".into(), 51), ("later".into(), 60)]
        );
        assert_eq!(seen(&m, all, 30), vec![("hot".into(), 30)]);
    }
}

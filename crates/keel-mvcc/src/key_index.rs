//! The in-memory key index: for every key, the revisions at which it changed, grouped in generations
//! (a generation runs from a key's creation to its deletion). It answers "which revision of key K is
//! visible at store revision R" without touching disk. It holds revisions only, never values.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;

use smallvec::SmallVec;

use crate::Revision;

/// What the index knows of one key as visible at some revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyAt {
    /// Revision of the change that wrote the visible value.
    pub modified: Revision,
    /// Revision that created the key (first put of its generation).
    pub created: Revision,
    /// Number of puts in the generation up to and including `modified`.
    pub version: i64,
}

/// One life of a key: the puts from creation on, and, if it has ended, the tombstone as last entry.
#[derive(Clone, Debug, Default)]
struct Generation {
    created: Revision,
    version: i64,
    revs: Vec<Revision>,
}

/// All generations of one key. The last generation is the live one; it is empty while the key is
/// deleted. Every earlier generation ends with its tombstone.
///
/// Most keys are written once and never deleted: their history is that one revision, inline (a
/// million such keys take ~100 MiB less than with a generation list each).
#[derive(Clone, Debug)]
enum KeyHistory {
    /// Created at this revision, not changed since.
    Once(Revision),
    /// Anything else.
    Generations(Vec<Generation>),
}

impl KeyHistory {
    /// The history as a generation list, converting a written-once key.
    fn generations_mut(&mut self) -> &mut Vec<Generation> {
        if let KeyHistory::Once(rev) = *self {
            *self = KeyHistory::Generations(vec![Generation {
                created: rev,
                version: 1,
                revs: vec![rev],
            }]);
        }
        match self {
            KeyHistory::Generations(g) => g,
            KeyHistory::Once(_) => unreachable!("converted above"),
        }
    }

    fn live_mut(&mut self) -> &mut Generation {
        // A history always has at least one generation (constructed so, never emptied).
        self.generations_mut()
            .last_mut()
            .expect("key history has a generation")
    }

    /// Appends a put to the live generation; returns the key as it leaves it.
    fn put(&mut self, rev: Revision) -> KeyAt {
        let g = self.live_mut();
        if g.revs.is_empty() {
            g.created = rev;
        }
        g.revs.push(rev);
        g.version += 1;
        KeyAt {
            modified: rev,
            created: g.created,
            version: g.version,
        }
    }

    /// The live generation's state; None while the key is deleted.
    fn live(&self) -> Option<KeyAt> {
        match self {
            KeyHistory::Once(rev) => Some(KeyAt::once(*rev)),
            KeyHistory::Generations(gens) => {
                let g = gens.last()?;
                Some(KeyAt {
                    modified: *g.revs.last()?,
                    created: g.created,
                    version: g.version,
                })
            }
        }
    }

    fn at(&self, at: i64) -> Option<KeyAt> {
        let gens = match self {
            KeyHistory::Once(rev) => return (rev.main <= at).then(|| KeyAt::once(*rev)),
            KeyHistory::Generations(gens) => gens,
        };
        let last = gens.len() - 1;
        for (i, g) in gens.iter().enumerate().rev() {
            let Some(first) = g.revs.first() else {
                continue;
            };
            if first.main > at {
                continue;
            }
            // An ended generation whose tombstone is at or before `at`: the key is deleted at `at`.
            if i != last && g.revs[g.revs.len() - 1].main <= at {
                return None;
            }
            let n = g.revs.iter().rposition(|r| r.main <= at)?;
            let newer = (g.revs.len() - 1 - n) as i64;
            return Some(KeyAt {
                modified: g.revs[n],
                created: g.created,
                version: g.version - newer,
            });
        }
        None
    }

    /// Drops what no read at or after `at` can see; records in `keep` the revisions at or below `at`
    /// that stay readable. Returns false when nothing of the key remains.
    fn compact(&mut self, at: i64, keep: &mut HashSet<Revision>) -> bool {
        let gens = match self {
            KeyHistory::Once(rev) => {
                if rev.main <= at {
                    keep.insert(*rev);
                }
                return true;
            }
            KeyHistory::Generations(gens) => gens,
        };
        let last = gens.len() - 1;
        let ended_before = gens[..last]
            .iter()
            .take_while(|g| g.revs.last().is_some_and(|t| t.main <= at))
            .count();
        gens.drain(..ended_before);
        let g = &mut gens[0];
        if let Some(n) = g.revs.iter().rposition(|r| r.main <= at) {
            keep.insert(g.revs[n]);
            g.revs.drain(..n);
        }
        if gens.len() == 1 && gens[0].revs.is_empty() {
            return false;
        }
        // What compaction leaves of a key written once and never deleted since goes back inline.
        if let [g] = &gens[..] {
            if let [rev] = g.revs[..] {
                if g.created == rev && g.version == 1 {
                    *self = KeyHistory::Once(rev);
                }
            }
        }
        true
    }
}

impl KeyAt {
    fn once(rev: Revision) -> Self {
        KeyAt {
            modified: rev,
            created: rev,
            version: 1,
        }
    }
}

/// The index of every key in the store.
#[derive(Debug, Default)]
pub struct KeyIndex {
    keys: BTreeMap<Key, KeyHistory>,
    /// Keys whose latest generation is alive (etcd's `etcd_debugging_mvcc_keys_total`).
    live: usize,
}

/// A key in the index; keys of up to 16 bytes are held inline.
type Key = SmallVec<[u8; 16]>;

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

impl KeyIndex {
    /// Records a put of `key` at `rev`; returns the key as the put leaves it (its creation and
    /// version are the new value's), so that the apply path looks the key up once.
    pub fn put(&mut self, key: &[u8], rev: Revision) -> KeyAt {
        let at = match self.keys.get_mut(key) {
            Some(h) => h.put(rev),
            None => {
                self.keys
                    .insert(Key::from_slice(key), KeyHistory::Once(rev));
                KeyAt::once(rev)
            }
        };
        // A first version begins a generation: the key came alive.
        if at.version == 1 {
            self.live += 1;
        }
        at
    }

    /// Records a put found on disk at start-up. Compaction may have removed the start of its
    /// generation, so its creation and version come from the stored record, not from counting.
    pub fn restore_put(&mut self, key: &[u8], rev: Revision, create_revision: i64, version: i64) {
        // One lookup: at start-up most keys are new (`put` looks up first, for the apply path,
        // where most are not and a key longer than the inline size would be copied for nothing).
        let h = match self.keys.entry(Key::from_slice(key)) {
            Entry::Vacant(v) => {
                self.live += 1;
                v.insert(KeyHistory::Once(rev))
            }
            Entry::Occupied(o) => {
                let h = o.into_mut();
                if h.live().is_none() {
                    self.live += 1;
                }
                h.put(rev);
                h
            }
        };
        if let KeyHistory::Once(r) = h {
            if r.main == create_revision && version == 1 {
                return;
            }
        }
        let g = h.live_mut();
        g.created = Revision::new(create_revision, g.created.sub);
        g.version = version;
    }

    /// Records the deletion of a live `key` at `rev`; returns false (and changes nothing) when the
    /// key is not live.
    pub fn tombstone(&mut self, key: &[u8], rev: Revision) -> bool {
        let Some(h) = self.keys.get_mut(key) else {
            return false;
        };
        if h.live().is_none() {
            return false;
        }
        h.put(rev);
        h.generations_mut().push(Generation::default());
        self.live -= 1;
        true
    }

    /// The live state of `key` (its latest generation), for computing the next put's metadata.
    pub fn live(&self, key: &[u8]) -> Option<KeyAt> {
        self.keys.get(key)?.live()
    }

    /// The key as visible at store revision `at`.
    pub fn get(&self, key: &[u8], at: i64) -> Option<KeyAt> {
        self.keys.get(key)?.at(at)
    }

    /// Visits the keys of `span` visible at `at`, in key order, until `f` returns false.
    pub fn visit(&self, span: KeySpan<'_>, at: i64, mut f: impl FnMut(&[u8], KeyAt) -> bool) {
        match span {
            KeySpan::Single(key) => {
                if let Some(k) = self.get(key, at) {
                    f(key, k);
                }
            }
            KeySpan::Range { start, end } => {
                if end.is_some_and(|e| e <= start) {
                    return;
                }
                let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
                let range = self.keys.range::<[u8], _>((Bound::Included(start), upper));
                for (key, h) in range {
                    if let Some(k) = h.at(at) {
                        if !f(key, k) {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Compacts every key's history at `at`; returns the revisions at or below `at` that stay readable.
    pub fn compact(&mut self, at: i64) -> HashSet<Revision> {
        let mut keep = HashSet::new();
        self.keys.retain(|_, h| h.compact(at, &mut keep));
        keep
    }

    /// Number of keys with any history.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Number of keys that exist now (not deleted).
    pub fn live_keys(&self) -> usize {
        self.live
    }

    /// Whether the index has no key at all.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    #[test]
    fn a_put_returns_the_creation_and_version_of_its_value() {
        let mut idx = KeyIndex::default();
        assert_eq!(idx.put(b"a", r(2)), KeyAt::once(r(2)));
        let second = idx.put(b"a", r(3));
        assert_eq!(
            (second.modified, second.created, second.version),
            (r(3), r(2), 2)
        );
        assert!(idx.tombstone(b"a", r(4)));
        // A put after a delete starts a new generation: created anew, version 1.
        let reborn = idx.put(b"a", r(5));
        assert_eq!(
            (reborn.modified, reborn.created, reborn.version),
            (r(5), r(5), 1)
        );
        let latest = idx.put(b"a", r(6));
        assert_eq!(latest.version, 2);
        assert_eq!(idx.live(b"a"), Some(latest));
    }

    #[test]
    fn live_keys_count_puts_and_deletes() {
        let mut idx = KeyIndex::default();
        idx.put(b"a", r(2));
        idx.put(b"a", r(3));
        idx.put(b"b", r(4));
        assert_eq!(idx.live_keys(), 2);
        assert!(idx.tombstone(b"a", r(5)));
        assert!(!idx.tombstone(b"a", r(6)));
        assert_eq!(idx.live_keys(), 1);
        idx.put(b"a", r(7));
        idx.restore_put(b"c", r(8), 8, 1);
        assert_eq!(idx.live_keys(), 3);
        idx.compact(7);
        assert_eq!(idx.live_keys(), 3);
    }

    #[test]
    fn visible_revision_follows_puts_and_deletes() {
        let mut idx = KeyIndex::default();
        idx.put(b"a", r(2));
        idx.put(b"a", r(4));
        assert!(idx.tombstone(b"a", r(6)));
        idx.put(b"a", r(8));

        assert_eq!(idx.get(b"a", 1), None);
        assert_eq!(
            idx.get(b"a", 3),
            Some(KeyAt {
                modified: r(2),
                created: r(2),
                version: 1
            })
        );
        assert_eq!(
            idx.get(b"a", 5),
            Some(KeyAt {
                modified: r(4),
                created: r(2),
                version: 2
            })
        );
        assert_eq!(idx.get(b"a", 6), None);
        assert_eq!(idx.get(b"a", 7), None);
        assert_eq!(
            idx.get(b"a", 9),
            Some(KeyAt {
                modified: r(8),
                created: r(8),
                version: 1
            })
        );
        assert!(!idx.tombstone(b"missing", r(10)));
        assert_eq!(
            idx.live_keys(),
            idx.keys.values().filter(|h| h.live().is_some()).count()
        );
    }

    #[test]
    fn compaction_keeps_what_later_reads_see() {
        let mut idx = KeyIndex::default();
        idx.put(b"a", r(2));
        idx.put(b"a", r(3));
        idx.put(b"b", r(4));
        idx.tombstone(b"b", r(5));
        idx.put(b"c", r(6));
        let keep = idx.compact(5);
        // a@3 is still visible at 5; a@2 is not. b is deleted at 5: nothing of it stays. c is newer.
        assert_eq!(keep, HashSet::from([r(3)]));
        assert_eq!(idx.get(b"a", 5).map(|k| k.modified), Some(r(3)));
        assert_eq!(idx.get(b"a", 5).map(|k| k.version), Some(2));
        assert_eq!(idx.get(b"b", 5), None);
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.get(b"c", 6).map(|k| k.modified), Some(r(6)));
    }

    #[test]
    fn range_visits_keys_in_order_at_revision() {
        let mut idx = KeyIndex::default();
        for (i, k) in [b"a", b"b", b"c", b"d"].iter().enumerate() {
            idx.put(*k, r(i as i64 + 1));
        }
        let mut seen = vec![];
        idx.visit(KeySpan::from_etcd(b"b", b"d"), 10, |k, _| {
            seen.push(k.to_vec());
            true
        });
        assert_eq!(seen, vec![b"b".to_vec(), b"c".to_vec()]);
        seen.clear();
        idx.visit(KeySpan::from_etcd(b"b", b"\0"), 2, |k, _| {
            seen.push(k.to_vec());
            true
        });
        assert_eq!(seen, vec![b"b".to_vec()]);
        seen.clear();
        idx.visit(KeySpan::from_etcd(b"d", b"b"), 10, |k, _| {
            seen.push(k.to_vec());
            true
        });
        assert!(seen.is_empty());
    }
}

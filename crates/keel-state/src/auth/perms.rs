//! One user's key permissions, merged from all its roles into disjoint intervals so that a check is
//! one binary search: a request for a key range is allowed when a single merged interval covers it
//! (etcd checks the same with its interval tree's "contains").

use keel_proto::PermissionRecord;

/// etcd's authpb.Permission.Type.
pub const READ: i32 = 0;
/// WRITE.
pub const WRITE: i32 = 1;
/// READWRITE.
pub const READWRITE: i32 = 2;

/// A half-open key interval; no end = every key from the start.
type Interval = (Vec<u8>, Option<Vec<u8>>);

/// The keys a request or a permission names, as etcd reads `key` and `range_end`: no range end
/// is the key alone, a zero byte is every key from `key` on.
fn interval(key: &[u8], range_end: &[u8]) -> Option<Interval> {
    match range_end {
        [] => {
            let mut end = key.to_vec();
            end.push(0);
            Some((key.to_vec(), Some(end)))
        }
        [0] => Some((key.to_vec(), None)),
        end if end > key => Some((key.to_vec(), Some(end.to_vec()))),
        _ => None,
    }
}

/// Whether a permission may be granted (etcd 3.5's check): a known type, a key, and a range end
/// (if any) after the key or a zero byte.
pub fn is_valid(p: &PermissionRecord) -> bool {
    (READ..=READWRITE).contains(&p.perm_type)
        && !p.key.is_empty()
        && interval(&p.key, &p.range_end).is_some()
}

/// Sorted, disjoint, non-adjacent intervals.
#[derive(Debug, Default, Clone)]
struct Intervals(Vec<Interval>);

impl Intervals {
    fn merge(mut list: Vec<Interval>) -> Intervals {
        list.sort();
        let mut merged: Vec<Interval> = Vec::with_capacity(list.len());
        for (start, end) in list {
            if let Some(last) = merged.last_mut() {
                let overlaps = match &last.1 {
                    None => true,
                    Some(last_end) => start <= *last_end,
                };
                if overlaps {
                    last.1 = match (last.1.take(), end) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        _ => None,
                    };
                    continue;
                }
            }
            merged.push((start, end));
        }
        Intervals(merged)
    }

    /// Whether one interval holds all of `[start, end)`.
    fn covers(&self, (start, end): &Interval) -> bool {
        let i = self.0.partition_point(|(s, _)| s <= start);
        let Some((_, have_end)) = i.checked_sub(1).map(|i| &self.0[i]) else {
            return false;
        };
        match (have_end, end) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(have), Some(want)) => want <= have,
        }
    }
}

/// What one user may read and write.
#[derive(Debug, Default, Clone)]
pub struct Permissions {
    read: Intervals,
    write: Intervals,
}

impl Permissions {
    /// The union of `perms`.
    pub fn merge<'a>(perms: impl IntoIterator<Item = &'a PermissionRecord>) -> Permissions {
        let (mut read, mut write) = (Vec::new(), Vec::new());
        for p in perms {
            let Some(ivl) = interval(&p.key, &p.range_end) else {
                continue;
            };
            if p.perm_type == READ || p.perm_type == READWRITE {
                read.push(ivl.clone());
            }
            if p.perm_type == WRITE || p.perm_type == READWRITE {
                write.push(ivl);
            }
        }
        Permissions {
            read: Intervals::merge(read),
            write: Intervals::merge(write),
        }
    }

    /// Whether every key of `key`..`range_end` may be read.
    pub fn can_read(&self, key: &[u8], range_end: &[u8]) -> bool {
        Self::allows(&self.read, key, range_end)
    }

    /// Whether every key of `key`..`range_end` may be written.
    pub fn can_write(&self, key: &[u8], range_end: &[u8]) -> bool {
        Self::allows(&self.write, key, range_end)
    }

    fn allows(set: &Intervals, key: &[u8], range_end: &[u8]) -> bool {
        // A range that ends before it starts names no key but `key` itself.
        let want = interval(key, range_end).or_else(|| interval(key, &[]));
        want.is_some_and(|w| set.covers(&w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(t: i32, key: &str, end: &[u8]) -> PermissionRecord {
        PermissionRecord {
            perm_type: t,
            key: key.as_bytes().to_vec(),
            range_end: end.to_vec(),
        }
    }

    #[test]
    fn a_key_permission_allows_that_key_only() {
        let p = Permissions::merge(&[perm(READ, "a", b"")]);
        assert!(p.can_read(b"a", b""));
        assert!(!p.can_read(b"a0", b""));
        assert!(!p.can_read(b"a", b"b"), "a range wider than the key");
        assert!(!p.can_write(b"a", b""), "read does not grant write");
    }

    #[test]
    fn ranges_must_be_covered_whole() {
        let p = Permissions::merge(&[perm(READWRITE, "b", b"d")]);
        assert!(p.can_read(b"b", b"d"));
        assert!(p.can_write(b"c", b""));
        assert!(p.can_read(b"b", b"c"));
        assert!(!p.can_read(b"a", b"c"), "starts before the permission");
        assert!(!p.can_read(b"c", b"e"), "ends after it");
        assert!(!p.can_read(b"c", &[0]), "open-ended");
        assert!(!p.can_read(b"d", b""), "the end is exclusive");
    }

    #[test]
    fn overlapping_and_adjacent_grants_merge() {
        let p = Permissions::merge(&[
            perm(READ, "a", b"c"),
            perm(READWRITE, "c", b"e"),
            perm(READ, "d", b"f"),
            perm(WRITE, "x", &[0]),
        ]);
        assert!(p.can_read(b"a", b"f"));
        assert!(!p.can_write(b"a", b"d"));
        assert!(p.can_write(b"c", b"e"));
        assert!(p.can_write(b"x", &[0]));
        assert!(p.can_write(b"zzz", b""));
        assert!(!p.can_write(b"w", b""));
    }

    #[test]
    fn invalid_grants_are_recognized() {
        assert!(is_valid(&perm(READ, "a", b"b")));
        assert!(is_valid(&perm(WRITE, "a", b"")));
        assert!(is_valid(&perm(READWRITE, "a", &[0])));
        assert!(!is_valid(&perm(READ, "b", b"a")), "ends before it starts");
        assert!(!is_valid(&perm(READ, "", b"a")), "no key");
        assert!(!is_valid(&perm(7, "a", b"")), "unknown type");
    }

    #[test]
    fn open_ended_permission_covers_everything_after() {
        let p = Permissions::merge(&[perm(READ, "", &[0])]);
        assert!(p.can_read(&[0], &[0]), "etcdctl get \"\" --prefix");
        assert!(p.can_read(b"anything", b""));
        assert!(!Permissions::default().can_read(b"a", b""));
    }
}

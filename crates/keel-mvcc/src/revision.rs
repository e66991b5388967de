//! A revision names one change: `main` is the store revision of the write transaction, `sub` orders the
//! changes inside it. Its byte encoding is the RocksDB key of the change, so keys sort by revision.

/// Revision of one change: (main, sub).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    /// The store revision of the transaction that made the change.
    pub main: i64,
    /// The position of the change inside that transaction.
    pub sub: i64,
}

/// Length of an encoded revision: 8 bytes main, `_`, 8 bytes sub (etcd's layout).
pub const REVISION_LEN: usize = 17;
/// Marker byte appended to the key of a deletion (tombstone).
const TOMBSTONE: u8 = b't';

impl Revision {
    /// A revision at the given main and sub.
    pub fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }

    /// The storage key of a change at this revision; tombstones carry a trailing marker.
    pub fn to_key(self, tombstone: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(REVISION_LEN + 1);
        out.extend_from_slice(&self.main.to_be_bytes());
        out.push(b'_');
        out.extend_from_slice(&self.sub.to_be_bytes());
        if tombstone {
            out.push(TOMBSTONE);
        }
        out
    }

    /// Decodes a storage key into its revision and whether it is a tombstone.
    pub fn from_key(key: &[u8]) -> Option<(Revision, bool)> {
        if key.len() < REVISION_LEN || key[8] != b'_' {
            return None;
        }
        let main = i64::from_be_bytes(key[0..8].try_into().ok()?);
        let sub = i64::from_be_bytes(key[9..17].try_into().ok()?);
        let tombstone = match &key[REVISION_LEN..] {
            [] => false,
            [TOMBSTONE] => true,
            _ => return None,
        };
        Some((Revision { main, sub }, tombstone))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_revision_and_round_trip() {
        let revs = [
            Revision::new(1, 0),
            Revision::new(1, 1),
            Revision::new(2, 0),
            Revision::new(256, 3),
        ];
        let keys: Vec<_> = revs.iter().map(|r| r.to_key(false)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        for r in revs {
            assert_eq!(Revision::from_key(&r.to_key(false)), Some((r, false)));
            assert_eq!(Revision::from_key(&r.to_key(true)), Some((r, true)));
        }
        assert_eq!(Revision::from_key(b"short"), None);
    }
}

//! What each revision changed, learned from the first member that applied it and compared with
//! every other member's; and the watchers, whose streams are checked against it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use keel_mvcc::{KeySpan, MvccError, Store};

/// One event: the key, and its new value (None: deleted).
pub type Event = (Vec<u8>, Option<Vec<u8>>);

/// The changes of every revision the cluster has applied.
#[derive(Default)]
pub struct Oracle {
    revisions: BTreeMap<i64, Vec<Event>>,
}

impl Oracle {
    /// Reads what `store` applied after revision `*seen` and compares it with what is known;
    /// returns the differences found.
    pub fn observe(&mut self, member: u64, store: &Store, seen: &mut i64) -> Vec<String> {
        let mut problems = Vec::new();
        let current = store.current_revision();
        while *seen < current {
            let all = KeySpan::from_etcd(b"\0", b"\0");
            let (changes, last) = match store.changes(all, *seen + 1, current, 4096) {
                Ok(read) => read,
                // Applied and compacted in one batch: this member's copy of those revisions is
                // gone before it could be read (the others' were compared).
                Err(MvccError::Compacted) => {
                    *seen = store.compacted_revision().max(*seen);
                    continue;
                }
                Err(e) => {
                    problems.push(format!("member {member}: reading history: {e}"));
                    return problems;
                }
            };
            let mut by_rev: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
            for c in changes {
                let value = (!c.deleted).then(|| c.kv.value.clone());
                by_rev
                    .entry(c.kv.mod_revision)
                    .or_default()
                    .push((c.kv.key.clone(), value));
            }
            for (rev, events) in by_rev {
                match self.revisions.get(&rev) {
                    Some(known) if *known != events => problems.push(format!(
                        "member {member} applied revision {rev} as {} but another member as {}",
                        show(&events),
                        show(known)
                    )),
                    Some(_) => {}
                    None => {
                        self.revisions.insert(rev, events);
                    }
                }
            }
            *seen = last.max(*seen + 1);
        }
        problems
    }

    /// The highest revision known.
    pub fn last_revision(&self) -> i64 {
        self.revisions.keys().next_back().copied().unwrap_or(0)
    }

    /// The events of revisions `from..=to`, in order.
    fn events(&self, from: i64, to: i64) -> Vec<(i64, Event)> {
        if from > to {
            return Vec::new();
        }
        self.revisions
            .range(from..=to)
            .flat_map(|(&rev, events)| events.iter().map(move |e| (rev, e.clone())))
            .collect()
    }

    /// A fingerprint of every revision (for the determinism check).
    pub fn fingerprint(&self, h: &mut impl std::hash::Hasher) {
        use std::hash::Hash;
        self.revisions.hash(h);
    }
}

fn show(events: &[Event]) -> String {
    let parts: Vec<String> = events
        .iter()
        .map(|(k, v)| match v {
            Some(v) => format!(
                "put {}={}",
                String::from_utf8_lossy(k),
                String::from_utf8_lossy(v)
            ),
            None => format!("delete {}", String::from_utf8_lossy(k)),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// A client's watch on every key, resumed on another member after its member fails, as etcd's
/// clients do: from the revision after the last event it saw.
pub struct Watcher {
    /// The first revision it asked for.
    pub start: i64,
    /// Events received, with their revisions, in the order they arrived.
    pub received: Rc<RefCell<Vec<(i64, Event)>>>,
    /// Revision ranges (inclusive) it was told were compacted: canceled, resumed after them.
    pub skipped: Vec<(i64, i64)>,
}

impl Watcher {
    /// A watcher from revision `start`.
    pub fn new(start: i64) -> Watcher {
        Watcher {
            start,
            received: Rc::default(),
            skipped: Vec::new(),
        }
    }

    /// Where the watch resumes: after its last event (or from its start).
    pub fn resume_from(&self) -> i64 {
        let last = self.received.borrow().last().map(|(rev, _)| *rev);
        let skipped = self.skipped.last().map(|(_, to)| *to);
        last.max(skipped).map_or(self.start, |r| r + 1)
    }

    /// Compares what arrived with the revisions `start..=through` (minus compacted skips).
    pub fn check(&self, oracle: &Oracle, through: i64) -> Result<usize, String> {
        let mut expected = Vec::new();
        let mut from = self.start;
        for &(skip_from, skip_to) in &self.skipped {
            expected.extend(oracle.events(from, skip_from - 1));
            from = skip_to + 1;
        }
        expected.extend(oracle.events(from, through));
        let received = self.received.borrow();
        if *received == expected {
            return Ok(received.len());
        }
        let at = received
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(received.len().min(expected.len()));
        Err(format!(
            "watcher from revision {}: {} events received, {} expected through revision {through}; first difference at #{at}: got {:?}, expected {:?}",
            self.start,
            received.len(),
            expected.len(),
            received.get(at).map(|(r, e)| (r, show(std::slice::from_ref(e)))),
            expected.get(at).map(|(r, e)| (r, show(std::slice::from_ref(e)))),
        ))
    }
}

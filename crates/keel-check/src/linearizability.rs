//! The search: for each key, depth-first over the operations that may come next (invoked before
//! every pending operation's completion), applying each to a model register, with visited
//! (operations done, register) pairs remembered so no state is explored twice.

use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use crate::{Call, History, Operation, Outcome};

/// States explored per key before the search gives up (the history is then inconclusive, which
/// a test treats as a failure too).
const MAX_STATES: usize = 1_000_000;

/// What `check` found.
#[derive(Debug, Default)]
pub struct Report {
    /// Keys checked.
    pub keys: usize,
    /// Operations checked (those with unknown outcomes included).
    pub operations: usize,
    /// Keys whose history no order explains.
    pub violations: Vec<Violation>,
    /// Keys whose search was too large to finish.
    pub inconclusive: Vec<String>,
}

impl Report {
    /// Whether every key's history is linearizable.
    pub fn ok(&self) -> bool {
        self.violations.is_empty() && self.inconclusive.is_empty()
    }
}

/// A key whose history is not linearizable, with its operations for the report.
#[derive(Debug)]
pub struct Violation {
    /// The key.
    pub key: String,
    /// Its operations in invocation order.
    pub operations: Vec<Operation>,
}

/// Checks every key's history.
pub fn check(history: &History) -> Report {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in &history.operations {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut report = Report {
        keys: by_key.len(),
        operations: history.operations.len(),
        ..Default::default()
    };
    for (key, mut ops) in by_key {
        ops.sort_by_key(|o| o.invoked);
        match Search::new(&ops).run() {
            Some(true) => {}
            Some(false) => report.violations.push(Violation {
                key: key.to_string(),
                operations: ops.into_iter().cloned().collect(),
            }),
            None => report.inconclusive.push(key.to_string()),
        }
    }
    report
}

/// One key's register: its value with the revision it was written at (unknown for a write whose
/// outcome was unknown, until a read shows it), and the revision of its last change.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
struct Register {
    value: Option<(String, Option<i64>)>,
    last_change: i64,
}

impl Register {
    /// The register after `op`, if `op` could have happened to it with the outcome seen;
    /// `effect` says whether an operation of unknown outcome takes effect.
    fn apply(&self, call: &Call, outcome: &Outcome, effect: bool) -> Option<Register> {
        let value = self.value.as_ref().map(|(v, _)| v.as_str());
        match (call, outcome) {
            (Call::Get, Outcome::Read(read)) => match (read, &self.value) {
                (None, None) => Some(self.clone()),
                (Some((v, rev)), Some((have, at)))
                    if v == have && at.is_none_or(|at| at == *rev) =>
                {
                    // A read names the revision of a write whose own answer was lost.
                    Some(Register {
                        value: Some((have.clone(), Some(*rev))),
                        last_change: self.last_change.max(*rev),
                    })
                }
                _ => None,
            },
            (Call::Put(v), Outcome::Wrote { revision, .. }) => {
                (*revision > self.last_change).then(|| Register {
                    value: Some((v.clone(), Some(*revision))),
                    last_change: *revision,
                })
            }
            (Call::Delete, Outcome::Wrote { revision, deleted }) => {
                if *deleted != self.value.is_some() {
                    return None;
                }
                if !deleted {
                    return (*revision >= self.last_change).then(|| self.clone());
                }
                (*revision > self.last_change).then_some(Register {
                    value: None,
                    last_change: *revision,
                })
            }
            (Call::Cas { expected, new }, Outcome::Cas { swapped, revision }) => {
                if *swapped != (value == expected.as_deref()) {
                    return None;
                }
                if !swapped {
                    return (*revision >= self.last_change).then(|| self.clone());
                }
                (*revision > self.last_change).then(|| Register {
                    value: Some((new.clone(), Some(*revision))),
                    last_change: *revision,
                })
            }
            (_, Outcome::Unknown) if !effect => Some(self.clone()),
            (Call::Get, Outcome::Unknown) => Some(self.clone()),
            (Call::Put(v), Outcome::Unknown) => Some(Register {
                value: Some((v.clone(), None)),
                last_change: self.last_change,
            }),
            (Call::Delete, Outcome::Unknown) => Some(Register {
                value: None,
                last_change: self.last_change,
            }),
            (Call::Cas { expected, new }, Outcome::Unknown) => {
                (value == expected.as_deref()).then(|| Register {
                    value: Some((new.clone(), None)),
                    last_change: self.last_change,
                })
            }
            _ => None,
        }
    }
}

struct Search<'a> {
    ops: &'a [&'a Operation],
    /// Operations with a known outcome (they must be linearized), in invocation order.
    known: Vec<usize>,
    /// Operations of unknown outcome (they may be linearized anywhere after their invocation,
    /// or never).
    unknown: Vec<usize>,
    /// Fingerprints of the (operations done, register) pairs already explored.
    seen: HashSet<u64>,
}

fn is_done(done: &[u64], i: usize) -> bool {
    done[i / 64] & (1 << (i % 64)) != 0
}

impl<'a> Search<'a> {
    fn new(ops: &'a [&'a Operation]) -> Search<'a> {
        let (unknown, known) =
            (0..ops.len()).partition(|&i| matches!(ops[i].outcome, Outcome::Unknown));
        Search {
            ops,
            known,
            unknown,
            seen: HashSet::new(),
        }
    }

    /// Some(whether an order exists), None if the search was too large.
    fn run(mut self) -> Option<bool> {
        let done = vec![0u64; self.ops.len().div_ceil(64)];
        self.search(done, 0, Register::default())
    }

    /// `lo`: every known-outcome operation before `known[lo]` is done.
    fn search(&mut self, done: Vec<u64>, mut lo: usize, reg: Register) -> Option<bool> {
        while lo < self.known.len() && is_done(&done, self.known[lo]) {
            lo += 1;
        }
        if lo == self.known.len() {
            // Only operations of unknown outcome are left: they need not have happened.
            return Some(true);
        }
        // The earliest completion among what is left: whatever comes next was invoked before it.
        // (Operations are in invocation order, and complete after they are invoked.)
        let mut horizon = Duration::MAX;
        for &i in &self.known[lo..] {
            if self.ops[i].invoked >= horizon {
                break;
            }
            if !is_done(&done, i) {
                horizon = horizon.min(self.ops[i].completed);
            }
        }
        if self.seen.len() >= MAX_STATES {
            return None;
        }
        let mut fingerprint = std::collections::hash_map::DefaultHasher::new();
        (&done, &reg).hash(&mut fingerprint);
        if !self.seen.insert(fingerprint.finish()) {
            return Some(false);
        }
        let candidates: Vec<usize> = self.known[lo..]
            .iter()
            .copied()
            .take_while(|&i| self.ops[i].invoked <= horizon)
            .chain(
                self.unknown
                    .iter()
                    .copied()
                    .filter(|&i| self.ops[i].invoked <= horizon),
            )
            .filter(|&i| !is_done(&done, i))
            .collect();
        let mut inconclusive = false;
        for i in candidates {
            let op = self.ops[i];
            let effects: &[bool] = match op.outcome {
                Outcome::Unknown => &[true, false],
                _ => &[true],
            };
            for &effect in effects {
                let Some(next) = reg.apply(&op.call, &op.outcome, effect) else {
                    continue;
                };
                let mut d = done.clone();
                d[i / 64] |= 1 << (i % 64);
                match self.search(d, lo, next) {
                    Some(true) => return Some(true),
                    Some(false) => {}
                    None => inconclusive = true,
                }
            }
        }
        if inconclusive {
            None
        } else {
            Some(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, call: Call, from: u64, to: u64, outcome: Outcome) -> Operation {
        Operation {
            client,
            key: "k".into(),
            call,
            invoked: Duration::from_millis(from),
            completed: Duration::from_millis(to),
            outcome,
        }
    }

    fn put(v: &str) -> Call {
        Call::Put(v.into())
    }

    fn wrote(revision: i64) -> Outcome {
        Outcome::Wrote {
            revision,
            deleted: false,
        }
    }

    fn read(v: Option<(&str, i64)>) -> Outcome {
        Outcome::Read(v.map(|(v, r)| (v.to_string(), r)))
    }

    fn history(ops: Vec<Operation>) -> History {
        History { operations: ops }
    }

    #[test]
    fn concurrent_writes_may_be_seen_in_either_order_but_not_go_back() {
        let ok = history(vec![
            op(0, put("a"), 0, 10, wrote(2)),
            op(1, put("b"), 0, 10, wrote(3)),
            op(2, Call::Get, 11, 12, read(Some(("b", 3)))),
            op(2, Call::Get, 13, 14, read(Some(("b", 3)))),
        ]);
        assert!(check(&ok).ok());
        // Once b was read, a later read cannot see a (written before b, revision 2).
        let stale = history(vec![
            op(0, put("a"), 0, 10, wrote(2)),
            op(1, put("b"), 0, 10, wrote(3)),
            op(2, Call::Get, 11, 12, read(Some(("b", 3)))),
            op(2, Call::Get, 13, 14, read(Some(("a", 2)))),
        ]);
        let r = check(&stale);
        assert_eq!(r.violations.len(), 1, "{r:?}");
    }

    #[test]
    fn a_completed_write_is_visible_to_later_reads() {
        let lost = history(vec![
            op(0, put("a"), 0, 1, wrote(2)),
            op(1, Call::Get, 2, 3, read(None)),
        ]);
        assert!(!check(&lost).ok());
    }

    #[test]
    fn an_unknown_write_may_or_may_not_have_happened() {
        let happened = history(vec![
            op(0, put("a"), 0, 1, Outcome::Unknown),
            op(1, Call::Get, 5, 6, read(Some(("a", 7)))),
        ]);
        assert!(check(&happened).ok());
        let did_not = history(vec![
            op(0, put("a"), 0, 1, Outcome::Unknown),
            op(1, Call::Get, 5, 6, read(None)),
        ]);
        assert!(check(&did_not).ok());
        // But a read cannot see it before it was even invoked.
        let early = history(vec![
            op(1, Call::Get, 0, 1, read(Some(("a", 7)))),
            op(0, put("a"), 5, 6, Outcome::Unknown),
        ]);
        assert!(!check(&early).ok());
    }

    #[test]
    fn compare_and_swap_follows_the_value() {
        let cas = |expected: Option<&str>, new: &str| Call::Cas {
            expected: expected.map(str::to_string),
            new: new.into(),
        };
        let swapped = |s: bool, revision: i64| Outcome::Cas {
            swapped: s,
            revision,
        };
        let ok = history(vec![
            op(0, put("a"), 0, 1, wrote(2)),
            op(1, cas(Some("a"), "b"), 2, 3, swapped(true, 3)),
            op(2, cas(Some("a"), "c"), 4, 5, swapped(false, 3)),
            op(2, Call::Get, 6, 7, read(Some(("b", 3)))),
        ]);
        assert!(check(&ok).ok());
        let both_swapped = history(vec![
            op(0, put("a"), 0, 1, wrote(2)),
            op(1, cas(Some("a"), "b"), 2, 3, swapped(true, 3)),
            op(2, cas(Some("a"), "c"), 4, 5, swapped(true, 4)),
        ]);
        assert!(!check(&both_swapped).ok());
    }

    #[test]
    fn revisions_must_grow_with_real_time() {
        let backwards = history(vec![
            op(0, put("a"), 0, 1, wrote(5)),
            op(1, put("b"), 2, 3, wrote(4)),
        ]);
        assert!(!check(&backwards).ok());
        let deleted = history(vec![
            op(0, put("a"), 0, 1, wrote(2)),
            op(
                1,
                Call::Delete,
                2,
                3,
                Outcome::Wrote {
                    revision: 3,
                    deleted: true,
                },
            ),
            op(2, Call::Get, 4, 5, read(None)),
        ]);
        assert!(check(&deleted).ok());
    }
}

//! Checking that what clients saw is what a correct etcd could have done.
//!
//! A test records every operation its clients issue (`History`): when it was invoked, when it
//! completed and with what result, or that its outcome is unknown (a timeout or a broken
//! connection: it may or may not have taken effect). `check` then searches, key by key (operations
//! on different keys commute, so each key's history is checked alone — P-compositionality), for an
//! order of the operations that respects real time (an operation that completed before another
//! was invoked comes first) and that a single register would produce (Wing & Gong's search with
//! Lowe's memoization of visited states). Writes carry the revision the cluster answered with;
//! reads must see the revision of the write they read.

mod linearizability;

pub use linearizability::{check, Report, Violation};

use std::time::Duration;

/// What a client asked of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// A linearizable read.
    Get,
    /// A write of a value (unique per history, so a read names the write it saw).
    Put(String),
    /// A delete.
    Delete,
    /// A compare-and-swap transaction: put `new` if the value is `expected` (None: absent).
    Cas {
        /// What the value must be.
        expected: Option<String>,
        /// What it becomes.
        new: String,
    },
}

/// What the cluster answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A read: the value and the revision it was written at (None: absent).
    Read(Option<(String, i64)>),
    /// A put or delete took effect at this revision (deletes of absent keys: `deleted == false`).
    Wrote {
        /// The response header's revision.
        revision: i64,
        /// For a delete: whether it deleted anything.
        deleted: bool,
    },
    /// A compare-and-swap: whether it swapped, and the header revision.
    Cas {
        /// Whether the compare held.
        swapped: bool,
        /// The response header's revision.
        revision: i64,
    },
    /// The outcome is not known (timeout, lost connection): it may have happened, or not.
    Unknown,
}

/// One operation of a history.
#[derive(Clone, Debug)]
pub struct Operation {
    /// The client that issued it (for reports).
    pub client: usize,
    /// The key.
    pub key: String,
    /// What was asked.
    pub call: Call,
    /// When it was invoked.
    pub invoked: Duration,
    /// When it completed (irrelevant for `Outcome::Unknown`).
    pub completed: Duration,
    /// What came back.
    pub outcome: Outcome,
}

/// Every operation clients issued during a test.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// The operations, in any order.
    pub operations: Vec<Operation>,
}

impl History {
    /// Records an operation.
    pub fn push(&mut self, op: Operation) {
        self.operations.push(op);
    }
}

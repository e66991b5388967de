//! etcd's MVCC operation counters (`etcd_mvcc_*_total`), counted where the operations happen. The
//! server registers them with its registry; they are plain counters, so the state machine needs no
//! registry of its own.

use std::sync::OnceLock;

use prometheus::IntCounter;

/// etcd's MVCC operation counters.
pub struct MvccCounters {
    /// Puts (requests and txn ops).
    pub put: IntCounter,
    /// Delete-ranges.
    pub delete: IntCounter,
    /// Range reads.
    pub range: IntCounter,
    /// Txns.
    pub txn: IntCounter,
}

fn counter(name: &str, what: &str) -> IntCounter {
    IntCounter::new(name, format!("Total number of {what} seen by this member."))
        .expect("valid metric")
}

/// The process's counters.
pub fn mvcc() -> &'static MvccCounters {
    static COUNTERS: OnceLock<MvccCounters> = OnceLock::new();
    COUNTERS.get_or_init(|| MvccCounters {
        put: counter("etcd_mvcc_put_total", "puts"),
        delete: counter("etcd_mvcc_delete_total", "deletes"),
        range: counter("etcd_mvcc_range_total", "ranges"),
        txn: counter("etcd_mvcc_txn_total", "txns"),
    })
}

pub(crate) fn mvcc_put() {
    mvcc().put.inc();
}

pub(crate) fn mvcc_delete() {
    mvcc().delete.inc();
}

pub(crate) fn mvcc_range() {
    mvcc().range.inc();
}

pub(crate) fn mvcc_txn() {
    mvcc().txn.inc();
}

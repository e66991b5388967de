//! The process-wide counters the member's own paths update (every member in a process counts
//! into them, as etcd's default registry does); `/metrics` exposes them with the rest.

use std::sync::OnceLock;

use prometheus::{exponential_buckets, Histogram, HistogramOpts, IntCounter};

/// The member's counters.
pub struct Counters {
    /// Proposals that failed (no leader, timed out, member stopping).
    pub proposals_failed: IntCounter,
    /// How long each apply batch took to commit to the store.
    pub backend_commit: Histogram,
}

/// The member's counters, made on first use.
pub fn counters() -> &'static Counters {
    static C: OnceLock<Counters> = OnceLock::new();
    C.get_or_init(|| Counters {
        proposals_failed: IntCounter::new(
            "etcd_server_proposals_failed_total",
            "The total number of failed proposals seen.",
        )
        .expect("valid metric"),
        backend_commit: Histogram::with_opts(
            HistogramOpts::new(
                "etcd_disk_backend_commit_duration_seconds",
                "The latency distributions of commit called by backend.",
            )
            .buckets(exponential_buckets(0.001, 2.0, 14).expect("valid buckets")),
        )
        .expect("valid metric"),
    })
}

/// Proposals that failed (no leader, timed out, member stopping).
pub(super) fn proposals_failed() -> &'static IntCounter {
    &counters().proposals_failed
}

//! A member's own view of the snapshot it is bootstrapping from: receiving the image, then the
//! state machine installing it, and why the last attempt failed. The receiving side of the
//! transport and the state machine report into it; the leader asks for it (Keel's admin
//! `Local` call) to show a replica's bootstrap progress and errors.

use parking_lot::Mutex;

/// Where a member is in taking a snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BootstrapPhase {
    /// No snapshot under way.
    #[default]
    Idle,
    /// The image's files are arriving (`done` and `total` in bytes).
    Receiving,
    /// The state machine is copying the image in (`done` and `total` in records).
    Installing,
}

/// A snapshot bootstrap as the member taking it sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootstrapReport {
    /// The phase.
    pub phase: BootstrapPhase,
    /// The snapshot's raft index (0 while idle).
    pub index: u64,
    /// Done so far in this phase.
    pub done: u64,
    /// The whole of this phase (0 when unknown).
    pub total: u64,
    /// Why the last attempt failed, until the next one starts.
    pub failure: Option<String>,
}

/// The bootstrap tracker one member shares between its transport and its state machine.
#[derive(Debug, Default)]
pub struct Bootstrap(Mutex<BootstrapReport>);

impl Bootstrap {
    /// The current report.
    pub fn report(&self) -> BootstrapReport {
        self.0.lock().clone()
    }

    /// A snapshot at `index` of `total` bytes starts arriving (clears the last failure).
    pub fn receiving(&self, index: u64, total: u64) {
        *self.0.lock() = BootstrapReport {
            phase: BootstrapPhase::Receiving,
            index,
            done: 0,
            total,
            failure: None,
        };
    }

    /// The state machine starts installing the snapshot at `index`.
    pub fn installing(&self, index: u64) {
        *self.0.lock() = BootstrapReport {
            phase: BootstrapPhase::Installing,
            index,
            ..Default::default()
        };
    }

    /// `done` of `total` of the current phase are through.
    pub fn advanced(&self, done: u64, total: u64) {
        let mut r = self.0.lock();
        r.done = done;
        r.total = total;
    }

    /// The snapshot is installed.
    pub fn finished(&self) {
        *self.0.lock() = BootstrapReport::default();
    }

    /// The attempt failed, for `reason`.
    pub fn failed(&self, reason: String) {
        *self.0.lock() = BootstrapReport {
            failure: Some(reason),
            ..Default::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_attempt_clears_the_last_failure_and_finishing_returns_to_idle() {
        let b = Bootstrap::default();
        b.receiving(7, 100);
        b.advanced(40, 100);
        assert_eq!(
            (b.report().phase, b.report().done),
            (BootstrapPhase::Receiving, 40)
        );
        b.failed("disk full".into());
        assert_eq!(b.report().failure.as_deref(), Some("disk full"));
        assert_eq!(b.report().phase, BootstrapPhase::Idle);
        b.receiving(8, 100);
        assert_eq!(b.report().failure, None);
        b.installing(8);
        assert_eq!(
            (b.report().phase, b.report().index),
            (BootstrapPhase::Installing, 8)
        );
        b.finished();
        assert_eq!(b.report(), BootstrapReport::default());
    }
}

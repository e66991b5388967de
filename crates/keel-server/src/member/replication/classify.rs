//! A member's state and its reason, from what the leader sees of it and what it reported.

use std::time::Duration;

use keel_raft::{BootstrapPhase, PeerProgress, Replication};

use super::poll::Reported;
use super::{ReplicaState, SnapshotBootstrap};

/// What classifies one member other than the leader.
pub(super) struct Seen<'a> {
    pub(super) progress: Option<&'a PeerProgress>,
    /// Its own report, if fresh.
    pub(super) report: Option<&'a Reported>,
    pub(super) transfer: Option<keel_raft::SnapshotTransfer>,
    pub(super) send_failure: Option<&'a str>,
    pub(super) alarm: Option<String>,
    pub(super) lag: Duration,
    pub(super) election_timeout: Duration,
}

/// A member's state and reason from what the leader sees, in order of what the user must know
/// first: an alarm or a failed snapshot, then a bootstrap the member reports (its raft node does
/// not answer while it installs), then contact, then how far behind it is.
pub(super) fn classify(s: &Seen<'_>) -> (ReplicaState, String) {
    if let Some(alarm) = &s.alarm {
        return (ReplicaState::Error, alarm.clone());
    }
    // A failure the member reported before the transfer under way started is history.
    let failure = s
        .report
        .filter(|r| s.transfer.is_none_or(|t| r.at >= t.started))
        .and_then(|r| r.bootstrap.failure.as_ref());
    if let Some(failure) = failure {
        return (ReplicaState::Error, failure.clone());
    }
    let reports_bootstrap = s
        .report
        .is_some_and(|r| r.bootstrap.phase != BootstrapPhase::Idle);
    if reports_bootstrap || s.transfer.is_some_and(|t| !t.finished) {
        return (ReplicaState::Bootstrapping, String::new());
    }
    let Some(p) = s.progress else {
        return (ReplicaState::Connecting, String::new());
    };
    match p.last_contact {
        None => return (ReplicaState::Connecting, String::new()),
        Some(_) if !p.active => {
            return (
                ReplicaState::Disconnected,
                format!(
                    "no answer within the election timeout ({:?})",
                    s.election_timeout
                ),
            )
        }
        Some(_) => {}
    }
    if let Some(failure) = s.send_failure {
        return (ReplicaState::Error, failure.to_string());
    }
    match p.state {
        Replication::Snapshot => (ReplicaState::Bootstrapping, String::new()),
        Replication::Replicating if s.lag < s.election_timeout => {
            (ReplicaState::Ready, String::new())
        }
        _ => (ReplicaState::Replicating, String::new()),
    }
}

/// The bootstrap's progress from the leader's transfer and the member's own report. The leader's
/// byte count is ahead of the member's (it counts what it queued), so it is used while it has
/// one: the progress never goes back when a transfer ends before the member's next report.
pub(super) fn bootstrap_of(
    transfer: Option<keel_raft::SnapshotTransfer>,
    report: Option<&Reported>,
) -> Option<SnapshotBootstrap> {
    let b = report
        .map(|r| &r.bootstrap)
        .filter(|b| b.phase != BootstrapPhase::Idle);
    let transfer = transfer.filter(|t| !t.finished || b.is_some());
    if transfer.is_none() && b.is_none() {
        return None;
    }
    let fraction = |done: u64, total: u64| {
        if total == 0 {
            0.0
        } else {
            (done as f64 / total as f64).min(1.0)
        }
    };
    let mut out = SnapshotBootstrap::default();
    if let Some(t) = transfer {
        (out.index, out.bytes_sent, out.bytes_total) = (t.index, t.sent, t.total);
    } else if let Some(b) = b.filter(|b| b.phase == BootstrapPhase::Receiving) {
        (out.index, out.bytes_sent, out.bytes_total) = (b.index, b.done, b.total);
    }
    match b {
        Some(b) if b.phase == BootstrapPhase::Installing => {
            out.index = b.index;
            out.bytes_sent = out.bytes_total;
            (out.records_installed, out.records_total) = (b.done, b.total);
            out.progress = 0.5 + 0.5 * fraction(b.done, b.total);
        }
        _ => out.progress = 0.5 * fraction(out.bytes_sent, out.bytes_total),
    }
    Some(out)
}

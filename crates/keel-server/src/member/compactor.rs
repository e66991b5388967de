//! Auto-compaction (`--auto-compaction-mode`, `--auto-compaction-retention`), as etcd's v3compactor:
//! the leader proposes Compaction entries; members that do not lead only keep their samples.
//!
//! - periodic: a revision is sampled every tenth of the retention (at most every hour's tenth); the
//!   history older than the retention (the oldest sample, once the window is full) is compacted.
//! - revision: every 5 minutes, history more than `retention` revisions old is compacted.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use keel_rpc::etcd::PbCompactionRequest;
use keel_rpc::RequestBody;

use super::Member;
use crate::config::AutoCompaction;
use crate::ServerError;

/// etcd's revision-mode check interval.
const REVISION_INTERVAL: Duration = Duration::from_secs(300);
/// Samples in a periodic window.
const WINDOWS: u32 = 10;

/// Runs the compactor until the task is aborted.
pub async fn run(member: Arc<Member>, mode: AutoCompaction) {
    match mode {
        AutoCompaction::Off => {}
        AutoCompaction::Periodic(retention) => periodic(member, retention).await,
        AutoCompaction::Revision(keep) => revision(member, keep).await,
    }
}

async fn periodic(member: Arc<Member>, retention: Duration) {
    // Windows of a tenth of the retention, but never longer than a tenth of an hour.
    let step = retention.min(Duration::from_secs(3600)) / WINDOWS;
    let samples_kept = (retention.as_secs_f64() / step.as_secs_f64()).ceil() as usize;
    let mut samples = VecDeque::new();
    let mut every = tokio::time::interval(step);
    loop {
        every.tick().await;
        samples.push_back(member.store.current_revision());
        if samples.len() <= samples_kept {
            continue;
        }
        // The front sample was taken a full retention ago.
        let rev = samples.pop_front().unwrap_or(0);
        compact(&member, rev).await;
    }
}

async fn revision(member: Arc<Member>, keep: i64) {
    let mut every = tokio::time::interval(REVISION_INTERVAL);
    every.tick().await;
    loop {
        every.tick().await;
        compact(&member, member.store.current_revision() - keep).await;
    }
}

/// Proposes compaction at `rev` if this member leads and it moves the compacted revision forward.
async fn compact(member: &Member, rev: i64) {
    if !member.is_leader() || rev <= member.store.compacted_revision() {
        return;
    }
    let req = RequestBody::Compaction(PbCompactionRequest {
        revision: rev,
        physical: false,
    });
    match member.propose_internal(req).await {
        Ok(_) => tracing::info!(revision = rev, "auto-compacted"),
        Err(ServerError::State(keel_state::StateError::Compacted)) => {}
        Err(e) => tracing::warn!(revision = rev, error = %e, "auto-compaction failed"),
    }
}

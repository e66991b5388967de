//! Corruption checks between members, as etcd makes them: before serving
//! (--experimental-initial-corrupt-check) a member compares the hash of its key-value history with
//! every peer's at its own revision and refuses to start on a mismatch; while serving
//! (--experimental-corrupt-check-time) the leader compares with its followers and raises a CORRUPT
//! alarm for a member whose history differs. Hashes taken at different compacted revisions, or at
//! a revision a peer has not reached, cannot be compared: those peers are skipped with a warning.
//! A peer that cannot be reached never fails the check.

use std::sync::Arc;
use std::time::Duration;

use keel_rpc::peer::membership_client::MembershipClient;
use keel_rpc::peer::{HashRequest, HashResponse};
use keel_rpc::RequestBody;

use super::Member;

/// How long a peer may take to answer with its hash.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// A peer's hash differs from ours at the same revision and compacted revision.
#[derive(Debug, thiserror::Error)]
#[error("{0:016x} found data inconsistency with peers")]
pub struct Inconsistent(pub u64);

/// etcd's initial check: our hash at our current revision against every peer's.
pub async fn initial_check(member: &Member) -> Result<(), Inconsistent> {
    let me = member.identity.member_id;
    tracing::info!(
        local_member_id = format!("{me:x}"),
        "starting initial corruption check"
    );
    let Some(mine) = own_hash(member, 0).await else {
        return Ok(());
    };
    let mut mismatches = 0;
    for (peer, answer) in peer_hashes(member, mine.hash_revision).await {
        match answer {
            Ok(theirs) if !theirs.unavailable.is_empty() => tracing::warn!(
                remote_peer_id = format!("{peer:x}"),
                "cannot check the hash of peer: {}",
                theirs.unavailable
            ),
            Ok(theirs) if theirs.hash == mine.hash => {}
            Ok(theirs) if theirs.compact_revision != mine.compact_revision => tracing::warn!(
                remote_peer_id = format!("{peer:x}"),
                remote_peer_compact_revision = theirs.compact_revision,
                local_member_compact_revision = mine.compact_revision,
                "cannot check hash of peer: peer has a different compact revision"
            ),
            Ok(theirs) => {
                tracing::error!(
                    local_member_id = format!("{me:x}"),
                    local_member_hash = mine.hash,
                    remote_peer_id = format!("{peer:x}"),
                    remote_peer_hash = theirs.hash,
                    revision = mine.hash_revision,
                    compact_revision = mine.compact_revision,
                    "found data inconsistency with peer"
                );
                mismatches += 1;
            }
            Err(e) => tracing::warn!(
                remote_peer_id = format!("{peer:x}"),
                error = %e,
                "cannot fetch hash from peer"
            ),
        }
    }
    if mismatches > 0 {
        return Err(Inconsistent(me));
    }
    tracing::info!(
        local_member_id = format!("{me:x}"),
        "initial corruption checking passed; no corruption"
    );
    Ok(())
}

/// etcd's periodic check, on the leader, every `every`: a follower whose hash at the leader's
/// revision differs from the leader's (at the same compacted revision) gets a CORRUPT alarm.
pub async fn run_periodic(member: Arc<Member>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        if !member.is_leader() {
            continue;
        }
        let Some(mine) = own_hash(&member, 0).await else {
            continue;
        };
        for (peer, answer) in peer_hashes(&member, mine.hash_revision).await {
            let Ok(theirs) = answer else { continue };
            let comparable =
                theirs.unavailable.is_empty() && theirs.compact_revision == mine.compact_revision;
            if comparable && theirs.hash != mine.hash {
                tracing::error!(
                    remote_peer_id = format!("{peer:x}"),
                    revision = mine.hash_revision,
                    "member's hash differs from the leader's; raising CORRUPT"
                );
                raise_corrupt(&member, peer).await;
            }
        }
    }
}

async fn raise_corrupt(member: &Member, corrupt: u64) {
    let raise = RequestBody::Alarm(keel_rpc::etcd::PbAlarmRequest {
        action: 1,
        member_id: corrupt,
        alarm: keel_state::alarm::CORRUPT,
    });
    if let Err(e) = member.propose_internal(raise).await {
        tracing::warn!(error = %e, "raising CORRUPT failed");
    }
}

/// Our own hash through `rev` (0: current), as a peer would answer.
async fn own_hash(member: &Member, rev: i64) -> Option<HashResponse> {
    let store = member.store.clone();
    match member.blocking(move || store.hash_kv(rev)).await {
        Ok(Ok(h)) => Some(HashResponse {
            member_id: member.identity.member_id,
            hash: h.hash,
            compact_revision: h.compact_revision,
            hash_revision: h.revision,
            unavailable: String::new(),
        }),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot hash the local store");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot hash the local store");
            None
        }
    }
}

/// Every other member's hash through `rev`, or why it could not be had.
async fn peer_hashes(member: &Member, rev: i64) -> Vec<(u64, Result<HashResponse, String>)> {
    let me = member.identity.member_id;
    let peers: Vec<_> = member
        .membership
        .list()
        .into_iter()
        .filter(|m| m.id != me)
        .collect();
    let asks = peers.into_iter().map(|m| async move {
        let mut last = Err("no peer URL".to_string());
        for url in &m.peer_ur_ls {
            last = ask(member, url, rev).await;
            if last.is_ok() {
                break;
            }
        }
        (m.id, last)
    });
    futures::future::join_all(asks).await
}

async fn ask(member: &Member, url: &str, rev: i64) -> Result<HashResponse, String> {
    let dialer = member.dialer().ok_or("no peer transport to ask through")?;
    let channel = dialer
        .channel(url, Some(PEER_TIMEOUT))
        .await
        .map_err(|e| keel_raft::dial::describe_error(e.as_ref()))?;
    MembershipClient::new(channel)
        .hash(HashRequest { revision: rev })
        .await
        .map(|r| r.into_inner())
        .map_err(|s| s.message().to_string())
}

//! The admin API's form of the cluster's replication, both ways.

use std::time::Duration;

use keel_raft::Replication;
use keel_rpc::admin::{MemberReplication, MembersResponse};

use super::{ClusterReplication, ReplicaRole, ReplicaState, ReplicaStatus, SnapshotBootstrap};

/// The admin API's form.
pub fn to_proto(c: &ClusterReplication) -> MembersResponse {
    let ms = |d: Duration| d.as_millis() as u64;
    MembersResponse {
        cluster_id: c.cluster_id,
        leader_id: c.leader_id,
        term: c.term,
        last_index: c.last_index,
        commit_index: c.commit_index,
        members: c
            .members
            .iter()
            .map(|m| {
                let b = m.bootstrap.unwrap_or_default();
                MemberReplication {
                    id: m.id,
                    name: m.name.clone(),
                    peer_urls: m.peer_urls.clone(),
                    client_urls: m.client_urls.clone(),
                    role: m.role.as_str().into(),
                    progress: m.raft.map_or("", raft_name).into(),
                    matched_index: m.matched_index,
                    lag_entries: m.lag_entries,
                    lag_ms: ms(m.lag),
                    last_contact_ms: m.last_contact.map_or(-1, |d| ms(d) as i64),
                    active: m.active,
                    snapshot_index: b.index,
                    snapshot_bytes_sent: b.bytes_sent,
                    snapshot_bytes_total: b.bytes_total,
                    state: m.state.as_str().into(),
                    reason: m.reason.clone(),
                    bootstrap_progress: b.progress,
                    applied_index: m.applied_index.unwrap_or(0),
                    snapshot_records_installed: b.records_installed,
                    snapshot_records_total: b.records_total,
                }
            })
            .collect(),
    }
}

fn raft_name(r: Replication) -> &'static str {
    match r {
        Replication::Probing => "probing",
        Replication::Replicating => "replicating",
        Replication::Snapshot => "snapshot",
    }
}

/// From the admin API's form (a follower asking the leader).
pub(super) fn from_proto(r: MembersResponse) -> ClusterReplication {
    let ms = Duration::from_millis;
    ClusterReplication {
        cluster_id: r.cluster_id,
        leader_id: r.leader_id,
        term: r.term,
        last_index: r.last_index,
        commit_index: r.commit_index,
        members: r
            .members
            .into_iter()
            .map(|m| {
                let state = ReplicaState::parse(&m.state).unwrap_or(ReplicaState::Disconnected);
                ReplicaStatus {
                    id: m.id,
                    name: m.name,
                    peer_urls: m.peer_urls,
                    client_urls: m.client_urls,
                    role: match m.role.as_str() {
                        "leader" => ReplicaRole::Leader,
                        "learner" => ReplicaRole::Learner,
                        _ => ReplicaRole::Follower,
                    },
                    state,
                    reason: m.reason,
                    raft: match m.progress.as_str() {
                        "probing" => Some(Replication::Probing),
                        "replicating" => Some(Replication::Replicating),
                        "snapshot" => Some(Replication::Snapshot),
                        _ => None,
                    },
                    matched_index: m.matched_index,
                    applied_index: Some(m.applied_index).filter(|&i| i > 0),
                    lag_entries: m.lag_entries,
                    lag: ms(m.lag_ms),
                    last_contact: u64::try_from(m.last_contact_ms).ok().map(ms),
                    active: m.active,
                    bootstrap: (state == ReplicaState::Bootstrapping).then_some(
                        SnapshotBootstrap {
                            index: m.snapshot_index,
                            progress: m.bootstrap_progress,
                            bytes_sent: m.snapshot_bytes_sent,
                            bytes_total: m.snapshot_bytes_total,
                            records_installed: m.snapshot_records_installed,
                            records_total: m.snapshot_records_total,
                        },
                    ),
                }
            })
            .collect(),
    }
}

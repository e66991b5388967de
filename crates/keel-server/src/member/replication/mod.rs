//! Every member's replication state as the leader sees it: its role, a state a user can act on
//! (connecting, replicating, bootstrapping with its progress, ready, disconnected, error with its
//! reason), its matched and applied index, its lag in entries and in time, its last contact.
//!
//! Raft tells the leader how far each member's log matches and when it last answered. What only
//! the member knows (its applied index, the snapshot it is receiving or installing, why its last
//! one failed) the leader polls from each member's admin `Local` call on its peer URLs, every
//! [`POLL`]; the answers are cached, so the status is a cheap read for `/metrics` too.

mod classify;
mod poll;
mod proto;

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_raft::{Replication, Role};
use keel_rpc::admin::admin_client::AdminClient;

use super::Member;
use crate::ServerError;
use classify::{bootstrap_of, classify, Seen};
pub(crate) use poll::poll;
pub use poll::{local, Reports};
use proto::from_proto;
pub use proto::to_proto;

/// How often the leader asks every member for its own state.
pub const POLL: Duration = Duration::from_millis(250);
/// How long the leader waits for a member's answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);
/// A member's answer older than this no longer says what it is doing.
const FRESH: Duration = Duration::from_secs(2);

/// A member's part in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaRole {
    /// It leads.
    Leader,
    /// A voter that follows.
    Follower,
    /// A non-voting member (etcd's learner).
    Learner,
}

impl ReplicaRole {
    /// The name `keel members` and the admin API show.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaRole::Leader => "leader",
            ReplicaRole::Follower => "follower",
            ReplicaRole::Learner => "learner",
        }
    }
}

/// What a member is doing, for the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplicaState {
    /// The leader has not heard from it since it took the lead (just added, or not started).
    Connecting,
    /// In contact, catching up through the log: it lacks entries older than an election timeout,
    /// or the leader is still finding where its log matches.
    Replicating,
    /// Taking a snapshot: receiving the image, or installing it.
    Bootstrapping,
    /// In contact and keeping up: it lacks nothing older than an election timeout.
    Ready,
    /// It answered once, but not within the last election timeout (or there is no leader).
    Disconnected,
    /// Something needs the user: an alarm raised for it, a snapshot it failed to take.
    Error,
}

impl ReplicaState {
    /// Every state, in the order above.
    pub const ALL: [ReplicaState; 6] = [
        ReplicaState::Connecting,
        ReplicaState::Replicating,
        ReplicaState::Bootstrapping,
        ReplicaState::Ready,
        ReplicaState::Disconnected,
        ReplicaState::Error,
    ];

    /// The name `keel members`, the admin API and `/metrics` show.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Connecting => "connecting",
            ReplicaState::Replicating => "replicating",
            ReplicaState::Bootstrapping => "bootstrapping",
            ReplicaState::Ready => "ready",
            ReplicaState::Disconnected => "disconnected",
            ReplicaState::Error => "error",
        }
    }

    fn parse(s: &str) -> Option<ReplicaState> {
        ReplicaState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// A snapshot bootstrap under way.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SnapshotBootstrap {
    /// The snapshot's raft index.
    pub index: u64,
    /// 0..1: the transfer is the first half, the installation the second.
    pub progress: f64,
    /// Bytes of the image transferred so far, of the whole.
    pub bytes_sent: u64,
    /// The image's size (0 until known).
    pub bytes_total: u64,
    /// Records installed so far.
    pub records_installed: u64,
    /// Records to install (RocksDB's estimate; 0 until the installation starts).
    pub records_total: u64,
}

/// One member's replication.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicaStatus {
    /// The member's id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Its peer URLs.
    pub peer_urls: Vec<String>,
    /// Its client URLs.
    pub client_urls: Vec<String>,
    /// Its role.
    pub role: ReplicaRole,
    /// Its state.
    pub state: ReplicaState,
    /// Why it is in an error or disconnected state ("" otherwise).
    pub reason: String,
    /// How raft sends it entries (None for the leader, or without a leader).
    pub raft: Option<Replication>,
    /// The highest index known to be in its log.
    pub matched_index: u64,
    /// The highest index it has applied, as it last told the leader.
    pub applied_index: Option<u64>,
    /// Entries of the leader's log it lacks.
    pub lag_entries: u64,
    /// How long ago the oldest entry it lacks was appended to the leader's log (zero while it
    /// lacks none).
    pub lag: Duration,
    /// Since it last answered the leader.
    pub last_contact: Option<Duration>,
    /// Whether it answered the leader within the last election timeout.
    pub active: bool,
    /// The snapshot it bootstraps from.
    pub bootstrap: Option<SnapshotBootstrap>,
}

/// The cluster's replication.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterReplication {
    /// The cluster's id.
    pub cluster_id: u64,
    /// The leader (0: none known).
    pub leader_id: u64,
    /// The raft term.
    pub term: u64,
    /// The leader's last log index.
    pub last_index: u64,
    /// The leader's commit index.
    pub commit_index: u64,
    /// Every member.
    pub members: Vec<ReplicaStatus>,
}

impl Member {
    /// The cluster's replication from this member's own knowledge: complete on the leader;
    /// elsewhere only the members and their roles.
    pub fn replication(&self) -> ClusterReplication {
        let status = self.raft_status();
        let now = Instant::now();
        let (transfers, failures) = self
            .transport()
            .map(|t| (t.snapshot_transfers(), t.snapshot_failures()))
            .unwrap_or_default();
        let alarms = self.alarms.list();
        let reports = self.reports.by_member.lock().clone();
        let me = self.identity.member_id;
        let leading = status.role == Role::Leader;
        let members = self
            .members()
            .into_iter()
            .map(|m| {
                let role = if m.id == status.leader_id {
                    ReplicaRole::Leader
                } else if m.is_learner {
                    ReplicaRole::Learner
                } else {
                    ReplicaRole::Follower
                };
                let progress = status.progress.iter().find(|p| p.id == m.id);
                let report = reports
                    .get(&m.id)
                    .filter(|r| now.duration_since(r.at) < FRESH);
                let alarm = alarms
                    .iter()
                    .filter(|a| a.member_id == m.id)
                    .map(|a| format!("alarm {} raised", keel_state::alarm::name(a.alarm)))
                    .reduce(|a, b| format!("{a}, {b}"));
                let lag = progress
                    .and_then(|p| p.behind_since)
                    .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
                let transfer = transfers.get(&m.id).copied();
                let (state, reason) = if m.id == me && leading {
                    match alarm {
                        Some(a) => (ReplicaState::Error, a),
                        None => (ReplicaState::Ready, String::new()),
                    }
                } else if !leading {
                    let why = if status.leader_id == 0 {
                        "no leader"
                    } else {
                        "only the leader knows (this member follows)"
                    };
                    (ReplicaState::Disconnected, why.into())
                } else {
                    classify(&Seen {
                        progress,
                        report,
                        transfer,
                        send_failure: failures.get(&m.id).map(String::as_str),
                        alarm,
                        lag,
                        election_timeout: self.config.election_timeout,
                    })
                };
                ReplicaStatus {
                    id: m.id,
                    name: m.name,
                    peer_urls: m.peer_ur_ls,
                    client_urls: m.client_ur_ls,
                    role,
                    state,
                    reason,
                    raft: progress.filter(|_| m.id != me).map(|p| p.state),
                    matched_index: progress.map_or(0, |p| p.matched),
                    applied_index: if m.id == me {
                        Some(self.store.applied_index())
                    } else {
                        reports.get(&m.id).map(|r| r.applied_index)
                    },
                    lag_entries: progress
                        .map_or(0, |p| status.last_index.saturating_sub(p.matched)),
                    lag,
                    last_contact: progress
                        .filter(|_| m.id != me)
                        .and_then(|p| p.last_contact)
                        .map(|t| now.saturating_duration_since(t)),
                    active: progress.is_some_and(|p| p.active),
                    bootstrap: if state == ReplicaState::Bootstrapping {
                        bootstrap_of(transfer, report).or(Some(SnapshotBootstrap::default()))
                    } else {
                        None
                    },
                }
            })
            .collect();
        ClusterReplication {
            cluster_id: self.identity.cluster_id,
            leader_id: status.leader_id,
            term: status.term,
            last_index: status.last_index,
            commit_index: status.commit_index,
            members,
        }
    }

    /// The cluster's replication as the leader sees it, asked of the leader when this member
    /// does not lead.
    pub async fn cluster_replication(self: &Arc<Self>) -> Result<ClusterReplication, ServerError> {
        let leader = self.leader_id();
        if leader == 0 || self.is_leader() {
            return Ok(self.replication());
        }
        let urls = self
            .membership
            .get(leader)
            .map(|m| m.peer_ur_ls)
            .unwrap_or_default();
        let mut last = ServerError::NoLeader;
        for url in urls {
            let asked = async {
                let ch = self
                    .dialer()
                    .ok_or("no peer transport to ask through")?
                    .channel(&url, Some(Duration::from_secs(5)))
                    .await?;
                let r = AdminClient::new(ch)
                    .members(keel_rpc::admin::MembersRequest {})
                    .await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(r.into_inner())
            };
            match asked.await {
                Ok(r) => return Ok(from_proto(r)),
                Err(e) => last = ServerError::Internal(format!("reaching the leader: {e}")),
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::poll::Reported;
    use super::*;
    use keel_raft::{BootstrapPhase, BootstrapReport, PeerProgress};

    const TIMEOUT: Duration = Duration::from_secs(1);

    fn progress(state: Replication, active: bool, contacted: bool) -> PeerProgress {
        PeerProgress {
            id: 2,
            matched: 10,
            state,
            pending_snapshot: 0,
            active,
            learner: false,
            last_contact: contacted.then(Instant::now),
            behind_since: None,
        }
    }

    fn seen<'a>(p: Option<&'a PeerProgress>, lag: Duration) -> Seen<'a> {
        Seen {
            progress: p,
            report: None,
            transfer: None,
            send_failure: None,
            alarm: None,
            lag,
            election_timeout: TIMEOUT,
        }
    }

    fn report(phase: BootstrapPhase, failure: Option<&str>) -> Reported {
        Reported {
            at: Instant::now(),
            applied_index: 5,
            bootstrap: BootstrapReport {
                phase,
                index: 9,
                done: 30,
                total: 60,
                failure: failure.map(str::to_string),
            },
        }
    }

    #[test]
    fn contact_and_lag_decide_between_connecting_disconnected_replicating_and_ready() {
        let never = progress(Replication::Probing, false, false);
        assert_eq!(
            classify(&seen(Some(&never), TIMEOUT)).0,
            ReplicaState::Connecting
        );
        assert_eq!(classify(&seen(None, TIMEOUT)).0, ReplicaState::Connecting);
        let gone = progress(Replication::Replicating, false, true);
        let (state, reason) = classify(&seen(Some(&gone), Duration::ZERO));
        assert_eq!(state, ReplicaState::Disconnected);
        assert!(reason.contains("election timeout"), "{reason}");
        let streaming = progress(Replication::Replicating, true, true);
        let small = Duration::from_millis(30);
        assert_eq!(
            classify(&seen(Some(&streaming), small)).0,
            ReplicaState::Ready
        );
        assert_eq!(
            classify(&seen(Some(&streaming), TIMEOUT)).0,
            ReplicaState::Replicating
        );
        let probing = progress(Replication::Probing, true, true);
        assert_eq!(
            classify(&seen(Some(&probing), small)).0,
            ReplicaState::Replicating
        );
        let waiting = progress(Replication::Snapshot, true, true);
        assert_eq!(
            classify(&seen(Some(&waiting), small)).0,
            ReplicaState::Bootstrapping
        );
    }

    #[test]
    fn errors_come_first_and_a_reported_install_outranks_the_silence_it_causes() {
        let gone = progress(Replication::Probing, false, true);
        let installing = report(BootstrapPhase::Installing, None);
        let s = Seen {
            report: Some(&installing),
            ..seen(Some(&gone), TIMEOUT)
        };
        assert_eq!(classify(&s).0, ReplicaState::Bootstrapping);
        let failed = report(
            BootstrapPhase::Idle,
            Some("receiving a snapshot: disk full"),
        );
        let s = Seen {
            report: Some(&failed),
            ..seen(Some(&gone), TIMEOUT)
        };
        assert_eq!(
            classify(&s),
            (
                ReplicaState::Error,
                "receiving a snapshot: disk full".into()
            )
        );
        let s = Seen {
            alarm: Some("alarm NOSPACE raised".into()),
            ..seen(Some(&gone), TIMEOUT)
        };
        assert_eq!(classify(&s).0, ReplicaState::Error);
        // A failure reported before the attempt under way started is history.
        let transfer = keel_raft::SnapshotTransfer {
            index: 9,
            sent: 0,
            total: 100,
            started: Instant::now(),
            finished: false,
        };
        let s = Seen {
            report: Some(&failed),
            transfer: Some(transfer),
            ..seen(Some(&gone), TIMEOUT)
        };
        assert_eq!(classify(&s).0, ReplicaState::Bootstrapping);
        // A failed send to a member that does not answer is its silence, not an error.
        let s = Seen {
            send_failure: Some("sending a snapshot failed: connection refused"),
            ..seen(Some(&gone), TIMEOUT)
        };
        assert_eq!(classify(&s).0, ReplicaState::Disconnected);
        let answering = progress(Replication::Probing, true, true);
        let s = Seen {
            send_failure: Some("sending a snapshot failed: no space"),
            ..seen(Some(&answering), TIMEOUT)
        };
        assert_eq!(classify(&s).0, ReplicaState::Error);
    }

    #[test]
    fn bootstrap_progress_is_the_transfer_then_the_install() {
        let mut transfer = keel_raft::SnapshotTransfer {
            index: 9,
            sent: 50,
            total: 100,
            started: Instant::now(),
            finished: false,
        };
        let b = bootstrap_of(Some(transfer), None).unwrap();
        assert_eq!((b.index, b.progress), (9, 0.25));
        let receiving = report(BootstrapPhase::Receiving, None);
        assert_eq!(bootstrap_of(None, Some(&receiving)).unwrap().progress, 0.25);
        // Sent, while the member's last report still says it was receiving: half done.
        (transfer.sent, transfer.finished) = (100, true);
        assert_eq!(
            bootstrap_of(Some(transfer), Some(&receiving))
                .unwrap()
                .progress,
            0.5
        );
        assert_eq!(bootstrap_of(Some(transfer), None), None);
        let installing = report(BootstrapPhase::Installing, None);
        let b = bootstrap_of(None, Some(&installing)).unwrap();
        assert_eq!(
            (b.progress, b.records_installed, b.records_total),
            (0.75, 30, 60)
        );
        assert_eq!(bootstrap_of(None, None), None);
    }

    #[test]
    fn the_admin_form_round_trips() {
        let c = ClusterReplication {
            cluster_id: 1,
            leader_id: 2,
            term: 3,
            last_index: 40,
            commit_index: 39,
            members: vec![ReplicaStatus {
                id: 7,
                name: "b".into(),
                peer_urls: vec!["http://b:2380".into()],
                client_urls: vec![],
                role: ReplicaRole::Learner,
                state: ReplicaState::Bootstrapping,
                reason: String::new(),
                raft: Some(Replication::Snapshot),
                matched_index: 0,
                applied_index: Some(12),
                lag_entries: 40,
                lag: Duration::from_millis(1500),
                last_contact: Some(Duration::from_millis(20)),
                active: true,
                bootstrap: Some(SnapshotBootstrap {
                    index: 30,
                    progress: 0.75,
                    bytes_sent: 10,
                    bytes_total: 10,
                    records_installed: 5,
                    records_total: 10,
                }),
            }],
        };
        assert_eq!(from_proto(to_proto(&c)), c);
    }
}

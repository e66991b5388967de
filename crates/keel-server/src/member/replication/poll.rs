//! The leader's polls of what only each member knows of itself (its applied index, the snapshot
//! it is receiving or installing, why the last one failed), and the cache of the answers.

use std::collections::HashMap;
use std::time::Instant;

use keel_raft::{BootstrapPhase, BootstrapReport};
use keel_rpc::admin::admin_client::AdminClient;
use keel_rpc::admin::{LocalRequest, LocalResponse};
use parking_lot::Mutex;
use tonic::transport::Channel;

use super::{ASK_TIMEOUT, POLL};
use crate::member::Member;

/// What a member told the leader of itself, and when.
#[derive(Clone, Debug)]
pub(super) struct Reported {
    pub(super) at: Instant,
    pub(super) applied_index: u64,
    pub(super) bootstrap: BootstrapReport,
}

/// The leader's cache of what members told it.
#[derive(Default)]
pub struct Reports {
    pub(super) by_member: Mutex<HashMap<u64, Reported>>,
}

/// What this member tells the leader.
pub fn local(member: &Member) -> LocalResponse {
    let b = member.bootstrap().report();
    LocalResponse {
        member_id: member.identity.member_id,
        applied_index: member.store.applied_index(),
        bootstrap_phase: match b.phase {
            BootstrapPhase::Idle => "",
            BootstrapPhase::Receiving => "receiving",
            BootstrapPhase::Installing => "installing",
        }
        .into(),
        bootstrap_index: b.index,
        bootstrap_done: b.done,
        bootstrap_total: b.total,
        bootstrap_failure: b.failure.unwrap_or_default(),
    }
}

fn reported(r: LocalResponse) -> Reported {
    Reported {
        at: Instant::now(),
        applied_index: r.applied_index,
        bootstrap: BootstrapReport {
            phase: match r.bootstrap_phase.as_str() {
                "receiving" => BootstrapPhase::Receiving,
                "installing" => BootstrapPhase::Installing,
                _ => BootstrapPhase::Idle,
            },
            index: r.bootstrap_index,
            done: r.bootstrap_done,
            total: r.bootstrap_total,
            failure: Some(r.bootstrap_failure).filter(|f| !f.is_empty()),
        },
    }
}

/// While this member leads, asks every other member for its own state every [`POLL`]. Ends when
/// the member stops (aborted, or the last strong reference to it is gone).
pub(crate) async fn poll(member: std::sync::Weak<Member>) {
    let mut channels: HashMap<u64, (String, Channel)> = HashMap::new();
    loop {
        tokio::time::sleep(POLL).await;
        let Some(member) = member.upgrade() else {
            return;
        };
        if !member.is_leader() {
            channels.clear();
            member.reports.by_member.lock().clear();
            continue;
        }
        let me = member.identity.member_id;
        let members: Vec<_> = member
            .members()
            .into_iter()
            .filter(|m| m.id != me)
            .collect();
        channels.retain(|id, _| members.iter().any(|m| m.id == *id));
        member
            .reports
            .by_member
            .lock()
            .retain(|id, _| members.iter().any(|m| m.id == *id));
        let mut asks = Vec::new();
        for m in members {
            let Some(url) = m.peer_ur_ls.first().cloned() else {
                continue;
            };
            if channels.get(&m.id).is_none_or(|(u, _)| *u != url) {
                let Some(dialer) = member.dialer() else {
                    continue;
                };
                match dialer.lazy_channel(&url) {
                    Ok(ch) => {
                        channels.insert(m.id, (url, ch));
                    }
                    Err(e) => {
                        tracing::debug!(member = format!("{:x}", m.id), error = %e, "cannot dial member");
                        continue;
                    }
                }
            }
            let ch = channels[&m.id].1.clone();
            asks.push(async move {
                let asked =
                    tokio::time::timeout(ASK_TIMEOUT, AdminClient::new(ch).local(LocalRequest {}))
                        .await;
                (m.id, asked)
            });
        }
        for (id, asked) in futures::future::join_all(asks).await {
            match asked {
                Ok(Ok(r)) => {
                    member
                        .reports
                        .by_member
                        .lock()
                        .insert(id, reported(r.into_inner()));
                }
                Ok(Err(e)) => {
                    tracing::debug!(member = format!("{id:x}"), error = %e, "asking a member for its state failed")
                }
                Err(_) => tracing::debug!(
                    member = format!("{id:x}"),
                    "asking a member for its state timed out"
                ),
            }
        }
    }
}

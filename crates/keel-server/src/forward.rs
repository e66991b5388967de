//! Requests only the leader can serve (lease keep-alives and time-to-live: the leader's lessor owns
//! the clocks), forwarded by a follower to the leader. The leader serves etcd's Lease service on its
//! peer URLs too, so the follower reaches it there with an ordinary etcd client, as etcd forwards
//! over its peer URLs. Keep-alives for a lease go over one stream to the leader, kept open while
//! that member leads, rather than one stream per renewal.

use std::collections::HashMap;
use std::sync::Arc;

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper, LeaseTimeToLiveOptions};
use keel_proto::etcd::PbMember;
use parking_lot::Mutex;

use crate::lease::TimeToLive;
use crate::server::Core;
use crate::ServerError;

/// Keep-alive streams kept open before the cache is emptied (leases nobody renews any more).
const MAX_KEEPALIVE_STREAMS: usize = 10_000;

/// One lease's keep-alive stream to the leader (one renewal in flight at a time).
type KeepAlive = Arc<tokio::sync::Mutex<Option<(LeaseKeeper, LeaseKeepAliveStream)>>>;

/// A client to the current leader, reused while it leads, and its keep-alive streams.
#[derive(Default)]
pub struct LeaderLink {
    cached: Mutex<Option<(u64, Client)>>,
    keepalives: Mutex<(u64, HashMap<i64, KeepAlive>)>,
}

fn unavailable(e: etcd_client::Error) -> ServerError {
    match e {
        etcd_client::Error::GRpcStatus(s) if s.message() == ServerError::NotLeader.to_string() => {
            ServerError::NotLeader
        }
        other => ServerError::Internal(format!("forwarding to the leader: {other}")),
    }
}

fn to_pb(m: &etcd_client::Member) -> PbMember {
    PbMember {
        id: m.id(),
        name: m.name().to_string(),
        peer_ur_ls: m.peer_urls().to_vec(),
        client_ur_ls: m.client_urls().to_vec(),
        is_learner: m.is_learner(),
    }
}

/// The leader's own answer, passed on as it is.
fn forwarded(e: etcd_client::Error) -> ServerError {
    match e {
        etcd_client::Error::GRpcStatus(s) => ServerError::Remote {
            code: s.code(),
            message: s.message().to_string(),
        },
        other => unavailable(other),
    }
}

impl Core {
    async fn leader_client(&self) -> Result<Client, ServerError> {
        let leader = self.leader_id();
        if leader == 0 {
            return Err(ServerError::NoLeader);
        }
        if leader == self.identity.member_id {
            // Leading, but the lessor has not been promoted yet: the caller retries locally.
            return Err(ServerError::NotLeader);
        }
        if let Some((id, c)) = self.leader_link.cached.lock().as_ref() {
            if *id == leader {
                return Ok(c.clone());
            }
        }
        let urls = self
            .membership
            .get(leader)
            .map(|m| m.peer_ur_ls)
            .ok_or(ServerError::NoLeader)?;
        let client = Client::connect(urls, None).await.map_err(unavailable)?;
        *self.leader_link.cached.lock() = Some((leader, client.clone()));
        Ok(client)
    }

    /// Removes member `id` (the leader itself) through the leader; the members after.
    pub async fn forward_remove(&self, id: u64) -> Result<Vec<PbMember>, ServerError> {
        let mut c = self.leader_client().await?;
        let r = c.member_remove(id).await.map_err(forwarded)?;
        Ok(r.members().iter().map(to_pb).collect())
    }

    /// Promotes learner `id` on the leader (only it knows whether the learner caught up).
    pub async fn forward_promote(
        &self,
        id: u64,
    ) -> Result<Vec<keel_proto::etcd::PbMember>, ServerError> {
        let mut c = self.leader_client().await?;
        let r = c.member_promote(id).await.map_err(forwarded)?;
        Ok(r.members().iter().map(to_pb).collect())
    }

    /// The keep-alive stream slot of lease `id` for the current leader.
    fn keepalive_slot(&self, leader: u64, id: i64) -> KeepAlive {
        let mut k = self.leader_link.keepalives.lock();
        if k.0 != leader || k.1.len() > MAX_KEEPALIVE_STREAMS {
            *k = (leader, HashMap::new());
        }
        k.1.entry(id).or_default().clone()
    }

    /// Renews lease `id` on the leader; 0 if it does not exist there.
    pub async fn forward_renew(&self, id: i64) -> Result<i64, ServerError> {
        let mut c = self.leader_client().await?;
        let slot = self.keepalive_slot(self.leader_id(), id);
        let mut stream = slot.lock().await;
        if let Some((keeper, responses)) = stream.as_mut() {
            let renewed = match keeper.keep_alive().await {
                Ok(()) => responses.message().await,
                Err(e) => Err(e),
            };
            match renewed {
                Ok(Some(r)) => return Ok(r.ttl().max(0)),
                // The stream broke (the leader restarted or stepped down): open a new one.
                _ => *stream = None,
            }
        }
        let opened = match c.lease_keep_alive(id).await {
            Ok(opened) => opened,
            Err(etcd_client::Error::LeaseKeepAliveError(_)) => return Ok(0),
            Err(e) => return Err(unavailable(e)),
        };
        *stream = Some(opened);
        drop(stream);
        // Opening renewed the lease, but the client keeps that answer's TTL: ask for it.
        let ttl = c.lease_time_to_live(id, None).await.map_err(unavailable)?;
        Ok(ttl.granted_ttl().max(0))
    }

    /// Lease `id`'s time to live as the leader's lessor sees it.
    pub async fn forward_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<Option<TimeToLive>, ServerError> {
        let mut c = self.leader_client().await?;
        let opts = keys.then(|| LeaseTimeToLiveOptions::new().with_keys());
        let r = c.lease_time_to_live(id, opts).await.map_err(unavailable)?;
        Ok((r.ttl() != -1).then(|| TimeToLive {
            granted: r.granted_ttl(),
            remaining: r.ttl(),
            keys: r.keys().to_vec(),
        }))
    }
}

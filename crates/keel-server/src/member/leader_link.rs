//! Requests only the leader can serve (lease keep-alives and time-to-live: the leader's lessor owns
//! the clocks), forwarded by a follower to the leader. The leader serves etcd's Lease service on its
//! peer URLs too, so the follower reaches it there with an ordinary etcd client, as etcd forwards
//! over its peer URLs. Keep-alives for a lease go over one stream to the leader, kept open while
//! that member leads, rather than one stream per renewal.

use std::collections::HashMap;
use std::sync::Arc;

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper, LeaseTimeToLiveOptions};
use keel_rpc::etcd::{
    PbMember, PbMemberPromoteRequest, PbMemberPromoteResponse, PbMemberRemoveRequest,
    PbMemberRemoveResponse,
};
use parking_lot::Mutex;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use super::Member;
use crate::ServerError;
use keel_state::lease::TimeToLive;

/// Keep-alive streams kept open before the cache is emptied (leases nobody renews any more).
const MAX_KEEPALIVE_STREAMS: usize = 10_000;

/// One lease's keep-alive stream to the leader (one renewal in flight at a time).
type KeepAlive = Arc<tokio::sync::Mutex<Option<(LeaseKeeper, LeaseKeepAliveStream)>>>;

/// A client to the current leader, reused while it leads, and its keep-alive streams.
#[derive(Default)]
pub struct LeaderLink {
    cached: Mutex<Option<(u64, Client)>>,
    /// A channel for requests forwarded with the caller's token (which etcd-client cannot carry).
    channel: Mutex<Option<(u64, Channel)>>,
    keepalives: Mutex<(u64, HashMap<i64, KeepAlive>)>,
}

/// A failed forwarded request: the leader's own answer passed on as it gave it, else why the
/// leader could not be asked.
fn unavailable(e: etcd_client::Error) -> ServerError {
    match e {
        etcd_client::Error::GRpcStatus(s) => remote(&s),
        other => ServerError::Internal(format!("forwarding to the leader: {other}")),
    }
}

/// The leader's answer to a forwarded request, for the client as the leader gave it.
fn remote(s: &tonic::Status) -> ServerError {
    ServerError::Remote {
        code: s.code(),
        message: s.message().to_string(),
    }
}

impl Member {
    /// The leader and its peer URLs; an error if there is none, or if it is this member.
    fn leader_urls(&self) -> Result<(u64, Vec<String>), ServerError> {
        let leader = self.leader_id();
        if leader == 0 {
            return Err(ServerError::NoLeader);
        }
        if leader == self.identity.member_id {
            // Leading, but the lessor has not been promoted yet: the caller retries locally.
            return Err(ServerError::NotLeader);
        }
        let urls = self
            .membership
            .get(leader)
            .map(|m| m.peer_ur_ls)
            .ok_or(ServerError::NoLeader)?;
        Ok((leader, urls))
    }

    /// How the leader is dialed: a member whose raft messages its embedder carries has no way
    /// to reach it but raft (no leader, for a request that must go there).
    fn leader_dialer(&self) -> Result<&keel_raft::Dialer, ServerError> {
        self.dialer().ok_or(ServerError::NoLeader)
    }

    async fn leader_client(&self) -> Result<Client, ServerError> {
        let (leader, urls) = self.leader_urls()?;
        if let Some((id, c)) = self.leader_link.cached.lock().as_ref() {
            if *id == leader {
                return Ok(c.clone());
            }
        }
        let url = urls.first().ok_or(ServerError::NoLeader)?;
        let channel = self
            .leader_dialer()?
            .channel(url, None)
            .await
            .map_err(|e| {
                ServerError::Internal(format!(
                    "forwarding to the leader: {}",
                    keel_raft::dial::describe_error(e.as_ref())
                ))
            })?;
        let client = Client::from_channel(etcd_client::Channel::Tonic(channel), None)
            .await
            .map_err(unavailable)?;
        *self.leader_link.cached.lock() = Some((leader, client.clone()));
        Ok(client)
    }

    fn leader_channel(&self) -> Result<Channel, ServerError> {
        let (leader, urls) = self.leader_urls()?;
        let mut cached = self.leader_link.channel.lock();
        match cached.as_ref() {
            Some((id, c)) if *id == leader => Ok(c.clone()),
            _ => {
                let url = urls.first().ok_or(ServerError::NoLeader)?;
                let channel = self
                    .leader_dialer()?
                    .lazy_channel(url)
                    .map_err(|e| ServerError::Internal(e.to_string()))?;
                *cached = Some((leader, channel.clone()));
                Ok(channel)
            }
        }
    }

    /// Calls `path` on the leader with the caller's token, so the leader checks the same user.
    async fn forward_unary<Req, Resp>(
        &self,
        path: &'static str,
        msg: Req,
        token: Option<MetadataValue<Ascii>>,
    ) -> Result<Resp, ServerError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.leader_channel()?);
        grpc.ready()
            .await
            .map_err(|e| ServerError::Internal(format!("forwarding to the leader: {e}")))?;
        let mut req = tonic::Request::new(msg);
        if let Some(t) = token {
            req.metadata_mut().insert("token", t);
        }
        let codec = tonic_prost::ProstCodec::default();
        grpc.unary(req, PathAndQuery::from_static(path), codec)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| remote(&s))
    }

    /// Removes member `id` (the leader itself) through the leader; the members after.
    pub async fn forward_remove(
        &self,
        id: u64,
        token: Option<MetadataValue<Ascii>>,
    ) -> Result<Vec<PbMember>, ServerError> {
        let req = PbMemberRemoveRequest { id };
        let path = "/etcdserverpb.Cluster/MemberRemove";
        let r: PbMemberRemoveResponse = self.forward_unary(path, req, token).await?;
        Ok(r.members)
    }

    /// Promotes learner `id` on the leader (only it knows whether the learner caught up).
    pub async fn forward_promote(
        &self,
        id: u64,
        token: Option<MetadataValue<Ascii>>,
    ) -> Result<Vec<PbMember>, ServerError> {
        let req = PbMemberPromoteRequest { id };
        let path = "/etcdserverpb.Cluster/MemberPromote";
        let r: PbMemberPromoteResponse = self.forward_unary(path, req, token).await?;
        Ok(r.members)
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

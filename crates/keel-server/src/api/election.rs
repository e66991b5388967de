//! etcd's Election service (v3electionpb): `etcdctl elect` and clients' elections. See
//! concurrency.rs: the leader is the contender created first.

use std::sync::Arc;

use keel_rpc::v3election::election_server::{Election, ElectionServer};
use keel_rpc::v3election::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::credentials::caller;
use crate::api::concurrency::{
    check_contenders_readable, contender, contender_key, create_or_get, delete_if_held,
    put_if_held, wait_turn, Contending,
};
use crate::api::Credentials;
use crate::member::Member;
use crate::ServerError;

/// The Election service.
pub struct ElectionService {
    member: Arc<Member>,
}

impl ElectionService {
    /// The service over `member`.
    pub fn new(member: Arc<Member>) -> ElectionService {
        ElectionService { member }
    }

    /// The gRPC server of the service over `member`.
    pub fn server(member: Arc<Member>) -> ElectionServer<ElectionService> {
        ElectionServer::new(ElectionService::new(member))
    }

    /// The leader of `name`, read after a linearizable barrier.
    async fn leader_of(
        &self,
        credentials: &Credentials,
        name: &[u8],
    ) -> Result<LeaderResponse, ServerError> {
        self.member.linearizable_barrier().await?;
        let who = credentials.identify(self.member.auth())?;
        let mut prefix = name.to_vec();
        prefix.push(b'/');
        check_contenders_readable(&self.member, &who, &prefix)?;
        let (kv, rev) = contender(&self.member, &prefix, None)?;
        let kv = kv.ok_or(ServerError::ElectionNoLeader)?;
        Ok(LeaderResponse {
            header: self.member.header(rev),
            kv: Some(kv),
        })
    }
}

fn leader_key(l: Option<LeaderKey>) -> Result<LeaderKey, ServerError> {
    l.ok_or(ServerError::MissingLeaderKey)
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let who = caller(&self.member, &req)?;
        let r = req.into_inner();
        let (prefix, key) = contender_key(&r.name, r.lease);
        check_contenders_readable(&self.member, &who, &prefix)?;
        let mine = create_or_get(&self.member, &who, &key, r.value.clone(), r.lease).await?;
        let contending = Contending::new(
            self.member.clone(),
            who.clone(),
            key.clone(),
            mine.create_revision,
        );
        // Campaigning again with a new value proclaims it.
        if mine.value != r.value {
            put_if_held(
                &self.member,
                &who,
                &key,
                mine.create_revision,
                r.value,
                r.lease,
            )
            .await?;
        }
        wait_turn(&self.member, &prefix, mine.create_revision).await?;
        contending.won();
        Ok(Response::new(CampaignResponse {
            header: self.member.header(self.member.store().current_revision()),
            leader: Some(LeaderKey {
                name: r.name,
                key,
                rev: mine.create_revision,
                lease: r.lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        req: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let who = caller(&self.member, &req)?;
        let r = req.into_inner();
        let l = leader_key(r.leader)?;
        if !put_if_held(&self.member, &who, &l.key, l.rev, r.value, l.lease).await? {
            return Err(ServerError::ElectionNotLeader.into());
        }
        Ok(Response::new(ProclaimResponse {
            header: self.member.header(self.member.store().current_revision()),
        }))
    }

    async fn leader(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let credentials = Credentials::of(&req);
        let name = req.into_inner().name;
        Ok(Response::new(self.leader_of(&credentials, &name).await?))
    }

    type ObserveStream = ReceiverStream<Result<LeaderResponse, Status>>;

    /// Streams the leader whenever it (or its value) changes, until the client goes away.
    async fn observe(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let who = caller(&self.member, &req)?;
        let mut prefix = req.into_inner().name;
        prefix.push(b'/');
        check_contenders_readable(&self.member, &who, &prefix)?;
        let member = self.member.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        self.member.spawn_stream(async move {
            let mut last: Option<keel_rpc::etcd::PbKeyValue> = None;
            loop {
                let Ok((kv, rev)) = contender(&member, &prefix, None) else {
                    return;
                };
                match kv {
                    Some(kv) => {
                        if last.as_ref() != Some(&kv) {
                            let resp = LeaderResponse {
                                header: member.header(rev),
                                kv: Some(kv.clone()),
                            };
                            if tx.send(Ok(resp)).await.is_err() {
                                return;
                            }
                        }
                        // Until the leader's key changes (new value, or gone).
                        if wait_changed(&member, &kv.key, rev + 1, &tx).await.is_err() {
                            return;
                        }
                        last = Some(kv);
                    }
                    None => {
                        if wait_any(&member, &prefix, rev + 1, &tx).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn resign(
        &self,
        req: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let who = caller(&self.member, &req)?;
        let l = leader_key(req.into_inner().leader)?;
        let rev = delete_if_held(&self.member, &who, &l.key, Some(l.rev)).await?;
        Ok(Response::new(ResignResponse {
            header: self.member.header(rev),
        }))
    }
}

type Observer = tokio::sync::mpsc::Sender<Result<LeaderResponse, Status>>;

/// Waits for any change to `key` from `from` on; errs when the observer is gone.
async fn wait_changed(member: &Member, key: &[u8], from: i64, tx: &Observer) -> Result<(), ()> {
    watch_until_change(member, key.to_vec(), Vec::new(), from, tx).await
}

/// Waits for any contender of `prefix` to appear from `from` on.
async fn wait_any(member: &Member, prefix: &[u8], from: i64, tx: &Observer) -> Result<(), ()> {
    let end = crate::api::concurrency::prefix_end(prefix);
    watch_until_change(member, prefix.to_vec(), end, from, tx).await
}

async fn watch_until_change(
    member: &Member,
    key: Vec<u8>,
    range_end: Vec<u8>,
    from: i64,
    tx: &Observer,
) -> Result<(), ()> {
    let spec = crate::member::WatchSpec {
        key,
        range_end,
        start_revision: from,
        prev_kv: false,
        no_put: false,
        no_delete: false,
    };
    let watching = member
        .hub()
        .run(spec, |events, _| std::future::ready(events.is_empty()));
    tokio::select! {
        _ = watching => Ok(()),
        _ = tx.closed() => Err(()),
    }
}

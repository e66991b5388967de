//! The gateway's Lock (`/v3/lock/*`) and Election (`/v3/election/*`) routes. Observe, a stream,
//! is served over gRPC only.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::HeaderMap;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use keel_rpc::v3election::election_server::Election;
use keel_rpc::v3election::{
    CampaignRequest, LeaderKey, LeaderRequest, ProclaimRequest, ResignRequest,
};
use keel_rpc::v3lock::lock_server::Lock;
use keel_rpc::v3lock::{LockRequest, UnlockRequest};
use serde_json::{json, Map, Value};
use tonic::Status;

use super::{header_json, kv_json, num, request, route, set, Answer, Fields};
use crate::server::Core;
use crate::service::{ElectionService, LockService};

/// The routes.
pub fn routes(core: Arc<Core>) -> axum::Router {
    let lock = Arc::new(LockService::new(core.clone()));
    let election = Arc::new(ElectionService::new(core));
    axum::Router::new()
        .route("/v3/lock/lock", route(&lock, lock_route))
        .route("/v3/lock/unlock", route(&lock, unlock))
        .route("/v3/election/campaign", route(&election, campaign))
        .route("/v3/election/proclaim", route(&election, proclaim))
        .route("/v3/election/leader", route(&election, leader))
        .route("/v3/election/resign", route(&election, resign))
}

fn leader_key(f: &Fields) -> Result<LeaderKey, Status> {
    let l = f
        .object("leader")?
        .ok_or_else(|| Status::from(crate::ServerError::MissingLeaderKey))?;
    Ok(LeaderKey {
        name: l.bytes("name")?,
        key: l.bytes("key")?,
        rev: l.int("rev")?,
        lease: l.int("lease")?,
    })
}

fn leader_key_json(l: &LeaderKey) -> Value {
    let mut m = Map::new();
    set(&mut m, "name", json!(B64.encode(&l.name)));
    set(&mut m, "key", json!(B64.encode(&l.key)));
    set(&mut m, "rev", num(l.rev));
    set(&mut m, "lease", num(l.lease));
    Value::Object(m)
}

async fn lock_route(lock: Arc<LockService>, h: HeaderMap, body: Bytes) -> Answer {
    let f = Fields::parse(&body)?;
    let req = LockRequest {
        name: f.bytes("name")?,
        lease: f.int("lease")?,
    };
    let r = lock.lock(request(&h, req)).await?.into_inner();
    Ok(json!({ "header": header_json(&r.header), "key": B64.encode(&r.key) }))
}

async fn unlock(lock: Arc<LockService>, h: HeaderMap, body: Bytes) -> Answer {
    let key = Fields::parse(&body)?.bytes("key")?;
    let r = lock
        .unlock(request(&h, UnlockRequest { key }))
        .await?
        .into_inner();
    Ok(json!({ "header": header_json(&r.header) }))
}

async fn campaign(election: Arc<ElectionService>, h: HeaderMap, body: Bytes) -> Answer {
    let f = Fields::parse(&body)?;
    let req = CampaignRequest {
        name: f.bytes("name")?,
        lease: f.int("lease")?,
        value: f.bytes("value")?,
    };
    let r = election.campaign(request(&h, req)).await?.into_inner();
    let mut m = Map::new();
    m.insert("header".into(), header_json(&r.header));
    if let Some(l) = &r.leader {
        m.insert("leader".into(), leader_key_json(l));
    }
    Ok(Value::Object(m))
}

async fn proclaim(election: Arc<ElectionService>, h: HeaderMap, body: Bytes) -> Answer {
    let f = Fields::parse(&body)?;
    let req = ProclaimRequest {
        leader: Some(leader_key(&f)?),
        value: f.bytes("value")?,
    };
    let r = election.proclaim(request(&h, req)).await?.into_inner();
    Ok(json!({ "header": header_json(&r.header) }))
}

async fn leader(election: Arc<ElectionService>, h: HeaderMap, body: Bytes) -> Answer {
    let name = Fields::parse(&body)?.bytes("name")?;
    let r = election
        .leader(request(&h, LeaderRequest { name }))
        .await?
        .into_inner();
    let mut m = Map::new();
    m.insert("header".into(), header_json(&r.header));
    if let Some(kv) = &r.kv {
        m.insert("kv".into(), kv_json(kv));
    }
    Ok(Value::Object(m))
}

async fn resign(election: Arc<ElectionService>, h: HeaderMap, body: Bytes) -> Answer {
    let f = Fields::parse(&body)?;
    let req = ResignRequest {
        leader: Some(leader_key(&f)?),
    };
    let r = election.resign(request(&h, req)).await?.into_inner();
    Ok(json!({ "header": header_json(&r.header) }))
}

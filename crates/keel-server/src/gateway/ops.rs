//! The gateway's Cluster and Maintenance routes.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::HeaderMap;
use keel_rpc::etcd::{
    PbAlarmRequest as AlarmRequest, PbClusterService, PbDefragmentRequest as DefragmentRequest,
    PbHashKvRequest as HashKvRequest, PbHashRequest as HashRequest, PbMaintenanceService,
    PbMember as Member, PbMemberAddRequest as MemberAddRequest,
    PbMemberListRequest as MemberListRequest, PbMemberPromoteRequest as MemberPromoteRequest,
    PbMemberRemoveRequest as MemberRemoveRequest, PbMemberUpdateRequest as MemberUpdateRequest,
    PbMoveLeaderRequest as MoveLeaderRequest, PbResponseHeader as ResponseHeader,
    PbStatusRequest as StatusRequest,
};
use serde_json::{json, Map, Value};

use super::{header_json, num, request, route, set, Answer, Fields};
use crate::server::Core;
use crate::service::{ClusterService, MaintenanceService};

// etcdserverpb.AlarmRequest.AlarmAction and AlarmType, by name.
const ALARM_ACTIONS: [&str; 3] = ["GET", "ACTIVATE", "DEACTIVATE"];
const ALARM_TYPES: [&str; 3] = ["NONE", "NOSPACE", "CORRUPT"];

/// The routes.
pub fn routes(core: Arc<Core>) -> axum::Router {
    let cluster = Arc::new(ClusterService::new(core.clone()));
    let maintenance = Arc::new(MaintenanceService::new(core));
    axum::Router::new()
        .route("/v3/cluster/member/list", route(&cluster, member_list))
        .route("/v3/cluster/member/add", route(&cluster, member_add))
        .route("/v3/cluster/member/remove", route(&cluster, member_remove))
        .route("/v3/cluster/member/update", route(&cluster, member_update))
        .route(
            "/v3/cluster/member/promote",
            route(&cluster, member_promote),
        )
        .route("/v3/maintenance/status", route(&maintenance, status))
        .route("/v3/maintenance/alarm", route(&maintenance, alarm))
        .route(
            "/v3/maintenance/defragment",
            route(&maintenance, defragment),
        )
        .route("/v3/maintenance/hash", route(&maintenance, hash))
        .route("/v3/maintenance/hashkv", route(&maintenance, hash_kv))
        .route(
            "/v3/maintenance/transfer-leadership",
            route(&maintenance, move_leader),
        )
}

fn member_json(m: &Member) -> Value {
    let mut o = Map::new();
    set(&mut o, "ID", num(m.id));
    set(&mut o, "name", json!(m.name));
    set(&mut o, "peerURLs", json!(m.peer_ur_ls));
    set(&mut o, "clientURLs", json!(m.client_ur_ls));
    set(&mut o, "isLearner", json!(m.is_learner));
    Value::Object(o)
}

/// `{"header", "members"}`, with `member` when one was added.
fn members_json(
    header: &Option<ResponseHeader>,
    member: Option<&Member>,
    members: &[Member],
) -> Answer {
    let mut m = Map::new();
    m.insert("header".into(), header_json(header));
    if let Some(added) = member {
        m.insert("member".into(), member_json(added));
    }
    let list = members.iter().map(member_json).collect();
    set(&mut m, "members", Value::Array(list));
    Ok(Value::Object(m))
}

/// A response with only a header (none for Defragment and MoveLeader: `{}`, as etcd 3.4).
fn header_only(header: &Option<ResponseHeader>) -> Answer {
    match header {
        Some(_) => Ok(json!({ "header": header_json(header) })),
        None => Ok(json!({})),
    }
}

/// A member id.
fn id(f: &Fields, name: &str) -> Result<u64, tonic::Status> {
    f.uint(name)
}

async fn member_list(cluster: Arc<ClusterService>, h: HeaderMap, body: Bytes) -> Answer {
    let linearizable = Fields::parse(&body)?.flag("linearizable")?;
    let req = request(&h, MemberListRequest { linearizable });
    let r = cluster.member_list(req).await?.into_inner();
    members_json(&r.header, None, &r.members)
}

async fn member_add(cluster: Arc<ClusterService>, h: HeaderMap, body: Bytes) -> Answer {
    let f = Fields::parse(&body)?;
    let req = MemberAddRequest {
        peer_ur_ls: f.strings("peerURLs")?,
        is_learner: f.flag("isLearner")?,
    };
    let r = cluster.member_add(request(&h, req)).await?.into_inner();
    members_json(&r.header, r.member.as_ref(), &r.members)
}

async fn member_remove(cluster: Arc<ClusterService>, h: HeaderMap, body: Bytes) -> Answer {
    let req = MemberRemoveRequest {
        id: id(&Fields::parse(&body)?, "ID")?,
    };
    let r = cluster.member_remove(request(&h, req)).await?.into_inner();
    members_json(&r.header, None, &r.members)
}

async fn member_update(cluster: Arc<ClusterService>, h: HeaderMap, body: Bytes) -> Answer {
    let f = Fields::parse(&body)?;
    let req = MemberUpdateRequest {
        id: id(&f, "ID")?,
        peer_ur_ls: f.strings("peerURLs")?,
    };
    let r = cluster.member_update(request(&h, req)).await?.into_inner();
    members_json(&r.header, None, &r.members)
}

async fn member_promote(cluster: Arc<ClusterService>, h: HeaderMap, body: Bytes) -> Answer {
    let req = MemberPromoteRequest {
        id: id(&Fields::parse(&body)?, "ID")?,
    };
    let r = cluster.member_promote(request(&h, req)).await?.into_inner();
    members_json(&r.header, None, &r.members)
}

async fn status(maintenance: Arc<MaintenanceService>, h: HeaderMap, _: Bytes) -> Answer {
    let r = maintenance
        .status(request(&h, StatusRequest {}))
        .await?
        .into_inner();
    let mut m = Map::new();
    m.insert("header".into(), header_json(&r.header));
    set(&mut m, "version", json!(r.version));
    set(&mut m, "dbSize", num(r.db_size));
    set(&mut m, "leader", num(r.leader));
    set(&mut m, "raftIndex", num(r.raft_index));
    set(&mut m, "raftTerm", num(r.raft_term));
    set(&mut m, "raftAppliedIndex", num(r.raft_applied_index));
    set(&mut m, "errors", json!(r.errors));
    set(&mut m, "dbSizeInUse", num(r.db_size_in_use));
    set(&mut m, "isLearner", json!(r.is_learner));
    Ok(Value::Object(m))
}

async fn alarm(maintenance: Arc<MaintenanceService>, h: HeaderMap, body: Bytes) -> Answer {
    let f = Fields::parse(&body)?;
    let req = AlarmRequest {
        action: f.enumeration("action", &ALARM_ACTIONS)?,
        member_id: id(&f, "memberID")?,
        alarm: f.enumeration("alarm", &ALARM_TYPES)?,
    };
    let r = maintenance.alarm(request(&h, req)).await?.into_inner();
    let alarms: Vec<Value> = r
        .alarms
        .iter()
        .map(|a| {
            let mut o = Map::new();
            set(&mut o, "memberID", num(a.member_id));
            let name = ALARM_TYPES.get(a.alarm as usize).copied().unwrap_or("NONE");
            set(&mut o, "alarm", json!(name));
            Value::Object(o)
        })
        .collect();
    let mut m = Map::new();
    m.insert("header".into(), header_json(&r.header));
    set(&mut m, "alarms", Value::Array(alarms));
    Ok(Value::Object(m))
}

async fn defragment(maintenance: Arc<MaintenanceService>, h: HeaderMap, _: Bytes) -> Answer {
    let req = request(&h, DefragmentRequest {});
    header_only(&maintenance.defragment(req).await?.into_inner().header)
}

async fn hash(maintenance: Arc<MaintenanceService>, h: HeaderMap, _: Bytes) -> Answer {
    let r = maintenance
        .hash(request(&h, HashRequest {}))
        .await?
        .into_inner();
    Ok(json!({ "header": header_json(&r.header), "hash": r.hash }))
}

async fn hash_kv(maintenance: Arc<MaintenanceService>, h: HeaderMap, body: Bytes) -> Answer {
    let req = HashKvRequest {
        revision: Fields::parse(&body)?.int("revision")?,
    };
    let r = maintenance.hash_kv(request(&h, req)).await?.into_inner();
    let mut m = Map::new();
    m.insert("header".into(), header_json(&r.header));
    set(&mut m, "hash", json!(r.hash));
    set(&mut m, "compact_revision", num(r.compact_revision));
    set(&mut m, "hash_revision", num(r.hash_revision));
    Ok(Value::Object(m))
}

async fn move_leader(maintenance: Arc<MaintenanceService>, h: HeaderMap, body: Bytes) -> Answer {
    let req = MoveLeaderRequest {
        target_id: id(&Fields::parse(&body)?, "targetID")?,
    };
    header_only(
        &maintenance
            .move_leader(request(&h, req))
            .await?
            .into_inner()
            .header,
    )
}

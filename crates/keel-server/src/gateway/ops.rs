//! The gateway's Cluster and Maintenance routes.

use std::sync::Arc;

use keel_rpc::etcd::{PbClusterService, PbMaintenanceService};

use super::rpc;
use crate::api::{ClusterService, MaintenanceService};
use crate::member::Member;

/// The routes.
pub fn routes(member: Arc<Member>) -> axum::Router {
    let c = Arc::new(ClusterService::new(member.clone()));
    let m = Arc::new(MaintenanceService::new(member));
    axum::Router::new()
        .route(
            "/v3/cluster/member/list",
            rpc(&c, |c, r| async move { c.member_list(r).await }),
        )
        .route(
            "/v3/cluster/member/add",
            rpc(&c, |c, r| async move { c.member_add(r).await }),
        )
        .route(
            "/v3/cluster/member/remove",
            rpc(&c, |c, r| async move { c.member_remove(r).await }),
        )
        .route(
            "/v3/cluster/member/update",
            rpc(&c, |c, r| async move { c.member_update(r).await }),
        )
        .route(
            "/v3/cluster/member/promote",
            rpc(&c, |c, r| async move { c.member_promote(r).await }),
        )
        .route(
            "/v3/maintenance/status",
            rpc(&m, |m, r| async move { m.status(r).await }),
        )
        .route(
            "/v3/maintenance/alarm",
            rpc(&m, |m, r| async move { m.alarm(r).await }),
        )
        .route(
            "/v3/maintenance/defragment",
            rpc(&m, |m, r| async move { m.defragment(r).await }),
        )
        .route(
            "/v3/maintenance/hash",
            rpc(&m, |m, r| async move { m.hash(r).await }),
        )
        .route(
            "/v3/maintenance/hashkv",
            rpc(&m, |m, r| async move { m.hash_kv(r).await }),
        )
        .route(
            "/v3/maintenance/transfer-leadership",
            rpc(&m, |m, r| async move { m.move_leader(r).await }),
        )
}

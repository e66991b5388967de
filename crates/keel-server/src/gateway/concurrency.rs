//! The gateway's Lock and Election routes.

use std::sync::Arc;

use keel_rpc::v3election::election_server::Election;
use keel_rpc::v3lock::lock_server::Lock;

use super::rpc;
use crate::api::{ElectionService, LockService};
use crate::member::Member;

/// The routes.
pub fn routes(member: Arc<Member>) -> axum::Router {
    let l = Arc::new(LockService::new(member.clone()));
    let e = Arc::new(ElectionService::new(member));
    axum::Router::new()
        .route(
            "/v3/lock/lock",
            rpc(&l, |l, r| async move { l.lock(r).await }),
        )
        .route(
            "/v3/lock/unlock",
            rpc(&l, |l, r| async move { l.unlock(r).await }),
        )
        .route(
            "/v3/election/campaign",
            rpc(&e, |e, r| async move { e.campaign(r).await }),
        )
        .route(
            "/v3/election/proclaim",
            rpc(&e, |e, r| async move { e.proclaim(r).await }),
        )
        .route(
            "/v3/election/leader",
            rpc(&e, |e, r| async move { e.leader(r).await }),
        )
        .route(
            "/v3/election/resign",
            rpc(&e, |e, r| async move { e.resign(r).await }),
        )
}

//! The gateway's Auth routes.

use std::sync::Arc;

use keel_rpc::auth::auth_server::Auth;

use super::rpc;
use crate::api::AuthService;
use crate::member::Member;

/// The routes.
pub fn routes(member: Arc<Member>) -> axum::Router {
    let a = Arc::new(AuthService::new(member));
    axum::Router::new()
        .route(
            "/v3/auth/enable",
            rpc(&a, |a, r| async move { a.auth_enable(r).await }),
        )
        .route(
            "/v3/auth/disable",
            rpc(&a, |a, r| async move { a.auth_disable(r).await }),
        )
        .route(
            "/v3/auth/status",
            rpc(&a, |a, r| async move { a.auth_status(r).await }),
        )
        .route(
            "/v3/auth/authenticate",
            rpc(&a, |a, r| async move { a.authenticate(r).await }),
        )
        .route(
            "/v3/auth/user/add",
            rpc(&a, |a, r| async move { a.user_add(r).await }),
        )
        .route(
            "/v3/auth/user/get",
            rpc(&a, |a, r| async move { a.user_get(r).await }),
        )
        .route(
            "/v3/auth/user/list",
            rpc(&a, |a, r| async move { a.user_list(r).await }),
        )
        .route(
            "/v3/auth/user/delete",
            rpc(&a, |a, r| async move { a.user_delete(r).await }),
        )
        .route(
            "/v3/auth/user/changepw",
            rpc(&a, |a, r| async move { a.user_change_password(r).await }),
        )
        .route(
            "/v3/auth/user/grant",
            rpc(&a, |a, r| async move { a.user_grant_role(r).await }),
        )
        .route(
            "/v3/auth/user/revoke",
            rpc(&a, |a, r| async move { a.user_revoke_role(r).await }),
        )
        .route(
            "/v3/auth/role/add",
            rpc(&a, |a, r| async move { a.role_add(r).await }),
        )
        .route(
            "/v3/auth/role/get",
            rpc(&a, |a, r| async move { a.role_get(r).await }),
        )
        .route(
            "/v3/auth/role/list",
            rpc(&a, |a, r| async move { a.role_list(r).await }),
        )
        .route(
            "/v3/auth/role/delete",
            rpc(&a, |a, r| async move { a.role_delete(r).await }),
        )
        .route(
            "/v3/auth/role/grant",
            rpc(&a, |a, r| async move { a.role_grant_permission(r).await }),
        )
        .route(
            "/v3/auth/role/revoke",
            rpc(&a, |a, r| async move { a.role_revoke_permission(r).await }),
        )
}

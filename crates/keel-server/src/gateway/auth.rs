//! The gateway's Auth routes (`/v3/auth/...`). A token from `/v3/auth/authenticate` goes in the
//! `Authorization` header of later requests.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::HeaderMap;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use keel_rpc::auth::auth_server::Auth;
use keel_rpc::auth::AuthStatusRequest;
use keel_rpc::etcd::{
    PbAuthDisableRequest, PbAuthEnableRequest, PbAuthRoleAddRequest, PbAuthRoleDeleteRequest,
    PbAuthRoleGetRequest, PbAuthRoleGrantPermissionRequest, PbAuthRoleListRequest,
    PbAuthRoleRevokePermissionRequest, PbAuthUserAddRequest, PbAuthUserChangePasswordRequest,
    PbAuthUserDeleteRequest, PbAuthUserGetRequest, PbAuthUserGrantRoleRequest,
    PbAuthUserListRequest, PbAuthUserRevokeRoleRequest, PbAuthenticateRequest,
    PbResponseHeader as ResponseHeader,
};
use keel_rpc::PermissionRecord;
use prost::Message;
use serde_json::{json, Map, Value};
use tonic::Status;

use super::{header_json, num, request, route, set, Answer, Fields};
use crate::server::Core;
use crate::service::AuthService;

/// authpb.Permission.Type, by name.
const PERM_TYPES: [&str; 3] = ["READ", "WRITE", "READWRITE"];

/// The routes.
pub fn routes(core: Arc<Core>) -> axum::Router {
    let auth = Arc::new(AuthService::new(core));
    axum::Router::new()
        .route("/v3/auth/enable", route(&auth, enable))
        .route("/v3/auth/disable", route(&auth, disable))
        .route("/v3/auth/status", route(&auth, status))
        .route("/v3/auth/authenticate", route(&auth, authenticate))
        .route("/v3/auth/user/add", route(&auth, user_add))
        .route("/v3/auth/user/get", route(&auth, user_get))
        .route("/v3/auth/user/list", route(&auth, user_list))
        .route("/v3/auth/user/delete", route(&auth, user_delete))
        .route("/v3/auth/user/changepw", route(&auth, user_change_password))
        .route("/v3/auth/user/grant", route(&auth, user_grant))
        .route("/v3/auth/user/revoke", route(&auth, user_revoke))
        .route("/v3/auth/role/add", route(&auth, role_add))
        .route("/v3/auth/role/get", route(&auth, role_get))
        .route("/v3/auth/role/list", route(&auth, role_list))
        .route("/v3/auth/role/delete", route(&auth, role_delete))
        .route("/v3/auth/role/grant", route(&auth, role_grant))
        .route("/v3/auth/role/revoke", route(&auth, role_revoke))
}

fn done(header: &Option<ResponseHeader>) -> Answer {
    Ok(json!({ "header": header_json(header) }))
}

fn with_list(header: &Option<ResponseHeader>, name: &str, list: Vec<String>) -> Answer {
    let mut m = Map::new();
    m.insert("header".into(), header_json(header));
    set(&mut m, name, json!(list));
    Ok(Value::Object(m))
}

type Svc = Arc<AuthService>;

async fn enable(a: Svc, h: HeaderMap, _: Bytes) -> Answer {
    done(
        &a.auth_enable(request(&h, PbAuthEnableRequest {}))
            .await?
            .into_inner()
            .header,
    )
}

async fn disable(a: Svc, h: HeaderMap, _: Bytes) -> Answer {
    done(
        &a.auth_disable(request(&h, PbAuthDisableRequest {}))
            .await?
            .into_inner()
            .header,
    )
}

async fn status(a: Svc, h: HeaderMap, _: Bytes) -> Answer {
    let r = a
        .auth_status(request(&h, AuthStatusRequest {}))
        .await?
        .into_inner();
    let mut m = Map::new();
    m.insert("header".into(), header_json(&r.header));
    set(&mut m, "enabled", json!(r.enabled));
    set(&mut m, "authRevision", num(r.auth_revision));
    Ok(Value::Object(m))
}

async fn authenticate(a: Svc, h: HeaderMap, body: Bytes) -> Answer {
    let f = Fields::parse(&body)?;
    let req = PbAuthenticateRequest {
        name: f.string("name")?,
        password: f.string("password")?,
    };
    let r = a.authenticate(request(&h, req)).await?.into_inner();
    Ok(json!({ "header": header_json(&r.header), "token": r.token }))
}

async fn user_add(a: Svc, h: HeaderMap, body: Bytes) -> Answer {
    let f = Fields::parse(&body)?;
    let mut req = PbAuthUserAddRequest {
        name: f.string("name")?,
        password: f.string("password")?,
        hashed_password: f.string("hashedPassword")?,
        ..Default::default()
    };
    if let Some(o) = f.object("options")? {
        // The options message is etcd-client's private type: set it through its encoding.
        let no_password = o.flag("no_password")?;
        req.options = Some(decode_as(&[0x08, no_password as u8])?);
    }
    done(&a.user_add(request(&h, req)).await?.into_inner().header)
}

async fn user_get(a: Svc, h: HeaderMap, body: Bytes) -> Answer {
    let name = Fields::parse(&body)?.string("name")?;
    let r = a
        .user_get(request(&h, PbAuthUserGetRequest { name }))
        .await?
        .into_inner();
    with_list(&r.header, "roles", r.roles)
}

async fn user_list(a: Svc, h: HeaderMap, _: Bytes) -> Answer {
    let r = a
        .user_list(request(&h, PbAuthUserListRequest {}))
        .await?
        .into_inner();
    with_list(&r.header, "users", r.users)
}

async fn user_delete(a: Svc, h: HeaderMap, body: Bytes) -> Answer {
    let name = Fields::parse(&body)?.string("name")?;
    let req = request(&h, PbAuthUserDeleteRequest { name });
    done(&a.user_delete(req).await?.into_inner().header)
}

async fn user_change_password(a: Svc, h: HeaderMap, body: Bytes) -> Answer {
    let f = Fields::parse(&body)?;
    let req = PbAuthUserChangePasswordRequest {
        name: f.string("name")?,
        password: f.string("password")?,
        hashed_password: f.string("hashedPassword")?,
    };
    done(
        &a.user_change_password(request(&h, req))
            .await?
            .into_inner()
            .header,
    )
}

async fn user_grant(a: Svc, h: HeaderMap, body: Bytes) -> Answer {
    let f = Fields::parse(&body)?;
    let req = PbAuthUserGrantRoleRequest {
        user: f.string("user")?,
        role: f.string("role")?,
    };
    done(
        &a.user_grant_role(request(&h, req))
            .await?
            .into_inner()
            .header,
    )
}

async fn user_revoke(a: Svc, h: HeaderMap, body: Bytes) -> Answer {
    let f = Fields::parse(&body)?;
    let req = PbAuthUserRevokeRoleRequest {
        name: f.string("name")?,
        role: f.string("role")?,
    };
    done(
        &a.user_revoke_role(request(&h, req))
            .await?
            .into_inner()
            .header,
    )
}

async fn role_add(a: Svc, h: HeaderMap, body: Bytes) -> Answer {
    let name = Fields::parse(&body)?.string("name")?;
    done(
        &a.role_add(request(&h, PbAuthRoleAddRequest { name }))
            .await?
            .into_inner()
            .header,
    )
}

async fn role_get(a: Svc, h: HeaderMap, body: Bytes) -> Answer {
    let role = Fields::parse(&body)?.string("role")?;
    let r = a
        .role_get(request(&h, PbAuthRoleGetRequest { role }))
        .await?
        .into_inner();
    let perms: Vec<Value> = r
        .perm
        .iter()
        .map(|p| {
            let mut o = Map::new();
            let name = PERM_TYPES
                .get(p.perm_type as usize)
                .copied()
                .unwrap_or("READ");
            // grpc-gateway omits the default (READ), as etcd answers.
            set(
                &mut o,
                "permType",
                json!(if p.perm_type == 0 { "" } else { name }),
            );
            set(&mut o, "key", json!(B64.encode(&p.key)));
            set(&mut o, "range_end", json!(B64.encode(&p.range_end)));
            Value::Object(o)
        })
        .collect();
    let mut m = Map::new();
    m.insert("header".into(), header_json(&r.header));
    set(&mut m, "perm", Value::Array(perms));
    Ok(Value::Object(m))
}

async fn role_list(a: Svc, h: HeaderMap, _: Bytes) -> Answer {
    let r = a
        .role_list(request(&h, PbAuthRoleListRequest {}))
        .await?
        .into_inner();
    with_list(&r.header, "roles", r.roles)
}

async fn role_delete(a: Svc, h: HeaderMap, body: Bytes) -> Answer {
    let role = Fields::parse(&body)?.string("role")?;
    let req = request(&h, PbAuthRoleDeleteRequest { role });
    done(&a.role_delete(req).await?.into_inner().header)
}

async fn role_grant(a: Svc, h: HeaderMap, body: Bytes) -> Answer {
    let f = Fields::parse(&body)?;
    let perm = match f.object("perm")? {
        Some(p) => {
            let record = PermissionRecord {
                perm_type: p.enumeration("permType", &PERM_TYPES)?,
                key: p.bytes("key")?,
                range_end: p.bytes("range_end")?,
            };
            Some(decode_as(&record.encode_to_vec())?)
        }
        None => None,
    };
    let req = PbAuthRoleGrantPermissionRequest {
        name: f.string("name")?,
        perm,
    };
    done(
        &a.role_grant_permission(request(&h, req))
            .await?
            .into_inner()
            .header,
    )
}

async fn role_revoke(a: Svc, h: HeaderMap, body: Bytes) -> Answer {
    let f = Fields::parse(&body)?;
    let req = PbAuthRoleRevokePermissionRequest {
        role: f.string("role")?,
        key: f.bytes("key")?,
        range_end: f.bytes("range_end")?,
    };
    done(
        &a.role_revoke_permission(request(&h, req))
            .await?
            .into_inner()
            .header,
    )
}

/// An etcd-client message type this crate cannot name, from its wire encoding.
fn decode_as<T: Message + Default>(bytes: &[u8]) -> Result<T, Status> {
    T::decode(bytes).map_err(|e| Status::internal(e.to_string()))
}

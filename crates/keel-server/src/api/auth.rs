//! etcd's Auth service. Changes go through raft (the state machine checks the caller is root
//! again, against the state it applies to); reads are served locally after a ReadIndex barrier.
//! Passwords are hashed (and checked) here, off the async threads, so the log never holds one.

use std::sync::Arc;

use keel_rpc::auth::auth_server::{Auth, AuthServer};
use keel_rpc::auth::{AuthStatusRequest, AuthStatusResponse};
use keel_rpc::etcd::{
    PbAuthDisableRequest as AuthDisableRequest, PbAuthDisableResponse as AuthDisableResponse,
    PbAuthEnableRequest as AuthEnableRequest, PbAuthEnableResponse as AuthEnableResponse,
    PbAuthRoleAddRequest as RoleAddRequest, PbAuthRoleAddResponse as RoleAddResponse,
    PbAuthRoleDeleteRequest as RoleDeleteRequest, PbAuthRoleDeleteResponse as RoleDeleteResponse,
    PbAuthRoleGetRequest as RoleGetRequest, PbAuthRoleGetResponse as RoleGetResponse,
    PbAuthRoleGrantPermissionRequest as RoleGrantRequest,
    PbAuthRoleGrantPermissionResponse as RoleGrantResponse,
    PbAuthRoleListRequest as RoleListRequest, PbAuthRoleListResponse as RoleListResponse,
    PbAuthRoleRevokePermissionRequest as RoleRevokeRequest,
    PbAuthRoleRevokePermissionResponse as RoleRevokeResponse,
    PbAuthUserAddRequest as UserAddRequest, PbAuthUserAddResponse as UserAddResponse,
    PbAuthUserChangePasswordRequest as ChangePasswordRequest,
    PbAuthUserChangePasswordResponse as ChangePasswordResponse,
    PbAuthUserDeleteRequest as UserDeleteRequest, PbAuthUserDeleteResponse as UserDeleteResponse,
    PbAuthUserGetRequest as UserGetRequest, PbAuthUserGetResponse as UserGetResponse,
    PbAuthUserGrantRoleRequest as GrantRoleRequest,
    PbAuthUserGrantRoleResponse as GrantRoleResponse, PbAuthUserListRequest as UserListRequest,
    PbAuthUserListResponse as UserListResponse, PbAuthUserRevokeRoleRequest as RevokeRoleRequest,
    PbAuthUserRevokeRoleResponse as RevokeRoleResponse,
    PbAuthenticateRequest as AuthenticateRequest, PbAuthenticateResponse as AuthenticateResponse,
    PbResponseHeader,
};
use keel_rpc::RequestAuth;
use keel_state::Proposal;
use prost::Message;
use tonic::{Request, Response, Status};

use super::credentials::{admin, caller};
use crate::member::Member;
use crate::password::{hash_password, password_matches};
use crate::ServerError;

/// Times Authenticate checks the password again when the user changed while it was checked.
const AUTHENTICATE_ATTEMPTS: usize = 3;

/// The Auth service.
pub struct AuthService {
    member: Arc<Member>,
}

impl AuthService {
    /// The service over `member`.
    pub fn new(member: Arc<Member>) -> AuthService {
        AuthService { member }
    }

    /// The gRPC server of the service over `member`.
    pub fn server(member: Arc<Member>) -> AuthServer<AuthService> {
        AuthServer::new(AuthService::new(member))
    }

    fn header(&self) -> Option<PbResponseHeader> {
        self.member.header(self.member.store().current_revision())
    }

    /// Proposes an auth change for a root caller.
    async fn change<T, P: Proposal<Reply = ()>>(
        &self,
        req: &Request<T>,
        change: P,
    ) -> Result<Option<PbResponseHeader>, ServerError> {
        let who = admin(&self.member, req)?;
        self.propose(&who, change).await
    }

    async fn propose<P: Proposal<Reply = ()>>(
        &self,
        who: &RequestAuth,
        change: P,
    ) -> Result<Option<PbResponseHeader>, ServerError> {
        self.member.propose(who, change).await?;
        Ok(self.header())
    }

    /// A bcrypt hash of `password`, made off the async threads.
    async fn hash(&self, password: String) -> Result<String, ServerError> {
        let cost = self.member.config().bcrypt_cost;
        self.member
            .blocking(move || hash_password(&password, cost))
            .await?
    }

    /// Checks `name`'s password; the auth revision it was checked at.
    async fn check_password(&self, name: &str, password: &str) -> Result<u64, ServerError> {
        let (hash, revision) = self.member.auth().password_of(name)?;
        let hash = hash.ok_or(ServerError::State(keel_state::StateError::AuthFailed))?;
        let password = password.to_string();
        let matches = self
            .member
            .blocking(move || password_matches(&password, &hash))
            .await?;
        if !matches {
            tracing::warn!(user = name, "authentication failed: wrong password");
            return Err(ServerError::State(keel_state::StateError::AuthFailed));
        }
        Ok(revision)
    }

    /// A root caller, or (for reads of its own user or roles) the user asking about itself.
    async fn reader<T>(
        &self,
        req: &Request<T>,
        allowed: impl Fn(&RequestAuth) -> bool,
    ) -> Result<(), ServerError> {
        self.member.linearizable_barrier().await?;
        let who = caller(&self.member, req)?;
        match self.member.auth().check_admin(&who) {
            Err(_) if allowed(&who) => Ok(()),
            other => Ok(other?),
        }
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        req: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let body = AuthEnableRequest {};
        let header = self.change(&req, body).await?;
        Ok(Response::new(AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        req: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let body = AuthDisableRequest {};
        let header = self.change(&req, body).await?;
        Ok(Response::new(AuthDisableResponse { header }))
    }

    async fn auth_status(
        &self,
        _: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        self.member.linearizable_barrier().await?;
        Ok(Response::new(AuthStatusResponse {
            header: self.header(),
            enabled: self.member.auth().enabled(),
            auth_revision: self.member.auth().revision(),
        }))
    }

    /// Checks the password here; a simple token is then proposed so every member knows it, a JWT
    /// is signed here.
    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let r = req.into_inner();
        self.member.linearizable_barrier().await?;
        for _ in 0..AUTHENTICATE_ATTEMPTS {
            let revision = self.check_password(&r.name, &r.password).await?;
            let auth = self.member.auth();
            let token = if auth.tokens.is_jwt() {
                auth.tokens
                    .sign(&r.name, revision)
                    .map_err(ServerError::Internal)?
            } else {
                let who = RequestAuth {
                    username: r.name.clone(),
                    revision,
                };
                let request = keel_rpc::Authenticate {
                    name: r.name.clone(),
                    token_prefix: crate::member::Tokens::new_prefix(),
                };
                match self.member.propose(&who, request).await {
                    Ok(token) => token,
                    // The user changed while its password was checked: check again.
                    Err(ServerError::State(keel_state::StateError::AuthOldRevision)) => continue,
                    Err(e) => return Err(e.into()),
                }
            };
            return Ok(Response::new(AuthenticateResponse {
                header: self.header(),
                token,
            }));
        }
        Err(ServerError::State(keel_state::StateError::AuthOldRevision).into())
    }

    async fn user_add(
        &self,
        req: Request<UserAddRequest>,
    ) -> Result<Response<UserAddResponse>, Status> {
        let who = admin(&self.member, &req)?;
        let mut r = req.into_inner();
        let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
        // A client may send the hash itself (etcd 3.5); else the password is hashed here.
        if !no_password && r.hashed_password.is_empty() {
            r.hashed_password = self.hash(std::mem::take(&mut r.password)).await?;
        }
        r.password.clear();
        let header = self.propose(&who, r).await?;
        Ok(Response::new(UserAddResponse { header }))
    }

    async fn user_get(
        &self,
        req: Request<UserGetRequest>,
    ) -> Result<Response<UserGetResponse>, Status> {
        let name = req.get_ref().name.clone();
        self.reader(&req, |who| who.username == name).await?;
        Ok(Response::new(UserGetResponse {
            header: self.header(),
            roles: self
                .member
                .auth()
                .user_roles(&name)
                .map_err(ServerError::from)?,
        }))
    }

    async fn user_list(
        &self,
        req: Request<UserListRequest>,
    ) -> Result<Response<UserListResponse>, Status> {
        self.reader(&req, |_| false).await?;
        Ok(Response::new(UserListResponse {
            header: self.header(),
            users: self.member.auth().user_names(),
        }))
    }

    async fn user_delete(
        &self,
        req: Request<UserDeleteRequest>,
    ) -> Result<Response<UserDeleteResponse>, Status> {
        let body = req.get_ref().clone();
        let header = self.change(&req, body).await?;
        Ok(Response::new(UserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        req: Request<ChangePasswordRequest>,
    ) -> Result<Response<ChangePasswordResponse>, Status> {
        let who = admin(&self.member, &req)?;
        let mut r = req.into_inner();
        if r.hashed_password.is_empty() {
            r.hashed_password = self.hash(std::mem::take(&mut r.password)).await?;
        }
        r.password.clear();
        let header = self.propose(&who, r).await?;
        Ok(Response::new(ChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        req: Request<GrantRoleRequest>,
    ) -> Result<Response<GrantRoleResponse>, Status> {
        let body = req.get_ref().clone();
        let header = self.change(&req, body).await?;
        Ok(Response::new(GrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        req: Request<RevokeRoleRequest>,
    ) -> Result<Response<RevokeRoleResponse>, Status> {
        let body = req.get_ref().clone();
        let header = self.change(&req, body).await?;
        Ok(Response::new(RevokeRoleResponse { header }))
    }

    async fn role_add(
        &self,
        req: Request<RoleAddRequest>,
    ) -> Result<Response<RoleAddResponse>, Status> {
        let body = req.get_ref().clone();
        let header = self.change(&req, body).await?;
        Ok(Response::new(RoleAddResponse { header }))
    }

    async fn role_get(
        &self,
        req: Request<RoleGetRequest>,
    ) -> Result<Response<RoleGetResponse>, Status> {
        let role = req.get_ref().role.clone();
        let auth = self.member.auth();
        self.reader(&req, |who| auth.has_role(&who.username, &role))
            .await?;
        // Keel's permission record has etcd's authpb.Permission encoding.
        let perm = auth
            .role_permissions(&role)
            .map_err(ServerError::from)?
            .iter()
            .map(|p| Message::decode(p.encode_to_vec().as_slice()))
            .collect::<Result<_, _>>()
            .map_err(|e| ServerError::Internal(e.to_string()))?;
        Ok(Response::new(RoleGetResponse {
            header: self.header(),
            perm,
        }))
    }

    async fn role_list(
        &self,
        req: Request<RoleListRequest>,
    ) -> Result<Response<RoleListResponse>, Status> {
        self.reader(&req, |_| false).await?;
        Ok(Response::new(RoleListResponse {
            header: self.header(),
            roles: self.member.auth().role_names(),
        }))
    }

    async fn role_delete(
        &self,
        req: Request<RoleDeleteRequest>,
    ) -> Result<Response<RoleDeleteResponse>, Status> {
        let body = req.get_ref().clone();
        let header = self.change(&req, body).await?;
        Ok(Response::new(RoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<RoleGrantRequest>,
    ) -> Result<Response<RoleGrantResponse>, Status> {
        let body = req.get_ref().clone();
        let header = self.change(&req, body).await?;
        Ok(Response::new(RoleGrantResponse { header }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<RoleRevokeRequest>,
    ) -> Result<Response<RoleRevokeResponse>, Status> {
        let body = req.get_ref().clone();
        let header = self.change(&req, body).await?;
        Ok(Response::new(RoleRevokeResponse { header }))
    }
}

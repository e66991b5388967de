//! The state machine: one committed request applied to a write batch. Nothing here reads the clock
//! or local configuration: every member applies the same log to the same state.

use std::sync::Arc;

use keel_mvcc::{KeySpan, WriteBatch};
use keel_proto::etcd::PbMember as Member;
use keel_proto::etcd::{
    PbCompactionRequest as CompactionRequest, PbCompactionResponse as CompactionResponse,
    PbDeleteRequest as DeleteRangeRequest, PbDeleteResponse as DeleteRangeResponse,
    PbLeaseGrantRequest as LeaseGrantRequest, PbLeaseGrantResponse as LeaseGrantResponse,
    PbLeaseRevokeResponse as LeaseRevokeResponse, PbPutRequest as PutRequest,
    PbPutResponse as PutResponse, PbTxnResponse as TxnResponse,
};
use keel_proto::{RequestAuth, RequestBody};

use crate::alarm::Alarms;
use crate::auth::AuthStore;
use crate::lease::Lessor;
use crate::membership::Membership;
use crate::txn::{self, header};
use crate::StateError;

/// The result of applying one request.
#[derive(Debug)]
pub enum Response {
    /// KV.Put.
    Put(PutResponse),
    /// KV.DeleteRange.
    DeleteRange(DeleteRangeResponse),
    /// KV.Txn.
    Txn(TxnResponse),
    /// KV.Compact.
    Compaction(CompactionResponse),
    /// Lease.LeaseGrant.
    LeaseGrant(LeaseGrantResponse),
    /// Lease.LeaseRevoke.
    LeaseRevoke(LeaseRevokeResponse),
    /// A member's attributes were recorded.
    MemberAttributes,
    /// A membership change was applied: the members after it.
    Members(Vec<Member>),
    /// An alarm was raised or cleared: the alarm changed (none if nothing changed).
    Alarm(Vec<keel_proto::etcd::PbAlarmMember>),
    /// The auth state changed (or was already as asked).
    AuthChanged,
    /// A user authenticated: its simple token.
    Authenticated(String),
    /// Leases' remaining TTLs were recorded.
    LeaseCheckpointed,
}

/// The parts of the state machine beside the key-value store.
pub struct Machine {
    /// The leases and their keys.
    pub leases: Arc<Lessor>,
    /// The cluster's members.
    pub members: Arc<Membership>,
    /// The raised alarms.
    pub alarms: Arc<Alarms>,
    /// Users, roles and permissions.
    pub auth: Arc<AuthStore>,
}

/// What a proposer receives once its entry is applied.
pub type Applied = Result<Response, StateError>;

/// Applies one request, proposed for `who` as entry `index`, to the write batch.
pub fn apply(
    wb: &mut WriteBatch<'_>,
    machine: &Machine,
    body: &RequestBody,
    who: Option<&RequestAuth>,
    index: u64,
) -> Applied {
    let leases = &*machine.leases;
    // While NOSPACE is raised nothing may grow the store (etcd's capped applier).
    if machine.alarms.nospace() && grows(body) {
        return Err(StateError::NoSpace);
    }
    machine.auth.authorize(who, body, leases)?;
    use RequestBody::*;
    match body {
        RequestBody::Put(p) => apply_put(wb, leases, p).map(Response::Put),
        RequestBody::DeleteRange(d) => apply_delete(wb, leases, d).map(Response::DeleteRange),
        RequestBody::Txn(t) => txn::txn_write(wb, t, leases).map(Response::Txn),
        RequestBody::Compaction(c) => apply_compaction(wb, c).map(Response::Compaction),
        RequestBody::LeaseGrant(g) => apply_lease_grant(wb, leases, g).map(Response::LeaseGrant),
        RequestBody::LeaseCheckpoint(cp) => {
            leases.checkpoint(wb, cp);
            Ok(Response::LeaseCheckpointed)
        }
        RequestBody::LeaseRevoke(r) => {
            apply_lease_revoke(wb, leases, r.id).map(Response::LeaseRevoke)
        }
        RequestBody::MemberAttributes(a) => {
            machine.members.publish(wb, a);
            Ok(Response::MemberAttributes)
        }
        RequestBody::Alarm(a) => Ok(Response::Alarm(machine.alarms.apply(wb, a))),
        RequestBody::MemberUpdate(u) => machine
            .members
            .update_peer_urls(wb, u.id, &u.peer_ur_ls)
            .map(Response::Members),
        AuthEnable(_)
        | AuthDisable(_)
        | Authenticate(_)
        | UserAdd(_)
        | UserDelete(_)
        | UserChangePassword(_)
        | UserGrantRole(_)
        | UserRevokeRole(_)
        | RoleAdd(_)
        | RoleDelete(_)
        | RoleGrantPermission(_)
        | RoleRevokePermission(_) => Ok(match machine.auth.apply(wb, body, index)? {
            Some(token) => Response::Authenticated(token),
            None => Response::AuthChanged,
        }),
    }
}

/// Whether the request may grow the store: refused under NOSPACE, checked against the quota.
pub fn grows(body: &RequestBody) -> bool {
    match body {
        RequestBody::Put(_) | RequestBody::LeaseGrant(_) => true,
        RequestBody::Txn(t) => txn::has_put(t),
        _ => false,
    }
}

fn apply_put(
    wb: &mut WriteBatch<'_>,
    leases: &Lessor,
    p: &PutRequest,
) -> Result<PutResponse, StateError> {
    txn::check_put(wb, p, leases)?;
    wb.begin();
    let mut resp = txn::put(wb, leases, p)?;
    resp.header = header(wb.end());
    Ok(resp)
}

fn apply_delete(
    wb: &mut WriteBatch<'_>,
    leases: &Lessor,
    d: &DeleteRangeRequest,
) -> Result<DeleteRangeResponse, StateError> {
    wb.begin();
    let mut resp = txn::delete(wb, leases, d)?;
    resp.header = header(wb.end());
    Ok(resp)
}

/// The proposer chose the id and the effective TTL, so every member grants the same lease.
fn apply_lease_grant(
    wb: &mut WriteBatch<'_>,
    leases: &Lessor,
    g: &LeaseGrantRequest,
) -> Result<LeaseGrantResponse, StateError> {
    leases.grant(wb, g.id, g.ttl)?;
    Ok(LeaseGrantResponse {
        header: header(wb.read_revision()),
        id: g.id,
        ttl: g.ttl,
        error: String::new(),
    })
}

/// Deletes every key attached to the lease in one write transaction (one revision, none if it has
/// no keys), in key order on every member, then forgets the lease.
fn apply_lease_revoke(
    wb: &mut WriteBatch<'_>,
    leases: &Lessor,
    id: i64,
) -> Result<LeaseRevokeResponse, StateError> {
    let keys = leases.keys(id).ok_or(StateError::LeaseNotFound)?;
    wb.begin();
    for key in &keys {
        txn::delete_span(wb, leases, KeySpan::Single(key))?;
    }
    let revision = wb.end();
    leases.remove(wb, id);
    Ok(LeaseRevokeResponse {
        header: header(revision),
    })
}

fn apply_compaction(
    wb: &mut WriteBatch<'_>,
    c: &CompactionRequest,
) -> Result<CompactionResponse, StateError> {
    // Physical compaction happens in this same batch, so `physical` needs no extra wait.
    wb.compact(c.revision)?;
    Ok(CompactionResponse {
        header: header(wb.end()),
    })
}

/// A request whose applied response has one kind, named here: what its proposer gets back, so no
/// caller matches on the response kind.
pub trait Proposal {
    /// What applying the request answers.
    type Reply;
    /// The request as a raft entry's body.
    fn into_body(self) -> RequestBody;
    /// The reply inside the response `apply` gave (it answers every request kind with its own
    /// response kind; anything else is a broken state machine, reported as a storage error).
    fn reply(applied: Response) -> Result<Self::Reply, StateError>;
}

fn misanswered(body: &str, applied: Response) -> StateError {
    StateError::Storage(format!("{body} was answered with {applied:?}"))
}

/// Requests answered with a response message (or list) of their own.
macro_rules! proposals {
    ($($request:ty => $body:ident, $response:ident($reply:ty);)*) => {$(
        impl Proposal for $request {
            type Reply = $reply;
            fn into_body(self) -> RequestBody {
                RequestBody::$body(self)
            }
            fn reply(applied: Response) -> Result<$reply, StateError> {
                match applied {
                    Response::$response(r) => Ok(r),
                    other => Err(misanswered(stringify!($body), other)),
                }
            }
        }
    )*};
}

/// Auth changes: answered with nothing but their success.
macro_rules! auth_changes {
    ($($request:ty => $body:ident;)*) => {$(
        impl Proposal for $request {
            type Reply = ();
            fn into_body(self) -> RequestBody {
                RequestBody::$body(self)
            }
            fn reply(applied: Response) -> Result<(), StateError> {
                match applied {
                    Response::AuthChanged => Ok(()),
                    other => Err(misanswered(stringify!($body), other)),
                }
            }
        }
    )*};
}

use keel_proto::etcd::{
    PbAlarmMember, PbAlarmRequest, PbAuthDisableRequest, PbAuthEnableRequest, PbAuthRoleAddRequest,
    PbAuthRoleDeleteRequest, PbAuthRoleGrantPermissionRequest, PbAuthRoleRevokePermissionRequest,
    PbAuthUserAddRequest, PbAuthUserChangePasswordRequest, PbAuthUserDeleteRequest,
    PbAuthUserGrantRoleRequest, PbAuthUserRevokeRoleRequest, PbLeaseRevokeRequest,
    PbMemberUpdateRequest,
};

proposals! {
    PutRequest => Put, Put(PutResponse);
    DeleteRangeRequest => DeleteRange, DeleteRange(DeleteRangeResponse);
    keel_proto::etcd::PbTxnRequest => Txn, Txn(TxnResponse);
    CompactionRequest => Compaction, Compaction(CompactionResponse);
    LeaseGrantRequest => LeaseGrant, LeaseGrant(LeaseGrantResponse);
    PbLeaseRevokeRequest => LeaseRevoke, LeaseRevoke(LeaseRevokeResponse);
    PbMemberUpdateRequest => MemberUpdate, Members(Vec<Member>);
    PbAlarmRequest => Alarm, Alarm(Vec<PbAlarmMember>);
    keel_proto::Authenticate => Authenticate, Authenticated(String);
}

auth_changes! {
    PbAuthEnableRequest => AuthEnable;
    PbAuthDisableRequest => AuthDisable;
    PbAuthUserAddRequest => UserAdd;
    PbAuthUserDeleteRequest => UserDelete;
    PbAuthUserChangePasswordRequest => UserChangePassword;
    PbAuthUserGrantRoleRequest => UserGrantRole;
    PbAuthUserRevokeRoleRequest => UserRevokeRole;
    PbAuthRoleAddRequest => RoleAdd;
    PbAuthRoleDeleteRequest => RoleDelete;
    PbAuthRoleGrantPermissionRequest => RoleGrantPermission;
    PbAuthRoleRevokePermissionRequest => RoleRevokePermission;
}

//! etcd's raft entries as Keel's: the payload of each entry of an imported etcd WAL rewritten in
//! Keel's encoding (same index, same term), so that Keel's own apply loop replays it, and the
//! members etcd's entries and v2 store describe.
//!
//! etcd's normal entries carry an `InternalRaftRequest` (its client mutations are the same
//! `etcdserverpb` messages Keel's entries carry), or a bare v2 `Request` (members publishing their
//! attributes, the cluster version). Its conf changes carry the member as JSON.

use std::collections::{BTreeMap, BTreeSet};

use keel_raft::{ConfChange, ConfChangeType, Entry};
use keel_rpc::etcd::{
    PbAlarmRequest, PbAuthDisableRequest, PbAuthEnableRequest, PbAuthRoleAddRequest,
    PbAuthRoleDeleteRequest, PbAuthRoleGrantPermissionRequest, PbAuthRoleRevokePermissionRequest,
    PbAuthUserAddRequest, PbAuthUserChangePasswordRequest, PbAuthUserDeleteRequest,
    PbAuthUserGrantRoleRequest, PbAuthUserRevokeRoleRequest, PbCompactionRequest, PbDeleteRequest,
    PbLeaseGrantRequest, PbLeaseRevokeRequest, PbMember, PbMemberUpdateRequest, PbPutRequest,
    PbTxnRequest,
};
use keel_rpc::{
    InternalRequest, LeaseCheckpoint, MemberAttributes, MemberChange, RequestAuth, RequestBody,
};
use prost::Message;
use serde_json::Value;

use keel_mvcc::WriteBatch;

use super::etcd_wal::EtcdEntry;
use super::BackupError;
use crate::membership::Membership;

/// etcd's `InternalRaftRequest`: the fields that change state (reads, v2 requests and
/// authentication attempts leave Keel's state alone and are left out).
#[derive(Clone, PartialEq, prost::Message)]
struct EtcdRequest {
    #[prost(message, optional, tag = "100")]
    header: Option<EtcdHeader>,
    #[prost(message, optional, tag = "4")]
    put: Option<PbPutRequest>,
    #[prost(message, optional, tag = "5")]
    delete_range: Option<PbDeleteRequest>,
    #[prost(message, optional, tag = "6")]
    txn: Option<PbTxnRequest>,
    #[prost(message, optional, tag = "7")]
    compaction: Option<PbCompactionRequest>,
    #[prost(message, optional, tag = "8")]
    lease_grant: Option<PbLeaseGrantRequest>,
    #[prost(message, optional, tag = "9")]
    lease_revoke: Option<PbLeaseRevokeRequest>,
    #[prost(message, optional, tag = "10")]
    alarm: Option<PbAlarmRequest>,
    #[prost(message, optional, tag = "11")]
    lease_checkpoint: Option<LeaseCheckpoint>,
    #[prost(message, optional, tag = "1000")]
    auth_enable: Option<PbAuthEnableRequest>,
    #[prost(message, optional, tag = "1011")]
    auth_disable: Option<PbAuthDisableRequest>,
    #[prost(message, optional, tag = "1100")]
    user_add: Option<PbAuthUserAddRequest>,
    #[prost(message, optional, tag = "1101")]
    user_delete: Option<PbAuthUserDeleteRequest>,
    #[prost(message, optional, tag = "1103")]
    user_change_password: Option<PbAuthUserChangePasswordRequest>,
    #[prost(message, optional, tag = "1104")]
    user_grant_role: Option<PbAuthUserGrantRoleRequest>,
    #[prost(message, optional, tag = "1105")]
    user_revoke_role: Option<PbAuthUserRevokeRoleRequest>,
    #[prost(message, optional, tag = "1200")]
    role_add: Option<PbAuthRoleAddRequest>,
    #[prost(message, optional, tag = "1201")]
    role_delete: Option<PbAuthRoleDeleteRequest>,
    #[prost(message, optional, tag = "1203")]
    role_grant_permission: Option<PbAuthRoleGrantPermissionRequest>,
    #[prost(message, optional, tag = "1204")]
    role_revoke_permission: Option<PbAuthRoleRevokePermissionRequest>,
    /// etcd 3.5's `ClusterMemberAttrSetRequest`.
    #[prost(message, optional, tag = "1301")]
    member_attr_set: Option<EtcdMemberAttrSet>,
}

/// etcd's `RequestHeader`: who proposed a request.
#[derive(Clone, PartialEq, prost::Message)]
struct EtcdHeader {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(string, tag = "2")]
    username: String,
    #[prost(uint64, tag = "3")]
    auth_revision: u64,
}

/// etcd 3.5's `ClusterMemberAttrSetRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct EtcdMemberAttrSet {
    #[prost(uint64, tag = "1")]
    member_id: u64,
    #[prost(message, optional, tag = "2")]
    attributes: Option<EtcdAttributes>,
}

/// etcd's `membershippb.Attributes`.
#[derive(Clone, PartialEq, prost::Message)]
struct EtcdAttributes {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, repeated, tag = "2")]
    client_urls: Vec<String>,
}

/// etcd's v2 `Request` (only what a member's attributes need).
#[derive(Clone, PartialEq, prost::Message)]
struct V2Request {
    #[prost(string, tag = "2")]
    method: String,
    #[prost(string, tag = "3")]
    path: String,
    #[prost(string, tag = "4")]
    val: String,
}

/// etcd's `raftpb.ConfChange`.
#[derive(Clone, PartialEq, prost::Message)]
struct EtcdConfChange {
    #[prost(int32, tag = "2")]
    kind: i32,
    #[prost(uint64, tag = "3")]
    node_id: u64,
    #[prost(bytes = "vec", tag = "4")]
    context: Vec<u8>,
}

const ADD_NODE: i32 = 0;
const REMOVE_NODE: i32 = 1;
const UPDATE_NODE: i32 = 2;
const ADD_LEARNER_NODE: i32 = 3;

/// What one etcd entry does, in Keel's terms.
enum Change {
    /// A client mutation (or a member's publication) Keel's state machine applies.
    Request(RequestBody, Option<RequestAuth>),
    /// A raft membership change.
    Conf(ConfChangeType, PbMember),
    /// Nothing Keel keeps (a read, the cluster version, an authentication attempt, an empty
    /// entry of a new leader).
    Nothing,
}

/// What `e` does; passwords are hashed with `bcrypt_cost` when one is given.
fn decode(e: &EtcdEntry, bcrypt_cost: Option<u32>) -> Result<Change, String> {
    match e.kind {
        0 if e.data.is_empty() => Ok(Change::Nothing),
        0 => decode_normal(&e.data, bcrypt_cost),
        1 => decode_conf_change(&e.data),
        other => Err(format!("entry type {other} (a joint membership change)")),
    }
}

fn decode_normal(data: &[u8], bcrypt_cost: Option<u32>) -> Result<Change, String> {
    // Since etcd 3.0 every request has a header; a bare v2 request (attributes, cluster version)
    // has none, as etcd tells them apart.
    let req = match EtcdRequest::decode(data) {
        Ok(req) if req.header.is_some() => req,
        parsed => match V2Request::decode(data) {
            Ok(v2) => return Ok(decode_v2(&v2)),
            Err(e) => parsed.map_err(|_| e.to_string())?,
        },
    };
    let auth = req
        .header
        .as_ref()
        .filter(|h| !h.username.is_empty())
        .map(|h| RequestAuth {
            username: h.username.clone(),
            revision: h.auth_revision,
        });
    use RequestBody::*;
    let body = if let Some(r) = req.put {
        Put(r)
    } else if let Some(r) = req.delete_range {
        DeleteRange(r)
    } else if let Some(r) = req.txn {
        Txn(r)
    } else if let Some(r) = req.compaction {
        Compaction(r)
    } else if let Some(r) = req.lease_grant {
        LeaseGrant(r)
    } else if let Some(r) = req.lease_revoke {
        LeaseRevoke(r)
    } else if let Some(r) = req.alarm {
        Alarm(r)
    } else if let Some(r) = req.lease_checkpoint {
        LeaseCheckpoint(r)
    } else if let Some(r) = req.auth_enable {
        AuthEnable(r)
    } else if let Some(r) = req.auth_disable {
        AuthDisable(r)
    } else if let Some(mut r) = req.user_add {
        // etcd 3.4 replicates the password itself; Keel's entries carry its hash.
        if r.hashed_password.is_empty() && !r.password.is_empty() {
            r.hashed_password = hash(&r.password, bcrypt_cost)?;
        }
        r.password.clear();
        UserAdd(r)
    } else if let Some(r) = req.user_delete {
        UserDelete(r)
    } else if let Some(mut r) = req.user_change_password {
        if r.hashed_password.is_empty() {
            r.hashed_password = hash(&r.password, bcrypt_cost)?;
        }
        r.password.clear();
        UserChangePassword(r)
    } else if let Some(r) = req.user_grant_role {
        UserGrantRole(r)
    } else if let Some(r) = req.user_revoke_role {
        UserRevokeRole(r)
    } else if let Some(r) = req.role_add {
        RoleAdd(r)
    } else if let Some(r) = req.role_delete {
        RoleDelete(r)
    } else if let Some(r) = req.role_grant_permission {
        RoleGrantPermission(r)
    } else if let Some(r) = req.role_revoke_permission {
        RoleRevokePermission(r)
    } else if let Some(r) = req.member_attr_set {
        let a = r.attributes.unwrap_or_default();
        MemberAttributes(keel_rpc::MemberAttributes {
            member_id: r.member_id,
            name: a.name,
            client_urls: a.client_urls,
        })
    } else {
        return Ok(Change::Nothing);
    };
    Ok(Change::Request(body, auth))
}

fn hash(password: &str, cost: Option<u32>) -> Result<String, String> {
    match cost {
        Some(cost) => crate::password::hash_password(password, cost).map_err(|e| e.to_string()),
        None => Ok(String::new()),
    }
}

/// A v2 request: only a member publishing its attributes (`PUT /0/members/<id>/attributes`)
/// concerns Keel.
fn decode_v2(r: &V2Request) -> Change {
    let id = r
        .path
        .strip_prefix("/0/members/")
        .and_then(|p| p.strip_suffix("/attributes"))
        .and_then(|hex| u64::from_str_radix(hex, 16).ok());
    let attrs = serde_json::from_str::<Value>(&r.val).ok();
    match (r.method.as_str(), id, attrs) {
        ("PUT", Some(member_id), Some(a)) => Change::Request(
            RequestBody::MemberAttributes(MemberAttributes {
                member_id,
                name: a["name"].as_str().unwrap_or_default().to_string(),
                client_urls: strings(&a["clientURLs"]),
            }),
            None,
        ),
        _ => Change::Nothing,
    }
}

fn decode_conf_change(data: &[u8]) -> Result<Change, String> {
    let cc = EtcdConfChange::decode(data).map_err(|e| e.to_string())?;
    let mut member = if cc.context.is_empty() {
        PbMember::default()
    } else {
        member_from_json(
            &serde_json::from_slice(&cc.context).map_err(|e| format!("conf change member: {e}"))?,
        )
    };
    member.id = cc.node_id;
    Ok(match cc.kind {
        ADD_NODE => Change::Conf(ConfChangeType::AddNode, member),
        ADD_LEARNER_NODE => Change::Conf(ConfChangeType::AddLearnerNode, member),
        REMOVE_NODE => Change::Conf(ConfChangeType::RemoveNode, member),
        // Keel changes peer URLs with a normal entry: raft's membership stays as it is.
        UPDATE_NODE => Change::Request(
            RequestBody::MemberUpdate(PbMemberUpdateRequest {
                id: member.id,
                peer_ur_ls: member.peer_ur_ls,
            }),
            None,
        ),
        other => return Err(format!("conf change type {other}")),
    })
}

/// etcd's member JSON (`membership.Member`, or its raft attributes and attributes apart).
fn member_from_json(v: &Value) -> PbMember {
    PbMember {
        id: v["id"].as_u64().unwrap_or_default(),
        name: v["name"].as_str().unwrap_or_default().to_string(),
        peer_ur_ls: strings(&v["peerURLs"]),
        client_ur_ls: strings(&v["clientURLs"]),
        is_learner: v["isLearner"].as_bool().unwrap_or_default(),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// etcd's entry `e` as Keel's: same index and term, the payload in Keel's encoding.
pub fn to_keel(e: &EtcdEntry, bcrypt_cost: u32) -> Result<Entry, BackupError> {
    let mut out = Entry {
        index: e.index,
        term: e.term,
        ..Default::default()
    };
    match decode(e, Some(bcrypt_cost)).map_err(|why| invalid(e, why))? {
        Change::Nothing => {}
        Change::Request(body, auth) => {
            out.data = InternalRequest {
                id: 0,
                body: Some(body),
                auth,
            }
            .encode_to_vec()
            .into();
        }
        Change::Conf(kind, member) => {
            let mut cc = ConfChange::default();
            cc.set_change_type(kind);
            cc.node_id = member.id;
            cc.context = MemberChange {
                id: 0,
                member: Some(member),
            }
            .encode_to_vec()
            .into();
            out = keel_raft::conf_change_entry(e.index, e.term, &cc);
        }
    }
    Ok(out)
}

fn invalid(e: &EtcdEntry, why: String) -> BackupError {
    BackupError::Invalid(format!("entry {}: {why}", e.index))
}

/// Whether `e` changes nothing but the membership (so a state without it is the same but for the
/// members).
pub fn only_membership(e: &EtcdEntry) -> bool {
    matches!(
        decode(e, None),
        Ok(Change::Nothing
            | Change::Conf(..)
            | Change::Request(
                RequestBody::MemberAttributes(_) | RequestBody::MemberUpdate(_),
                _
            ))
    )
}

/// The cluster's members as an etcd raft snapshot's v2 store records them (the entries after it
/// are applied by `apply_membership`).
#[derive(Debug, Default)]
pub struct Members {
    /// The members, by id.
    pub members: BTreeMap<u64, PbMember>,
    /// The ids of removed members.
    pub removed: BTreeSet<u64>,
}

impl Members {
    /// The members a v2 store (JSON, from a raft snapshot file) holds: `/0/members/<id>/` with
    /// `raftAttributes` and `attributes`, and `/0/removed_members/<id>`.
    pub fn from_v2_store(store: &Value) -> Members {
        let root = &store["Root"]["Children"]["0"]["Children"];
        let mut m = Members::default();
        if let Some(members) = root["members"]["Children"].as_object() {
            for (hex, node) in members {
                let Ok(id) = u64::from_str_radix(hex, 16) else {
                    continue;
                };
                let value = |name: &str| -> Value {
                    node["Children"][name]["Value"]
                        .as_str()
                        .and_then(|s| serde_json::from_str(s).ok())
                        .unwrap_or(Value::Null)
                };
                let (raft, attrs) = (value("raftAttributes"), value("attributes"));
                m.members.insert(
                    id,
                    PbMember {
                        id,
                        name: attrs["name"].as_str().unwrap_or_default().to_string(),
                        peer_ur_ls: strings(&raft["peerURLs"]),
                        client_ur_ls: strings(&attrs["clientURLs"]),
                        is_learner: raft["isLearner"].as_bool().unwrap_or_default(),
                    },
                );
            }
        }
        if let Some(removed) = root["removed_members"]["Children"].as_object() {
            m.removed.extend(
                removed
                    .keys()
                    .filter_map(|h| u64::from_str_radix(h, 16).ok()),
            );
        }
        m
    }

    /// The members, by id.
    pub fn list(&self) -> Vec<PbMember> {
        self.members.values().cloned().collect()
    }
}

/// Applies what etcd's entry `e` does to the membership, as Keel's apply loop applies the entry
/// `to_keel` makes of it (a change that does not apply, such as removing a member already gone,
/// changes nothing, as there).
pub fn apply_membership(
    e: &EtcdEntry,
    membership: &Membership,
    wb: &mut WriteBatch<'_>,
) -> Result<(), BackupError> {
    let _ = match decode(e, None).map_err(|why| invalid(e, why))? {
        Change::Conf(kind, m) => {
            membership.apply_conf_change(wb, crate::member::change_kind(kind), m)
        }
        Change::Request(RequestBody::MemberUpdate(u), _) => {
            membership.update_peer_urls(wb, u.id, &u.peer_ur_ls)
        }
        Change::Request(RequestBody::MemberAttributes(a), _) => {
            membership.publish(wb, &a);
            Ok(Vec::new())
        }
        _ => Ok(Vec::new()),
    };
    Ok(())
}

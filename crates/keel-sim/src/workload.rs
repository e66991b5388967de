//! The clients: each has one request in flight at a time, sent to a member of its choosing; what
//! it asked and what came back goes into the history.

use std::future::Future;
use std::pin::Pin;

use keel_check::{Call, Outcome};
use keel_rpc::auth::auth_server::Auth;
use keel_rpc::auth::{
    AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
    AuthUserGrantRoleRequest, AuthenticateRequest,
};
use keel_rpc::authpb::Permission;
use keel_rpc::etcd::PbKvService;
use keel_rpc::etcd::PbLeaseService;
use keel_rpc::etcd::{
    PbAlarmRequest, PbClusterService, PbMaintenanceService, PbMemberAddRequest,
    PbMemberListRequest, PbMemberPromoteRequest,
};
use keel_rpc::etcd::{
    PbCompactionRequest, PbCompare, PbCompareTarget, PbDeleteRequest, PbLeaseGrantRequest,
    PbLeaseRevokeRequest, PbPutRequest, PbRangeRequest, PbTargetUnion, PbTxnOpRequest,
    PbTxnRequest, PbTxnRequestOp,
};
use keel_server::api::{AuthService, ClusterService, KvService, LeaseService, MaintenanceService};
use keel_server::ServerError;
use keel_state::StateError;
use rand::rngs::StdRng;
use rand::Rng;
use tonic::{Code, Status};

use crate::member::{SimMember, MAX_REQUEST_BYTES};

/// etcdserverpb.Compare.CompareResult EQUAL.
const EQUAL: i32 = 0;

/// A request's result as the client records it: None when it certainly had no effect (a failed
/// read, a write refused before it entered the log).
pub type Recorded = Option<Outcome>;

/// What an answer tells its client to do before its next request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Nothing.
    Nothing,
    /// Writes are refused while NOSPACE is raised: the alarm must be disarmed.
    NoSpace,
    /// Auth is on and the client's token is missing, unknown here, or older than the auth
    /// state: it must authenticate (again), as etcd's clients do.
    NeedToken,
}

/// A request under way.
pub type Pending = Pin<Box<dyn Future<Output = (Recorded, Signal)>>>;

/// What a client does next.
pub enum Request {
    /// A request on one key of the checked register keys.
    Checked {
        /// The key.
        key: String,
        /// What is asked of it.
        call: Call,
    },
    /// A request outside the register model: its effects are checked through the oracle (every
    /// member applies the same changes) and the watchers.
    Other(Other),
    /// A serializable range over every key (checked only not to fail).
    Scan,
    /// A lease granted with this TTL (seconds); the world tracks when it may expire.
    Grant {
        /// The lease id the client chose.
        id: i64,
        /// Its TTL in seconds.
        ttl: i64,
    },
    /// A keep-alive of a lease, sent to the member that leads.
    KeepAlive(i64),
    /// A client's revoke of a lease.
    Revoke(i64),
    /// A request over a limit, which must be refused with etcd's error.
    Limit(Limit),
}

/// A request over one of the member's limits.
#[derive(Clone, Copy, Debug)]
pub enum Limit {
    /// A put larger than --max-request-bytes.
    Oversized,
    /// A txn with more operations than --max-txn-ops.
    TooManyOps,
}

/// A write outside the register model.
pub enum Other {
    /// A put (of a key attached to a lease).
    Put(PbPutRequest),
    /// A compaction.
    Compact(PbCompactionRequest),
}

/// A request under way that only says whether it succeeded.
pub type Sent = Pin<Box<dyn Future<Output = (bool, Signal)>>>;

/// A request under way that must be refused: a problem if it was not, as it should have been,
/// and what the refusal asks of the client.
pub type Refusal = Pin<Box<dyn Future<Output = (Option<String>, Signal)>>>;

/// A MemberAdd under way: the new member's id, or what to do before trying again.
pub type Joining = Pin<Box<dyn Future<Output = Result<u64, Signal>>>>;

/// An Authenticate under way: the token (none if auth is off: none is needed), or what to do
/// before trying again.
pub type Authenticating = Pin<Box<dyn Future<Output = Result<Option<String>, Signal>>>>;

/// TTL of the leases kept alive and left to expire (etcd's smallest, 2 s).
pub const SHORT_TTL: i64 = 2;

/// Picks a client's next request.
pub fn next_request(
    rng: &mut StdRng,
    client: usize,
    n: u64,
    keys: usize,
    last_seen: &[Option<String>],
    leases: &mut Vec<i64>,
    last_revision: i64,
) -> Request {
    if rng.gen_bool(0.01) {
        let limit = if rng.gen_bool(0.5) {
            Limit::Oversized
        } else {
            Limit::TooManyOps
        };
        return Request::Limit(limit);
    }
    let k = rng.gen_range(0..keys);
    let key = format!("k/{k}");
    let value = format!("c{client}-{n}");
    let call = match rng.gen_range(0..100) {
        0..=34 => Call::Get,
        35..=59 => Call::Put(value),
        60..=67 => Call::Delete,
        68..=84 => Call::Cas {
            expected: last_seen[k].clone(),
            new: value,
        },
        85..=87 => {
            let id = rng.gen_range(1..i64::MAX);
            leases.push(id);
            // Most expire unless kept alive; some outlive the run.
            let ttl = if rng.gen_bool(0.7) { SHORT_TTL } else { 3600 };
            return Request::Grant { id, ttl };
        }
        88 | 96..=99 if !leases.is_empty() => {
            return Request::KeepAlive(leases[rng.gen_range(0..leases.len())]);
        }
        89..=92 if !leases.is_empty() => {
            let lease = leases[rng.gen_range(0..leases.len())];
            return Request::Other(Other::Put(PbPutRequest {
                key: format!("l/{client}-{n}").into_bytes(),
                value: b"leased".to_vec(),
                lease,
                ..Default::default()
            }));
        }
        93..=94 if !leases.is_empty() => {
            return Request::Revoke(leases.swap_remove(rng.gen_range(0..leases.len())));
        }
        95 if last_revision > 20 => {
            return Request::Other(Other::Compact(PbCompactionRequest {
                revision: rng.gen_range(last_revision / 2..last_revision - 10),
                physical: false,
            }))
        }
        _ => return Request::Scan,
    };
    Request::Checked { key, call }
}

/// The user the admin client (client 0) is, with every permission.
pub const ROOT: &str = "root";
/// The user the other clients are: read and write on the keys the workload uses.
pub const APP: &str = "app";
/// Every user's password.
const PASSWORD: &str = "sim-password";
/// The key prefixes the app user may read and write (the registers, leased keys, scratch keys).
const APP_PREFIXES: [&str; 3] = ["k/", "l/", "x/"];

/// `msg` as a client sends it, with its auth token when it has one.
fn request<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = token.and_then(|t| t.parse().ok()) {
        req.metadata_mut().insert("token", t);
    }
    req
}

/// What a refusal asks of the client (etcd's clients tell these errors by their messages).
fn signal(s: &Status) -> Signal {
    let is = |e: StateError| s.message() == ServerError::from(e).to_string();
    if s.code() == Code::ResourceExhausted {
        Signal::NoSpace
    } else if s.code() == Code::Unauthenticated
        || is(StateError::UserEmpty)
        || is(StateError::AuthOldRevision)
    {
        Signal::NeedToken
    } else {
        Signal::Nothing
    }
}

/// Whether a refusal says for certain that the request had no effect: the member refused it
/// before it entered the log (no leader, too large, no space, not permitted) or the state
/// machine refused it. Timeouts and a stopping member leave the outcome open.
fn certainly_refused(s: &Status) -> bool {
    let is = |e: ServerError| s.message() == e.to_string();
    is(ServerError::NoLeader)
        || is(ServerError::NotSupportedForLearner)
        || matches!(
            s.code(),
            Code::InvalidArgument
                | Code::PermissionDenied
                | Code::Unauthenticated
                | Code::ResourceExhausted
        )
}

/// Whether an answer succeeded, and what it asks of the client.
fn sent<T>(answer: Result<tonic::Response<T>, Status>) -> (bool, Signal) {
    match answer {
        Ok(_) => (true, Signal::Nothing),
        Err(s) => (false, signal(&s)),
    }
}

/// Sends a checked request to `member`, through etcd's KV service as a client's goes.
pub fn send_checked(member: &SimMember, token: Option<&str>, key: &str, call: &Call) -> Pending {
    let kv = KvService::new(member.member().clone());
    let token = token.map(str::to_string);
    let k = key.as_bytes().to_vec();
    let call = call.clone();
    Box::pin(async move {
        let t = token.as_deref();
        match call {
            Call::Get => {
                let get = PbRangeRequest {
                    key: k,
                    ..Default::default()
                };
                match kv.range(request(get, t)).await {
                    Ok(r) => {
                        let kv = r.into_inner().kvs.first().map(|kv| {
                            (
                                String::from_utf8_lossy(&kv.value).into_owned(),
                                kv.mod_revision,
                            )
                        });
                        (Some(Outcome::Read(kv)), Signal::Nothing)
                    }
                    Err(s) => (None, signal(&s)),
                }
            }
            Call::Put(v) => {
                let put = PbPutRequest {
                    key: k,
                    value: v.into_bytes(),
                    ..Default::default()
                };
                written(kv.put(request(put, t)).await, |r| Outcome::Wrote {
                    revision: revision(&r.header),
                    deleted: false,
                })
            }
            Call::Delete => {
                let delete = PbDeleteRequest {
                    key: k,
                    ..Default::default()
                };
                written(kv.delete_range(request(delete, t)).await, |r| {
                    Outcome::Wrote {
                        revision: revision(&r.header),
                        deleted: r.deleted > 0,
                    }
                })
            }
            Call::Cas { expected, new } => {
                let txn = cas(k, expected, new);
                written(kv.txn(request(txn, t)).await, |r| Outcome::Cas {
                    swapped: r.succeeded,
                    revision: revision(&r.header),
                })
            }
        }
    })
}

/// A compare-and-swap: put `new` at `key` if its value is `expected` (absent: if it does not
/// exist).
fn cas(key: Vec<u8>, expected: Option<String>, new: String) -> PbTxnRequest {
    let compare = match expected {
        Some(v) => PbCompare {
            result: EQUAL,
            target: PbCompareTarget::Value as i32,
            key: key.clone(),
            target_union: Some(PbTargetUnion::Value(v.into_bytes())),
            ..Default::default()
        },
        None => PbCompare {
            result: EQUAL,
            target: PbCompareTarget::Create as i32,
            key: key.clone(),
            target_union: Some(PbTargetUnion::CreateRevision(0)),
            ..Default::default()
        },
    };
    PbTxnRequest {
        compare: vec![compare],
        success: vec![put_op(key, new.into_bytes())],
        failure: vec![],
    }
}

fn put_op(key: Vec<u8>, value: Vec<u8>) -> PbTxnRequestOp {
    PbTxnRequestOp {
        request: Some(PbTxnOpRequest::RequestPut(PbPutRequest {
            key,
            value,
            ..Default::default()
        })),
    }
}

/// A write's outcome: definite when applied or certainly refused, else unknown.
fn written<T>(
    answer: Result<tonic::Response<T>, Status>,
    outcome: impl FnOnce(T) -> Outcome,
) -> (Recorded, Signal) {
    match answer {
        Ok(r) => (Some(outcome(r.into_inner())), Signal::Nothing),
        Err(s) if certainly_refused(&s) => (None, signal(&s)),
        Err(s) => (Some(Outcome::Unknown), signal(&s)),
    }
}

fn revision(h: &Option<keel_rpc::etcd::PbResponseHeader>) -> i64 {
    h.as_ref().map_or(0, |h| h.revision)
}

/// Sends a request outside the register model through its service; its result only says
/// whether it failed.
pub fn send_other(member: &SimMember, token: Option<&str>, req: Other) -> Sent {
    let kv = KvService::new(member.member().clone());
    let token = token.map(str::to_string);
    Box::pin(async move {
        let t = token.as_deref();
        match req {
            Other::Put(r) => sent(kv.put(request(r, t)).await),
            Other::Compact(r) => sent(kv.compact(request(r, t)).await),
        }
    })
}

/// A lease grant; its result only says whether it failed.
pub fn send_grant(member: &SimMember, token: Option<&str>, id: i64, ttl: i64) -> Sent {
    let leases = LeaseService::new(member.member().clone());
    let grant = request(PbLeaseGrantRequest { ttl, id }, token);
    Box::pin(async move { sent(leases.lease_grant(grant).await) })
}

/// A client's lease revoke; its result only says whether it failed.
pub fn send_revoke(member: &SimMember, token: Option<&str>, id: i64) -> Sent {
    let leases = LeaseService::new(member.member().clone());
    let revoke = request(PbLeaseRevokeRequest { id }, token);
    Box::pin(async move { sent(leases.lease_revoke(revoke).await) })
}

/// A primary lessor's revoke of a lease it found expired; true if applied.
pub fn send_expiry_revoke(member: &SimMember, id: i64) -> Pin<Box<dyn Future<Output = bool>>> {
    let member = member.member().clone();
    Box::pin(async move { member.revoke_expired(id).await.is_ok() })
}

/// A keep-alive, as the Lease service's stream serves each one; true if the lease was renewed
/// (a TTL of 0 says it does not exist).
pub fn send_keep_alive(member: &SimMember, id: i64) -> Sent {
    let member = member.member().clone();
    Box::pin(async move {
        match member.keep_alive(id).await {
            Ok(ttl) => (ttl > 0, Signal::Nothing),
            Err(e) => (false, signal(&e.into())),
        }
    })
}

/// A serializable read of every key.
pub fn send_scan(member: &SimMember, token: Option<&str>) -> Sent {
    let kv = KvService::new(member.member().clone());
    let scan = PbRangeRequest {
        key: b"\0".to_vec(),
        range_end: b"\0".to_vec(),
        serializable: true,
        ..Default::default()
    };
    let scan = request(scan, token);
    Box::pin(async move { sent(kv.range(scan).await) })
}

/// A request over `limit`, which must be refused with etcd's error for it, and have no effect.
pub fn send_over_limit(member: &SimMember, token: Option<&str>, limit: Limit) -> Refusal {
    let kv = KvService::new(member.member().clone());
    let token = token.map(str::to_string);
    Box::pin(async move {
        let t = token.as_deref();
        let (answer, expected) = match limit {
            Limit::Oversized => {
                let put = PbPutRequest {
                    key: b"x/oversized".to_vec(),
                    value: vec![b'v'; MAX_REQUEST_BYTES + 1],
                    ..Default::default()
                };
                (
                    kv.put(request(put, t)).await.map(|_| ()),
                    ServerError::RequestTooLarge,
                )
            }
            Limit::TooManyOps => {
                let ops = (0..=keel_server::ServerConfig::default().max_txn_ops)
                    .map(|i| put_op(format!("x/op-{i}").into_bytes(), b"v".to_vec()))
                    .collect();
                let txn = PbTxnRequest {
                    success: ops,
                    ..Default::default()
                };
                let answer = kv.txn(request(txn, t)).await.map(|_| ());
                (answer, StateError::TooManyOps.into())
            }
        };
        let expected = Status::from(expected);
        match answer {
            Err(s) if (s.code(), s.message()) == (expected.code(), expected.message()) => {
                (None, Signal::Nothing)
            }
            // Refused for a reason etcd checks first: auth, the space quota (a growing request
            // is refused while NOSPACE is raised, whatever its size), or a learner's refusal.
            Err(s) if signal(&s) != Signal::Nothing => (None, signal(&s)),
            Err(s) if s.message() == ServerError::NotSupportedForLearner.to_string() => {
                (None, Signal::Nothing)
            }
            other => {
                let problem = format!(
                    "{limit:?}: expected {:?} {:?}, got {other:?}",
                    expected.code(),
                    expected.message()
                );
                (Some(problem), Signal::Nothing)
            }
        }
    })
}

/// Disarms NOSPACE, as `etcdctl alarm disarm` does: lists the raised alarms, then deactivates
/// each; true once none is left.
pub fn send_disarm(member: &SimMember, token: Option<&str>) -> Sent {
    let maintenance = MaintenanceService::new(member.member().clone());
    let token = token.map(str::to_string);
    Box::pin(async move {
        let t = token.as_deref();
        let list = PbAlarmRequest {
            action: ALARM_GET,
            ..Default::default()
        };
        let raised = match maintenance.alarm(request(list, t)).await {
            Ok(r) => r.into_inner().alarms,
            Err(s) => return (false, signal(&s)),
        };
        for a in raised {
            let disarm = PbAlarmRequest {
                action: ALARM_DEACTIVATE,
                member_id: a.member_id,
                alarm: a.alarm,
            };
            if let Err(s) = maintenance.alarm(request(disarm, t)).await {
                return (false, signal(&s));
            }
        }
        (true, Signal::Nothing)
    })
}

/// etcdserverpb.AlarmRequest.AlarmAction GET and DEACTIVATE.
const ALARM_GET: i32 = 0;
const ALARM_DEACTIVATE: i32 = 2;

/// One step of setting up auth, as an operator does it with etcdctl (the admin client's first
/// requests on seeds that run with auth): the root user, the app user and its role with
/// read-write on the workload's keys, then auth enabled. `None` past the last step.
pub fn send_auth_step(member: &SimMember, token: Option<&str>, step: usize) -> Option<Sent> {
    let auth = AuthService::new(member.member().clone());
    let token = token.map(str::to_string);
    let user = |name: &str| AuthUserAddRequest {
        name: name.into(),
        password: PASSWORD.into(),
        ..Default::default()
    };
    let grant = |user: &str, role: &str| AuthUserGrantRoleRequest {
        user: user.into(),
        role: role.into(),
    };
    let permission = |prefix: &str| AuthRoleGrantPermissionRequest {
        name: APP.into(),
        perm: Some(Permission {
            perm_type: 2, // READWRITE
            key: prefix.as_bytes().to_vec(),
            range_end: keel_server::prefix_end(prefix.as_bytes()),
        }),
    };
    Some(match step {
        0 => Box::pin(
            async move { done(auth.user_add(request(user(ROOT), token.as_deref())).await) },
        ),
        1 => Box::pin(async move {
            done(
                auth.user_grant_role(request(grant(ROOT, ROOT), token.as_deref()))
                    .await,
            )
        }),
        2 => {
            Box::pin(async move { done(auth.user_add(request(user(APP), token.as_deref())).await) })
        }
        3 => Box::pin(async move {
            let role = AuthRoleAddRequest { name: APP.into() };
            done(auth.role_add(request(role, token.as_deref())).await)
        }),
        4..=6 => Box::pin(async move {
            let perm = permission(APP_PREFIXES[step - 4]);
            done(
                auth.role_grant_permission(request(perm, token.as_deref()))
                    .await,
            )
        }),
        7 => Box::pin(async move {
            done(
                auth.user_grant_role(request(grant(APP, APP), token.as_deref()))
                    .await,
            )
        }),
        8 => Box::pin(async move {
            done(
                auth.auth_enable(request(AuthEnableRequest {}, token.as_deref()))
                    .await,
            )
        }),
        _ => return None,
    })
}

/// A setup step is done when it succeeded or found its work done already (a retry of a step
/// whose answer was lost).
fn done<T>(answer: Result<tonic::Response<T>, Status>) -> (bool, Signal) {
    match answer {
        Err(s) if s.code() == Code::FailedPrecondition => (true, Signal::Nothing),
        other => sent(other),
    }
}

/// Authenticates as `user`.
pub fn send_authenticate(member: &SimMember, user: &str) -> Authenticating {
    let auth = AuthService::new(member.member().clone());
    let req = tonic::Request::new(AuthenticateRequest {
        name: user.into(),
        password: PASSWORD.into(),
    });
    Box::pin(async move {
        match auth.authenticate(req).await {
            Ok(r) => Ok(Some(r.into_inner().token)),
            Err(s) if s.message() == ServerError::from(StateError::AuthNotEnabled).to_string() => {
                Ok(None)
            }
            Err(s) => Err(signal(&s)),
        }
    })
}

/// Adds a learner with `peer_url` (as `etcdctl member add --learner`), or finds the one a lost
/// answer added already; its member id.
pub fn send_add_learner(member: &SimMember, token: Option<&str>, peer_url: String) -> Joining {
    let cluster = ClusterService::new(member.member().clone());
    let token = token.map(str::to_string);
    Box::pin(async move {
        let t = token.as_deref();
        let list = PbMemberListRequest { linearizable: true };
        let listed = match cluster.member_list(request(list, t)).await {
            Ok(r) => r.into_inner().members,
            Err(s) => return Err(signal(&s)),
        };
        if let Some(m) = listed.iter().find(|m| m.peer_ur_ls.contains(&peer_url)) {
            return Ok(m.id);
        }
        let add = PbMemberAddRequest {
            peer_ur_ls: vec![peer_url],
            is_learner: true,
        };
        match cluster.member_add(request(add, t)).await {
            Ok(r) => r.into_inner().member.map(|m| m.id).ok_or(Signal::Nothing),
            Err(s) => Err(signal(&s)),
        }
    })
}

/// Promotes learner `id` to a voter (refused until it has caught up with the leader's log).
pub fn send_promote(member: &SimMember, token: Option<&str>, id: u64) -> Sent {
    let cluster = ClusterService::new(member.member().clone());
    let promote = request(PbMemberPromoteRequest { id }, token);
    Box::pin(async move { sent(cluster.member_promote(promote).await) })
}

//! The clients: each has one request in flight at a time, sent to a member of its choosing; what
//! it asked and what came back goes into the history.

use std::future::Future;
use std::pin::Pin;

use keel_check::{Call, Outcome};
use keel_rpc::etcd::{
    PbCompactionRequest, PbCompare, PbCompareTarget, PbDeleteRequest, PbLeaseGrantRequest,
    PbLeaseRevokeRequest, PbPutRequest, PbRangeRequest, PbTargetUnion, PbTxnOpRequest,
    PbTxnRequest, PbTxnRequestOp,
};
use keel_rpc::RequestBody;
use keel_server::sim::{Response, SimMember};
use keel_server::ServerError;
use rand::rngs::StdRng;
use rand::Rng;

/// etcdserverpb.Compare.CompareResult EQUAL.
const EQUAL: i32 = 0;

/// A request's result as the client records it: None when it certainly had no effect (a failed
/// read, a write refused before it entered the log).
pub type Recorded = Option<Outcome>;

/// A request under way.
pub type Pending = Pin<Box<dyn Future<Output = Recorded>>>;

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
    Other(RequestBody),
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
}

/// A request under way that only says whether it succeeded.
pub type Sent = Pin<Box<dyn Future<Output = bool>>>;

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
            return Request::Other(RequestBody::Put(PbPutRequest {
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
            return Request::Other(RequestBody::Compaction(PbCompactionRequest {
                revision: rng.gen_range(last_revision / 2..last_revision - 10),
                physical: false,
            }))
        }
        _ => return Request::Scan,
    };
    Request::Checked { key, call }
}

/// Sends a checked request to `member`.
pub fn send_checked(member: &SimMember, key: &str, call: &Call) -> Pending {
    let k = key.as_bytes().to_vec();
    match call {
        Call::Get => {
            let read = member.range(
                PbRangeRequest {
                    key: k,
                    ..Default::default()
                },
                true,
            );
            Box::pin(async move {
                let r = read.await.ok()?;
                let kv = r.kvs.first().map(|kv| {
                    (
                        String::from_utf8_lossy(&kv.value).into_owned(),
                        kv.mod_revision,
                    )
                });
                Some(Outcome::Read(kv))
            })
        }
        Call::Put(v) => written(member.propose(RequestBody::Put(PbPutRequest {
            key: k,
            value: v.clone().into_bytes(),
            ..Default::default()
        }))),
        Call::Delete => written(member.propose(RequestBody::DeleteRange(PbDeleteRequest {
            key: k,
            ..Default::default()
        }))),
        Call::Cas { expected, new } => {
            let compare = match expected {
                Some(v) => PbCompare {
                    result: EQUAL,
                    target: PbCompareTarget::Value as i32,
                    key: k.clone(),
                    target_union: Some(PbTargetUnion::Value(v.clone().into_bytes())),
                    ..Default::default()
                },
                None => PbCompare {
                    result: EQUAL,
                    target: PbCompareTarget::Create as i32,
                    key: k.clone(),
                    target_union: Some(PbTargetUnion::CreateRevision(0)),
                    ..Default::default()
                },
            };
            let put = PbTxnRequestOp {
                request: Some(PbTxnOpRequest::RequestPut(PbPutRequest {
                    key: k,
                    value: new.clone().into_bytes(),
                    ..Default::default()
                })),
            };
            written(member.propose(RequestBody::Txn(PbTxnRequest {
                compare: vec![compare],
                success: vec![put],
                failure: vec![],
            })))
        }
    }
}

/// A write's outcome: definite when applied or refused before entering the log, else unknown.
fn written(applied: impl Future<Output = Result<Response, ServerError>> + 'static) -> Pending {
    Box::pin(async move {
        match applied.await {
            Ok(Response::Put(r)) => Some(Outcome::Wrote {
                revision: revision(&r.header),
                deleted: false,
            }),
            Ok(Response::DeleteRange(r)) => Some(Outcome::Wrote {
                revision: revision(&r.header),
                deleted: r.deleted > 0,
            }),
            Ok(Response::Txn(r)) => Some(Outcome::Cas {
                swapped: r.succeeded,
                revision: revision(&r.header),
            }),
            Err(ServerError::NoLeader) => None,
            _ => Some(Outcome::Unknown),
        }
    })
}

fn revision(h: &Option<keel_rpc::etcd::PbResponseHeader>) -> i64 {
    h.as_ref().map_or(0, |h| h.revision)
}

/// Sends a request outside the register model; its result only says whether it failed.
pub fn send_other(member: &SimMember, body: RequestBody) -> Sent {
    let applied = member.propose(body);
    Box::pin(async move { applied.await.is_ok() })
}

/// A lease grant; its result only says whether it failed.
pub fn send_grant(member: &SimMember, id: i64, ttl: i64) -> Sent {
    send_other(
        member,
        RequestBody::LeaseGrant(PbLeaseGrantRequest { ttl, id }),
    )
}

/// A client's lease revoke; its result only says whether it failed.
pub fn send_revoke(member: &SimMember, id: i64) -> Sent {
    send_other(
        member,
        RequestBody::LeaseRevoke(PbLeaseRevokeRequest { id }),
    )
}

/// A primary lessor's revoke of a lease it found expired; true if applied.
pub fn send_expiry_revoke(member: &SimMember, id: i64) -> Sent {
    let revoked = member.revoke_expired(id);
    Box::pin(async move { revoked.await.is_ok() })
}

/// A keep-alive; true if the lease was renewed.
pub fn send_keep_alive(member: &SimMember, id: i64) -> Sent {
    let renewed = member.keep_alive(id);
    Box::pin(async move { renewed.await.is_ok() })
}

/// A serializable read of every key.
pub fn send_scan(member: &SimMember) -> Sent {
    let read = member.range(
        PbRangeRequest {
            key: b"\0".to_vec(),
            range_end: b"\0".to_vec(),
            ..Default::default()
        },
        false,
    );
    Box::pin(async move { read.await.is_ok() })
}

//! The clients: each has one request in flight at a time, sent to a member of its choosing; what
//! it asked and what came back goes into the history.

use std::future::Future;
use std::pin::Pin;

use keel_check::{Call, Outcome};
use keel_rpc::etcd::PbKvService;
use keel_rpc::etcd::PbLeaseService;
use keel_rpc::etcd::{
    PbCompactionRequest, PbCompare, PbCompareTarget, PbDeleteRequest, PbLeaseGrantRequest,
    PbLeaseRevokeRequest, PbPutRequest, PbRangeRequest, PbTargetUnion, PbTxnOpRequest,
    PbTxnRequest, PbTxnRequestOp,
};
use keel_server::api::{KvService, LeaseService};
use keel_server::ServerError;
use tonic::Status;

use crate::member::SimMember;
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
}

/// A write outside the register model.
pub enum Other {
    /// A put (of a key attached to a lease).
    Put(PbPutRequest),
    /// A compaction.
    Compact(PbCompactionRequest),
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

/// Sends a checked request to `member`, through etcd's KV service as a client's would go.
pub fn send_checked(member: &SimMember, key: &str, call: &Call) -> Pending {
    let kv = KvService::new(member.member().clone());
    let k = key.as_bytes().to_vec();
    match call.clone() {
        Call::Get => Box::pin(async move {
            let r = kv
                .range(tonic::Request::new(PbRangeRequest {
                    key: k,
                    ..Default::default()
                }))
                .await
                .ok()?
                .into_inner();
            let kv = r.kvs.first().map(|kv| {
                (
                    String::from_utf8_lossy(&kv.value).into_owned(),
                    kv.mod_revision,
                )
            });
            Some(Outcome::Read(kv))
        }),
        Call::Put(v) => Box::pin(async move {
            let put = PbPutRequest {
                key: k,
                value: v.into_bytes(),
                ..Default::default()
            };
            written(kv.put(tonic::Request::new(put)).await, |r| Outcome::Wrote {
                revision: revision(&r.header),
                deleted: false,
            })
        }),
        Call::Delete => Box::pin(async move {
            let delete = PbDeleteRequest {
                key: k,
                ..Default::default()
            };
            written(kv.delete_range(tonic::Request::new(delete)).await, |r| {
                Outcome::Wrote {
                    revision: revision(&r.header),
                    deleted: r.deleted > 0,
                }
            })
        }),
        Call::Cas { expected, new } => Box::pin(async move {
            let txn = cas(k, expected, new);
            written(kv.txn(tonic::Request::new(txn)).await, |r| Outcome::Cas {
                swapped: r.succeeded,
                revision: revision(&r.header),
            })
        }),
    }
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
    let put = PbTxnRequestOp {
        request: Some(PbTxnOpRequest::RequestPut(PbPutRequest {
            key,
            value: new.into_bytes(),
            ..Default::default()
        })),
    };
    PbTxnRequest {
        compare: vec![compare],
        success: vec![put],
        failure: vec![],
    }
}

/// A write's outcome: definite when applied, or when refused before it could enter the log (no
/// leader: etcd's clients tell that error by its message, as this one does); else unknown.
fn written<T>(
    answer: Result<tonic::Response<T>, Status>,
    outcome: impl FnOnce(T) -> Outcome,
) -> Recorded {
    match answer {
        Ok(r) => Some(outcome(r.into_inner())),
        Err(s) if s.message() == ServerError::NoLeader.to_string() => None,
        Err(_) => Some(Outcome::Unknown),
    }
}

fn revision(h: &Option<keel_rpc::etcd::PbResponseHeader>) -> i64 {
    h.as_ref().map_or(0, |h| h.revision)
}

/// Sends a request outside the register model through its service; its result only says
/// whether it failed.
pub fn send_other(member: &SimMember, req: Other) -> Sent {
    let kv = KvService::new(member.member().clone());
    Box::pin(async move {
        match req {
            Other::Put(r) => kv.put(tonic::Request::new(r)).await.is_ok(),
            Other::Compact(r) => kv.compact(tonic::Request::new(r)).await.is_ok(),
        }
    })
}

/// A lease grant; its result only says whether it failed.
pub fn send_grant(member: &SimMember, id: i64, ttl: i64) -> Sent {
    let leases = LeaseService::new(member.member().clone());
    Box::pin(async move {
        let grant = PbLeaseGrantRequest { ttl, id };
        leases.lease_grant(tonic::Request::new(grant)).await.is_ok()
    })
}

/// A client's lease revoke; its result only says whether it failed.
pub fn send_revoke(member: &SimMember, id: i64) -> Sent {
    let leases = LeaseService::new(member.member().clone());
    Box::pin(async move {
        let revoke = PbLeaseRevokeRequest { id };
        leases
            .lease_revoke(tonic::Request::new(revoke))
            .await
            .is_ok()
    })
}

/// A primary lessor's revoke of a lease it found expired; true if applied.
pub fn send_expiry_revoke(member: &SimMember, id: i64) -> Sent {
    let member = member.member().clone();
    Box::pin(async move { member.revoke_expired(id).await.is_ok() })
}

/// A keep-alive, as the Lease service's stream serves each one; true if the lease was renewed
/// (a TTL of 0 says it does not exist).
pub fn send_keep_alive(member: &SimMember, id: i64) -> Sent {
    let member = member.member().clone();
    Box::pin(async move { member.keep_alive(id).await.is_ok_and(|ttl| ttl > 0) })
}

/// A serializable read of every key.
pub fn send_scan(member: &SimMember) -> Sent {
    let kv = KvService::new(member.member().clone());
    Box::pin(async move {
        let scan = PbRangeRequest {
            key: b"\0".to_vec(),
            range_end: b"\0".to_vec(),
            serializable: true,
            ..Default::default()
        };
        kv.range(tonic::Request::new(scan)).await.is_ok()
    })
}

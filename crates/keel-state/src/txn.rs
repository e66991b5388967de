//! KV.Txn and the mutations it shares with Put and DeleteRange, with etcd's semantics: every compare
//! (nested ones included) is decided on the state before the txn, puts are checked before anything is
//! written, and later ops in the txn see the writes of earlier ones.

use keel_mvcc::{KeySpan, RangeOptions, ReadView, WriteBatch};
use keel_proto::etcd::PbCompareResult as CompareOp;
use keel_proto::etcd::{
    PbCompare as Compare, PbDeleteRequest as DeleteRangeRequest,
    PbDeleteResponse as DeleteRangeResponse, PbKeyValue as KeyValue, PbPutRequest as PutRequest,
    PbPutResponse as PutResponse, PbResponseHeader, PbResponseOp as ResponseOp,
    PbTargetUnion as Target, PbTxnOpRequest as Op, PbTxnOpResponse as OpResponse,
    PbTxnRequest as TxnRequest, PbTxnResponse as TxnResponse,
};

use crate::lease::Lessor;
use crate::range::range;
use crate::StateError;

// etcdserverpb.Compare.CompareTarget (VERSION 0, CREATE 1, MOD 2, VALUE 3, LEASE 4).
const TARGET_VALUE: i32 = 3;

/// A header carrying only the revision; the service fills in the member's part.
pub fn header(revision: i64) -> Option<PbResponseHeader> {
    Some(PbResponseHeader {
        revision,
        ..Default::default()
    })
}

/// Whether the txn may write (any op of either top-level branch other than a range).
pub fn is_write(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .any(|op| !matches!(op.request, Some(Op::RequestRange(_))))
}

/// Whether the txn has a put anywhere (nested txns included): it may grow the store.
pub fn has_put(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .any(|op| match &op.request {
            Some(Op::RequestPut(_)) => true,
            Some(Op::RequestTxn(n)) => has_put(n),
            _ => false,
        })
}

/// The branch taken by a txn and by each nested txn in that branch, in op order.
struct Path {
    succeeded: bool,
    nested: Vec<Path>,
}

impl Path {
    fn decide(view: &impl ReadView, t: &TxnRequest) -> Path {
        let succeeded = t.compare.iter().all(|c| compare(view, c));
        let nested = branch(t, succeeded)
            .iter()
            .filter_map(|op| match &op.request {
                Some(Op::RequestTxn(n)) => Some(Path::decide(view, n)),
                _ => None,
            })
            .collect();
        Path { succeeded, nested }
    }
}

fn branch(t: &TxnRequest, succeeded: bool) -> &[keel_proto::etcd::PbTxnRequestOp] {
    if succeeded {
        &t.success
    } else {
        &t.failure
    }
}

/// A compare holds if it holds for every key in its span; an absent key compares as zero values
/// (and never equals on VALUE).
fn compare(view: &impl ReadView, c: &Compare) -> bool {
    let Ok(res) = view.range(
        KeySpan::from_etcd(&c.key, &c.range_end),
        &RangeOptions::default(),
    ) else {
        return false;
    };
    if res.kvs.is_empty() {
        if c.target == TARGET_VALUE {
            return false;
        }
        return compare_kv(&KeyValue::default(), c);
    }
    res.kvs.iter().all(|kv| compare_kv(kv, c))
}

fn compare_kv(kv: &KeyValue, c: &Compare) -> bool {
    let ord = match c.target {
        0 => kv
            .version
            .cmp(&int_target(c, |t| matches!(t, Target::Version(_)))),
        1 => kv
            .create_revision
            .cmp(&int_target(c, |t| matches!(t, Target::CreateRevision(_)))),
        2 => kv
            .mod_revision
            .cmp(&int_target(c, |t| matches!(t, Target::ModRevision(_)))),
        TARGET_VALUE => {
            let v: &[u8] = match &c.target_union {
                Some(Target::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(v)
        }
        4 => kv
            .lease
            .cmp(&int_target(c, |t| matches!(t, Target::Lease(_)))),
        _ => return true,
    };
    match CompareOp::try_from(c.result) {
        Ok(CompareOp::Equal) => ord.is_eq(),
        Ok(CompareOp::Greater) => ord.is_gt(),
        Ok(CompareOp::Less) => ord.is_lt(),
        Ok(CompareOp::NotEqual) => ord.is_ne(),
        Err(_) => true,
    }
}

/// The integer a compare targets; a union of another kind (or none) reads as 0, as in etcd.
fn int_target(c: &Compare, is_kind: impl Fn(&Target) -> bool) -> i64 {
    match &c.target_union {
        Some(
            t @ (Target::Version(v)
            | Target::CreateRevision(v)
            | Target::ModRevision(v)
            | Target::Lease(v)),
        ) if is_kind(t) => *v,
        _ => 0,
    }
}

/// Checks a put against the state before it runs: ignore_value/ignore_lease need an existing key,
/// a lease must exist.
pub fn check_put(view: &impl ReadView, p: &PutRequest, leases: &Lessor) -> Result<(), StateError> {
    if p.ignore_value || p.ignore_lease {
        let res = view.range(
            KeySpan::Single(&p.key),
            &RangeOptions {
                count_only: true,
                ..Default::default()
            },
        )?;
        if res.count == 0 {
            return Err(StateError::KeyNotFound);
        }
    }
    if p.lease != 0 && !leases.contains(p.lease) {
        return Err(StateError::LeaseNotFound);
    }
    Ok(())
}

/// Checks every op on the chosen path before anything is written.
fn check_path(
    view: &impl ReadView,
    t: &TxnRequest,
    path: &Path,
    leases: &Lessor,
) -> Result<(), StateError> {
    let mut nested = path.nested.iter();
    for op in branch(t, path.succeeded) {
        match &op.request {
            Some(Op::RequestPut(p)) => check_put(view, p, leases)?,
            Some(Op::RequestRange(r)) => {
                if r.revision > view.revision() {
                    return Err(StateError::FutureRevision);
                }
                if r.revision > 0 && r.revision < view.compacted_revision() {
                    return Err(StateError::Compacted);
                }
            }
            Some(Op::RequestTxn(n)) => {
                // Path::decide made one entry per nested txn of this branch.
                check_path(
                    view,
                    n,
                    nested.next().expect("path has every nested txn"),
                    leases,
                )?
            }
            Some(Op::RequestDeleteRange(_)) => {}
            // An op without a request fails the txn (validation refuses it before proposing;
            // an entry that holds one anyway must fail here, before the earlier ops are staged).
            None => return Err(StateError::KeyNotFound),
        }
    }
    Ok(())
}

/// Runs a txn with no writes on a read view.
pub fn txn_read(view: &impl ReadView, t: &TxnRequest) -> Result<TxnResponse, StateError> {
    crate::metrics::mvcc_txn();
    let succeeded = t.compare.iter().all(|c| compare(view, c));
    let mut responses = Vec::new();
    for op in branch(t, succeeded) {
        let Some(Op::RequestRange(r)) = &op.request else {
            return Err(StateError::Storage("write op in a read-only txn".into()));
        };
        responses.push(ResponseOp {
            response: Some(OpResponse::ResponseRange(range(view, r)?)),
        });
    }
    Ok(TxnResponse {
        header: header(view.revision()),
        succeeded,
        responses,
    })
}

/// Runs a txn in the write batch as one write transaction (one revision for all its changes).
pub fn txn_write(
    wb: &mut WriteBatch<'_>,
    t: &TxnRequest,
    leases: &Lessor,
) -> Result<TxnResponse, StateError> {
    crate::metrics::mvcc_txn();
    let path = Path::decide(wb, t);
    check_path(wb, t, &path, leases)?;
    wb.begin();
    let mut resp = exec(wb, leases, t, &path)?;
    resp.header = header(wb.end());
    Ok(resp)
}

fn exec(
    wb: &mut WriteBatch<'_>,
    leases: &Lessor,
    t: &TxnRequest,
    path: &Path,
) -> Result<TxnResponse, StateError> {
    let mut nested = path.nested.iter();
    let mut responses = Vec::new();
    for op in branch(t, path.succeeded) {
        let response = match &op.request {
            Some(Op::RequestRange(r)) => OpResponse::ResponseRange(range(wb, r)?),
            Some(Op::RequestPut(p)) => OpResponse::ResponsePut(put(wb, leases, p)?),
            Some(Op::RequestDeleteRange(d)) => {
                OpResponse::ResponseDeleteRange(delete(wb, leases, d)?)
            }
            Some(Op::RequestTxn(n)) => {
                let mut r = exec(
                    wb,
                    leases,
                    n,
                    nested.next().expect("path has every nested txn"),
                )?;
                r.header = Some(PbResponseHeader::default());
                OpResponse::ResponseTxn(r)
            }
            None => return Err(StateError::KeyNotFound),
        };
        responses.push(ResponseOp {
            response: Some(response),
        });
    }
    Ok(TxnResponse {
        header: None,
        succeeded: path.succeeded,
        responses,
    })
}

/// A put inside the open write transaction (already checked with `check_put`).
pub fn put(
    wb: &mut WriteBatch<'_>,
    leases: &Lessor,
    p: &PutRequest,
) -> Result<PutResponse, StateError> {
    let prev = if p.prev_kv || p.ignore_value || p.ignore_lease {
        wb.get(&p.key)?
    } else {
        None
    };
    let value = match (&prev, p.ignore_value) {
        (Some(prev), true) => prev.value.clone(),
        _ => p.value.clone(),
    };
    let lease = match (&prev, p.ignore_lease) {
        (Some(prev), true) => prev.lease,
        _ => p.lease,
    };
    wb.put(&p.key, value, lease)?;
    leases.attach(&p.key, lease);
    crate::metrics::mvcc_put();
    Ok(PutResponse {
        header: header(wb.read_revision()),
        prev_kv: if p.prev_kv { prev } else { None },
    })
}

/// A delete inside the open write transaction.
pub fn delete(
    wb: &mut WriteBatch<'_>,
    leases: &Lessor,
    d: &DeleteRangeRequest,
) -> Result<DeleteRangeResponse, StateError> {
    let prev = delete_span(wb, leases, KeySpan::from_etcd(&d.key, &d.range_end))?;
    crate::metrics::mvcc_delete();
    Ok(DeleteRangeResponse {
        header: header(wb.read_revision()),
        deleted: prev.len() as i64,
        prev_kvs: if d.prev_kv { prev } else { Vec::new() },
    })
}

/// Deletes the live keys of `span` in the open write transaction and detaches them from their
/// leases; returns them as they were.
pub fn delete_span(
    wb: &mut WriteBatch<'_>,
    leases: &Lessor,
    span: KeySpan<'_>,
) -> Result<Vec<KeyValue>, StateError> {
    let prev = wb.delete(span)?;
    for kv in &prev {
        leases.detach(&kv.key, kv.lease);
    }
    Ok(prev)
}

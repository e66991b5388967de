//! Checks done on a request before it reaches raft, with etcd's errors: missing keys, contradictory
//! put flags, txn size, and txns that would write one key twice.

use std::collections::HashSet;

use keel_proto::etcd::{
    PbDeleteRequest as DeleteRangeRequest, PbPutRequest as PutRequest,
    PbRangeRequest as RangeRequest, PbTxnOpRequest as Op, PbTxnRequest as TxnRequest,
};

use crate::StateError;

/// KV.Range: a key is required.
pub fn check_range(r: &RangeRequest) -> Result<(), StateError> {
    if r.key.is_empty() {
        return Err(StateError::EmptyKey);
    }
    Ok(())
}

/// KV.Put: a key is required; ignore_value/ignore_lease exclude a value/lease.
pub fn check_put(r: &PutRequest) -> Result<(), StateError> {
    if r.key.is_empty() {
        return Err(StateError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(StateError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(StateError::LeaseProvided);
    }
    Ok(())
}

/// KV.DeleteRange: a key is required.
pub fn check_delete(r: &DeleteRangeRequest) -> Result<(), StateError> {
    if r.key.is_empty() {
        return Err(StateError::EmptyKey);
    }
    Ok(())
}

/// KV.Txn: size (each of compares/success/failure within `max_ops`, nested txns sharing what is
/// left), every op well-formed, and no key written twice in either branch.
pub fn check_txn(r: &TxnRequest, max_ops: usize) -> Result<(), StateError> {
    check_txn_ops(r, max_ops)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn_ops(r: &TxnRequest, max_ops: usize) -> Result<(), StateError> {
    let ops = r.compare.len().max(r.success.len()).max(r.failure.len());
    if ops > max_ops {
        return Err(StateError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(StateError::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(Op::RequestRange(r)) => check_range(r)?,
            Some(Op::RequestPut(r)) => check_put(r)?,
            Some(Op::RequestDeleteRange(r)) => check_delete(r)?,
            Some(Op::RequestTxn(t)) => check_txn_ops(t, max_ops - ops)?,
            None => return Err(StateError::KeyNotFound),
        }
    }
    Ok(())
}

/// A deleted span: [start, end), `end` empty meaning no upper bound; a single key is [k, k\0).
struct Span {
    start: Vec<u8>,
    end: Vec<u8>,
}

impl Span {
    fn of_delete(d: &DeleteRangeRequest) -> Span {
        let end = if d.range_end.is_empty() {
            let mut e = d.key.clone();
            e.push(0);
            e
        } else {
            // etcd takes the span literally, so a "\0" end (all keys from `key`) covers nothing here.
            d.range_end.clone()
        };
        Span {
            start: d.key.clone(),
            end,
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        self.start.as_slice() <= key && (self.end.is_empty() || key < self.end.as_slice())
    }
}

/// etcd's duplicate-key rule for one branch, applied recursively to nested txns: returns the keys
/// put and the spans deleted by the branch.
fn check_intervals(
    ops: &[keel_proto::etcd::PbTxnRequestOp],
) -> Result<(HashSet<Vec<u8>>, Vec<Span>), StateError> {
    let mut dels: Vec<Span> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Op::RequestDeleteRange(d)) => Some(Span::of_delete(d)),
            _ => None,
        })
        .collect();
    let deleted = |dels: &[Span], k: &[u8]| dels.iter().any(|s| s.contains(k));
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(Op::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (then_puts, then_dels) = check_intervals(&t.success)?;
        let (else_puts, else_dels) = check_intervals(&t.failure)?;
        for k in then_puts.iter() {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(StateError::DuplicateKey);
            }
        }
        puts.extend(then_puts.iter().cloned());
        // The two branches of one txn never both run: they may write the same key.
        for k in else_puts {
            if (puts.contains(&k) && !then_puts.contains(&k)) || deleted(&dels, &k) {
                return Err(StateError::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(then_dels);
        dels.extend(else_dels);
    }
    for op in ops {
        let Some(Op::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || deleted(&dels, &p.key) {
            return Err(StateError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::etcd::PbTxnRequestOp as RequestOp;

    fn put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }
    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }
    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestTxn(TxnRequest {
                success,
                failure,
                ..Default::default()
            })),
        }
    }
    fn check(success: Vec<RequestOp>) -> Result<(), StateError> {
        check_txn(
            &TxnRequest {
                success,
                ..Default::default()
            },
            128,
        )
    }

    #[test]
    fn duplicate_writes_are_rejected_like_etcd() {
        assert!(matches!(
            check(vec![put("a"), put("a")]),
            Err(StateError::DuplicateKey)
        ));
        assert!(matches!(
            check(vec![del("a", "c"), put("b")]),
            Err(StateError::DuplicateKey)
        ));
        assert!(matches!(
            check(vec![put("a"), txn(vec![put("a")], vec![])]),
            Err(StateError::DuplicateKey)
        ));
        // then/else of one nested txn may write the same key.
        assert!(check(vec![txn(vec![put("a")], vec![put("a")])]).is_ok());
        // Deletes never conflict with each other; a "\0" end is taken literally by etcd.
        assert!(check(vec![del("a", "c"), del("b", "d")]).is_ok());
        assert!(check(vec![del("a", "\0"), put("b")]).is_ok());
        assert!(check(vec![put("a"), put("b")]).is_ok());
    }

    #[test]
    fn size_and_shape_limits() {
        let many = (0..3).map(|i| put(&format!("k{i}"))).collect();
        assert!(matches!(
            check_txn(
                &TxnRequest {
                    success: many,
                    ..Default::default()
                },
                2
            ),
            Err(StateError::TooManyOps)
        ));
        assert!(matches!(
            check(vec![RequestOp { request: None }]),
            Err(StateError::KeyNotFound)
        ));
        assert!(matches!(check(vec![put("")]), Err(StateError::EmptyKey)));
    }
}

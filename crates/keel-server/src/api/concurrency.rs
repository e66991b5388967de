//! etcd's concurrency recipes, run inside the member for the lock and election services (as etcd's
//! v3lock and v3election servers run them on its client library): a contender is a key
//! `<name>/<lease in hex>` created with its lease; contenders are served in the order of their
//! keys' create revisions, each waiting until every key created before its own is deleted.

use keel_rpc::etcd::{
    PbCompare as Compare, PbDeleteRequest as DeleteRangeRequest, PbKeyValue as KeyValue,
    PbPutRequest as PutRequest, PbRangeRequest as RangeRequest, PbTargetUnion as Target,
    PbTxnOpRequest as Op, PbTxnOpResponse as OpResponse, PbTxnRequest as TxnRequest,
    PbTxnRequestOp as RequestOp, PbTxnResponse as TxnResponse,
};
use keel_rpc::RequestAuth;

use crate::member::Member;
use crate::member::{WatchEnd, WatchSpec};
use crate::{range, ServerError};

// etcdserverpb.Compare: result EQUAL, target CREATE; RangeRequest: sort orders and targets.
const EQUAL: i32 = 0;
const TARGET_CREATE: i32 = 1;
const ASCEND: i32 = 1;
const DESCEND: i32 = 2;
const BY_CREATE: i32 = 2;
const EVENT_DELETE: i32 = 1;

/// The key range of everything under `prefix` (etcd's prefix range end).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// `<name>/` and the contender key `<name>/<lease hex>`.
pub fn contender_key(name: &[u8], lease: i64) -> (Vec<u8>, Vec<u8>) {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    let mut key = prefix.clone();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    (prefix, key)
}

fn op(request: Op) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

fn put_op(key: &[u8], value: Vec<u8>, lease: i64) -> RequestOp {
    op(Op::RequestPut(PutRequest {
        key: key.to_vec(),
        value,
        lease,
        ..Default::default()
    }))
}

fn create_is(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: EQUAL,
        target: TARGET_CREATE,
        key: key.to_vec(),
        target_union: Some(Target::CreateRevision(rev)),
        ..Default::default()
    }
}

/// Runs a txn through raft for `who`.
pub async fn txn(
    member: &Member,
    who: &RequestAuth,
    t: TxnRequest,
) -> Result<TxnResponse, ServerError> {
    member.propose(who, t).await
}

/// Puts `key` = `value` with `lease` if it has create revision `rev` (the caller still holds
/// it); whether it did.
pub async fn put_if_held(
    member: &Member,
    who: &RequestAuth,
    key: &[u8],
    rev: i64,
    value: Vec<u8>,
    lease: i64,
) -> Result<bool, ServerError> {
    let t = TxnRequest {
        compare: vec![create_is(key, rev)],
        success: vec![put_op(key, value, lease)],
        failure: vec![],
    };
    Ok(txn(member, who, t).await?.succeeded)
}

/// Deletes `key` (if `rev` is given, only while it has that create revision); the response
/// header's revision.
pub async fn delete_if_held(
    member: &Member,
    who: &RequestAuth,
    key: &[u8],
    rev: Option<i64>,
) -> Result<i64, ServerError> {
    let delete = op(Op::RequestDeleteRange(DeleteRangeRequest {
        key: key.to_vec(),
        ..Default::default()
    }));
    let t = TxnRequest {
        compare: rev.map(|r| create_is(key, r)).into_iter().collect(),
        success: vec![delete],
        failure: vec![],
    };
    let r = txn(member, who, t).await?;
    Ok(r.header.map_or(0, |h| h.revision))
}

/// A contender key that is deleted unless its campaign (or lock) comes to hold it: a call
/// cancelled while it waits (its client went away or gave up) must leave no key behind that
/// would later win for nobody, as etcd's server deletes it. Dropped without `won`, it deletes
/// the key (while it still has its create revision) in a task of its own.
pub struct Contending {
    member: std::sync::Arc<Member>,
    who: RequestAuth,
    key: Vec<u8>,
    rev: i64,
    won: bool,
}

impl Contending {
    /// Watches over `key`, created at `rev`.
    pub fn new(member: std::sync::Arc<Member>, who: RequestAuth, key: Vec<u8>, rev: i64) -> Self {
        Contending {
            member,
            who,
            key,
            rev,
            won: false,
        }
    }

    /// The contender leads (or holds the lock): its key stays.
    pub fn won(mut self) {
        self.won = true;
    }
}

impl Drop for Contending {
    fn drop(&mut self) {
        if self.won {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (member, who, key, rev) = (
            self.member.clone(),
            std::mem::take(&mut self.who),
            std::mem::take(&mut self.key),
            self.rev,
        );
        runtime.spawn(async move {
            if let Err(e) = delete_if_held(&member, &who, &key, Some(rev)).await {
                tracing::warn!(key = %String::from_utf8_lossy(&key), error = %e, "could not delete the key of a cancelled campaign");
            }
        });
    }
}

/// Creates `key` with `value` and `lease` unless it exists; returns its key-value as it is now.
pub async fn create_or_get(
    member: &Member,
    who: &RequestAuth,
    key: &[u8],
    value: Vec<u8>,
    lease: i64,
) -> Result<KeyValue, ServerError> {
    let get = RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    };
    let t = TxnRequest {
        compare: vec![create_is(key, 0)],
        success: vec![put_op(key, value, lease), op(Op::RequestRange(get.clone()))],
        failure: vec![op(Op::RequestRange(get))],
    };
    let r = txn(member, who, t).await?;
    r.responses
        .into_iter()
        .filter_map(|o| match o.response {
            Some(OpResponse::ResponseRange(rr)) => rr.kvs.into_iter().next(),
            _ => None,
        })
        .next()
        .ok_or_else(|| ServerError::Internal("contender key vanished in its own txn".into()))
}

/// The contender of `prefix` created first, or (with `before`) the last one created before
/// revision `before`; read locally (the caller's own write already went through this member).
pub fn contender(
    member: &Member,
    prefix: &[u8],
    before: Option<i64>,
) -> Result<(Option<KeyValue>, i64), ServerError> {
    let r = RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: if before.is_some() { DESCEND } else { ASCEND },
        sort_target: BY_CREATE,
        max_create_revision: before.map_or(0, |b| b - 1),
        ..Default::default()
    };
    let resp = range::range(&member.store().view(), &r)?;
    let rev = resp.header.map_or(0, |h| h.revision);
    Ok((resp.kvs.into_iter().next(), rev))
}

/// May `who` read every contender of `prefix` (as waiting for its turn does)?
pub fn check_contenders_readable(
    member: &Member,
    who: &RequestAuth,
    prefix: &[u8],
) -> Result<(), ServerError> {
    Ok(member.auth().check_read(who, prefix, &prefix_end(prefix))?)
}

/// Waits until every contender of `prefix` created before revision `rev` is gone.
pub async fn wait_turn(member: &Member, prefix: &[u8], rev: i64) -> Result<(), ServerError> {
    loop {
        let (ahead, read_at) = contender(member, prefix, Some(rev))?;
        let Some(ahead) = ahead else {
            return Ok(());
        };
        wait_deleted(member, &ahead.key, read_at + 1).await?;
    }
}

/// Waits until `key` is deleted at or after revision `from`.
pub async fn wait_deleted(member: &Member, key: &[u8], from: i64) -> Result<(), ServerError> {
    let spec = WatchSpec {
        key: key.to_vec(),
        range_end: Vec::new(),
        start_revision: from,
        prev_kv: false,
        no_put: true,
        no_delete: false,
    };
    let mut deleted = false;
    let end = member
        .hub()
        .run(spec, |events, _| {
            deleted |= events.iter().any(|e| e.r#type == EVENT_DELETE);
            std::future::ready(!deleted)
        })
        .await;
    match end {
        _ if deleted => Ok(()),
        // History was compacted under the watch: whether the key is gone is read directly.
        WatchEnd::Compacted(_) => {
            let r = RangeRequest {
                key: key.to_vec(),
                count_only: true,
                ..Default::default()
            };
            if range::range(&member.store().view(), &r)?.count == 0 {
                Ok(())
            } else {
                Box::pin(wait_deleted(
                    member,
                    key,
                    member.store().current_revision() + 1,
                ))
                .await
            }
        }
        WatchEnd::Closed => Err(ServerError::Stopped),
    }
}

//! KV.Range with etcd's semantics on any read view (the committed store, or a write transaction):
//! limit and `more`, `count` over the whole span, revision filters, sorting, keys_only, count_only.

use std::cmp::Ordering;

use keel_mvcc::{KeySpan, RangeOptions, ReadView};
use keel_proto::etcd::{
    PbKeyValue as KeyValue, PbRangeRequest as RangeRequest, PbRangeResponse as RangeResponse,
    PbResponseHeader,
};

use crate::ServerError;

// etcdserverpb.RangeRequest.SortOrder / SortTarget.
const SORT_NONE: i32 = 0;
const SORT_DESCEND: i32 = 2;
const TARGET_KEY: i32 = 0;
const TARGET_VERSION: i32 = 1;
const TARGET_CREATE: i32 = 2;
const TARGET_MOD: i32 = 3;
const TARGET_VALUE: i32 = 4;

/// Serves a range request on `view`. The header carries only the revision (the view's current one,
/// even for a read in the past, as etcd does).
pub fn range(view: &impl ReadView, r: &RangeRequest) -> Result<RangeResponse, ServerError> {
    let filtered = r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0;
    let limit = usize::try_from(r.limit).unwrap_or(0);
    // Sorting and filtering need every key; otherwise fetch one past the limit to learn `more`.
    let fetch = if r.sort_order != SORT_NONE || filtered || limit == 0 {
        0
    } else {
        limit + 1
    };
    let opts = RangeOptions {
        rev: r.revision,
        limit: fetch,
        count_only: r.count_only,
    };
    let res = view.range(KeySpan::from_etcd(&r.key, &r.range_end), &opts)?;
    let mut kvs = res.kvs;
    if filtered {
        kvs.retain(|kv| {
            (r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
                && (r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
                && (r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
                && (r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
        });
    }
    sort(&mut kvs, r.sort_order, r.sort_target);
    let more = limit > 0 && kvs.len() > limit;
    if more {
        kvs.truncate(limit);
    }
    if r.keys_only {
        kvs.iter_mut().for_each(|kv| kv.value.clear());
    }
    Ok(RangeResponse {
        header: Some(PbResponseHeader {
            revision: res.rev,
            ..Default::default()
        }),
        kvs,
        more,
        count: res.count as i64,
    })
}

fn sort(kvs: &mut [KeyValue], order: i32, target: i32) {
    // A target other than the key with no order means ascending, as etcd reads it.
    let order = if order == SORT_NONE && target != TARGET_KEY {
        1
    } else {
        order
    };
    if order == SORT_NONE {
        return;
    }
    let cmp: fn(&KeyValue, &KeyValue) -> Ordering = match target {
        TARGET_VERSION => |a, b| a.version.cmp(&b.version),
        TARGET_CREATE => |a, b| a.create_revision.cmp(&b.create_revision),
        TARGET_MOD => |a, b| a.mod_revision.cmp(&b.mod_revision),
        TARGET_VALUE => |a, b| a.value.cmp(&b.value),
        _ => |a, b| a.key.cmp(&b.key),
    };
    if order == SORT_DESCEND {
        kvs.sort_by(|a, b| cmp(b, a));
    } else {
        kvs.sort_by(cmp);
    }
}

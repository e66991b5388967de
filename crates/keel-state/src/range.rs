//! KV.Range with etcd's semantics on any read view (the committed store, or a write transaction):
//! limit and `more`, `count` over the whole span, revision filters, sorting, keys_only, count_only.

use std::cmp::Ordering;

use keel_mvcc::{KeySpan, RangeOptions, ReadView};
use keel_proto::etcd::{
    PbKeyValue as KeyValue, PbRangeRequest as RangeRequest, PbRangeResponse as RangeResponse,
    PbResponseHeader,
};
use keel_proto::etcd::{PbSortOrder as SortOrder, PbSortTarget as SortTarget};

use crate::StateError;

/// Serves a range request on `view`. The header carries only the revision (the view's current one,
/// even for a read in the past, as etcd does).
pub fn range(view: &impl ReadView, r: &RangeRequest) -> Result<RangeResponse, StateError> {
    crate::metrics::mvcc_range();
    let filtered = r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0;
    let limit = usize::try_from(r.limit).unwrap_or(0);
    // Sorting and filtering need every key; otherwise fetch one past the limit to learn `more`.
    let fetch = if r.sort_order != SortOrder::None as i32 || filtered || limit == 0 {
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
    let target = SortTarget::try_from(target).unwrap_or(SortTarget::Key);
    let order = match SortOrder::try_from(order).unwrap_or(SortOrder::None) {
        // A target other than the key with no order means ascending, as etcd reads it.
        SortOrder::None if target != SortTarget::Key => SortOrder::Ascend,
        SortOrder::None => return,
        order => order,
    };
    let cmp: fn(&KeyValue, &KeyValue) -> Ordering = match target {
        SortTarget::Version => |a, b| a.version.cmp(&b.version),
        SortTarget::Create => |a, b| a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => |a, b| a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => |a, b| a.value.cmp(&b.value),
        SortTarget::Key => |a, b| a.key.cmp(&b.key),
    };
    if order == SortOrder::Descend {
        kvs.sort_by(|a, b| cmp(b, a));
    } else {
        kvs.sort_by(cmp);
    }
}

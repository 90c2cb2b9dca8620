//! The merge operator of list state: appending an element is a merge of
//! its packed bytes, so a list append never reads the list. With TTL, full
//! merges (in compaction and on read) drop the expired elements.

use std::sync::Arc;

use flowstate_api::ttl::SharedClock;
use flowstate_api::ttl::{is_expired, split_ttl_value};
use rocksdb::{MergeOperands, Options};

use crate::keys::{elements, pack};
use crate::ttl_filter::TtlSlot;

/// Sets the list merge operator on the options of a list state's column
/// family, reading the state's TTL from `ttl`.
pub(crate) fn install(o: &mut Options, ttl: Arc<TtlSlot>, clock: SharedClock) {
    let (full, partial) = (ttl, clock);
    o.set_merge_operator(
        "flowstate-list-append",
        move |_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands| {
            let mut out =
                Vec::with_capacity(existing.map_or(0, <[u8]>::len) + operands.iter().map(<[u8]>::len).sum::<usize>());
            existing
                .into_iter()
                .chain(operands.iter())
                .for_each(|p| out.extend_from_slice(p));
            Some(drop_expired_elements(out, full.get(), partial.now_millis()))
        },
        |_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands| {
            let mut out = Vec::new();
            existing
                .into_iter()
                .chain(operands.iter())
                .for_each(|p| out.extend_from_slice(p));
            Some(out)
        },
    );
}

/// Keeps the unexpired elements of a packed list (all of them without TTL).
fn drop_expired_elements(packed: Vec<u8>, ttl: Option<u64>, now: u64) -> Vec<u8> {
    let Some(ttl) = ttl else { return packed };
    let Ok(all) = elements(&packed, "list") else {
        return packed;
    };
    let keep: Vec<&[u8]> = all
        .into_iter()
        .filter(|e| !split_ttl_value(e).is_ok_and(|(ts, _)| is_expired(ts, ttl, now)))
        .collect();
    let mut out = Vec::with_capacity(packed.len());
    for e in keep {
        pack(&mut out, e);
    }
    out
}

//! MVCC revision keys (the on-disk key of every version): any bytes parse or are refused without
//! a panic, and a parsed key encodes back to the same bytes.
#![no_main]

use keel_mvcc::Revision;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((rev, tombstone)) = Revision::from_key(data) {
        assert_eq!(rev.to_key(tombstone), data, "a parsed key round-trips");
    }
});

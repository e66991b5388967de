//! Every raft entry a member applies is decoded as an `InternalRequest`: arbitrary bytes (a
//! corrupt or hostile entry) must decode or fail cleanly, and what decodes must re-encode to
//! something that decodes to the same request.
#![no_main]

use keel_proto::InternalRequest;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = InternalRequest::decode(data) {
        let again = InternalRequest::decode(req.encode_to_vec().as_slice())
            .expect("a decoded request re-encodes to valid bytes");
        assert_eq!(again, req);
    }
});

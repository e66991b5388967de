//! Odd and malformed requests, sent to Keel and to real etcd 3.4 side by side: each gets the same
//! answer (the same result, or the same gRPC code and message), and Keel keeps serving.

mod common;

use common::{start_etcd, Member};
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};

/// What a request came back with, comparable across servers (revisions and ids left out).
async fn answers(c: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    let mut note = |what: &str, r: String| out.push(format!("{what}: {r}"));
    let err = |e: etcd_client::Error| match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?} {}", s.code(), s.message()),
        other => format!("client error {other}"),
    };
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3")] {
        c.put(k, v, None).await.unwrap();
    }
    let get = |opts: GetOptions| opts;
    let cases: Vec<(&str, &str, GetOptions)> = vec![
        (
            "range end before key",
            "c",
            get(GetOptions::new().with_range("a")),
        ),
        (
            "negative limit",
            "a",
            get(GetOptions::new().with_range("d").with_limit(-5)),
        ),
        (
            "negative revision",
            "a",
            get(GetOptions::new().with_revision(-1)),
        ),
        (
            "future revision",
            "a",
            get(GetOptions::new().with_revision(1_000_000)),
        ),
        (
            "negative min mod revision",
            "a",
            get(GetOptions::new().with_range("d").with_min_mod_revision(-3)),
        ),
        ("empty key", "", get(GetOptions::new())),
    ];
    for (what, key, opts) in cases {
        let r = match c.get(key, Some(opts)).await {
            Ok(r) => {
                let keys: Vec<String> = r
                    .kvs()
                    .iter()
                    .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                    .collect();
                format!("{keys:?} count={} more={}", r.count(), r.more())
            }
            Err(e) => err(e),
        };
        note(what, r);
    }
    let r = c
        .put("x", "y", Some(PutOptions::new().with_lease(424242)))
        .await;
    note(
        "put with unknown lease",
        r.map(|_| "ok".into()).unwrap_or_else(err),
    );
    let r = c
        .put("nope", "", Some(PutOptions::new().with_ignore_value()))
        .await;
    note(
        "ignore_value on absent key",
        r.map(|_| "ok".into()).unwrap_or_else(err),
    );
    let r = c
        .delete("c", Some(DeleteOptions::new().with_range("a")))
        .await;
    note(
        "delete range end before key",
        r.map(|r| format!("deleted={}", r.deleted()))
            .unwrap_or_else(err),
    );
    let r = c.compact(-1, None).await;
    note(
        "compact negative",
        r.map(|_| "ok".into()).unwrap_or_else(err),
    );
    let r = c.compact(1_000_000, None).await;
    note("compact future", r.map(|_| "ok".into()).unwrap_or_else(err));
    let r = c.lease_grant(-5, None).await;
    note(
        "lease with negative ttl",
        r.map(|r| format!("ttl={}", r.ttl())).unwrap_or_else(err),
    );
    let r = c.lease_revoke(987654).await;
    note(
        "revoke unknown lease",
        r.map(|_| "ok".into()).unwrap_or_else(err),
    );
    let txn = Txn::new()
        .when([Compare::mod_revision("a", CompareOp::Greater, -7)])
        .and_then([TxnOp::put("t", "1", None), TxnOp::delete("t", None)]);
    let r = c.txn(txn).await;
    note(
        "txn writing one key twice",
        r.map(|r| format!("succeeded={}", r.succeeded()))
            .unwrap_or_else(err),
    );
    let txn = Txn::new()
        .when([Compare::mod_revision("a", CompareOp::Greater, -7)])
        .and_then([TxnOp::get("z", Some(GetOptions::new().with_range("a")))]);
    let r = c.txn(txn).await;
    note(
        "txn with an inverted range",
        r.map(|r| format!("succeeded={}", r.succeeded()))
            .unwrap_or_else(err),
    );
    // A watch from a negative revision starts now, like 0.
    let mut s = c
        .watch("w", Some(WatchOptions::new().with_start_revision(-9)))
        .await
        .unwrap();
    c.put("w", "1", None).await.unwrap();
    let first = s.message().await.unwrap().unwrap();
    let second = if first.events().is_empty() {
        s.message().await.unwrap().unwrap()
    } else {
        first
    };
    note(
        "watch from a negative revision",
        format!(
            "events={} canceled={} compact={} reason={}",
            second.events().len(),
            second.canceled(),
            second.compact_revision(),
            second.cancel_reason()
        ),
    );
    out
}

#[tokio::test]
async fn odd_requests_get_the_answers_etcd_gives() {
    let keel = Member::start().await;
    let etcd = start_etcd();
    let mut k = keel.client().await;
    let mut e = Client::connect([etcd.endpoint.as_str()], None)
        .await
        .unwrap();
    let (ours, theirs) = (answers(&mut k).await, answers(&mut e).await);
    for (o, t) in ours.iter().zip(&theirs) {
        assert_eq!(o, t, "Keel and etcd differ");
    }
    assert_eq!(ours.len(), theirs.len());
    assert!(keel.is_running(), "keel survived");
    k.put("still", "serving", None).await.unwrap();
}

/// Sends and receives message bytes as they are, so a test can put anything on the wire.
#[derive(Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

/// The gRPC code of a unary call of `method` with `msg` as the request's bytes.
async fn raw_call(endpoint: &str, method: &'static str, msg: &[u8]) -> tonic::Code {
    let mut grpc = common::raw_grpc(endpoint).await;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
    match grpc
        .unary(tonic::Request::new(msg.to_vec()), path, RawCodec)
        .await
    {
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    }
}

/// Requests that are not valid protobuf for their message (wrong wire types, lengths past the
/// end, truncated varints, invalid tags) are refused as etcd refuses them, and Keel keeps serving.
#[tokio::test]
async fn malformed_messages_on_the_wire_are_refused_as_etcd_refuses_them() {
    let keel = Member::start().await;
    let etcd = start_etcd();
    let cases: &[(&str, &'static str, &[u8])] = &[
        (
            "put: key as a varint",
            "/etcdserverpb.KV/Put",
            &[0x08, 0x01],
        ),
        (
            "put: key longer than the message",
            "/etcdserverpb.KV/Put",
            &[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, b'k'],
        ),
        (
            "range: truncated varint",
            "/etcdserverpb.KV/Range",
            &[0x0a, 0x01, b'a', 0x18, 0xff],
        ),
        (
            "range: field number 0",
            "/etcdserverpb.KV/Range",
            &[0x00, 0x01],
        ),
        (
            "range: wire type 7",
            "/etcdserverpb.KV/Range",
            &[0x0a, 0x01, b'a', 0x0f],
        ),
        (
            "range: an 11-byte varint",
            "/etcdserverpb.KV/Range",
            &[
                0x0a, 0x01, b'a', 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                0x01,
            ],
        ),
        (
            "txn: a compare of the wrong wire type",
            "/etcdserverpb.KV/Txn",
            &[0x08, 0x05],
        ),
        (
            "txn: a nested request op truncated",
            "/etcdserverpb.KV/Txn",
            &[0x12, 0x04, 0x0a, 0x08, 0x0a, 0x01],
        ),
        (
            "lease grant: TTL as bytes",
            "/etcdserverpb.Lease/LeaseGrant",
            &[0x08 | 2, 0x01, 0x00],
        ),
        (
            "compact: revision as a fixed64 cut short",
            "/etcdserverpb.KV/Compact",
            &[0x09, 0x01, 0x02],
        ),
        (
            "delete: key length past the end",
            "/etcdserverpb.KV/DeleteRange",
            &[0x0a, 0x05, b'a'],
        ),
        // Fields a message does not have are skipped (proto3), so these are valid requests.
        (
            "put: an unknown field",
            "/etcdserverpb.KV/Put",
            &[0x0a, 0x01, b'u', 0xf8, 0x06, 0x01],
        ),
        ("range: no fields", "/etcdserverpb.KV/Range", &[]),
        ("put: no key", "/etcdserverpb.KV/Put", &[0x12, 0x01, b'v']),
    ];
    let mut refused = 0;
    for (what, method, msg) in cases {
        let ours = raw_call(&keel.endpoint(), method, msg).await;
        let theirs = raw_call(&etcd.endpoint, method, msg).await;
        assert_eq!(
            ours, theirs,
            "{what}: Keel answered {ours:?}, etcd {theirs:?}"
        );
        refused += usize::from(ours != tonic::Code::Ok);
    }
    assert!(
        refused >= 11,
        "the malformed cases were refused ({refused})"
    );
    // Invalid UTF-8 where the API declares a string (names, URLs). etcd's Go decoder does not
    // check strings, so etcd takes such a user name as it is; Keel refuses the message as
    // undecodable (protobuf requires UTF-8 there), with the code etcd gives undecodable messages.
    let not_utf8: &[(&str, &'static str, &[u8])] = &[
        (
            "user add",
            "/etcdserverpb.Auth/UserAdd",
            &[0x0a, 0x02, 0xff, 0xfe, 0x12, 0x01, b'x'],
        ),
        (
            "authenticate",
            "/etcdserverpb.Auth/Authenticate",
            &[0x0a, 0x02, 0xff, 0xfe],
        ),
        (
            "role add",
            "/etcdserverpb.Auth/RoleAdd",
            &[0x0a, 0x02, 0xff, 0xfe],
        ),
        (
            "member add",
            "/etcdserverpb.Cluster/MemberAdd",
            &[0x0a, 0x02, 0xff, 0xfe],
        ),
    ];
    for (what, method, msg) in not_utf8 {
        let ours = raw_call(&keel.endpoint(), method, msg).await;
        assert_eq!(
            ours,
            tonic::Code::Internal,
            "{what} with a name that is not UTF-8"
        );
    }
    let mut k = keel.client().await;
    assert!(
        k.user_list().await.unwrap().users().is_empty(),
        "no user was made"
    );
    assert!(
        k.role_list().await.unwrap().roles().is_empty(),
        "no role was made"
    );
    assert_eq!(k.member_list().await.unwrap().members().len(), 1);
    assert!(keel.is_running(), "keel survived");
    k.put("still", "serving", None).await.unwrap();
}

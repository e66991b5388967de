//! etcd's messages as JSON, the way etcd 3.4's grpc-gateway writes and reads them (`JSONPb` with
//! proto field names): 64-bit integers as strings, bytes as base64, enums by name, fields at their
//! default left out (a string that reads "0" is not a default), and requests read by proto or
//! lowerCamelCase names, integers as strings or numbers. One test per message shape the gateway
//! serves.

use keel_proto::authpb::Permission;
use keel_proto::etcd::*;
use keel_proto::etcdserverpb::watch_create_request::FilterType;
use keel_proto::etcdserverpb::{AlarmType, WatchCreateRequest};
use keel_proto::mvccpb::event::EventType;
use serde_json::{json, Value};

fn to_json<T: serde::Serialize>(m: &T) -> Value {
    serde_json::to_value(m).unwrap()
}

fn from_json<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn header(revision: i64) -> Option<PbResponseHeader> {
    Some(PbResponseHeader {
        cluster_id: 14841639068965178418,
        member_id: 10276657743932975437,
        revision,
        raft_term: 2,
    })
}

#[test]
fn a_header_writes_its_64_bit_integers_as_strings() {
    let r = PbPutResponse {
        header: header(5),
        prev_kv: None,
    };
    assert_eq!(
        to_json(&r),
        json!({"header": {"cluster_id": "14841639068965178418", "member_id": "10276657743932975437",
            "revision": "5", "raft_term": "2"}})
    );
}

#[test]
fn a_range_response_writes_keys_and_values_as_base64_and_leaves_defaults_out() {
    let r = PbRangeResponse {
        header: header(7),
        kvs: vec![PbKeyValue {
            key: b"foo".to_vec(),
            create_revision: 3,
            mod_revision: 7,
            version: 2,
            value: b"0".to_vec(),
            lease: 0,
        }],
        more: false,
        count: 1,
    };
    let v = to_json(&r);
    assert_eq!(
        v["kvs"],
        json!([{"key": "Zm9v", "create_revision": "3", "mod_revision": "7", "version": "2", "value": "MA=="}])
    );
    assert_eq!(v["count"], json!("1"));
    assert!(v.get("more").is_none(), "false is the default: {v}");
    let empty = to_json(&PbRangeResponse {
        header: header(7),
        ..Default::default()
    });
    assert!(
        empty.get("kvs").is_none() && empty.get("count").is_none(),
        "{empty}"
    );
}

#[test]
fn a_txn_response_names_each_op_response_by_its_proto_name() {
    let r = PbTxnResponse {
        header: header(9),
        succeeded: true,
        responses: vec![
            PbResponseOp {
                response: Some(PbTxnOpResponse::ResponsePut(PbPutResponse {
                    header: header(9),
                    prev_kv: None,
                })),
            },
            PbResponseOp {
                response: Some(PbTxnOpResponse::ResponseDeleteRange(PbDeleteResponse {
                    header: header(9),
                    deleted: 0,
                    prev_kvs: vec![],
                })),
            },
        ],
    };
    let v = to_json(&r);
    assert_eq!(v["succeeded"], json!(true));
    assert_eq!(
        v["responses"][0]["response_put"]["header"]["revision"],
        json!("9")
    );
    assert_eq!(
        v["responses"][1]["response_delete_range"],
        json!({"header": v["header"]})
    );
}

#[test]
fn a_txn_request_is_read_by_either_name_with_integers_as_strings_or_numbers() {
    let by_proto: PbTxnRequest = from_json(json!({
        "compare": [{"key": "Zm9v", "result": "NOT_EQUAL", "target": "MOD", "mod_revision": "0"}],
        "success": [{"request_put": {"key": "Zm9v", "value": "YmFy", "lease": 7}}],
        "failure": [{"request_range": {"key": "Zm9v", "sort_order": "DESCEND", "limit": "2"}}]
    }));
    let by_camel: PbTxnRequest = from_json(json!({
        "compare": [{"key": "Zm9v", "result": 3, "target": 2, "modRevision": 0}],
        "success": [{"requestPut": {"key": "Zm9v", "value": "YmFy", "lease": "7"}}],
        "failure": [{"requestRange": {"key": "Zm9v", "sortOrder": 2, "limit": 2}}]
    }));
    assert_eq!(by_proto, by_camel);
    let c = &by_proto.compare[0];
    assert_eq!(c.result, PbCompareResult::NotEqual as i32);
    assert_eq!(c.target_union, Some(PbTargetUnion::ModRevision(0)));
    let Some(PbTxnOpRequest::RequestPut(p)) = &by_proto.success[0].request else {
        panic!("no put")
    };
    assert_eq!(
        (&p.key[..], &p.value[..], p.lease),
        (&b"foo"[..], &b"bar"[..], 7)
    );
}

#[test]
fn watch_events_name_their_type_and_a_create_request_its_filters() {
    let r = PbWatchResponse {
        header: header(4),
        events: vec![
            PbEvent {
                r#type: EventType::Put as i32,
                kv: Some(PbKeyValue {
                    key: b"a".to_vec(),
                    ..Default::default()
                }),
                prev_kv: None,
            },
            PbEvent {
                r#type: EventType::Delete as i32,
                kv: Some(PbKeyValue {
                    key: b"a".to_vec(),
                    mod_revision: 4,
                    ..Default::default()
                }),
                prev_kv: None,
            },
        ],
        ..Default::default()
    };
    let v = to_json(&r);
    assert_eq!(
        v["events"][0],
        json!({"kv": {"key": "YQ=="}}),
        "PUT is the default"
    );
    assert_eq!(v["events"][1]["type"], json!("DELETE"));
    assert!(v.get("watch_id").is_none() && v.get("created").is_none());
    let w: PbWatchRequest = from_json(json!({"create_request": {
        "key": "YQ==", "range_end": "Yg==", "start_revision": "3", "filters": ["NODELETE"], "prev_kv": true}}));
    let Some(PbWatchRequestUnion::CreateRequest(c)) = w.request_union else {
        panic!("no create request")
    };
    assert_eq!(
        c,
        WatchCreateRequest {
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
            start_revision: 3,
            filters: vec![FilterType::Nodelete as i32],
            prev_kv: true,
            ..Default::default()
        }
    );
}

#[test]
fn lease_messages_keep_etcds_upper_case_names() {
    let grant: PbLeaseGrantRequest = from_json(json!({"TTL": "60", "ID": 0}));
    assert_eq!((grant.ttl, grant.id), (60, 0));
    let ttl = PbLeaseTimeToLiveResponse {
        header: header(2),
        id: 7587862072907496204,
        ttl: 55,
        granted_ttl: 60,
        keys: vec![b"k".to_vec()],
    };
    let v = to_json(&ttl);
    assert_eq!(
        (&v["ID"], &v["TTL"], &v["grantedTTL"], &v["keys"]),
        (
            &json!("7587862072907496204"),
            &json!("55"),
            &json!("60"),
            &json!(["aw=="])
        )
    );
    let leases = PbLeaseLeasesResponse {
        header: header(2),
        leases: vec![PbLeaseStatus { id: 1 }],
    };
    assert_eq!(to_json(&leases)["leases"], json!([{"ID": "1"}]));
}

#[test]
fn a_member_named_0_keeps_its_name() {
    let m = PbMember {
        id: 1,
        name: "0".into(),
        peer_ur_ls: vec!["http://127.0.0.1:2380".into()],
        client_ur_ls: vec![],
        is_learner: false,
    };
    assert_eq!(
        to_json(&PbMemberListResponse {
            header: header(1),
            members: vec![m],
        })["members"],
        json!([{"ID": "1", "name": "0", "peerURLs": ["http://127.0.0.1:2380"]}])
    );
}

#[test]
fn auth_and_alarm_messages_write_names_and_read_either_form() {
    let roles = PbAuthUserGetResponse {
        header: header(1),
        roles: vec!["0".into(), "root".into()],
    };
    assert_eq!(to_json(&roles)["roles"], json!(["0", "root"]));
    let grant: PbAuthRoleGrantPermissionRequest = from_json(json!({
        "name": "r", "perm": {"permType": "READWRITE", "key": "YQ==", "range_end": "Yg=="}}));
    assert_eq!(
        grant.perm,
        Some(Permission {
            perm_type: 2,
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
        })
    );
    let alarms = PbAlarmResponse {
        header: header(1),
        alarms: vec![PbAlarmMember {
            member_id: 5,
            alarm: AlarmType::Nospace as i32,
        }],
    };
    assert_eq!(
        to_json(&alarms)["alarms"],
        json!([{"memberID": "5", "alarm": "NOSPACE"}])
    );
}

#[test]
fn an_empty_object_is_the_empty_message_and_unknown_fields_are_ignored() {
    let r: PbRangeRequest = from_json(json!({"key": "YQ==", "no_such_field": 1}));
    assert_eq!(r.key, b"a");
    let s: PbStatusRequest = from_json(json!({}));
    assert_eq!(s, PbStatusRequest {});
}

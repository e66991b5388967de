//! The state machine on a real RocksDB store in a temporary directory, request by request, in the
//! spirit of etcd's applier and mvcc tests: what each request kind does, each error it can fail
//! with, and that a refused request leaves nothing behind (no revision, no key, no lease).

use std::sync::Arc;

use keel_mvcc::Store;
use keel_proto::etcd::{
    PbAlarmRequest, PbAuthEnableRequest, PbAuthRoleAddRequest, PbAuthRoleGrantPermissionRequest,
    PbAuthUserAddRequest, PbAuthUserDeleteRequest, PbAuthUserGrantRoleRequest,
    PbAuthUserRevokeRoleRequest, PbCompactionRequest, PbCompare, PbCompareResult, PbCompareTarget,
    PbDeleteRequest, PbLeaseGrantRequest, PbLeaseRevokeRequest, PbMemberUpdateRequest,
    PbPutRequest, PbRangeRequest, PbTargetUnion, PbTxnOpRequest, PbTxnOpResponse, PbTxnRequest,
    PbTxnRequestOp,
};
use keel_proto::{authpb, Authenticate, RequestAuth, RequestBody};
use keel_state::alarm::Alarms;
use keel_state::auth::{AuthStore, TokenInfo, TokenIssuer, ROOT};
use keel_state::lease::Lessor;
use keel_state::membership::Membership;
use keel_state::{apply, Machine, Response, StateError};

/// Simple tokens as the server makes them (prefix and index), remembered but never expiring.
#[derive(Default)]
struct TestTokens(parking_lot::Mutex<Vec<(String, String)>>);

impl TokenIssuer for TestTokens {
    fn is_jwt(&self) -> bool {
        false
    }
    fn sign(&self, _: &str, _: u64) -> Result<String, String> {
        Err("not a JWT issuer".into())
    }
    fn assign_simple(&self, user: &str, prefix: &str, index: u64) -> String {
        let token = format!("{prefix}.{index}");
        self.0.lock().push((token.clone(), user.to_string()));
        token
    }
    fn identify(&self, token: &str) -> Option<TokenInfo> {
        let live = self.0.lock();
        let (_, user) = live.iter().find(|(t, _)| t == token)?;
        Some(TokenInfo {
            user: user.clone(),
            revision: None,
        })
    }
    fn invalidate_user(&self, user: &str) {
        self.0.lock().retain(|(_, u)| u != user);
    }
    fn clear(&self) {
        self.0.lock().clear();
    }
}

/// A state machine over a fresh store; entries get consecutive raft indexes.
struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    machine: Machine,
    index: u64,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let machine = Machine {
            leases: Arc::new(Lessor::restore(&store).unwrap()),
            members: Arc::new(Membership::load(&store).unwrap()),
            alarms: Arc::new(Alarms::load(&store).unwrap()),
            auth: Arc::new(AuthStore::load(&store, Box::<TestTokens>::default()).unwrap()),
        };
        Fixture {
            _dir: dir,
            store,
            machine,
            index: 0,
        }
    }

    /// Applies one request as its own entry, as the member's own (every permission).
    fn apply(&mut self, body: RequestBody) -> Result<Response, StateError> {
        self.apply_as(None, body)
    }

    fn apply_as(
        &mut self,
        who: Option<&RequestAuth>,
        body: RequestBody,
    ) -> Result<Response, StateError> {
        self.index += 1;
        let mut wb = self.store.write_batch();
        let res = apply(&mut wb, &self.machine, &body, who, self.index);
        wb.commit(self.index).unwrap();
        res
    }

    fn value(&self, key: &str) -> Option<Vec<u8>> {
        let r = keel_state::range::range(&self.store.view(), &range(key)).unwrap();
        r.kvs.into_iter().next().map(|kv| kv.value)
    }

    fn revision(&self) -> i64 {
        self.store.current_revision()
    }
}

fn put(key: &str, value: &str) -> PbPutRequest {
    PbPutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

fn range(key: &str) -> PbRangeRequest {
    PbRangeRequest {
        key: key.into(),
        ..Default::default()
    }
}

fn op(request: PbTxnOpRequest) -> PbTxnRequestOp {
    PbTxnRequestOp {
        request: Some(request),
    }
}

fn value_is(key: &str, value: &str) -> PbCompare {
    PbCompare {
        result: PbCompareResult::Equal as i32,
        target: PbCompareTarget::Value as i32,
        key: key.into(),
        target_union: Some(PbTargetUnion::Value(value.into())),
        ..Default::default()
    }
}

fn grant(id: i64, ttl: i64) -> RequestBody {
    RequestBody::LeaseGrant(PbLeaseGrantRequest { id, ttl })
}

#[test]
fn puts_and_deletes_write_revisions() {
    let mut f = Fixture::new();
    let Ok(Response::Put(r)) = f.apply(RequestBody::Put(put("a", "1"))) else {
        panic!("put failed")
    };
    assert_eq!(r.header.unwrap().revision, 2);
    f.apply(RequestBody::Put(put("b", "2"))).unwrap();
    let Ok(Response::DeleteRange(d)) = f.apply(RequestBody::DeleteRange(PbDeleteRequest {
        key: "a".into(),
        range_end: "c".into(),
        prev_kv: true,
    })) else {
        panic!("delete failed")
    };
    assert_eq!((d.deleted, d.prev_kvs.len()), (2, 2));
    assert_eq!(f.revision(), 4);
    assert_eq!(f.value("a"), None);
}

/// Every request refused by the state machine, on a store holding `a` = 1 and lease 7: the error,
/// and no revision, key or lease written.
#[test]
fn refused_requests_change_nothing() {
    let with_lease = |key: &str, lease| {
        RequestBody::Put(PbPutRequest {
            lease,
            ..put(key, "x")
        })
    };
    let txn = |success: Vec<PbTxnOpRequest>| {
        RequestBody::Txn(PbTxnRequest {
            compare: vec![value_is("a", "1")],
            success: success.into_iter().map(op).collect(),
            failure: vec![],
        })
    };
    let cases: Vec<(&str, RequestBody, StateError)> = vec![
        (
            "ignore_value on a missing key",
            RequestBody::Put(PbPutRequest {
                ignore_value: true,
                ..put("missing", "")
            }),
            StateError::KeyNotFound,
        ),
        (
            "ignore_lease on a missing key",
            RequestBody::Put(PbPutRequest {
                ignore_lease: true,
                ..put("missing", "v")
            }),
            StateError::KeyNotFound,
        ),
        (
            "a lease that does not exist",
            with_lease("k", 99),
            StateError::LeaseNotFound,
        ),
        (
            "a txn whose second put names a missing lease",
            txn(vec![
                PbTxnOpRequest::RequestPut(put("t1", "x")),
                PbTxnOpRequest::RequestPut(PbPutRequest {
                    lease: 99,
                    ..put("t2", "x")
                }),
            ]),
            StateError::LeaseNotFound,
        ),
        (
            "a txn whose later op is empty",
            RequestBody::Txn(PbTxnRequest {
                compare: vec![],
                success: vec![
                    op(PbTxnOpRequest::RequestPut(put("t1", "x"))),
                    PbTxnRequestOp { request: None },
                ],
                failure: vec![],
            }),
            StateError::KeyNotFound,
        ),
        (
            "a txn reading a future revision after a put",
            txn(vec![
                PbTxnOpRequest::RequestPut(put("t1", "x")),
                PbTxnOpRequest::RequestRange(PbRangeRequest {
                    revision: 1000,
                    ..range("a")
                }),
            ]),
            StateError::FutureRevision,
        ),
        (
            "a compaction past the current revision",
            RequestBody::Compaction(PbCompactionRequest {
                revision: 1000,
                physical: false,
            }),
            StateError::FutureRevision,
        ),
        ("a lease id in use", grant(7, 60), StateError::LeaseExists),
        (
            "revoking a lease that does not exist",
            RequestBody::LeaseRevoke(PbLeaseRevokeRequest { id: 99 }),
            StateError::LeaseNotFound,
        ),
        (
            "new peer URLs for a member that does not exist",
            RequestBody::MemberUpdate(PbMemberUpdateRequest {
                id: 42,
                peer_ur_ls: vec!["http://127.0.0.1:1".into()],
            }),
            StateError::MemberNotFound,
        ),
    ];
    for (what, body, want) in cases {
        let mut f = Fixture::new();
        f.apply(RequestBody::Put(put("a", "1"))).unwrap();
        f.apply(grant(7, 60)).unwrap();
        let before = (f.revision(), f.machine.leases.leases());
        let got = f.apply(body).err();
        assert_eq!(got, Some(want), "{what}");
        assert_eq!((f.revision(), f.machine.leases.leases()), before, "{what}");
        for key in ["k", "t1", "t2", "missing"] {
            assert_eq!(f.value(key), None, "{what}: {key} was written");
        }
        assert_eq!(f.value("a").as_deref(), Some(&b"1"[..]), "{what}");
    }
}

#[test]
fn txn_takes_the_branch_its_compares_choose() {
    let mut f = Fixture::new();
    f.apply(RequestBody::Put(put("a", "1"))).unwrap();
    for (current, succeeded, written) in [("1", true, "yes"), ("2", false, "no")] {
        let Ok(Response::Txn(r)) = f.apply(RequestBody::Txn(PbTxnRequest {
            compare: vec![value_is("a", current)],
            success: vec![op(PbTxnOpRequest::RequestPut(put("b", "yes")))],
            failure: vec![
                op(PbTxnOpRequest::RequestPut(put("b", "no"))),
                op(PbTxnOpRequest::RequestRange(range("a"))),
            ],
        })) else {
            panic!("txn failed")
        };
        assert_eq!(r.succeeded, succeeded);
        assert_eq!(f.value("b").as_deref(), Some(written.as_bytes()));
        if !succeeded {
            let Some(PbTxnOpResponse::ResponseRange(read)) = &r.responses[1].response else {
                panic!("no range response")
            };
            assert_eq!(read.kvs[0].value, b"1");
        }
    }
}

#[test]
fn compaction_then_reads_below_it_are_refused() {
    let mut f = Fixture::new();
    for v in ["1", "2", "3"] {
        f.apply(RequestBody::Put(put("a", v))).unwrap();
    }
    f.apply(RequestBody::Compaction(PbCompactionRequest {
        revision: 3,
        physical: true,
    }))
    .unwrap();
    let old = PbRangeRequest {
        revision: 2,
        ..range("a")
    };
    let err = keel_state::range::range(&f.store.view(), &old).unwrap_err();
    assert_eq!(err, StateError::Compacted);
    let again = f.apply(RequestBody::Compaction(PbCompactionRequest {
        revision: 2,
        physical: false,
    }));
    assert_eq!(again.err(), Some(StateError::Compacted));
}

#[test]
fn revoking_a_lease_deletes_its_keys_in_one_revision() {
    let mut f = Fixture::new();
    f.apply(grant(7, 60)).unwrap();
    for key in ["l1", "l2"] {
        f.apply(RequestBody::Put(PbPutRequest {
            lease: 7,
            ..put(key, "v")
        }))
        .unwrap();
    }
    f.apply(RequestBody::Put(put("other", "v"))).unwrap();
    let before = f.revision();
    f.apply(RequestBody::LeaseRevoke(PbLeaseRevokeRequest { id: 7 }))
        .unwrap();
    assert_eq!(f.revision(), before + 1);
    assert_eq!((f.value("l1"), f.value("l2")), (None, None));
    assert!(f.value("other").is_some());
    assert!(f.machine.leases.leases().is_empty());
}

#[test]
fn nospace_refuses_what_grows_the_store_until_disarmed() {
    let mut f = Fixture::new();
    let alarm = |action| {
        RequestBody::Alarm(PbAlarmRequest {
            action,
            member_id: 1,
            alarm: 1, // NOSPACE
        })
    };
    f.apply(RequestBody::Put(put("a", "1"))).unwrap();
    f.apply(alarm(1)).unwrap(); // ACTIVATE
    assert_eq!(
        f.apply(RequestBody::Put(put("b", "1"))).err(),
        Some(StateError::NoSpace)
    );
    assert_eq!(f.apply(grant(8, 60)).err(), Some(StateError::NoSpace));
    // Deleting and compacting is how an operator makes room: both still work.
    f.apply(RequestBody::DeleteRange(PbDeleteRequest {
        key: "a".into(),
        ..Default::default()
    }))
    .unwrap();
    f.apply(alarm(2)).unwrap(); // DEACTIVATE
    f.apply(RequestBody::Put(put("b", "1"))).unwrap();
}

fn user_add(name: &str) -> RequestBody {
    RequestBody::UserAdd(PbAuthUserAddRequest {
        name: name.into(),
        hashed_password: "$2a$10$hash".into(),
        ..Default::default()
    })
}

fn role_add(name: &str) -> RequestBody {
    RequestBody::RoleAdd(PbAuthRoleAddRequest { name: name.into() })
}

fn grant_role(user: &str, role: &str) -> RequestBody {
    RequestBody::UserGrantRole(PbAuthUserGrantRoleRequest {
        user: user.into(),
        role: role.into(),
    })
}

#[test]
fn auth_management_errors_are_etcds() {
    let mut f = Fixture::new();
    let enable = || RequestBody::AuthEnable(PbAuthEnableRequest {});
    let cases: Vec<(&str, RequestBody, Option<StateError>)> = vec![
        (
            "user without a name",
            user_add(""),
            Some(StateError::UserEmpty),
        ),
        (
            "role without a name",
            role_add(""),
            Some(StateError::RoleEmpty),
        ),
        (
            "enable without root",
            enable(),
            Some(StateError::RootUserMissing),
        ),
        ("root user", user_add(ROOT), None),
        ("root again", user_add(ROOT), Some(StateError::UserExists)),
        (
            "enable without the root role",
            enable(),
            Some(StateError::RootRoleMissing),
        ),
        (
            "unknown role",
            grant_role(ROOT, "reader"),
            Some(StateError::RoleNotFound),
        ),
        ("root role", role_add(ROOT), None),
        (
            "root role again",
            role_add(ROOT),
            Some(StateError::RoleExists),
        ),
        (
            "unknown user",
            grant_role("nobody", ROOT),
            Some(StateError::UserNotFound),
        ),
        ("grant root", grant_role(ROOT, ROOT), None),
        (
            "revoke a role not granted",
            RequestBody::UserRevokeRole(PbAuthUserRevokeRoleRequest {
                name: ROOT.into(),
                role: "reader".into(),
            }),
            Some(StateError::RoleNotGranted),
        ),
        ("enable", enable(), None),
        (
            "delete root while enabled",
            RequestBody::UserDelete(PbAuthUserDeleteRequest { name: ROOT.into() }),
            Some(StateError::InvalidAuthMgmt),
        ),
        (
            "grant nothing",
            RequestBody::RoleGrantPermission(PbAuthRoleGrantPermissionRequest {
                name: ROOT.into(),
                perm: None,
            }),
            Some(StateError::PermissionNotGiven),
        ),
        (
            "authenticate an unknown user",
            RequestBody::Authenticate(Authenticate {
                name: "nobody".into(),
                token_prefix: "p".into(),
            }),
            Some(StateError::AuthFailed),
        ),
    ];
    for (what, body, want) in cases {
        assert_eq!(f.apply(body).err(), want, "{what}");
    }
}

#[test]
fn requests_are_checked_against_the_callers_permissions() {
    let mut f = Fixture::new();
    for body in [
        user_add(ROOT),
        role_add(ROOT),
        grant_role(ROOT, ROOT),
        user_add("alice"),
        role_add("reader"),
        grant_role("alice", "reader"),
        RequestBody::RoleGrantPermission(PbAuthRoleGrantPermissionRequest {
            name: "reader".into(),
            perm: Some(authpb::Permission {
                perm_type: 0, // READ
                key: "a".into(),
                range_end: "b".into(),
            }),
        }),
        RequestBody::AuthEnable(PbAuthEnableRequest {}),
    ] {
        f.apply(body).unwrap();
    }
    let revision = f.machine.auth.revision();
    let as_user = |name: &str, revision| RequestAuth {
        username: name.into(),
        revision,
    };
    let write = || RequestBody::Put(put("a", "x"));
    let cases = [
        ("nobody", as_user("", revision), StateError::UserEmpty),
        (
            "reader writes",
            as_user("alice", revision),
            StateError::PermissionDenied,
        ),
        (
            "stale revision",
            as_user("alice", revision - 1),
            StateError::AuthOldRevision,
        ),
    ];
    for (what, who, want) in cases {
        assert_eq!(f.apply_as(Some(&who), write()).err(), Some(want), "{what}");
    }
    f.apply_as(Some(&as_user(ROOT, revision)), write()).unwrap();
    // A simple token is learnt from the applied Authenticate entry, on every member alike.
    let Ok(Response::Authenticated(token)) = f.apply(RequestBody::Authenticate(Authenticate {
        name: "alice".into(),
        token_prefix: "prefix".into(),
    })) else {
        panic!("authenticate failed")
    };
    assert_eq!(token, format!("prefix.{}", f.index));
    let who = f.machine.auth.identify(Some(&token), || None).unwrap();
    assert_eq!(who.username, "alice");
    assert_eq!(
        f.machine.auth.identify(Some("forged.1"), || None).err(),
        Some(StateError::InvalidAuthToken)
    );
}

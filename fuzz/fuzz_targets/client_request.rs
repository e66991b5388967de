//! Every client request etcd's API defines, as arbitrary bytes, through a running single-member
//! Keel's in-process gRPC services (the same codec, validation, raft and state machine as over
//! TCP). The first byte picks the method; the rest is the request message. Each must be answered
//! with a gRPC status (etcd's error for bad input), never a panic and never a hang.
//!
//! Left out: requests that change the membership (a fuzzed member add would leave a one-member
//! cluster without quorum), AuthEnable (everything after it would be refused), and calls that wait
//! by design (Lock, Campaign, Observe).
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const METHODS: &[&str] = &[
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.KV/Put",
    "/etcdserverpb.KV/DeleteRange",
    "/etcdserverpb.KV/Txn",
    "/etcdserverpb.KV/Compact",
    "/etcdserverpb.Watch/Watch",
    "/etcdserverpb.Lease/LeaseGrant",
    "/etcdserverpb.Lease/LeaseRevoke",
    "/etcdserverpb.Lease/LeaseKeepAlive",
    "/etcdserverpb.Lease/LeaseTimeToLive",
    "/etcdserverpb.Lease/LeaseLeases",
    "/etcdserverpb.Cluster/MemberList",
    "/etcdserverpb.Maintenance/Alarm",
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.Maintenance/Defragment",
    "/etcdserverpb.Maintenance/Hash",
    "/etcdserverpb.Maintenance/HashKV",
    "/etcdserverpb.Maintenance/MoveLeader",
    "/etcdserverpb.Auth/AuthDisable",
    "/etcdserverpb.Auth/AuthStatus",
    "/etcdserverpb.Auth/Authenticate",
    "/etcdserverpb.Auth/UserAdd",
    "/etcdserverpb.Auth/UserGet",
    "/etcdserverpb.Auth/UserList",
    "/etcdserverpb.Auth/UserDelete",
    "/etcdserverpb.Auth/UserChangePassword",
    "/etcdserverpb.Auth/UserGrantRole",
    "/etcdserverpb.Auth/UserRevokeRole",
    "/etcdserverpb.Auth/RoleAdd",
    "/etcdserverpb.Auth/RoleGet",
    "/etcdserverpb.Auth/RoleList",
    "/etcdserverpb.Auth/RoleDelete",
    "/etcdserverpb.Auth/RoleGrantPermission",
    "/etcdserverpb.Auth/RoleRevokePermission",
    "/v3lockpb.Lock/Unlock",
    "/v3electionpb.Election/Proclaim",
    "/v3electionpb.Election/Leader",
    "/v3electionpb.Election/Resign",
];

struct Member {
    runtime: tokio::runtime::Runtime,
    routes: tonic::service::Routes,
    _dir: tempfile::TempDir,
}

fn member() -> &'static Member {
    static MEMBER: OnceLock<Member> = OnceLock::new();
    MEMBER.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        let peer = "http://127.0.0.1:0".to_string();
        let cfg = keel_server::ServerConfig {
            name: "fuzz".into(),
            data_dir: dir.path().join("data"),
            listen_client_urls: vec!["http://127.0.0.1:0".into()],
            advertise_client_urls: vec!["http://127.0.0.1:0".into()],
            listen_peer_urls: vec![peer.clone()],
            initial_advertise_peer_urls: vec![peer.clone()],
            initial_cluster: vec![("fuzz".into(), vec![peer])],
            // bcrypt at its lowest cost: UserAdd stays fast.
            bcrypt_cost: 4,
            ..Default::default()
        };
        let routes = runtime.block_on(async {
            let server = keel_server::Server::start(cfg).await.expect("member starts");
            let routes = keel_server::local_routes(server.core());
            tokio::spawn(server.serve(std::future::pending()));
            while !routes_ready(&routes).await {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            routes
        });
        Member {
            runtime,
            routes,
            _dir: dir,
        }
    })
}

async fn routes_ready(routes: &tonic::service::Routes) -> bool {
    // An empty put of key "ready" (field 1, length 5).
    call(routes, "/etcdserverpb.KV/Put", b"\x0a\x05ready").await.as_deref() == Some("0")
}

/// Sends one gRPC message to `method`; the grpc-status of the answer.
async fn call(routes: &tonic::service::Routes, method: &str, msg: &[u8]) -> Option<String> {
    let mut framed = Vec::with_capacity(msg.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(msg);
    let req = http::Request::post(method)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(Full::new(Bytes::from(framed))))
        .expect("a valid request");
    let resp = routes.clone().oneshot(req).await.expect("routes never fail");
    if let Some(status) = resp.headers().get("grpc-status") {
        return status.to_str().ok().map(str::to_string);
    }
    let body = resp.into_body().collect().await.ok()?;
    let trailers = body.trailers()?;
    trailers
        .get("grpc-status")
        .and_then(|s| s.to_str().ok())
        .map(str::to_string)
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, msg)) = data.split_first() else {
        return;
    };
    let method = METHODS[pick as usize % METHODS.len()];
    let m = member();
    let answered = m.runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), call(&m.routes, method, msg)).await
    });
    match answered {
        Ok(Some(_status)) => {}
        Ok(None) => panic!("{method}: answered without a grpc-status"),
        Err(_) => panic!("{method}: no answer within 10 s"),
    }
});

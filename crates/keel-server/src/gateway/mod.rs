//! etcd's HTTP/JSON gateway on the client URLs (`POST /v3/kv/put`, ...), as etcd's grpc-gateway
//! speaks it: proto field names, 64-bit integers as strings, bytes as base64, defaults omitted; an
//! error is `{"error", "message", "code"}` with the gRPC code and an HTTP status to match. Each
//! route calls the same service as gRPC does.
//!
//! Routes: every route of etcd 3.4's grpc-gateway. KV put/range/deleterange/txn/compaction, watch
//! (one watcher per request, its responses streamed as JSON lines), leases (grant, revoke,
//! time-to-live, list), Auth (`auth.rs`), Cluster and Maintenance (`ops.rs`), Lock and Election
//! (`concurrency.rs`), and the streams (lease keep-alive, election observe, snapshot:
//! `stream.rs`); `access.rs` applies etcd's access rules (/v3beta, host whitelist, CORS). A token
//! from `/v3/auth/authenticate` goes in the `Authorization` header.

use std::sync::Arc;

mod access;
mod auth;
mod concurrency;
mod limit;
mod ops;
mod stream;

pub use access::{Access, AccessRules};

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, MethodRouter};
use keel_rpc::etcd::{
    PbKvService, PbLeaseService, PbResponseHeader as ResponseHeader,
    PbWatchRequest as WatchRequest, PbWatchRequestUnion, PbWatchResponse as WatchResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};

use crate::api::caller;
use crate::api::{KvService, LeaseService};
use crate::member::Member;
use crate::member::{WatchEnd, WatchSpec};
use crate::ServerError;

/// The gateway's routes. etcd's gateway is one gRPC client of its server, so at most
/// --max-concurrent-streams of its calls run at once (a watch holds its place until it ends);
/// more wait for a place, as etcd's do.
pub fn routes(member: Arc<Member>, max_streams: u32) -> axum::Router {
    let permits = (max_streams as usize).min(tokio::sync::Semaphore::MAX_PERMITS);
    let streams = Arc::new(tokio::sync::Semaphore::new(permits));
    api_routes(member).layer(axum::middleware::from_fn_with_state(
        streams,
        limit::hold_stream,
    ))
}

fn api_routes(member: Arc<Member>) -> axum::Router {
    let kv = Arc::new(KvService::new(member.clone()));
    let lease = Arc::new(LeaseService::new(member.clone()));
    let watch_core = member.clone();
    // etcd serves the lease routes under /v3/kv/lease/ too (its older paths).
    let revoke = rpc(&lease, |l, r| async move { l.lease_revoke(r).await });
    let time_to_live = rpc(&lease, |l, r| async move { l.lease_time_to_live(r).await });
    let leases = rpc(&lease, |l, r| async move { l.lease_leases(r).await });
    axum::Router::new()
        .route(
            "/v3/watch",
            post(move |h: HeaderMap, body: Bytes| async move { watch(watch_core, &h, &body) }),
        )
        .route(
            "/v3/kv/put",
            rpc(&kv, |kv, r| async move { kv.put(r).await }),
        )
        .route(
            "/v3/kv/range",
            rpc(&kv, |kv, r| async move { kv.range(r).await }),
        )
        .route(
            "/v3/kv/deleterange",
            rpc(&kv, |kv, r| async move { kv.delete_range(r).await }),
        )
        .route(
            "/v3/kv/txn",
            rpc(&kv, |kv, r| async move { kv.txn(r).await }),
        )
        .route(
            "/v3/kv/compaction",
            rpc(&kv, |kv, r| async move { kv.compact(r).await }),
        )
        .route(
            "/v3/lease/grant",
            rpc(&lease, |l, r| async move { l.lease_grant(r).await }),
        )
        .route("/v3/lease/revoke", revoke.clone())
        .route("/v3/kv/lease/revoke", revoke)
        .route("/v3/lease/timetolive", time_to_live.clone())
        .route("/v3/kv/lease/timetolive", time_to_live)
        .route("/v3/lease/leases", leases.clone())
        .route("/v3/kv/lease/leases", leases)
        .merge(ops::routes(member.clone()))
        .merge(concurrency::routes(member.clone()))
        .merge(stream::routes(member.clone()))
        .merge(auth::routes(member))
}

/// `GET /version`: the server and cluster versions, as etcd answers them.
pub fn version_routes() -> axum::Router {
    axum::Router::new().route(
        "/version",
        axum::routing::get(|| async {
            (
                [(header::CONTENT_TYPE, "application/json")],
                json!({
                    "etcdserver": crate::version::SERVER,
                    "etcdcluster": crate::version::CLUSTER,
                })
                .to_string(),
            )
        }),
    )
}

/// What no route serves: gRPC's Unimplemented for a gRPC request, else Go's 404 (the gateway's
/// "Not Found" under /v3/, net/http's "404 page not found" elsewhere).
pub async fn not_found(req: axum::extract::Request) -> Response {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return Status::unimplemented("")
            .into_http::<axum::body::Body>()
            .into_response();
    }
    let message = if req.uri().path().starts_with("/v3/") {
        "Not Found"
    } else {
        "404 page not found"
    };
    access::text(StatusCode::NOT_FOUND, message).into_response()
}

/// A POST route for one unary call: the JSON body is the request message, the answer the response
/// message (or the call's error), both in keel-proto's grpc-gateway mapping.
fn rpc<S, Req, Resp, F, Fut>(service: &Arc<S>, call: F) -> MethodRouter
where
    S: Send + Sync + 'static,
    Req: DeserializeOwned + Default + Send + 'static,
    Resp: Serialize,
    F: Fn(Arc<S>, Request<Req>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<tonic::Response<Resp>, Status>> + Send,
{
    let service = service.clone();
    post(move |h: HeaderMap, body: Bytes| async move {
        let answered = async {
            let req = decode::<Req>(&body)?;
            encode(&call(service, request(&h, req)).await?.into_inner())
        };
        answer(answered.await)
    })
}

/// A gRPC request carrying the HTTP request's auth token (grpc-gateway passes `Authorization` on
/// as metadata, where etcd looks for it).
fn request<T>(h: &HeaderMap, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    for name in ["authorization", "token"] {
        let value = h
            .get(name)
            .and_then(|v| MetadataValue::try_from(v.as_bytes()).ok());
        if let Some(v) = value {
            r.metadata_mut().insert(name, v);
        }
    }
    r
}

type Answer = Result<Value, Status>;

fn answer(a: Answer) -> Response {
    let (code, body) = match a {
        Ok(v) => (StatusCode::OK, v),
        Err(s) => (
            http_status(s.code()),
            json!({"error": s.message(), "message": s.message(), "code": s.code() as i32}),
        ),
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// grpc-gateway's mapping of gRPC codes to HTTP statuses.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A request message from its grpc-gateway JSON body, by proto or JSON field names (an empty
/// body is the empty message), as keel-proto's serde mapping reads etcd's messages.
fn decode<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| Status::invalid_argument(format!("malformed JSON: {e}")))
}

/// A response message as grpc-gateway writes it.
fn encode<T: Serialize>(msg: &T) -> Answer {
    serde_json::to_value(msg).map_err(|e| Status::internal(e.to_string()))
}

/// One JSON line of a watch stream: `{"result": {...}}`.
fn watch_line(mut result: WatchResponse, header: Option<ResponseHeader>) -> Bytes {
    result.header = header;
    let result = serde_json::to_value(&result).unwrap_or_default();
    let mut line = json!({ "result": result }).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// `POST /v3/watch` with a `create_request`: the created answer, then each group of events, as
/// JSON lines on one streamed response, until the client goes away.
fn watch(member: Arc<Member>, h: &HeaderMap, body: &[u8]) -> Response {
    let spec = match watch_spec(body).and_then(|spec| {
        let who = caller(&member, &request(h, ()))?;
        member
            .auth()
            .check_read(&who, &spec.key, &spec.range_end)
            .map_err(ServerError::from)?;
        Ok(spec)
    }) {
        Ok(spec) => spec,
        Err(s) => return answer(Err(s)),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(64);
    member.clone().spawn_stream(async move {
        let created = WatchResponse {
            created: true,
            ..Default::default()
        };
        let header = member.header(member.store().current_revision());
        if tx.send(Ok(watch_line(created, header))).await.is_err() {
            return;
        }
        let end = member
            .hub()
            .run(spec, |events, rev| {
                let result = WatchResponse {
                    events: events.to_vec(),
                    ..Default::default()
                };
                let line = watch_line(result, member.header(rev));
                let tx = tx.clone();
                async move { tx.send(Ok(line)).await.is_ok() }
            })
            .await;
        if let WatchEnd::Compacted(rev) = end {
            let result = WatchResponse {
                compact_revision: rev,
                canceled: true,
                ..Default::default()
            };
            let header = member.header(member.store().current_revision());
            let _ = tx.send(Ok(watch_line(result, header))).await;
        }
    });
    let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn watch_spec(body: &[u8]) -> Result<WatchSpec, Status> {
    let Some(PbWatchRequestUnion::CreateRequest(c)) = decode::<WatchRequest>(body)?.request_union
    else {
        return Err(Status::invalid_argument(
            "watch: only create_request is served here",
        ));
    };
    if c.key.is_empty() {
        return Err(ServerError::State(keel_state::StateError::EmptyKey).into());
    }
    Ok(WatchSpec {
        key: c.key,
        range_end: c.range_end,
        start_revision: c.start_revision,
        prev_kv: c.prev_kv,
        no_put: false,
        no_delete: false,
    }
    .with_filters(&c.filters))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_rpc::etcd::PbTxnRequest as TxnRequest;

    #[test]
    fn a_camel_case_txn_from_gos_json_marshaler_is_read() {
        let body = br#"{"compare":[{"key":"Zm9v","result":"EQUAL","target":"CREATE","createRevision":"0"}],
            "success":[{"requestPut":{"key":"Zm9v","value":"YmFy"}}]}"#;
        let t: TxnRequest = decode(body).unwrap();
        assert_eq!(t.compare.len(), 1);
        assert!(matches!(
            t.success[0].request,
            Some(keel_rpc::etcd::PbTxnOpRequest::RequestPut(ref p)) if p.key == b"foo" && p.value == b"bar"
        ));
    }
}

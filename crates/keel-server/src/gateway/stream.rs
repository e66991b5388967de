//! The gateway's streaming routes, as grpc-gateway streams them: the request body is a sequence
//! of JSON messages (each sent on the gRPC stream, the end of the body closing it), and the
//! response is chunked, one `{"result": ...}` line per message; an error ends the stream with an
//! `{"error": {"grpc_code", "http_code", "message", "http_status"}}` line. Routes: lease
//! keep-alive (etcd3gw and Patroni refresh leases through it), election observe, the
//! maintenance snapshot.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::{Stream, StreamExt};
use keel_rpc::etcd::{
    PbLeaseKeepAliveRequest as KeepAliveRequest, PbLeaseKeepAliveResponse as KeepAliveResponse,
    PbMaintenanceService, PbSnapshotRequest as SnapshotRequest,
};
use keel_rpc::v3election::election_server::Election;
use keel_rpc::v3election::LeaderRequest;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tonic::Status;

use super::{http_status, request};
use crate::api::{ElectionService, MaintenanceService};
use crate::member::Member;

/// The routes.
pub fn routes(member: Arc<Member>) -> axum::Router {
    let keepalive = member.clone();
    let election = Arc::new(ElectionService::new(member.clone()));
    let maintenance = Arc::new(MaintenanceService::new(member));
    axum::Router::new()
        .route(
            "/v3/lease/keepalive",
            post(move |h: HeaderMap, body: Bytes| keep_alive(keepalive.clone(), h, body)),
        )
        .route(
            "/v3/election/observe",
            post(move |h: HeaderMap, body: Bytes| observe(election.clone(), h, body)),
        )
        .route(
            "/v3/maintenance/snapshot",
            post(move |h: HeaderMap, body: Bytes| snapshot(maintenance.clone(), h, body)),
        )
}

/// The JSON messages of a request body, in order (an empty body is one empty message).
fn messages<T: DeserializeOwned + Default>(body: &[u8]) -> Result<Vec<T>, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(vec![T::default()]);
    }
    serde_json::Deserializer::from_slice(body)
        .into_iter::<T>()
        .map(|m| m.map_err(|e| Status::invalid_argument(format!("malformed JSON: {e}"))))
        .collect()
}

/// Each response of a stream as JSON.
fn as_json<T: Serialize>(r: Result<T, Status>) -> Result<Value, Status> {
    serde_json::to_value(r?).map_err(|e| Status::internal(e.to_string()))
}

/// A stream of messages as grpc-gateway writes it.
fn stream_lines(items: impl Stream<Item = Result<Value, Status>> + Send + 'static) -> Response {
    let lines = items
        .scan(false, |ended, item| {
            // Nothing follows an error.
            if *ended {
                return futures::future::ready(None);
            }
            let line = match item {
                Ok(result) => json!({ "result": result }),
                Err(s) => {
                    *ended = true;
                    let status = http_status(s.code());
                    json!({ "error": {
                        "grpc_code": s.code() as i32,
                        "http_code": status.as_u16(),
                        "message": s.message(),
                        "http_status": status.canonical_reason().unwrap_or(""),
                    }})
                }
            };
            let mut text = line.to_string();
            text.push('\n');
            futures::future::ready(Some(Ok::<_, std::convert::Infallible>(Bytes::from(text))))
        })
        .boxed();
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(lines),
    )
        .into_response()
}

/// `POST /v3/lease/keepalive` `{"ID": ...}` (one or more): a `LeaseKeepAliveResponse` for each.
async fn keep_alive(member: Arc<Member>, _: HeaderMap, body: Bytes) -> Response {
    let requests = match messages::<KeepAliveRequest>(&body) {
        Ok(r) => r,
        Err(s) => return stream_lines(futures::stream::iter([Err(s)])),
    };
    let answers = futures::stream::iter(requests).then(move |req| {
        let member = member.clone();
        async move {
            let ttl = member.keep_alive(req.id).await?;
            as_json(Ok(KeepAliveResponse {
                header: member.header(member.store().current_revision()),
                id: req.id,
                ttl,
            }))
        }
    });
    stream_lines(answers)
}

/// `POST /v3/election/observe` `{"name": ...}`: the leader, then every change of it.
async fn observe(election: Arc<ElectionService>, h: HeaderMap, body: Bytes) -> Response {
    let req = match super::decode::<LeaderRequest>(&body) {
        Ok(req) => req,
        Err(s) => return stream_lines(futures::stream::iter([Err(s)])),
    };
    match election.observe(request(&h, req)).await {
        Ok(resp) => stream_lines(resp.into_inner().map(as_json)),
        Err(s) => stream_lines(futures::stream::iter([Err(s)])),
    }
}

/// `POST /v3/maintenance/snapshot`: the snapshot's pieces, base64, with the bytes still to come.
async fn snapshot(maintenance: Arc<MaintenanceService>, h: HeaderMap, _: Bytes) -> Response {
    match maintenance.snapshot(request(&h, SnapshotRequest {})).await {
        Ok(resp) => stream_lines(resp.into_inner().map(as_json)),
        Err(s) => stream_lines(futures::stream::iter([Err(s)])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_may_hold_several_messages() {
        let m: Vec<KeepAliveRequest> = messages(br#"{"ID": "1"} {"ID": 2}"#).unwrap();
        assert_eq!(m.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(messages::<KeepAliveRequest>(b"").unwrap().len(), 1);
        assert!(messages::<KeepAliveRequest>(b"[1]").is_err());
    }

    #[tokio::test]
    async fn an_error_ends_the_stream_in_grpc_gateways_words() {
        let items = futures::stream::iter([
            Ok(json!({"a": 1})),
            Err(Status::not_found("etcdserver: requested lease not found")),
            Ok(json!({"b": 2})),
        ]);
        let resp = stream_lines(items);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0], r#"{"result":{"a":1}}"#);
        let err: Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(err["error"]["grpc_code"], 5);
        assert_eq!(err["error"]["http_code"], 404);
        assert_eq!(
            err["error"]["message"],
            "etcdserver: requested lease not found"
        );
    }
}

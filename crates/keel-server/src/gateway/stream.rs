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
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use futures::{Stream, StreamExt};
use keel_rpc::etcd::{PbMaintenanceService, PbSnapshotRequest as SnapshotRequest};
use keel_rpc::v3election::election_server::Election;
use keel_rpc::v3election::LeaderRequest;
use serde_json::{json, Map, Value};
use tonic::Status;

use super::{header_json, http_status, kv_json, num, request, set, Fields};
use crate::server::Core;
use crate::service::{ElectionService, MaintenanceService};

/// The routes.
pub fn routes(core: Arc<Core>) -> axum::Router {
    let keepalive = core.clone();
    let election = Arc::new(ElectionService::new(core.clone()));
    let maintenance = Arc::new(MaintenanceService::new(core));
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
fn messages(body: &[u8]) -> Result<Vec<Fields>, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(vec![Fields(Map::new())]);
    }
    serde_json::Deserializer::from_slice(body)
        .into_iter::<Value>()
        .map(|v| match v {
            Ok(Value::Object(m)) => Ok(Fields(m)),
            Ok(_) => Err(Status::invalid_argument(
                "each message must be a JSON object",
            )),
            Err(e) => Err(Status::invalid_argument(format!("malformed JSON: {e}"))),
        })
        .collect()
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
async fn keep_alive(core: Arc<Core>, _: HeaderMap, body: Bytes) -> Response {
    let requests = match messages(&body) {
        Ok(r) => r,
        Err(s) => return stream_lines(futures::stream::iter([Err(s)])),
    };
    let answers = futures::stream::iter(requests).then(move |f| {
        let core = core.clone();
        async move {
            let id = f.int("ID")?;
            let ttl = crate::service::renew(&core, id).await?;
            let mut m = Map::new();
            m.insert(
                "header".into(),
                header_json(&core.header(core.store.current_revision())),
            );
            set(&mut m, "ID", num(id));
            set(&mut m, "TTL", num(ttl));
            Ok(Value::Object(m))
        }
    });
    stream_lines(answers)
}

/// `POST /v3/election/observe` `{"name": ...}`: the leader, then every change of it.
async fn observe(election: Arc<ElectionService>, h: HeaderMap, body: Bytes) -> Response {
    let name = match Fields::parse(&body).and_then(|f| f.bytes("name")) {
        Ok(name) => name,
        Err(s) => return stream_lines(futures::stream::iter([Err(s)])),
    };
    match election.observe(request(&h, LeaderRequest { name })).await {
        Ok(resp) => stream_lines(resp.into_inner().map(|r| {
            r.map(|r| {
                let mut m = Map::new();
                m.insert("header".into(), header_json(&r.header));
                if let Some(kv) = &r.kv {
                    m.insert("kv".into(), kv_json(kv));
                }
                Value::Object(m)
            })
        })),
        Err(s) => stream_lines(futures::stream::iter([Err(s)])),
    }
}

/// `POST /v3/maintenance/snapshot`: the snapshot's pieces, base64, with the bytes still to come.
async fn snapshot(maintenance: Arc<MaintenanceService>, h: HeaderMap, _: Bytes) -> Response {
    match maintenance.snapshot(request(&h, SnapshotRequest {})).await {
        Ok(resp) => stream_lines(resp.into_inner().map(|r| {
            r.map(|r| {
                let mut m = Map::new();
                m.insert("header".into(), header_json(&r.header));
                set(&mut m, "remaining_bytes", num(r.remaining_bytes));
                set(&mut m, "blob", json!(B64.encode(&r.blob)));
                Value::Object(m)
            })
        })),
        Err(s) => stream_lines(futures::stream::iter([Err(s)])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_may_hold_several_messages() {
        let m = messages(br#"{"ID": "1"} {"ID": 2}"#).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].int("ID").unwrap(), 2);
        assert_eq!(messages(b"").unwrap().len(), 1);
        assert!(messages(b"[1]").is_err());
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

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
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use keel_rpc::etcd::{
    PbCompactionRequest as CompactionRequest, PbDeleteRequest as DeleteRangeRequest,
    PbKeyValue as KeyValue, PbKvService, PbLeaseGrantRequest as LeaseGrantRequest,
    PbLeaseLeasesRequest as LeaseLeasesRequest, PbLeaseRevokeRequest as LeaseRevokeRequest,
    PbLeaseService, PbLeaseTimeToLiveRequest as LeaseTimeToLiveRequest, PbPutRequest as PutRequest,
    PbRangeRequest as RangeRequest, PbResponseHeader as ResponseHeader, PbTxnRequest as TxnRequest,
    PbWatchRequest as WatchRequest, PbWatchRequestUnion, PbWatchResponse as WatchResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};

use crate::server::Core;
use crate::service::{KvService, LeaseService};
use crate::watch::{WatchEnd, WatchSpec};
use crate::ServerError;

/// The gateway's routes. etcd's gateway is one gRPC client of its server, so at most
/// --max-concurrent-streams of its calls run at once (a watch holds its place until it ends);
/// more wait for a place, as etcd's do.
pub fn routes(core: Arc<Core>, max_streams: u32) -> axum::Router {
    let permits = (max_streams as usize).min(tokio::sync::Semaphore::MAX_PERMITS);
    let streams = Arc::new(tokio::sync::Semaphore::new(permits));
    api_routes(core).layer(axum::middleware::from_fn_with_state(
        streams,
        limit::hold_stream,
    ))
}

fn api_routes(core: Arc<Core>) -> axum::Router {
    let kv = Arc::new(KvService::new(core.clone()));
    let lease = Arc::new(LeaseService::new(core.clone()));
    let watch_core = core.clone();
    axum::Router::new()
        .route(
            "/v3/watch",
            post(move |h: HeaderMap, body: Bytes| async move { watch(watch_core, &h, &body) }),
        )
        .route("/v3/kv/put", route(&kv, put))
        .route("/v3/kv/range", route(&kv, range))
        .route("/v3/kv/deleterange", route(&kv, delete))
        .route("/v3/kv/txn", route(&kv, txn))
        .route("/v3/kv/compaction", route(&kv, compact))
        .route("/v3/lease/grant", route(&lease, grant))
        // etcd serves the lease routes under /v3/kv/lease/ too (its older paths).
        .route("/v3/lease/revoke", route(&lease, revoke))
        .route("/v3/kv/lease/revoke", route(&lease, revoke))
        .route("/v3/lease/timetolive", route(&lease, time_to_live))
        .route("/v3/kv/lease/timetolive", route(&lease, time_to_live))
        .route("/v3/lease/leases", route(&lease, leases))
        .route("/v3/kv/lease/leases", route(&lease, leases))
        .merge(ops::routes(core.clone()))
        .merge(concurrency::routes(core.clone()))
        .merge(stream::routes(core.clone()))
        .merge(auth::routes(core))
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

/// A POST route answering with `handler(service, request headers, request body)`.
fn route<S, F, Fut>(service: &Arc<S>, handler: F) -> MethodRouter
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, HeaderMap, Bytes) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Answer> + Send + 'static,
{
    let service = service.clone();
    post(move |h: HeaderMap, body: Bytes| async move { answer(handler(service, h, body).await) })
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

/// A request body: a JSON object (an empty body is an empty request).
struct Fields(Map<String, Value>);

impl Fields {
    /// A field by its proto name, or its JSON name (lowerCamelCase), as grpc-gateway's decoder
    /// takes either (Go clients marshal with `runtime.JSONPb{}`, which writes JSON names).
    fn get(&self, name: &str) -> Option<&Value> {
        if let Some(v) = self.0.get(name) {
            return Some(v);
        }
        if !name.contains('_') {
            return None;
        }
        let mut camel = String::with_capacity(name.len());
        let mut upper = false;
        for c in name.chars() {
            if c == '_' {
                upper = true;
            } else if upper {
                camel.push(c.to_ascii_uppercase());
                upper = false;
            } else {
                camel.push(c);
            }
        }
        self.0.get(&camel)
    }

    fn parse(body: &[u8]) -> Result<Fields, Status> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Fields(Map::new()));
        }
        match serde_json::from_slice(body) {
            Ok(Value::Object(m)) => Ok(Fields(m)),
            Ok(_) => Err(Status::invalid_argument(
                "the request body must be a JSON object",
            )),
            Err(e) => Err(Status::invalid_argument(format!("malformed JSON: {e}"))),
        }
    }

    /// A nested message, if present.
    fn object(&self, name: &str) -> Result<Option<Fields>, Status> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(Fields(m.clone()))),
            Some(_) => Err(Status::invalid_argument(format!(
                "{name}: expected an object"
            ))),
        }
    }

    fn bytes(&self, name: &str) -> Result<Vec<u8>, Status> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::String(s)) => B64
                .decode(s)
                .map_err(|_| Status::invalid_argument(format!("{name}: not base64"))),
            Some(_) => Err(Status::invalid_argument(format!(
                "{name}: expected base64 text"
            ))),
        }
    }

    /// A 64-bit integer, as a JSON string or number.
    fn int(&self, name: &str) -> Result<i64, Status> {
        self.number(name)
    }

    /// An unsigned 64-bit field (member ids use all 64 bits).
    fn uint(&self, name: &str) -> Result<u64, Status> {
        self.number(name)
    }

    /// A 64-bit integer, as grpc-gateway reads one: a string, or a JSON number.
    fn number<N: std::str::FromStr + TryFrom<i64> + TryFrom<u64> + Default>(
        &self,
        name: &str,
    ) -> Result<N, Status> {
        let bad = || Status::invalid_argument(format!("{name}: expected an integer"));
        match self.get(name) {
            None | Some(Value::Null) => Ok(N::default()),
            Some(Value::String(s)) => s.parse().map_err(|_| bad()),
            Some(Value::Number(n)) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => N::try_from(i).map_err(|_| bad()),
                (_, Some(u)) => N::try_from(u).map_err(|_| bad()),
                _ => Err(bad()),
            },
            Some(_) => Err(bad()),
        }
    }

    fn flag(&self, name: &str) -> Result<bool, Status> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(Status::invalid_argument(format!(
                "{name}: expected true or false"
            ))),
        }
    }

    /// An enum, by name or number.
    /// A string field ("" when absent).
    fn string(&self, name: &str) -> Result<String, Status> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(Status::invalid_argument(format!(
                "{name}: expected a string"
            ))),
        }
    }

    /// A repeated string field.
    fn strings(&self, name: &str) -> Result<Vec<String>, Status> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| Status::invalid_argument(format!("{name}: expected strings"))),
            Some(_) => Err(Status::invalid_argument(format!("{name}: expected a list"))),
        }
    }

    fn enumeration(&self, name: &str, names: &[&str]) -> Result<i32, Status> {
        match self.get(name) {
            Some(Value::String(s)) => names
                .iter()
                .position(|n| n == s)
                .map(|i| i as i32)
                .ok_or_else(|| Status::invalid_argument(format!("{name}: unknown value {s:?}"))),
            _ => Ok(self.int(name)? as i32),
        }
    }
}

/// Sets `name` unless the value is the default (grpc-gateway omits defaults).
fn set(m: &mut Map<String, Value>, name: &str, v: Value) {
    let default = match &v {
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Array(a) => a.is_empty(),
        Value::Null => true,
        _ => false,
    };
    if !default {
        m.insert(name.to_string(), v);
    }
}

/// A 64-bit integer field as grpc-gateway writes one: a decimal string, or nothing for zero (the
/// default, which `set` then omits).
fn num(n: impl Into<i128>) -> Value {
    match n.into() {
        0 => Value::Null,
        n => Value::String(n.to_string()),
    }
}

fn header_json(h: &Option<ResponseHeader>) -> Value {
    let h = h.unwrap_or_default();
    let mut m = Map::new();
    set(&mut m, "cluster_id", num(h.cluster_id));
    set(&mut m, "member_id", num(h.member_id));
    set(&mut m, "revision", num(h.revision));
    set(&mut m, "raft_term", num(h.raft_term));
    Value::Object(m)
}

fn kv_json(kv: &KeyValue) -> Value {
    let mut m = Map::new();
    set(&mut m, "key", json!(B64.encode(&kv.key)));
    set(&mut m, "create_revision", num(kv.create_revision));
    set(&mut m, "mod_revision", num(kv.mod_revision));
    set(&mut m, "version", num(kv.version));
    set(&mut m, "value", json!(B64.encode(&kv.value)));
    set(&mut m, "lease", num(kv.lease));
    Value::Object(m)
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

async fn put(kv: Arc<KvService>, h: HeaderMap, body: Bytes) -> Answer {
    let req: PutRequest = decode(&body)?;
    encode(&kv.put(request(&h, req)).await?.into_inner())
}

async fn range(kv: Arc<KvService>, h: HeaderMap, body: Bytes) -> Answer {
    let req: RangeRequest = decode(&body)?;
    encode(&kv.range(request(&h, req)).await?.into_inner())
}

async fn delete(kv: Arc<KvService>, h: HeaderMap, body: Bytes) -> Answer {
    let req: DeleteRangeRequest = decode(&body)?;
    encode(&kv.delete_range(request(&h, req)).await?.into_inner())
}

async fn txn(kv: Arc<KvService>, h: HeaderMap, body: Bytes) -> Answer {
    let req: TxnRequest = decode(&body)?;
    encode(&kv.txn(request(&h, req)).await?.into_inner())
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
fn watch(core: Arc<Core>, h: &HeaderMap, body: &[u8]) -> Response {
    let spec = match watch_spec(body).and_then(|spec| {
        let who = core.caller(&request(h, ()))?;
        core.auth
            .check_read(&who, &spec.key, &spec.range_end)
            .map_err(ServerError::from)?;
        Ok(spec)
    }) {
        Ok(spec) => spec,
        Err(s) => return answer(Err(s)),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(64);
    tokio::spawn(async move {
        let created = WatchResponse {
            created: true,
            ..Default::default()
        };
        let header = core.header(core.store.current_revision());
        if tx.send(Ok(watch_line(created, header))).await.is_err() {
            return;
        }
        let end = core
            .hub
            .run(spec, |events, rev| {
                let result = WatchResponse {
                    events: events.to_vec(),
                    ..Default::default()
                };
                let line = watch_line(result, core.header(rev));
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
            let header = core.header(core.store.current_revision());
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

async fn compact(kv: Arc<KvService>, h: HeaderMap, body: Bytes) -> Answer {
    let req: CompactionRequest = decode(&body)?;
    encode(&kv.compact(request(&h, req)).await?.into_inner())
}

async fn grant(lease: Arc<LeaseService>, h: HeaderMap, body: Bytes) -> Answer {
    let req: LeaseGrantRequest = decode(&body)?;
    encode(&lease.lease_grant(request(&h, req)).await?.into_inner())
}

async fn revoke(lease: Arc<LeaseService>, h: HeaderMap, body: Bytes) -> Answer {
    let req: LeaseRevokeRequest = decode(&body)?;
    encode(&lease.lease_revoke(request(&h, req)).await?.into_inner())
}

async fn time_to_live(lease: Arc<LeaseService>, h: HeaderMap, body: Bytes) -> Answer {
    let req: LeaseTimeToLiveRequest = decode(&body)?;
    encode(
        &lease
            .lease_time_to_live(request(&h, req))
            .await?
            .into_inner(),
    )
}

async fn leases(lease: Arc<LeaseService>, h: HeaderMap, _: Bytes) -> Answer {
    let req = LeaseLeasesRequest {};
    encode(&lease.lease_leases(request(&h, req)).await?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_answer_to_proto_and_json_names() {
        let f =
            Fields::parse(br#"{"range_end":"YQ==","prevKv":true,"createRevision":"7"}"#).unwrap();
        assert_eq!(f.bytes("range_end").unwrap(), b"a");
        assert!(f.flag("prev_kv").unwrap());
        assert_eq!(f.int("create_revision").unwrap(), 7);
        assert_eq!(f.int("mod_revision").unwrap(), 0);
    }

    #[test]
    fn defaults_are_omitted_but_a_string_that_reads_zero_is_not() {
        let mut m = Map::new();
        set(&mut m, "name", json!("0"));
        set(&mut m, "revision", num(0));
        set(&mut m, "count", num(3));
        set(&mut m, "empty", json!(""));
        assert_eq!(Value::Object(m), json!({"name": "0", "count": "3"}));
    }

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

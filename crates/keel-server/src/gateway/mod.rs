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
use keel_proto::etcd::{
    PbCompactionRequest as CompactionRequest, PbCompare as Compare,
    PbDeleteRequest as DeleteRangeRequest, PbDeleteResponse as DeleteRangeResponse,
    PbEvent as Event, PbKeyValue as KeyValue, PbKvService,
    PbLeaseGrantRequest as LeaseGrantRequest, PbLeaseLeasesRequest as LeaseLeasesRequest,
    PbLeaseRevokeRequest as LeaseRevokeRequest, PbLeaseService,
    PbLeaseTimeToLiveRequest as LeaseTimeToLiveRequest, PbPutRequest as PutRequest,
    PbPutResponse as PutResponse, PbRangeRequest as RangeRequest, PbRangeResponse as RangeResponse,
    PbResponseHeader as ResponseHeader, PbTargetUnion as Target, PbTxnOpRequest as Op,
    PbTxnOpResponse as OpResponse, PbTxnRequest as TxnRequest, PbTxnRequestOp as RequestOp,
    PbTxnResponse as TxnResponse,
};
use serde_json::{json, Map, Value};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};

use crate::server::Core;
use crate::service::{KvService, LeaseService};
use crate::watch::{WatchEnd, WatchSpec};
use crate::ServerError;

// etcdserverpb.RangeRequest.SortOrder and SortTarget, by name.
const SORT_ORDERS: [&str; 3] = ["NONE", "ASCEND", "DESCEND"];
const SORT_TARGETS: [&str; 5] = ["KEY", "VERSION", "CREATE", "MOD", "VALUE"];
// etcdserverpb.Compare.CompareResult and CompareTarget, by name.
const COMPARE_RESULTS: [&str; 4] = ["EQUAL", "GREATER", "LESS", "NOT_EQUAL"];
const COMPARE_TARGETS: [&str; 5] = ["VERSION", "CREATE", "MOD", "VALUE", "LEASE"];

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

    /// A repeated message field.
    fn list(&self, name: &str) -> Result<Vec<Fields>, Status> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::Object(m) => Ok(Fields(m.clone())),
                    _ => Err(Status::invalid_argument(format!(
                        "{name}: expected objects"
                    ))),
                })
                .collect(),
            Some(_) => Err(Status::invalid_argument(format!("{name}: expected a list"))),
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

fn kvs_json(kvs: &[KeyValue]) -> Value {
    Value::Array(kvs.iter().map(kv_json).collect())
}

fn put_request(f: &Fields) -> Result<PutRequest, Status> {
    Ok(PutRequest {
        key: f.bytes("key")?,
        value: f.bytes("value")?,
        lease: f.int("lease")?,
        prev_kv: f.flag("prev_kv")?,
        ignore_value: f.flag("ignore_value")?,
        ignore_lease: f.flag("ignore_lease")?,
    })
}

fn put_json(r: &PutResponse) -> Value {
    let mut m = Map::new();
    m.insert("header".into(), header_json(&r.header));
    if let Some(prev) = &r.prev_kv {
        m.insert("prev_kv".into(), kv_json(prev));
    }
    Value::Object(m)
}

fn range_request(f: &Fields) -> Result<RangeRequest, Status> {
    Ok(RangeRequest {
        key: f.bytes("key")?,
        range_end: f.bytes("range_end")?,
        limit: f.int("limit")?,
        revision: f.int("revision")?,
        sort_order: f.enumeration("sort_order", &SORT_ORDERS)?,
        sort_target: f.enumeration("sort_target", &SORT_TARGETS)?,
        serializable: f.flag("serializable")?,
        keys_only: f.flag("keys_only")?,
        count_only: f.flag("count_only")?,
        min_mod_revision: f.int("min_mod_revision")?,
        max_mod_revision: f.int("max_mod_revision")?,
        min_create_revision: f.int("min_create_revision")?,
        max_create_revision: f.int("max_create_revision")?,
    })
}

fn range_json(r: &RangeResponse) -> Value {
    let mut m = Map::new();
    m.insert("header".into(), header_json(&r.header));
    set(&mut m, "kvs", kvs_json(&r.kvs));
    set(&mut m, "more", json!(r.more));
    set(&mut m, "count", num(r.count));
    Value::Object(m)
}

fn delete_request(f: &Fields) -> Result<DeleteRangeRequest, Status> {
    Ok(DeleteRangeRequest {
        key: f.bytes("key")?,
        range_end: f.bytes("range_end")?,
        prev_kv: f.flag("prev_kv")?,
    })
}

fn delete_json(r: &DeleteRangeResponse) -> Value {
    let mut m = Map::new();
    m.insert("header".into(), header_json(&r.header));
    set(&mut m, "deleted", num(r.deleted));
    set(&mut m, "prev_kvs", kvs_json(&r.prev_kvs));
    Value::Object(m)
}

fn compare(f: &Fields) -> Result<Compare, Status> {
    let target = f.enumeration("target", &COMPARE_TARGETS)?;
    let union = match COMPARE_TARGETS.get(target as usize) {
        Some(&"VERSION") => Target::Version(f.int("version")?),
        Some(&"CREATE") => Target::CreateRevision(f.int("create_revision")?),
        Some(&"MOD") => Target::ModRevision(f.int("mod_revision")?),
        Some(&"VALUE") => Target::Value(f.bytes("value")?),
        Some(&"LEASE") => Target::Lease(f.int("lease")?),
        _ => return Err(Status::invalid_argument("compare: unknown target")),
    };
    Ok(Compare {
        result: f.enumeration("result", &COMPARE_RESULTS)?,
        target,
        key: f.bytes("key")?,
        range_end: f.bytes("range_end")?,
        target_union: Some(union),
    })
}

fn request_op(f: &Fields) -> Result<RequestOp, Status> {
    let request = if let Some(r) = f.object("request_range")? {
        Op::RequestRange(range_request(&r)?)
    } else if let Some(r) = f.object("request_put")? {
        Op::RequestPut(put_request(&r)?)
    } else if let Some(r) = f.object("request_delete_range")? {
        Op::RequestDeleteRange(delete_request(&r)?)
    } else if let Some(r) = f.object("request_txn")? {
        Op::RequestTxn(txn_request(&r)?)
    } else {
        return Err(Status::invalid_argument(
            "txn: an operation names no request",
        ));
    };
    Ok(RequestOp {
        request: Some(request),
    })
}

fn txn_request(f: &Fields) -> Result<TxnRequest, Status> {
    let ops =
        |name| -> Result<Vec<RequestOp>, Status> { f.list(name)?.iter().map(request_op).collect() };
    Ok(TxnRequest {
        compare: f
            .list("compare")?
            .iter()
            .map(compare)
            .collect::<Result<_, _>>()?,
        success: ops("success")?,
        failure: ops("failure")?,
    })
}

fn txn_json(r: &TxnResponse) -> Value {
    let mut m = Map::new();
    m.insert("header".into(), header_json(&r.header));
    set(&mut m, "succeeded", json!(r.succeeded));
    let responses: Vec<Value> = r
        .responses
        .iter()
        .filter_map(|o| o.response.as_ref())
        .map(|o| match o {
            OpResponse::ResponseRange(r) => json!({ "response_range": range_json(r) }),
            OpResponse::ResponsePut(r) => json!({ "response_put": put_json(r) }),
            OpResponse::ResponseDeleteRange(r) => {
                json!({ "response_delete_range": delete_json(r) })
            }
            OpResponse::ResponseTxn(r) => json!({ "response_txn": txn_json(r) }),
        })
        .collect();
    set(&mut m, "responses", Value::Array(responses));
    Value::Object(m)
}

async fn put(kv: Arc<KvService>, h: HeaderMap, body: Bytes) -> Answer {
    let req = put_request(&Fields::parse(&body)?)?;
    Ok(put_json(&kv.put(request(&h, req)).await?.into_inner()))
}

async fn range(kv: Arc<KvService>, h: HeaderMap, body: Bytes) -> Answer {
    let req = range_request(&Fields::parse(&body)?)?;
    Ok(range_json(&kv.range(request(&h, req)).await?.into_inner()))
}

async fn delete(kv: Arc<KvService>, h: HeaderMap, body: Bytes) -> Answer {
    let req = delete_request(&Fields::parse(&body)?)?;
    Ok(delete_json(
        &kv.delete_range(request(&h, req)).await?.into_inner(),
    ))
}

async fn txn(kv: Arc<KvService>, h: HeaderMap, body: Bytes) -> Answer {
    let req = txn_request(&Fields::parse(&body)?)?;
    Ok(txn_json(&kv.txn(request(&h, req)).await?.into_inner()))
}

// mvccpb.Event.EventType and WatchCreateRequest.FilterType, by name.
const EVENT_TYPES: [&str; 2] = ["PUT", "DELETE"];
const FILTERS: [&str; 2] = ["NOPUT", "NODELETE"];

fn event_json(e: &Event) -> Value {
    let mut m = Map::new();
    if e.r#type != 0 {
        let name = EVENT_TYPES
            .get(e.r#type as usize)
            .copied()
            .unwrap_or("DELETE");
        m.insert("type".into(), json!(name));
    }
    if let Some(kv) = &e.kv {
        m.insert("kv".into(), kv_json(kv));
    }
    if let Some(prev) = &e.prev_kv {
        m.insert("prev_kv".into(), kv_json(prev));
    }
    Value::Object(m)
}

/// One JSON line of a watch stream: `{"result": {...}}`.
fn watch_line(mut result: Map<String, Value>, header: Option<ResponseHeader>) -> Bytes {
    result.insert("header".into(), header_json(&header));
    let mut line = json!({ "result": result }).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// `POST /v3/watch` with a `create_request`: the created answer, then each group of events, as
/// JSON lines on one streamed response, until the client goes away.
fn watch(core: Arc<Core>, h: &HeaderMap, body: &[u8]) -> Response {
    let spec = match watch_spec(body).and_then(|spec| {
        let who = core.caller(&request(h, ()))?;
        core.auth.check_read(&who, &spec.key, &spec.range_end)?;
        Ok(spec)
    }) {
        Ok(spec) => spec,
        Err(s) => return answer(Err(s)),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(64);
    tokio::spawn(async move {
        let created = Map::from_iter([("created".to_string(), json!(true))]);
        let header = core.header(core.store.current_revision());
        if tx.send(Ok(watch_line(created, header))).await.is_err() {
            return;
        }
        let end = core
            .hub
            .run(spec, |events, rev| {
                let mut result = Map::new();
                let events: Vec<Value> = events.iter().map(event_json).collect();
                result.insert("events".into(), Value::Array(events));
                let line = watch_line(result, core.header(rev));
                let tx = tx.clone();
                async move { tx.send(Ok(line)).await.is_ok() }
            })
            .await;
        if let WatchEnd::Compacted(rev) = end {
            let result = Map::from_iter([
                ("compact_revision".to_string(), json!(rev.to_string())),
                ("canceled".to_string(), json!(true)),
            ]);
            let header = core.header(core.store.current_revision());
            let _ = tx.send(Ok(watch_line(result, header))).await;
        }
    });
    let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn watch_spec(body: &[u8]) -> Result<WatchSpec, Status> {
    let f = Fields::parse(body)?;
    let c = f
        .object("create_request")?
        .ok_or_else(|| Status::invalid_argument("watch: only create_request is served here"))?;
    let filters = match c.get("filters") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => FILTERS
                    .iter()
                    .position(|n| n == s)
                    .map(|i| i as i32)
                    .ok_or_else(|| Status::invalid_argument(format!("filters: unknown {s:?}"))),
                Value::Number(n) => Ok(n.as_i64().unwrap_or(-1) as i32),
                _ => Err(Status::invalid_argument("filters: expected names")),
            })
            .collect::<Result<Vec<i32>, Status>>()?,
        _ => Vec::new(),
    };
    let key = c.bytes("key")?;
    if key.is_empty() {
        return Err(ServerError::EmptyKey.into());
    }
    Ok(WatchSpec {
        key,
        range_end: c.bytes("range_end")?,
        start_revision: c.int("start_revision")?,
        prev_kv: c.flag("prev_kv")?,
        no_put: false,
        no_delete: false,
    }
    .with_filters(&filters))
}

async fn compact(kv: Arc<KvService>, h: HeaderMap, body: Bytes) -> Answer {
    let f = Fields::parse(&body)?;
    let req = CompactionRequest {
        revision: f.int("revision")?,
        physical: f.flag("physical")?,
    };
    let r = kv.compact(request(&h, req)).await?.into_inner();
    Ok(json!({ "header": header_json(&r.header) }))
}

/// A response with a header and etcd's upper-case lease fields (`ID`, `TTL`, ...).
fn lease_json(header: &Option<ResponseHeader>, fields: &[(&str, i64)]) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("header".into(), header_json(header));
    for (name, v) in fields {
        set(&mut m, name, num(*v));
    }
    m
}

async fn grant(lease: Arc<LeaseService>, h: HeaderMap, body: Bytes) -> Answer {
    let f = Fields::parse(&body)?;
    let req = LeaseGrantRequest {
        ttl: f.int("TTL")?,
        id: f.int("ID")?,
    };
    let r = lease.lease_grant(request(&h, req)).await?.into_inner();
    let mut m = lease_json(&r.header, &[("ID", r.id), ("TTL", r.ttl)]);
    set(&mut m, "error", json!(r.error));
    Ok(Value::Object(m))
}

async fn revoke(lease: Arc<LeaseService>, h: HeaderMap, body: Bytes) -> Answer {
    let id = Fields::parse(&body)?.int("ID")?;
    let r = lease
        .lease_revoke(request(&h, LeaseRevokeRequest { id }))
        .await?
        .into_inner();
    Ok(Value::Object(lease_json(&r.header, &[])))
}

async fn time_to_live(lease: Arc<LeaseService>, h: HeaderMap, body: Bytes) -> Answer {
    let f = Fields::parse(&body)?;
    let req = LeaseTimeToLiveRequest {
        id: f.int("ID")?,
        keys: f.flag("keys")?,
    };
    let r = lease
        .lease_time_to_live(request(&h, req))
        .await?
        .into_inner();
    let mut m = lease_json(
        &r.header,
        &[("ID", r.id), ("TTL", r.ttl), ("grantedTTL", r.granted_ttl)],
    );
    let keys: Vec<Value> = r.keys.iter().map(|k| json!(B64.encode(k))).collect();
    set(&mut m, "keys", Value::Array(keys));
    Ok(Value::Object(m))
}

async fn leases(lease: Arc<LeaseService>, h: HeaderMap, _: Bytes) -> Answer {
    let r = lease
        .lease_leases(request(&h, LeaseLeasesRequest {}))
        .await?
        .into_inner();
    let mut m = lease_json(&r.header, &[]);
    let ids: Vec<Value> = r
        .leases
        .iter()
        .map(|l| json!({ "ID": l.id.to_string() }))
        .collect();
    set(&mut m, "leases", Value::Array(ids));
    Ok(Value::Object(m))
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
        let t = txn_request(&Fields::parse(body).unwrap()).unwrap();
        assert_eq!(t.compare.len(), 1);
        assert!(matches!(
            t.success[0].request,
            Some(Op::RequestPut(ref p)) if p.key == b"foo" && p.value == b"bar"
        ));
    }
}

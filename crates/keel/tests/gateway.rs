//! etcd's HTTP/JSON gateway on the client port: the JSON etcd's grpc-gateway speaks (base64 bytes,
//! 64-bit integers as strings, defaults omitted, errors as {error, message, code}).

mod common;

use common::{http_post, stdout, Member};
use serde_json::Value;

async fn post(m: &Member, path: &str, body: &str) -> (u16, Value) {
    let (code, text) = http_post(&m.endpoint(), path, body).await;
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    (code, v)
}

#[tokio::test]
async fn kv_and_status_over_http_json() {
    let m = Member::start().await;
    // foo=bar, base64 as etcd's gateway takes it.
    let (code, put) = post(&m, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#).await;
    assert_eq!(code, 200, "{put}");
    assert_eq!(put["header"]["revision"], "2");
    assert!(put["header"]["cluster_id"].is_string());
    assert_eq!(
        stdout(&m.etcdctl(&["get", "foo", "--print-value-only"])),
        "bar\n"
    );
    m.etcdctl(&["put", "fop", "baz"]);

    let (code, r) = post(&m, "/v3/kv/range", r#"{"key":"Zm9v"}"#).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["count"], "1");
    assert_eq!(r["kvs"][0]["key"], "Zm9v");
    assert_eq!(r["kvs"][0]["value"], "YmFy");
    assert_eq!(r["kvs"][0]["create_revision"], "2");
    assert_eq!(r["kvs"][0]["version"], "1");
    assert!(
        r["kvs"][0].get("lease").is_none(),
        "defaults are omitted: {r}"
    );
    // Prefix "fo" (range_end "fp"), newest first, limited to one.
    let (_, r) = post(
        &m,
        "/v3/kv/range",
        r#"{"key":"Zm8=","range_end":"ZnA=","sort_order":"DESCEND","sort_target":"KEY","limit":1}"#,
    )
    .await;
    assert_eq!(r["kvs"][0]["key"], "Zm9w", "{r}");
    assert_eq!(r["count"], "2");
    assert_eq!(r["more"], true);

    let (code, d) = post(&m, "/v3/kv/deleterange", r#"{"key":"Zm9v","prev_kv":true}"#).await;
    assert_eq!(code, 200, "{d}");
    assert_eq!(d["deleted"], "1");
    assert_eq!(d["prev_kvs"][0]["value"], "YmFy");

    let (code, s) = post(&m, "/v3/maintenance/status", "{}").await;
    assert_eq!(code, 200, "{s}");
    assert!(s["version"].is_string());
    assert_eq!(s["leader"], s["header"]["member_id"]);
}

#[tokio::test]
async fn bad_requests_get_etcds_errors_as_json() {
    let m = Member::start().await;
    let (code, e) = post(&m, "/v3/kv/put", r#"{"value":"YmFy"}"#).await;
    assert_eq!(code, 400);
    assert_eq!(e["error"], "etcdserver: key is not provided");
    assert_eq!(e["message"], "etcdserver: key is not provided");
    assert_eq!(e["code"], 3);
    let (code, e) = post(&m, "/v3/kv/put", "{not json").await;
    assert_eq!(code, 400);
    assert_eq!(e["code"], 3);
    let (code, e) = post(&m, "/v3/kv/range", r#"{"key":"Zm9v","revision":"99"}"#).await;
    assert_eq!(code, 400);
    assert_eq!(
        e["error"],
        "etcdserver: mvcc: required revision is a future revision"
    );
    // The member goes on serving.
    let (code, _) = post(&m, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#).await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn leases_and_compaction_over_http_json() {
    let m = Member::start().await;
    let (code, g) = post(&m, "/v3/lease/grant", r#"{"TTL":60,"ID":7}"#).await;
    assert_eq!(code, 200, "{g}");
    assert_eq!(
        (g["ID"].as_str(), g["TTL"].as_str()),
        (Some("7"), Some("60"))
    );
    post(
        &m,
        "/v3/kv/put",
        r#"{"key":"Zm9v","value":"YmFy","lease":"7"}"#,
    )
    .await;
    let (_, t) = post(&m, "/v3/lease/timetolive", r#"{"ID":7,"keys":true}"#).await;
    assert_eq!(t["grantedTTL"], "60");
    assert_eq!(t["keys"][0], "Zm9v");
    let (_, l) = post(&m, "/v3/lease/leases", "{}").await;
    assert_eq!(l["leases"][0]["ID"], "7");
    // The older path etcd also serves.
    let (code, _) = post(&m, "/v3/kv/lease/revoke", r#"{"ID":7}"#).await;
    assert_eq!(code, 200);
    let (_, t) = post(&m, "/v3/lease/timetolive", r#"{"ID":7}"#).await;
    assert_eq!(t["TTL"], "-1");
    let (code, c) = post(&m, "/v3/kv/compaction", r#"{"revision":"3"}"#).await;
    assert_eq!(code, 200, "{c}");
    let (code, e) = post(&m, "/v3/kv/range", r#"{"key":"Zm9v","revision":"2"}"#).await;
    assert_eq!(code, 400);
    assert_eq!(
        e["error"],
        "etcdserver: mvcc: required revision has been compacted"
    );
}

#[tokio::test]
async fn txn_over_http_json() {
    let m = Member::start().await;
    post(&m, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#).await;
    let (code, t) = post(
        &m,
        "/v3/kv/txn",
        r#"{"compare":[{"result":"EQUAL","target":"VALUE","key":"Zm9v","value":"YmFy"}],
            "success":[{"request_put":{"key":"Zm9v","value":"YmF6"}},{"request_range":{"key":"Zm9v"}}],
            "failure":[]}"#,
    )
    .await;
    assert_eq!(code, 200, "{t}");
    assert_eq!(t["succeeded"], true);
    assert_eq!(t["responses"][0]["response_put"]["header"]["revision"], "3");
    let got = &t["responses"][1]["response_range"]["kvs"][0];
    assert_eq!(
        (got["value"].as_str(), got["version"].as_str()),
        (Some("YmF6"), Some("2"))
    );
    // Compare fails (foo exists): the failure branch runs; `succeeded` false is omitted.
    let (_, t) = post(
        &m,
        "/v3/kv/txn",
        r#"{"compare":[{"target":"CREATE","key":"Zm9v","create_revision":"0"}],
            "success":[{"request_put":{"key":"Zm9v","value":"eA=="}}],
            "failure":[{"request_delete_range":{"key":"Zm9v","prev_kv":true}}]}"#,
    )
    .await;
    assert!(t.get("succeeded").is_none(), "{t}");
    assert_eq!(t["responses"][0]["response_delete_range"]["deleted"], "1");
    let (code, e) = post(&m, "/v3/kv/txn", r#"{"success":[{}]}"#).await;
    assert_eq!(code, 400, "{e}");
}

/// Reads `n` JSON results of an HTTP watch stream (chunked JSON lines) from `s`.
async fn results(s: &mut tokio::net::TcpStream, seen: &mut String, n: usize) -> Vec<Value> {
    use tokio::io::AsyncReadExt;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let lines: Vec<Value> = seen
            .split('\n')
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| l.starts_with("{\"result\""))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stream stalled: {seen}"
        );
        let mut buf = [0u8; 4096];
        let k = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(k > 0, "stream closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..k]));
    }
}

#[tokio::test]
async fn watch_streams_json_lines_over_http() {
    use tokio::io::AsyncWriteExt;
    let m = Member::start().await;
    post(&m, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#).await;
    let body = r#"{"create_request":{"key":"Zm9v","start_revision":"2","prev_kv":true}}"#;
    let mut s = tokio::net::TcpStream::connect(m.endpoint()).await.unwrap();
    let req = format!(
        "POST /v3/watch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut seen = String::new();
    let r = results(&mut s, &mut seen, 2).await;
    assert_eq!(r[0]["result"]["created"], true);
    assert_eq!(r[1]["result"]["events"][0]["kv"]["value"], "YmFy");
    post(&m, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmF6"}"#).await;
    post(&m, "/v3/kv/deleterange", r#"{"key":"Zm9v"}"#).await;
    let r = results(&mut s, &mut seen, 4).await;
    let put = &r[2]["result"]["events"][0];
    assert_eq!(put["kv"]["value"], "YmF6");
    assert_eq!(put["prev_kv"]["value"], "YmFy");
    assert!(put.get("type").is_none());
    let del = &r[3]["result"]["events"][0];
    assert_eq!(del["type"], "DELETE");
    assert_eq!(del["kv"]["mod_revision"], "4");
}

#[tokio::test]
async fn locks_elections_members_and_maintenance_over_http_json() {
    let m = Member::start().await;
    post(&m, "/v3/lease/grant", r#"{"TTL":60,"ID":9}"#).await;
    // Lock "lk" (bGs=) with lease 9, then unlock.
    let (code, l) = post(&m, "/v3/lock/lock", r#"{"name":"bGs=","lease":"9"}"#).await;
    assert_eq!(code, 200, "{l}");
    let key = l["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("bGsv"), "lk/<lease>: {key}");
    let (code, _) = post(&m, "/v3/lock/unlock", &format!(r#"{{"key":"{key}"}}"#)).await;
    assert_eq!(code, 200);
    // Campaign for "el" (ZWw=) with value "a" (YQ==), proclaim "b" (Yg==), resign.
    let (code, c) = post(
        &m,
        "/v3/election/campaign",
        r#"{"name":"ZWw=","lease":"9","value":"YQ=="}"#,
    )
    .await;
    assert_eq!(code, 200, "{c}");
    let leader = c["leader"].clone();
    assert_eq!(leader["name"], "ZWw=");
    let (_, l) = post(&m, "/v3/election/leader", r#"{"name":"ZWw="}"#).await;
    assert_eq!(l["kv"]["value"], "YQ==");
    let body = serde_json::json!({"leader": leader, "value": "Yg=="}).to_string();
    let (code, _) = post(&m, "/v3/election/proclaim", &body).await;
    assert_eq!(code, 200);
    let (_, l) = post(&m, "/v3/election/leader", r#"{"name":"ZWw="}"#).await;
    assert_eq!(l["kv"]["value"], "Yg==");
    let body = serde_json::json!({ "leader": leader }).to_string();
    let (code, _) = post(&m, "/v3/election/resign", &body).await;
    assert_eq!(code, 200);
    let (code, e) = post(&m, "/v3/election/leader", r#"{"name":"ZWw="}"#).await;
    assert_ne!(code, 200);
    assert_eq!(e["error"], "election: no leader");

    // Cluster and Maintenance routes.
    let (_, list) = post(&m, "/v3/cluster/member/list", "{}").await;
    let id = list["members"][0]["ID"].as_str().unwrap().to_string();
    let (code, h) = post(&m, "/v3/maintenance/hashkv", "{}").await;
    assert_eq!(code, 200, "{h}");
    assert!(h["hash"].as_u64().is_some(), "{h}");
    let (code, _) = post(&m, "/v3/maintenance/defragment", "{}").await;
    assert_eq!(code, 200);
    let (code, a) = post(&m, "/v3/maintenance/alarm", r#"{"action":"GET"}"#).await;
    assert_eq!((code, a.get("alarms")), (200, None), "no alarm raised: {a}");
    let body = format!(r#"{{"ID":"{id}","peerURLs":["http://127.0.0.1:1"]}}"#);
    let (code, u) = post(&m, "/v3/cluster/member/update", &body).await;
    assert_eq!(code, 200, "{u}");
    assert_eq!(u["members"][0]["peerURLs"][0], "http://127.0.0.1:1");
    let (code, e) = post(&m, "/v3/cluster/member/remove", r#"{"ID":"1"}"#).await;
    assert_eq!(
        (code, e["error"].as_str()),
        (404, Some("etcdserver: member not found"))
    );
}

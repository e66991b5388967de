//! etcd's health checks over HTTP: `/health` (etcd 3.4's answer, with etcd 3.5's `exclude=` and
//! `serializable=` query parameters, as kubelet probes use them), `/livez` and `/readyz` (etcd
//! 3.5's). Served on the client URLs and on --listen-metrics-urls. A check must never claim health
//! the member cannot serve: an alarm, no leader, or a read that does not complete is unhealthy.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::member::Member;

/// How long /health's read may take (etcd: one second).
const READ_TIMEOUT: Duration = Duration::from_secs(1);

/// The health routes.
pub fn routes(member: Arc<Member>) -> axum::Router {
    let health = member.clone();
    let ready = member.clone();
    axum::Router::new()
        .route(
            "/health",
            get(move |uri: Uri| {
                let member = health.clone();
                async move { health_answer(&member, &Query::of(&uri)).await }
            }),
        )
        .route(
            "/livez",
            get(move |uri: Uri| {
                let member = member.clone();
                async move { checks_answer(live_checks(&member), &Query::of(&uri), "livez") }
            }),
        )
        .route(
            "/readyz",
            get(move |uri: Uri| {
                let member = ready.clone();
                async move {
                    let checks = ready_checks(&member).await;
                    checks_answer(checks, &Query::of(&uri), "readyz")
                }
            }),
        )
}

/// The query parameters the checks take.
#[derive(Debug, Default)]
struct Query {
    /// Alarms (`NOSPACE`, `CORRUPT`) that do not make /health fail; checks /readyz skips.
    exclude: Vec<String>,
    /// Read locally instead of through a linearizable barrier.
    serializable: bool,
    /// List each check in the answer.
    verbose: bool,
}

impl Query {
    fn of(uri: &Uri) -> Query {
        let mut q = Query::default();
        for pair in uri.query().unwrap_or_default().split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "exclude" if !value.is_empty() => q.exclude.push(value.to_string()),
                "serializable" => q.serializable = value == "true",
                "verbose" => q.verbose = true,
                _ => {}
            }
        }
        q
    }
}

/// etcd's /health: the raised alarms not excluded, a known leader, then a read (linearizable
/// unless `serializable=true`) that completes within a second.
async fn health_answer(member: &Member, q: &Query) -> Response {
    let reason = unhealthy_reason(member, q).await;
    super::metrics::health_checked(reason.is_none());
    match reason {
        None => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"health":"true"}"#,
        )
            .into_response(),
        Some(why) => {
            tracing::warn!("/health error; {why} (status code 503)");
            // Go's http.Error: text/plain, the body and a newline.
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "{\"health\":\"false\"}\n",
            )
                .into_response()
        }
    }
}

async fn unhealthy_reason(member: &Member, q: &Query) -> Option<String> {
    for alarm in member.alarms().list() {
        let name = crate::alarm::name(alarm.alarm);
        if !q.exclude.iter().any(|e| e == name) {
            return Some(format!(
                "alarm {name} raised on member {:x}",
                alarm.member_id
            ));
        }
    }
    if member.leader_id() == 0 {
        return Some("no leader".into());
    }
    if !q.serializable {
        match tokio::time::timeout(READ_TIMEOUT, member.linearizable_barrier()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Some(format!("read failed: {e}")),
            Err(_) => return Some("read timed out".into()),
        }
    }
    None
}

/// etcd 3.5's /livez: the process answers and its store serves a local read.
fn live_checks(member: &Member) -> Vec<(&'static str, bool)> {
    vec![("serializable_read", member.store().current_revision() >= 0)]
}

/// etcd 3.5's /readyz: no CORRUPT alarm, a local read, a linearizable read (which needs a leader).
async fn ready_checks(member: &Member) -> Vec<(&'static str, bool)> {
    let corrupt = member
        .alarms()
        .list()
        .iter()
        .any(|a| a.alarm == crate::alarm::CORRUPT);
    let linearizable = member.leader_id() != 0
        && matches!(
            tokio::time::timeout(READ_TIMEOUT, member.linearizable_barrier()).await,
            Ok(Ok(()))
        );
    vec![
        ("data_corruption", !corrupt),
        ("serializable_read", true),
        ("linearizable_read", linearizable),
    ]
}

/// The answer of /livez or /readyz (etcd 3.5's format: `ok`, or each check with `verbose`).
fn checks_answer(checks: Vec<(&'static str, bool)>, q: &Query, what: &str) -> Response {
    let checks: Vec<_> = checks
        .into_iter()
        .filter(|(name, _)| !q.exclude.iter().any(|e| e == name))
        .collect();
    let failed = checks.iter().any(|(_, ok)| !ok);
    let mut body = String::new();
    if q.verbose || failed {
        for (name, ok) in &checks {
            let (mark, word) = if *ok { ('+', "ok") } else { ('-', "failed") };
            body.push_str(&format!("[{mark}]{name} {word}\n"));
        }
    }
    if failed {
        body.push_str(&format!("{what} check failed\n"));
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    } else {
        body.push_str("ok\n");
        (StatusCode::OK, body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_query_reads_as_kubelet_sends_it() {
        let uri: Uri = "/health?exclude=NOSPACE&serializable=true".parse().unwrap();
        let q = Query::of(&uri);
        assert_eq!(q.exclude, vec!["NOSPACE"]);
        assert!(q.serializable);
        let q = Query::of(&"/health".parse().unwrap());
        assert!(q.exclude.is_empty() && !q.serializable);
    }

    #[test]
    fn failed_checks_are_listed() {
        let q = Query::default();
        let r = checks_answer(vec![("a", true), ("b", false)], &q, "readyz");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let r = checks_answer(vec![("a", true)], &q, "readyz");
        assert_eq!(r.status(), StatusCode::OK);
    }
}

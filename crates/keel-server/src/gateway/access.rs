//! What etcd's access controller does to the client URLs' HTTP requests (embed/serve.go):
//! `/v3beta/...` is served as `/v3/...`; over plain HTTP a request whose Host is not in
//! --host-whitelist is refused (DNS rebinding, CVE-2018-5702); CORS headers for the origins
//! --cors allows, and `OPTIONS` answered with them; with client certificate auth and auth enabled,
//! a gateway request whose certificate names a user is refused (the gateway would not act as
//! that user). gRPC requests pass untouched, costing one header check.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{self, header, HeaderValue, StatusCode};
use futures::future::{BoxFuture, Either, FutureExt};
use tonic::body::Body;

use crate::api::ConnInfo;
use crate::member::Member;

/// The rules, from etcd's flags.
pub struct AccessRules {
    member: Arc<Member>,
    cors: Vec<String>,
    hosts: Vec<String>,
    client_cert_auth: bool,
}

impl AccessRules {
    /// Rules for `member`'s client URLs.
    pub fn new(member: Arc<Member>, cfg: &crate::ServerConfig) -> AccessRules {
        AccessRules {
            member,
            cors: cfg.cors.clone(),
            hosts: cfg.host_whitelist.clone(),
            client_cert_auth: cfg.client_tls.client_cert_auth,
        }
    }

    fn any(list: &[String]) -> bool {
        list.is_empty() || list.iter().any(|v| v == "*")
    }

    /// The CORS origin to answer with, if any.
    fn cors_origin(&self, req: &http::Request<impl Sized>) -> Option<HeaderValue> {
        if Self::any(&self.cors) {
            return Some(HeaderValue::from_static("*"));
        }
        let origin = req.headers().get(header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        self.cors.iter().any(|o| o == text).then(|| origin.clone())
    }

    fn host_allowed(&self, req: &http::Request<impl Sized>) -> bool {
        if Self::any(&self.hosts) {
            return true;
        }
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().host())
            .unwrap_or_default();
        // The host without its port (an IPv6 literal keeps its brackets off).
        let name = match host.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        };
        let name = name.trim_start_matches('[').trim_end_matches(']');
        self.hosts.iter().any(|h| h == name)
    }

    /// etcd refuses gateway requests with a certificate that names a user, when it would
    /// otherwise take the user from it (the gateway talks to the server as itself).
    fn names_a_user(&self, req: &http::Request<impl Sized>) -> bool {
        if !self.client_cert_auth || !req.uri().path().starts_with("/v3/") {
            return false;
        }
        if !self.member.auth().enabled() {
            return false;
        }
        req.extensions()
            .get::<ConnInfo>()
            .and_then(|c| c.peer_certs.as_ref())
            .and_then(|certs| certs.first())
            .and_then(|c| crate::api::common_name(c.as_ref()))
            .is_some_and(|cn| !cn.is_empty())
    }
}

/// The tower layer.
#[derive(Clone)]
pub struct Access(pub Arc<AccessRules>);

impl<S> tower_layer::Layer<S> for Access {
    type Service = AccessService<S>;

    fn layer(&self, inner: S) -> AccessService<S> {
        AccessService {
            rules: self.0.clone(),
            inner,
        }
    }
}

/// A service with the access rules in front.
#[derive(Clone)]
pub struct AccessService<S> {
    rules: Arc<AccessRules>,
    inner: S,
}

type HttpResponse = http::Response<Body>;

impl<S, B> tower_service::Service<http::Request<B>> for AccessService<S>
where
    S: tower_service::Service<http::Request<B>, Response = HttpResponse>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = Either<S::Future, BoxFuture<'static, Result<HttpResponse, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
        if grpc {
            return Either::Left(self.inner.call(req));
        }
        rewrite_v3beta(&mut req);
        let rules = &self.rules;
        let tls = req.extensions().get::<ConnInfo>().is_some_and(|c| c.tls);
        if !tls && !rules.host_allowed(&req) {
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default()
                .to_string();
            tracing::warn!(%host, "rejecting HTTP request to prevent DNS rebinding attacks");
            return ready(text(StatusCode::MISDIRECTED_REQUEST, &dns_rebinding(&host)));
        }
        if tls && rules.names_a_user(&req) {
            return ready(text(
                StatusCode::BAD_REQUEST,
                "CommonName of client sending a request against gateway will be ignored and not used as expected",
            ));
        }
        let origin = rules.cors_origin(&req);
        if req.method() == http::Method::OPTIONS {
            let mut resp = HttpResponse::new(Body::empty());
            add_cors(&mut resp, origin);
            return ready(resp);
        }
        let call = self.inner.call(req);
        Either::Right(
            async move {
                let mut resp = call.await?;
                add_cors(&mut resp, origin);
                Ok(resp)
            }
            .boxed(),
        )
    }
}

fn ready<E: Send + 'static, F>(
    resp: HttpResponse,
) -> Either<F, BoxFuture<'static, Result<HttpResponse, E>>> {
    Either::Right(futures::future::ready(Ok(resp)).boxed())
}

/// etcd 3.4 serves its gateway under /v3beta too.
fn rewrite_v3beta<B>(req: &mut http::Request<B>) {
    let Some(rest) = req.uri().path().strip_prefix("/v3beta/") else {
        return;
    };
    let mut path = format!("/v3/{rest}");
    if let Some(q) = req.uri().query() {
        path.push('?');
        path.push_str(q);
    }
    if let Ok(uri) = path.parse() {
        *req.uri_mut() = uri;
    }
}

fn add_cors(resp: &mut HttpResponse, origin: Option<HeaderValue>) {
    let Some(origin) = origin else { return };
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("accept, content-type, authorization"),
    );
}

/// Go's http.Error: the message and a newline, as plain text.
pub(crate) fn text(status: StatusCode, message: &str) -> HttpResponse {
    let mut resp = HttpResponse::new(Body::new(format!("{message}\n")));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn dns_rebinding(host: &str) -> String {
    format!(
        "\netcd received your request, but the Host header was unrecognized.\n\n\
         To fix this, choose one of the following options:\n\
         - Enable TLS, then any HTTPS request will be allowed.\n\
         - Add the hostname you want to use to the whitelist in settings.\n  \
         - e.g. etcd --host-whitelist {host:?}\n\n\
         This requirement has been added to help prevent \"DNS Rebinding\" attacks (CVE-2018-5702).\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v3beta_paths_are_served_as_v3() {
        let mut req = http::Request::builder()
            .uri("/v3beta/kv/range?x=1")
            .body(())
            .unwrap();
        rewrite_v3beta(&mut req);
        assert_eq!(req.uri(), "/v3/kv/range?x=1");
        let mut req = http::Request::builder().uri("/v3/kv/put").body(()).unwrap();
        rewrite_v3beta(&mut req);
        assert_eq!(req.uri(), "/v3/kv/put");
    }
}

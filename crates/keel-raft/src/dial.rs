//! Dialing a member's peer URL: `http://host:port`, `https://host:port`, `unix://path` or
//! `unixs://path`, with this member's TLS client settings for the secure schemes.
//!
//! The connection (TCP or Unix socket, then TLS) is made here and handed to tonic as an already
//! open transport: tonic's own TLS settings cannot skip verification for self-signed peer
//! certificates (--peer-auto-tls), nor check a peer's common name or host name
//! (--peer-cert-allowed-cn, --peer-cert-allowed-hostname). tonic sees an `http://` URI; the
//! scheme the peer URL asked for is honoured below it.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tonic::transport::{Channel, Endpoint};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long dialing a peer may take (TCP connect plus TLS handshake).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Where a URL points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// `host:port` over TCP.
    Tcp(String),
    /// A Unix socket's path.
    Unix(PathBuf),
}

/// A peer or client URL taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Where to connect.
    pub address: Address,
    /// Whether the connection is TLS (`https`, `unixs`).
    pub secure: bool,
    /// The host name TLS checks the certificate against.
    pub host: String,
}

impl Target {
    /// Parses `http://host:port`, `https://host:port`, `unix://path`, `unixs://path` (etcd's URL
    /// schemes; a path may be relative, and may contain `:`, as `unix://etcd.unix:1`).
    pub fn parse(url: &str) -> Result<Target, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("URL {url:?} has no scheme (http, https, unix or unixs)"))?;
        match scheme {
            "http" | "https" => {
                let hostport = rest.split('/').next().unwrap_or_default();
                let host = match hostport.rsplit_once(':') {
                    Some((host, port)) if port.parse::<u16>().is_ok() => host,
                    _ => return Err(format!("URL {url:?} must be scheme://host:port")),
                };
                Ok(Target {
                    address: Address::Tcp(hostport.to_string()),
                    secure: scheme == "https",
                    host: host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_string(),
                })
            }
            "unix" | "unixs" => {
                if rest.is_empty() {
                    return Err(format!("URL {url:?} names no socket path"));
                }
                // etcd names the socket by the URL's host (and port), and by the path when the
                // URL has one (unix:///run/etcd.sock).
                Ok(Target {
                    address: Address::Unix(PathBuf::from(rest)),
                    secure: scheme == "unixs",
                    host: "localhost".to_string(),
                })
            }
            other => Err(format!(
                "URL {url:?} has scheme {other:?}: expected http, https, unix or unixs"
            )),
        }
    }
}

/// An open connection: TCP or Unix socket, maybe under TLS.
pub struct Connection(Box<dyn Io>);

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// Dials URLs with one TLS client configuration.
#[derive(Clone, Default)]
pub struct Dialer {
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Dialer {
    /// A dialer that uses `tls` for https and unixs URLs (none: those URLs cannot be dialed).
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>) -> Dialer {
        Dialer { tls }
    }

    /// Whether this dialer can reach TLS URLs.
    pub fn has_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Opens a connection to `target`.
    pub async fn connect(&self, target: &Target) -> Result<Connection, BoxError> {
        let plain: Box<dyn Io> = match &target.address {
            Address::Tcp(hostport) => {
                let tcp = TcpStream::connect(hostport.as_str()).await?;
                tcp.set_nodelay(true)?;
                Box::new(tcp)
            }
            Address::Unix(path) => Box::new(UnixStream::connect(path).await?),
        };
        if !target.secure {
            return Ok(Connection(plain));
        }
        let tls = self
            .tls
            .clone()
            .ok_or("an https peer URL needs peer TLS (--peer-cert-file or --peer-auto-tls)")?;
        let name = ServerName::try_from(target.host.clone())?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, plain)
            .await?;
        Ok(Connection(Box::new(stream)))
    }

    /// A gRPC endpoint for `url` (not connected yet); its connections are made by this dialer.
    pub fn endpoint(&self, url: &str) -> Result<(Endpoint, Target), BoxError> {
        let target = Target::parse(url)?;
        // tonic only needs an http URI for the request's :authority; the connector decides the
        // rest.
        let authority = match &target.address {
            Address::Tcp(hostport) => hostport.clone(),
            Address::Unix(_) => "localhost".to_string(),
        };
        let endpoint = Endpoint::from_shared(format!("http://{authority}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        Ok((endpoint, target))
    }

    /// Connects a gRPC channel to `url`, waiting at most `timeout` per request once connected.
    pub async fn channel(&self, url: &str, timeout: Option<Duration>) -> Result<Channel, BoxError> {
        let (mut endpoint, target) = self.endpoint(url)?;
        if let Some(t) = timeout {
            endpoint = endpoint.timeout(t);
        }
        Ok(endpoint
            .connect_with_connector(self.connector(target))
            .await?)
    }

    /// As `channel`, but connecting on first use (and again whenever the connection breaks).
    pub fn lazy_channel(&self, url: &str) -> Result<Channel, BoxError> {
        let (endpoint, target) = self.endpoint(url)?;
        Ok(endpoint.connect_with_connector_lazy(self.connector(target)))
    }

    /// tonic's connector: every connection of a channel dials `target` anew.
    fn connector(
        &self,
        target: Target,
    ) -> impl tower::Service<
        tonic::transport::Uri,
        Response = TokioIo<Connection>,
        Error = BoxError,
        Future = impl Send,
    > + Clone
           + Send
           + 'static {
        let dialer = self.clone();
        tower::service_fn(move |_: tonic::transport::Uri| {
            let dialer = dialer.clone();
            let target = target.clone();
            async move {
                let conn = tokio::time::timeout(CONNECT_TIMEOUT, dialer.connect(&target))
                    .await
                    .map_err(|_| -> BoxError { "connecting timed out".into() })??;
                Ok::<_, BoxError>(TokioIo::new(conn))
            }
        })
    }
}

/// Describes a connection error as Go's crypto/tls and etcd word it (`remote error: tls: bad
/// certificate`, `x509: certificate signed by unknown authority`), which operators and tools grep
/// etcd's logs for; other errors as their chain of messages.
pub fn describe_error(err: &(dyn std::error::Error + 'static)) -> String {
    let mut messages = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(tls) = find_tls_error(e) {
            return go_tls_error(tls);
        }
        let m = e.to_string();
        if !messages.iter().any(|seen: &String| seen.contains(&m)) {
            messages.push(m);
        }
        next = e.source();
    }
    messages.join(": ")
}

fn find_tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    e.downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// etcd's words when a certificate's CN or host name is not allowed
/// (--peer-cert-allowed-cn/--peer-cert-allowed-hostname); the TLS layer reports such a refusal
/// as a certificate not valid for a name, with these words as the name presented.
pub const CERT_NOT_ALLOWED: &str = "client certificate authentication failed";

/// A rustls error in Go's words.
pub fn go_tls_error(e: &rustls::Error) -> String {
    use rustls::{CertificateError, Error};
    match e {
        Error::AlertReceived(alert) => format!("remote error: tls: {}", go_alert(*alert)),
        Error::NoCertificatesPresented => "tls: client didn't provide a certificate".into(),
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "x509: certificate signed by unknown authority".into()
        }
        Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => "x509: certificate has expired or is not yet valid".into(),
        Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            presented, ..
        }) if presented.iter().any(|p| p == CERT_NOT_ALLOWED) => CERT_NOT_ALLOWED.into(),
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "x509: certificate is not valid for the name it was dialed with".into(),
        Error::InvalidCertificate(CertificateError::Revoked) => {
            "tls: certificate revoked by its CA's revocation list".into()
        }
        Error::InvalidCertificate(CertificateError::Other(other)) => other.to_string(),
        other => format!("tls: {other}"),
    }
}

/// Go's text of a TLS alert (crypto/tls alert.go).
fn go_alert(alert: rustls::AlertDescription) -> String {
    use rustls::AlertDescription as A;
    let text = match alert {
        A::CloseNotify => "close notify",
        A::UnexpectedMessage => "unexpected message",
        A::BadRecordMac => "bad record MAC",
        A::RecordOverflow => "record overflow",
        A::HandshakeFailure => "handshake failure",
        A::BadCertificate => "bad certificate",
        A::UnsupportedCertificate => "unsupported certificate",
        A::CertificateRevoked => "revoked certificate",
        A::CertificateExpired => "expired certificate",
        A::CertificateUnknown => "unknown certificate",
        A::IllegalParameter => "illegal parameter",
        A::UnknownCA => "unknown certificate authority",
        A::AccessDenied => "access denied",
        A::DecodeError => "error decoding message",
        A::DecryptError => "error decrypting message",
        A::ProtocolVersion => "protocol version not supported",
        A::InsufficientSecurity => "insufficient security level",
        A::InternalError => "internal error",
        A::UserCanceled => "user canceled",
        A::NoRenegotiation => "no renegotiation",
        A::MissingExtension => "missing extension",
        A::UnsupportedExtension => "unsupported extension",
        A::UnrecognisedName => "unrecognized name",
        A::UnknownPSKIdentity => "unknown PSK identity",
        A::CertificateRequired => "certificate required",
        A::NoApplicationProtocol => "no application protocol",
        other => return format!("alert({})", u8::from(other)),
    };
    text.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_as_etcd_writes_them() {
        let t = Target::parse("https://127.0.0.1:2380").unwrap();
        assert_eq!(t.address, Address::Tcp("127.0.0.1:2380".into()));
        assert!(t.secure);
        assert_eq!(t.host, "127.0.0.1");
        let t = Target::parse("http://[::1]:2380/").unwrap();
        assert_eq!(t.address, Address::Tcp("[::1]:2380".into()));
        assert_eq!(t.host, "::1");
        let t = Target::parse("unix://etcd.unix:1").unwrap();
        assert_eq!(t.address, Address::Unix("etcd.unix:1".into()));
        assert!(!t.secure);
        assert!(Target::parse("unixs:///run/k.sock").unwrap().secure);
        assert!(Target::parse("ftp://x:1").is_err());
        assert!(Target::parse("http://nohost").is_err());
        assert!(Target::parse("localhost:2380").is_err());
    }

    #[test]
    fn tls_errors_read_as_go_writes_them() {
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate);
        assert_eq!(go_tls_error(&alert), "remote error: tls: bad certificate");
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, alert);
        assert_eq!(describe_error(&io), "remote error: tls: bad certificate");
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(describe_error(&plain), "refused");
    }
}

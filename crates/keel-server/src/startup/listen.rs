//! The sockets a member serves: each of its URLs (`http://host:port`, `https://`, `unix://path`,
//! `unixs://`) bound, its connections accepted (TLS handshakes run concurrently, each on its own
//! task, so a slow client cannot hold up the others) and merged into one stream for a server.
//! A connection carries what the services may ask of it (`ConnInfo`: the remote address and the
//! client certificate). Accepting must never block on one connection.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use keel_raft::dial::{go_tls_error, Address, Target};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::api::ConnInfo;
use crate::config::SocketOptions;
use crate::error::StartError;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Accepted connections waiting for the server to take them.
const BACKLOG: usize = 128;

/// A bound URL.
pub struct Listener {
    /// The URL as configured.
    pub url: String,
    socket: Socket,
    tls: Option<TlsAcceptor>,
}

enum Socket {
    Tcp(TcpListener),
    Unix(UnixSocket),
}

/// A Unix socket listener that removes its file when it closes (as Go's does).
struct UnixSocket {
    listener: UnixListener,
    path: std::path::PathBuf,
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Listener {
    /// Binds `url`; https and unixs URLs need `tls` (`what` names the URLs' flag in errors).
    pub async fn bind(
        url: &str,
        tls: Option<&Arc<rustls::ServerConfig>>,
        what: &str,
    ) -> Result<Listener, StartError> {
        Self::bind_with(url, tls, what, SocketOptions::default()).await
    }

    /// As `bind`, with socket options.
    pub async fn bind_with(
        url: &str,
        tls: Option<&Arc<rustls::ServerConfig>>,
        what: &str,
        options: SocketOptions,
    ) -> Result<Listener, StartError> {
        let target = Target::parse(url).map_err(StartError::Config)?;
        let tls = match (target.secure, tls) {
            (true, Some(config)) => Some(TlsAcceptor::from(config.clone())),
            (true, None) => {
                return Err(StartError::Config(format!(
                    "{what} {url:?} is https but no TLS is configured for it (certificate and key files, or auto TLS)"
                )))
            }
            (false, _) => None,
        };
        let listen_error = |source| StartError::Listen {
            url: url.to_string(),
            source,
        };
        let socket = match &target.address {
            Address::Tcp(hostport) => {
                let addr = resolve(url, hostport).await?;
                Socket::Tcp(tcp_listener(addr, options).map_err(listen_error)?)
            }
            Address::Unix(path) => {
                // A socket file left by a member that did not stop cleanly would make the bind
                // fail; etcd removes it first too.
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(listen_error(e))
                    }
                    _ => {}
                }
                Socket::Unix(UnixSocket {
                    listener: UnixListener::bind(path).map_err(listen_error)?,
                    path: path.clone(),
                })
            }
        };
        Ok(Listener {
            url: url.to_string(),
            socket,
            tls,
        })
    }

    /// The TCP address bound (none for a Unix socket).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.socket {
            Socket::Tcp(l) => l.local_addr().ok(),
            Socket::Unix(_) => None,
        }
    }

    /// Accepts connections until the receiving side of `out` closes.
    async fn accept_into(self, out: mpsc::Sender<std::io::Result<Conn>>) {
        loop {
            let accepted = tokio::select! {
                _ = out.closed() => return,
                a = self.accept() => a,
            };
            let (plain, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(url = %self.url, error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(acceptor) = self.tls.clone() else {
                if out.send(Ok(plain)).await.is_err() {
                    return;
                }
                continue;
            };
            let out = out.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&acceptor, plain)).await {
                    Ok(Ok(conn)) => {
                        let _ = out.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => {
                        let error = match e.get_ref().and_then(|i| i.downcast_ref()) {
                            Some(tls) => go_tls_error(tls),
                            None => e.to_string(),
                        };
                        // etcd's words (operators grep for them).
                        tracing::warn!(
                            "rejected connection from {:?} (error {:?}, ServerName \"\")",
                            remote.map(|a| a.to_string()).unwrap_or_default(),
                            error
                        );
                    }
                    Err(_) => tracing::debug!(?remote, "TLS handshake timed out"),
                }
            });
        }
    }

    async fn accept(&self) -> std::io::Result<(Conn, Option<SocketAddr>)> {
        match &self.socket {
            Socket::Tcp(l) => {
                let (s, addr) = l.accept().await?;
                // Small gRPC frames must not wait for Nagle's algorithm (40 ms with delayed ACKs).
                let _ = s.set_nodelay(true);
                Ok((Conn::Tcp(s), Some(addr)))
            }
            Socket::Unix(u) => {
                let (s, _) = u.listener.accept().await?;
                Ok((Conn::Unix(s), None))
            }
        }
    }
}

fn tcp_listener(addr: SocketAddr, options: SocketOptions) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if options.reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn handshake(acceptor: &TlsAcceptor, plain: Conn) -> std::io::Result<Conn> {
    match plain {
        Conn::Tcp(s) => Ok(Conn::TlsTcp(Box::new(acceptor.accept(s).await?))),
        Conn::Unix(s) => Ok(Conn::TlsUnix(Box::new(acceptor.accept(s).await?))),
        already => Ok(already),
    }
}

/// The connections of every listener, in one stream (a server's incoming connections).
pub fn incoming(
    listeners: Vec<Listener>,
    what: &'static str,
) -> impl futures::Stream<Item = std::io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(BACKLOG);
    for l in listeners {
        tracing::info!(url = %l.url, "{what}");
        tokio::spawn(l.accept_into(tx.clone()));
    }
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Resolves `host:port` to the address to bind.
async fn resolve(url: &str, hostport: &str) -> Result<SocketAddr, StartError> {
    let bad = |why: &str| StartError::Config(format!("invalid URL {url:?}: {why}"));
    let all: Vec<SocketAddr> = tokio::net::lookup_host(hostport)
        .await
        .map_err(|e| bad(&e.to_string()))?
        .collect();
    // "localhost" resolves to both families; bind the IPv4 one, as clients dial it first.
    all.iter()
        .find(|a| a.is_ipv4())
        .or(all.first())
        .copied()
        .ok_or_else(|| bad("host does not resolve"))
}

/// An accepted connection.
pub enum Conn {
    /// Plain TCP.
    Tcp(TcpStream),
    /// A plain Unix socket.
    Unix(UnixStream),
    /// TLS over TCP.
    TlsTcp(Box<TlsStream<TcpStream>>),
    /// TLS over a Unix socket.
    TlsUnix(Box<TlsStream<UnixStream>>),
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        let certs = |c: Option<&[CertificateDer<'static>]>| c.map(|c| Arc::new(c.to_vec()));
        match self {
            Conn::Tcp(s) => ConnInfo {
                remote: s.peer_addr().ok(),
                ..Default::default()
            },
            Conn::Unix(_) => ConnInfo::default(),
            Conn::TlsTcp(s) => {
                let (tcp, session) = s.get_ref();
                ConnInfo {
                    remote: tcp.peer_addr().ok(),
                    peer_certs: certs(session.peer_certificates()),
                    tls: true,
                }
            }
            Conn::TlsUnix(s) => ConnInfo {
                remote: None,
                peer_certs: certs(s.get_ref().1.peer_certificates()),
                tls: true,
            },
        }
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Conn::Tcp($s) => $e,
            Conn::Unix($s) => $e,
            Conn::TlsTcp($s) => $e,
            Conn::TlsUnix($s) => $e,
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Tcp(s) => s.is_write_vectored(),
            Conn::Unix(s) => s.is_write_vectored(),
            Conn::TlsTcp(s) => s.is_write_vectored(),
            Conn::TlsUnix(s) => s.is_write_vectored(),
        }
    }
}

//! A member started from etcd's configuration: its data dir opened (imported from etcd's, or
//! restored), its identity established (bootstrapped, or joined), the member assembled and its
//! engine running, then its client, peer and metrics URLs served until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keel_mvcc::Store;
use keel_raft::{LogStore, Transport};
use keel_state::membership::{Identity, Membership};
use tokio::sync::watch;
use tonic::service::Routes;
use tonic::transport::server::Router;

use super::bootstrap::{
    defragment_at_start, establish_identity, force_new_cluster, import_etcd_member, raft_config,
    repair_interrupted_install,
};
use super::tls::{self, Side};
use super::{incoming, Listener};
use crate::api;
use crate::config::ServerConfig;
use crate::error::StartError;
use crate::member::{conf_state, first_request_id, Member, Network, Parts, TokioRuntime};

/// How long in-flight requests may run after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Why a member stopped serving other than by its shutdown signal.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The gRPC server failed.
    #[error("serving: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The cluster removed this member (MemberRemove).
    #[error("the member has been permanently removed from the cluster")]
    Removed,
    /// The task serving the member failed.
    #[error("serving task: {0}")]
    Internal(String),
    /// --experimental-initial-corrupt-check found this member's data differs from a peer's.
    #[error(transparent)]
    Corrupt(#[from] crate::member::Inconsistent),
}

/// A started member.
pub struct Server {
    member: Arc<Member>,
    listeners: Vec<Listener>,
    http_listeners: Vec<Listener>,
    peer_listeners: Vec<Listener>,
    metrics_listeners: Vec<Listener>,
    transport: Arc<Transport>,
    cfg: ServerConfig,
}

impl Server {
    /// Opens the data dir, replays what was committed but not applied, starts raft and binds the
    /// client listeners.
    pub async fn start(mut cfg: ServerConfig) -> Result<Server, StartError> {
        let storage = |e: &dyn std::fmt::Display| StartError::Storage(e.to_string());
        let member_dir = cfg.data_dir.join("member");
        import_etcd_member(&cfg)?;
        std::fs::create_dir_all(&member_dir)
            .map_err(|e| StartError::Storage(format!("{}: {e}", member_dir.display())))?;
        let client_tls = tls::build(
            Side::Client,
            &cfg.client_tls,
            &cfg.tls,
            &cfg.data_dir,
            &url_hosts(&cfg.listen_client_urls),
        )
        .map_err(StartError::Config)?;
        let peer_tls = tls::build(
            Side::Peer,
            &cfg.peer_tls,
            &cfg.tls,
            &cfg.data_dir,
            &url_hosts(&cfg.listen_peer_urls),
        )
        .map_err(StartError::Config)?;
        if let Some(tracing) = &cfg.distributed_tracing {
            crate::ops::traces::install(tracing).map_err(StartError::Config)?;
        }
        let dialer = keel_raft::Dialer::new(peer_tls.as_ref().map(|t| t.client.clone()));
        let store = Arc::new(Store::open(&member_dir.join("kv")).map_err(|e| storage(&e))?);
        defragment_at_start(&store, cfg.bootstrap_defrag_threshold_bytes);
        if Identity::load(&store).map_err(|e| storage(&e))?.is_none() {
            if let Some(cluster) = super::discovery::initial_cluster(&cfg)
                .await
                .map_err(StartError::Config)?
            {
                cfg.initial_cluster = cluster;
            }
        }
        let (identity, seeds) = establish_identity(&cfg, &store, &dialer).await?;
        let membership = Arc::new(Membership::load(&store).map_err(|e| storage(&e))?);
        // etcd's --wal-dir: the raft log (Keel's WAL) on a disk of its own.
        let raft_dir = cfg
            .wal_dir
            .clone()
            .unwrap_or_else(|| member_dir.join("raft"));
        let mut log = LogStore::open(&raft_dir).map_err(|e| storage(&e))?;
        if cfg.unsafe_no_fsync {
            tracing::warn!("--unsafe-no-fsync: the raft log is not synced; a power loss can lose acknowledged writes");
            log = log.without_fsync();
        }
        repair_interrupted_install(&store, &membership, &mut log)?;
        if cfg.force_new_cluster && !log.is_empty() {
            force_new_cluster(&store, &membership, &mut log, identity.member_id)?;
        }
        let transport = Transport::new(
            tokio::runtime::Handle::current(),
            identity.cluster_id,
            identity.member_id,
            dialer,
        );
        // A member that joined and has not received the cluster's state yet knows its peers only
        // from the member it joined through.
        let peers = if membership.list().is_empty() {
            seeds
        } else {
            membership.list()
        };
        for m in peers.iter().filter(|m| m.id != identity.member_id) {
            transport.add_peer(m.id, m.peer_ur_ls.clone());
        }
        let raft = raft_config(
            &cfg,
            identity.member_id,
            conf_state(&membership.list()).voters,
            store.applied_index(),
        );
        let (member, engine) = Member::assemble(Parts {
            config: cfg.clone(),
            first_request_id: first_request_id(identity.member_id),
            store,
            log,
            identity,
            membership,
            network: Network::Transport(transport.clone()),
            runtime: Arc::new(TokioRuntime),
            raft,
            snap_dir: member_dir.join("snap"),
        })?;
        engine.run(&member)?;
        let client_server_tls = client_tls.as_ref().map(|t| &t.server);
        let bind = |urls, tls, what| bind_all(urls, tls, what, cfg.socket);
        let listeners = bind(
            &cfg.listen_client_urls,
            client_server_tls,
            "--listen-client-urls",
        )
        .await?;
        let peer_listeners = bind(
            &cfg.listen_peer_urls,
            peer_tls.as_ref().map(|t| &t.server),
            "--listen-peer-urls",
        )
        .await?;
        let http_listeners = bind(
            &cfg.listen_client_http_urls,
            client_server_tls,
            "--listen-client-http-urls",
        )
        .await?;
        let metrics_listeners = bind(
            &cfg.listen_metrics_urls,
            client_server_tls,
            "--listen-metrics-urls",
        )
        .await?;
        tracing::info!(
            name = %cfg.name,
            member_id = format!("{:x}", member.id()),
            cluster_id = format!("{:x}", member.cluster_id()),
            revision = member.store().current_revision(),
            applied_index = member.store().applied_index(),
            "member started"
        );
        Ok(Server {
            member,
            listeners,
            http_listeners,
            peer_listeners,
            metrics_listeners,
            transport,
            cfg,
        })
    }

    /// The member, for embedding.
    pub fn member(&self) -> &Arc<Member> {
        &self.member
    }

    /// The addresses the client listeners are bound to.
    pub fn client_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(Listener::local_addr)
            .collect()
    }

    /// Serves clients until `shutdown` resolves.
    pub async fn serve(
        mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let clients = incoming(
            std::mem::take(&mut self.listeners),
            "serving client requests",
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut stop: watch::Receiver<bool>| async move {
            let _ = stop.wait_for(|&stop| stop).await;
        };
        let peer_server = tokio::spawn(self.peer_routes().serve_with_incoming_shutdown(
            incoming(std::mem::take(&mut self.peer_listeners), "serving peers"),
            stopped(stop_rx.clone()),
        ));
        if self.cfg.initial_corrupt_check {
            if let Err(e) = crate::member::initial_check(&self.member).await {
                // Aborted: a graceful stop would wait for the peers' raft streams to end.
                peer_server.abort();
                let _ = peer_server.await;
                self.member.stop().await;
                return Err(e.into());
            }
        }
        self.member.start_tasks();
        let max = self.member.config().max_request_bytes + api::GRPC_OVERHEAD_BYTES;
        let metrics = serve_metrics(
            self.member.clone(),
            self.cfg.metrics_extensive,
            std::mem::take(&mut self.metrics_listeners),
            stopped(stop_rx.clone()),
        );
        self.wait_cluster_ready().await;
        let http_only = std::mem::take(&mut self.http_listeners);
        let serves = if http_only.is_empty() {
            Serves::Both
        } else {
            Serves::Grpc
        };
        let http = (!http_only.is_empty()).then(|| {
            tokio::spawn(
                router(self.member.clone(), max, &self.cfg, Serves::Http)
                    .serve_with_incoming_shutdown(
                        incoming(http_only, "serving client HTTP requests"),
                        stopped(stop_rx.clone()),
                    ),
            )
        });
        let serve = router(self.member.clone(), max, &self.cfg, serves)
            .serve_with_incoming_shutdown(clients, stopped(stop_rx));
        tokio::pin!(serve);
        let mut removed = false;
        let served = tokio::select! {
            res = &mut serve => Some(res),
            () = self.member.removed() => {
                tracing::error!("this member was removed from the cluster; stopping");
                removed = true;
                None
            }
            () = shutdown => None,
        };
        let _ = stop_tx.send(true);
        self.member.stop_streams();
        // Open client connections would hold a graceful shutdown forever: give in-flight
        // requests a moment, then stop.
        let res = match served {
            Some(res) => res,
            None => tokio::time::timeout(SHUTDOWN_GRACE, &mut serve)
                .await
                .unwrap_or(Ok(())),
        };
        // Awaited once aborted, so that nothing they hold (the member) outlives `serve`.
        peer_server.abort();
        let _ = peer_server.await;
        metrics.abort();
        let _ = metrics.await;
        if let Some(http) = http {
            http.abort();
            let _ = http.await;
        }
        self.member.stop().await;
        crate::ops::traces::flush();
        if removed {
            return Err(ServeError::Removed);
        }
        Ok(res?)
    }

    /// What the peer URLs serve: raft messages and snapshots, and the requests other members
    /// make of this one.
    fn peer_routes(&self) -> Router {
        let member = &self.member;
        tonic::transport::Server::builder()
            .add_service(
                self.transport
                    .service(member.stepper(), member.snap_dir().to_path_buf()),
            )
            // A member joining with --initial-cluster-state=existing asks for the members here.
            .add_service(api::PeerMembershipService::server(member.clone()))
            // Followers forward keep-alives, time-to-live and learner promotions here (see
            // member/leader_link.rs).
            .add_service(keel_rpc::etcd::PbLeaseServer::new(api::LeaseService::new(
                member.clone(),
            )))
            .add_service(keel_rpc::etcd::PbClusterServer::new(
                api::ClusterService::new(member.clone()),
            ))
            .add_service(api::AdminService::server(member.clone()))
    }

    /// etcd 3.5 serves clients once the cluster is ready (it has a leader), or after
    /// --experimental-wait-cluster-ready-timeout without one.
    async fn wait_cluster_ready(&self) {
        let timeout = self.cfg.wait_cluster_ready_timeout;
        let ready = tokio::time::timeout(timeout, async {
            while self.member.leader_id() == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        if ready.is_err() {
            tracing::warn!(?timeout, "timed out waiting for the ready notification");
        }
    }
}

/// Serves /metrics and the health checks on --listen-metrics-urls (HTTP/1.1 and h2) until
/// `stopped`.
fn serve_metrics(
    member: Arc<Member>,
    extensive: bool,
    listeners: Vec<Listener>,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if listeners.is_empty() {
            return;
        }
        let routes = Routes::from(crate::ops::routes(member, extensive));
        let served = tonic::transport::Server::builder()
            .accept_http1(true)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming(listeners, "serving metrics"), stopped)
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "serving metrics failed");
        }
    })
}

/// The client server's router: etcd's access rules in front of its HTTP requests, its gRPC
/// requests counted and timed.
pub type ClientRouter = Router<
    tower_layer::Stack<
        crate::gateway::Access,
        tower_layer::Stack<crate::ops::ObserveGrpc, tower_layer::Identity>,
    >,
>;

/// What a client listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serves {
    /// gRPC and HTTP (the gateway, /metrics, health checks) on one port, as etcd does by default.
    Both,
    /// gRPC only (--listen-client-urls when --listen-client-http-urls is given).
    Grpc,
    /// HTTP only (--listen-client-http-urls).
    Http,
}

/// The client server's router: the gRPC services, and `/metrics`, the health checks and the JSON
/// gateway over HTTP/1.1 beside them, as `serves` says; requests above `max_message` bytes are
/// refused by gRPC itself. HTTP/2 limits and keep-alives as etcd's --max-concurrent-streams and
/// --grpc-keepalive-* set them.
pub fn router(
    member: Arc<Member>,
    max_message: usize,
    cfg: &ServerConfig,
    serves: Serves,
) -> ClientRouter {
    let mut http = if serves == Serves::Http {
        axum::Router::new()
    } else {
        api::grpc_routes(member.clone(), max_message).into_axum_router()
    };
    if serves != Serves::Grpc {
        http = http
            .merge(crate::ops::routes(member.clone(), cfg.metrics_extensive))
            .merge(crate::gateway::version_routes());
        if cfg.enable_pprof {
            http = http.merge(crate::ops::pprof::routes());
        }
        if cfg.enable_grpc_gateway {
            http = http.merge(crate::gateway::routes(
                member.clone(),
                cfg.max_concurrent_streams,
            ));
        }
    }
    let http = http.fallback(crate::gateway::not_found);
    let access = crate::gateway::Access(Arc::new(crate::gateway::AccessRules::new(member, cfg)));
    let keepalive = &cfg.grpc_keepalive;
    let mut server = tonic::transport::Server::builder()
        .accept_http1(true)
        .max_concurrent_streams(cfg.max_concurrent_streams);
    if !keepalive.interval.is_zero() {
        server = server.http2_keepalive_interval(Some(keepalive.interval));
    }
    if !keepalive.timeout.is_zero() {
        server = server.http2_keepalive_timeout(Some(keepalive.timeout));
    }
    server
        .layer(crate::ops::ObserveGrpc {
            warn_after: cfg.warning_unary_request_duration,
        })
        .layer(access)
        .add_routes(Routes::from(http))
}

/// Binds a listener for each URL (`what`: the flag naming them, for errors).
async fn bind_all(
    urls: &[String],
    tls: Option<&Arc<rustls::ServerConfig>>,
    what: &str,
    options: crate::config::SocketOptions,
) -> Result<Vec<Listener>, StartError> {
    let mut listeners = Vec::new();
    for url in urls {
        listeners.push(Listener::bind_with(url, tls, what, options).await?);
    }
    Ok(listeners)
}

/// The hosts of `urls` (what a self-signed certificate for them names).
fn url_hosts(urls: &[String]) -> Vec<String> {
    urls.iter()
        .filter_map(|u| keel_raft::Target::parse(u).ok())
        .map(|t| t.host)
        .collect()
}

//! The gRPC services, thin: each validates, calls the core, and maps errors through `error.rs`.

mod admin;
mod auth;
mod cluster;
mod election;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod watch;

use std::sync::Arc;

pub use admin::AdminService;
pub use auth::AuthService;
pub use cluster::{fetch_members, ClusterService, PeerMembershipService};
pub use election::ElectionService;
use keel_rpc::etcd::{
    PbClusterServer, PbKvServer, PbLeaseServer, PbMaintenanceServer, PbWatchServer,
};
pub use kv::KvService;
pub(crate) use lease::renew;
pub use lease::LeaseService;
pub use lock::LockService;
pub use maintenance::{MaintenanceService, API_VERSION};
use tonic::service::Routes;
use tonic::transport::server::Router;
use tonic::Status;
pub use watch::WatchService;

use crate::server::Core;
use crate::ServerError;

/// etcd's answer to a request this server cannot serve (yet).
fn not_capable<T>() -> Result<T, Status> {
    Err(ServerError::NotCapable.into())
}

/// Every gRPC service of the client URLs, as one tower service (also served in-process to an
/// embedding application, without TCP); requests above `max_message` bytes are refused.
pub fn grpc_routes(core: Arc<Core>, max_message: usize) -> Routes {
    Routes::new(
        PbKvServer::new(KvService::new(core.clone())).max_decoding_message_size(max_message),
    )
    .add_service(
        PbMaintenanceServer::new(MaintenanceService::new(core.clone()))
            .max_decoding_message_size(max_message),
    )
    .add_service(
        PbClusterServer::new(ClusterService::new(core.clone()))
            .max_decoding_message_size(max_message),
    )
    .add_service(
        PbLeaseServer::new(LeaseService::new(core.clone())).max_decoding_message_size(max_message),
    )
    .add_service(
        PbWatchServer::new(WatchService::new(core.clone())).max_decoding_message_size(max_message),
    )
    .add_service(LockService::server(core.clone()))
    .add_service(ElectionService::server(core.clone()))
    .add_service(AdminService::server(core.clone()))
    .add_service(AuthService::server(core.clone()).max_decoding_message_size(max_message))
}

/// The client server's router: etcd's access rules in front of its HTTP requests, its gRPC
/// requests counted and timed.
pub type ClientRouter = Router<
    tower_layer::Stack<
        crate::gateway::Access,
        tower_layer::Stack<crate::metrics::ObserveGrpc, tower_layer::Identity>,
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
    core: Arc<Core>,
    max_message: usize,
    cfg: &crate::ServerConfig,
    serves: Serves,
) -> ClientRouter {
    let mut http = if serves == Serves::Http {
        axum::Router::new()
    } else {
        grpc_routes(core.clone(), max_message).into_axum_router()
    };
    if serves != Serves::Grpc {
        http = http
            .merge(crate::metrics::routes(core.clone(), cfg.metrics_extensive))
            .merge(crate::gateway::version_routes());
        if cfg.enable_pprof {
            http = http.merge(crate::pprof::routes());
        }
        if cfg.enable_grpc_gateway {
            http = http.merge(crate::gateway::routes(
                core.clone(),
                cfg.max_concurrent_streams,
            ));
        }
    }
    let http = http.fallback(crate::gateway::not_found);
    let access = crate::gateway::Access(Arc::new(crate::gateway::AccessRules::new(core, cfg)));
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
        .layer(crate::metrics::ObserveGrpc {
            warn_after: cfg.warning_unary_request_duration,
        })
        .layer(access)
        .add_routes(Routes::from(http))
}

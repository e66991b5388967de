//! etcd's gRPC services, thin: each validates, identifies its caller, calls the member, and maps
//! errors through the one table in `error.rs`.

mod admin;
mod auth;
mod cluster;
pub mod concurrency;
mod credentials;
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
pub use credentials::{
    admin, caller, common_name, token_of, ClientListener, ConnInfo, Credentials,
};
pub use election::ElectionService;
use keel_rpc::etcd::{
    PbClusterServer, PbKvServer, PbLeaseServer, PbMaintenanceServer, PbWatchServer,
};
pub use kv::KvService;
pub use lease::LeaseService;
pub use lock::LockService;
pub use maintenance::{MaintenanceService, API_VERSION};
use tonic::service::Routes;
use tonic::Status;
pub use watch::WatchService;

use crate::member::Member;
use crate::ServerError;

/// etcd's answer to a request this server cannot serve (yet).
fn not_capable<T>() -> Result<T, Status> {
    Err(ServerError::NotCapable.into())
}

/// Every gRPC service of the client URLs, as one tower service (also served in-process to an
/// embedding application, without TCP); requests above `max_message` bytes are refused.
pub fn grpc_routes(member: Arc<Member>, max_message: usize) -> Routes {
    Routes::new(
        PbKvServer::new(KvService::new(member.clone())).max_decoding_message_size(max_message),
    )
    .add_service(
        PbMaintenanceServer::new(MaintenanceService::new(member.clone()))
            .max_decoding_message_size(max_message),
    )
    .add_service(
        PbClusterServer::new(ClusterService::new(member.clone()))
            .max_decoding_message_size(max_message),
    )
    .add_service(
        PbLeaseServer::new(LeaseService::new(member.clone()))
            .max_decoding_message_size(max_message),
    )
    .add_service(
        PbWatchServer::new(WatchService::new(member.clone()))
            .max_decoding_message_size(max_message),
    )
    .add_service(LockService::server(member.clone()))
    .add_service(ElectionService::server(member.clone()))
    .add_service(AdminService::server(member.clone()))
    .add_service(AuthService::server(member.clone()).max_decoding_message_size(max_message))
}

/// gRPC message size allowed above --max-request-bytes, so an oversized request reaches the server
/// and gets etcd's `request is too large` rather than a transport error.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// The member's gRPC services as one in-process tower service (an embedding application's client:
/// the same services, codec and checks as over TCP, without the network).
pub fn local_routes(member: &Arc<Member>) -> Routes {
    grpc_routes(
        member.clone(),
        member.config().max_request_bytes + GRPC_OVERHEAD_BYTES,
    )
}

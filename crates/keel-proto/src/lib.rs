//! Keel's own protocol. etcd's API (messages and service traits) is re-exported from the `etcd-client`
//! crate, built with its `build-server` feature; this crate adds what etcd's API does not define: the
//! encoding of client requests as raft entries, and the peer protocol members exchange raft
//! messages, snapshots and membership over.

mod internal;

/// The peer protocol: raft messages between members.
pub mod peer {
    #![allow(missing_docs)]
    tonic::include_proto!("keelpb.peer");
}

/// Keel's admin extension: replication state of every member.
pub mod admin {
    #![allow(missing_docs)]
    tonic::include_proto!("keelpb.admin");
}

/// The etcd types the lock and election APIs refer to, by their proto names.
#[doc(hidden)]
pub mod etcd_types {
    pub use etcd_client::proto::{PbKeyValue as KeyValue, PbResponseHeader as ResponseHeader};
}

/// etcd's lock API (v3lockpb), server side.
pub mod v3lock {
    #![allow(missing_docs)]
    tonic::include_proto!("v3lockpb");
}

/// etcd's election API (v3electionpb), server side.
pub mod v3election {
    #![allow(missing_docs)]
    tonic::include_proto!("v3electionpb");
}

/// etcd's Auth service (etcdserverpb.Auth), server side, and its AuthStatus messages.
pub mod auth {
    #![allow(missing_docs)]
    tonic::include_proto!("etcdserverpb");
}

/// etcd's v3 API types and service traits (wire-compatible with etcd 3.5+).
pub use etcd_client::proto as etcd;

pub use internal::{
    Authenticate, InternalRequest, LeaseCheckpoint, LeaseRecord, LeaseRemaining, MemberAttributes,
    MemberChange, PermissionRecord, RequestAuth, RequestBody, RoleRecord, UserRecord,
};

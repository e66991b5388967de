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

/// etcd's v3 API types and service traits (wire-compatible with etcd 3.5+).
pub use etcd_client::proto as etcd;

pub use internal::{InternalRequest, LeaseRecord, MemberAttributes, MemberChange, RequestBody};

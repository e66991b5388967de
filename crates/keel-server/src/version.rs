//! The etcd version Keel answers as: the server version (Maintenance.Status, `/version`,
//! `etcd_server_version`) and the cluster version (`/version`, `etcd_cluster_version`, the
//! readiness log line). Keel serves etcd 3.4's API (and the 3.5 additions etcd 3.4 clients
//! ignore); every member of a Keel cluster runs the same protocol, so the cluster version is
//! fixed rather than negotiated.

/// etcd's server version.
pub const SERVER: &str = "3.4.23";
/// etcd's cluster version.
pub const CLUSTER: &str = "3.4.0";
/// The cluster version's major.minor, as etcd's capability log line and metrics name it.
pub const CLUSTER_MINOR: &str = "3.4";

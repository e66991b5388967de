//! Starting a member's edges: TLS from etcd's flags, the sockets of its client, peer and
//! metrics URLs, and the discovery of a new cluster's members (discovery service, DNS SRV).

pub mod discovery;
pub mod listen;
pub mod srv;
pub mod tls;

pub use listen::{incoming, Conn, ConnInfo, Listener, SocketOptions};

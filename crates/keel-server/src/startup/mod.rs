//! Starting a member's edges: TLS from etcd's flags, and the sockets of its client, peer and
//! metrics URLs.

pub mod discovery;
pub mod listen;
pub mod tls;

pub use listen::{incoming, Conn, ConnInfo, Listener, SocketOptions};

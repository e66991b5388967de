//! Starting a member from etcd's configuration, and serving it: its identity and storage
//! (bootstrap, join, restore, import), TLS from etcd's flags, the sockets of its client, peer and
//! metrics URLs, the discovery of a new cluster's members (discovery service, DNS SRV), and the
//! servers on those sockets.

mod bootstrap;
pub mod discovery;
pub mod listen;
mod server;
pub mod srv;
pub mod tls;

pub use crate::config::SocketOptions;
pub use bootstrap::restore;
pub use listen::{incoming, Conn, Listener};
pub use server::{router, ClientRouter, ServeError, Server, Serves};

//! Keel as a library: start a member inside your own tokio runtime, the way Go programs embed etcd.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = keel::ServerConfig { data_dir: "my.keel".into(), ..Default::default() };
//! let server = keel::Server::start(cfg).await?;
//! server.serve(std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub mod flags;

pub use keel_server::{
    restore, ClusterState, ServeError, Server, ServerConfig, ServerError, StartError,
};

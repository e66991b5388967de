//! What a member needs to know to start: the etcd configuration Keel honours, already parsed.

use std::path::PathBuf;
use std::time::Duration;

/// Whether the member bootstraps a new cluster or joins an existing one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClusterState {
    /// Bootstrap a new cluster from the initial cluster configuration.
    #[default]
    New,
    /// Join a cluster that already runs.
    Existing,
}

/// Automatic compaction of the key-value history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AutoCompaction {
    /// History is kept until a client compacts it.
    #[default]
    Off,
    /// Keep this much time of history.
    Periodic(Duration),
    /// Keep this many revisions of history.
    Revision(i64),
}

/// TLS files of the client URLs (etcd's --cert-file, --key-file, --trusted-ca-file,
/// --client-cert-auth) or of the peer URLs (the --peer-* equivalents).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server certificate (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// CA certificates client certificates are checked against (PEM).
    pub trusted_ca_file: Option<PathBuf>,
    /// Require and verify a client certificate.
    pub client_cert_auth: bool,
}

/// A member's configuration.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Human-readable member name.
    pub name: String,
    /// Where the member keeps its data.
    pub data_dir: PathBuf,
    /// URLs to serve clients on (`http://host:port`).
    pub listen_client_urls: Vec<String>,
    /// Client URLs advertised to the cluster and clients.
    pub advertise_client_urls: Vec<String>,
    /// URLs to listen for peers on.
    pub listen_peer_urls: Vec<String>,
    /// Peer URLs advertised to the cluster.
    pub initial_advertise_peer_urls: Vec<String>,
    /// The initial cluster: (member name, its peer URLs).
    pub initial_cluster: Vec<(String, Vec<String>)>,
    /// Bootstrap a new cluster or join an existing one.
    pub initial_cluster_state: ClusterState,
    /// Token that makes the ids of distinct clusters distinct.
    pub initial_cluster_token: String,
    /// Largest client request accepted, in bytes.
    pub max_request_bytes: usize,
    /// Most operations in one txn.
    pub max_txn_ops: usize,
    /// Space quota of the backend, in bytes (0 = default).
    pub quota_backend_bytes: u64,
    /// Raft log compaction every this many applied entries.
    pub snapshot_count: u64,
    /// How often an idle watcher that asked for progress notifications gets one.
    pub watch_progress_notify_interval: Duration,
    /// Automatic compaction.
    pub auto_compaction: AutoCompaction,
    /// TLS on the client URLs (which are then https).
    pub client_tls: Option<TlsFiles>,
    /// TLS between members (peer URLs are then https): the files serve the peer URLs and are
    /// this member's client certificate towards its peers, whose certificates are checked
    /// against the trusted CA.
    pub peer_tls: Option<TlsFiles>,
    /// etcd's --auth-token: `simple`, or `jwt,pub-key=...,priv-key=...,sign-method=...,ttl=...`.
    pub auth_token: String,
    /// How long a simple token lives without use (etcd's --auth-token-ttl).
    pub auth_token_ttl: Duration,
    /// The bcrypt cost of password hashes (etcd's --bcrypt-cost).
    pub bcrypt_cost: u32,
}

impl Default for ServerConfig {
    /// etcd's defaults.
    fn default() -> Self {
        ServerConfig {
            name: "default".into(),
            data_dir: PathBuf::from("default.keel"),
            listen_client_urls: vec!["http://localhost:2379".into()],
            advertise_client_urls: vec!["http://localhost:2379".into()],
            listen_peer_urls: vec!["http://localhost:2380".into()],
            initial_advertise_peer_urls: vec!["http://localhost:2380".into()],
            initial_cluster: vec![("default".into(), vec!["http://localhost:2380".into()])],
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "etcd-cluster".into(),
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
            quota_backend_bytes: 2 * 1024 * 1024 * 1024,
            snapshot_count: 100_000,
            watch_progress_notify_interval: Duration::from_secs(600),
            auto_compaction: AutoCompaction::Off,
            client_tls: None,
            peer_tls: None,
            auth_token: "simple".into(),
            auth_token_ttl: Duration::from_secs(300),
            bcrypt_cost: crate::auth::DEFAULT_BCRYPT_COST,
        }
    }
}

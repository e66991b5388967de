//! What a member needs to know to start: the etcd configuration Keel honours, already parsed and
//! validated (the binary turns etcd's flags, ETCD_* variables or YAML config file into this).

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

/// How a new member learns the initial cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Discovery {
    /// A discovery service's token URL (--discovery), reached through an HTTP proxy when
    /// `proxy` is set (--discovery-proxy).
    Service { url: String, proxy: Option<String> },
    /// DNS SRV records of a domain (--discovery-srv), with --discovery-srv-name's suffix.
    Srv {
        domain: String,
        service_name: Option<String>,
    },
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

/// TLS of the client URLs (etcd's --cert-file, --key-file, --trusted-ca-file,
/// --client-cert-auth, --client-crl-file, --auto-tls, ...) or of the peer URLs (the --peer-*
/// equivalents). Used only by https:// and unixs:// URLs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate served (PEM); with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
    /// CA certificates the other side's certificate is checked against (PEM).
    pub trusted_ca_file: Option<PathBuf>,
    /// Require and verify a client certificate.
    pub client_cert_auth: bool,
    /// Certificates revoked by their CA (PEM or DER): connections presenting one are refused.
    pub crl_file: Option<PathBuf>,
    /// Without certificate files: generate a self-signed certificate into the data dir (etcd's
    /// --auto-tls / --peer-auto-tls), and do not check the other side's certificate.
    pub auto_tls: bool,
    /// Accept only certificates with one of these common names (peers only).
    pub allowed_cn: Vec<String>,
    /// Accept only certificates valid for one of these host names or IPs.
    pub allowed_hostname: Vec<String>,
    /// Peers only: do not check that a peer's client certificate names the address it connects
    /// from (etcd's --experimental-peer-skip-client-san-verification; Keel never checks it).
    pub skip_client_san_verify: bool,
}

impl TlsConfig {
    /// Whether these settings give a certificate to serve.
    pub fn is_configured(&self) -> bool {
        self.auto_tls || (self.cert_file.is_some() && self.key_file.is_some())
    }
}

/// TLS settings both sides share (etcd's --cipher-suites, --tls-min-version, --tls-max-version,
/// --self-signed-cert-validity).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsCommon {
    /// TLS 1.2 cipher suites by their Go names (empty: the library's defaults).
    pub cipher_suites: Vec<String>,
    /// Lowest protocol version: `TLS1.2` or `TLS1.3`.
    pub min_version: String,
    /// Highest protocol version (empty: the newest).
    pub max_version: String,
    /// Years a self-signed certificate of --auto-tls is valid.
    pub self_signed_cert_validity_years: u32,
}

impl Default for TlsCommon {
    fn default() -> Self {
        TlsCommon {
            cipher_suites: Vec::new(),
            min_version: "TLS1.2".into(),
            max_version: String::new(),
            self_signed_cert_validity_years: 1,
        }
    }
}

/// gRPC keep-alive policy of the client URLs (etcd's --grpc-keepalive-*).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrpcKeepalive {
    /// Clients pinging more often than this are sent GOAWAY.
    pub min_time: Duration,
    /// How often the server pings an idle connection (zero: never).
    pub interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub timeout: Duration,
}

impl Default for GrpcKeepalive {
    fn default() -> Self {
        GrpcKeepalive {
            min_time: Duration::from_secs(5),
            interval: Duration::from_secs(2 * 3600),
            timeout: Duration::from_secs(20),
        }
    }
}

/// The leader's lease checkpoints (etcd's --experimental-enable-lease-checkpoint).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseCheckpointing {
    /// How often the leader records the remaining TTL of leases that outlive this interval
    /// (etcd: 5 minutes).
    pub interval: Duration,
    /// Store the remaining TTLs so that they survive restarts too
    /// (--experimental-enable-lease-checkpoint-persist).
    pub persist: bool,
}

/// A member's configuration.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Human-readable member name.
    pub name: String,
    /// Where the member keeps its data.
    pub data_dir: PathBuf,
    /// Where the raft log lives, when not under the data dir (etcd's --wal-dir).
    pub wal_dir: Option<PathBuf>,
    /// URLs to serve clients on (`http://host:port`, `https://`, `unix://path`, `unixs://`).
    pub listen_client_urls: Vec<String>,
    /// URLs that serve only HTTP/1.1 (the JSON gateway, /metrics, /health), not gRPC.
    pub listen_client_http_urls: Vec<String>,
    /// Client URLs advertised to the cluster and clients.
    pub advertise_client_urls: Vec<String>,
    /// URLs to listen for peers on.
    pub listen_peer_urls: Vec<String>,
    /// Peer URLs advertised to the cluster.
    pub initial_advertise_peer_urls: Vec<String>,
    /// Plain HTTP (or https with the client TLS) listeners of /metrics and the health checks.
    pub listen_metrics_urls: Vec<String>,
    /// Socket options of every listener (etcd's --socket-reuse-port, --socket-reuse-address).
    pub socket: SocketOptions,
    /// The initial cluster: (member name, its peer URLs).
    pub initial_cluster: Vec<(String, Vec<String>)>,
    /// Bootstrap a new cluster or join an existing one.
    pub initial_cluster_state: ClusterState,
    /// Token that makes the ids of distinct clusters distinct.
    pub initial_cluster_token: String,
    /// Where a new member learns the initial cluster instead of `initial_cluster` (etcd's
    /// --discovery and --discovery-srv).
    pub discovery: Option<Discovery>,
    /// Restart as a one-member cluster with this member's data (etcd's --force-new-cluster).
    pub force_new_cluster: bool,
    /// Refuse membership changes that would leave too few started voters for a quorum.
    pub strict_reconfig_check: bool,
    /// Length of a raft tick and leader heartbeat (etcd's --heartbeat-interval).
    pub heartbeat_interval: Duration,
    /// Time without a leader before an election (etcd's --election-timeout).
    pub election_timeout: Duration,
    /// Start with the election clock nearly run out, so a restarted member of a running cluster
    /// that hears no leader elects sooner (etcd's --initial-election-tick-advance).
    pub initial_election_tick_advance: bool,
    /// Run raft's pre-vote phase before elections (a rejoining member does not depose the leader).
    pub pre_vote: bool,
    /// Largest client request accepted, in bytes.
    pub max_request_bytes: usize,
    /// Most operations in one txn.
    pub max_txn_ops: usize,
    /// Most concurrent gRPC streams per client connection.
    pub max_concurrent_streams: u32,
    /// gRPC keep-alive policy.
    pub grpc_keepalive: GrpcKeepalive,
    /// Space quota of the backend, in bytes (0 = default).
    pub quota_backend_bytes: u64,
    /// Raft log compaction every this many applied entries.
    pub snapshot_count: u64,
    /// Entries kept in the raft log behind a compaction, so that a member a little behind
    /// catches up from the log rather than a snapshot (etcd's SnapshotCatchUpEntries).
    pub snapshot_catch_up_entries: u64,
    /// Snapshot images kept in the snap dir (0: no limit).
    pub max_snapshots: u32,
    /// Raft log files kept beside the live ones (0: no limit).
    pub max_wals: u32,
    /// How often an idle watcher that asked for progress notifications gets one.
    pub watch_progress_notify_interval: Duration,
    /// Automatic compaction.
    pub auto_compaction: AutoCompaction,
    /// TLS on https client URLs.
    pub client_tls: TlsConfig,
    /// TLS between members (https peer URLs): the certificate serves the peer URLs and is this
    /// member's client certificate towards its peers, whose certificates are checked against
    /// the trusted CA.
    pub peer_tls: TlsConfig,
    /// Cipher suites, versions and self-signed certificate validity for both.
    pub tls: TlsCommon,
    /// etcd's --auth-token: `simple`, or `jwt,pub-key=...,priv-key=...,sign-method=...,ttl=...`.
    pub auth_token: String,
    /// How long a simple token lives without use (etcd's --auth-token-ttl).
    pub auth_token_ttl: Duration,
    /// The bcrypt cost of password hashes (etcd's --bcrypt-cost).
    pub bcrypt_cost: u32,
    /// Before serving, compare the store's hash with every peer's and refuse to start on a
    /// mismatch (etcd's --experimental-initial-corrupt-check).
    pub initial_corrupt_check: bool,
    /// While serving, the leader compares hashes with the followers this often and raises a
    /// CORRUPT alarm on a mismatch (zero: never; etcd's --experimental-corrupt-check-time).
    pub corrupt_check_time: Duration,
    /// At start-up, defragment when that would free at least this many bytes (0: never; etcd's
    /// --experimental-bootstrap-defrag-threshold-megabytes).
    pub bootstrap_defrag_threshold_bytes: u64,
    /// How long start-up waits for the cluster to have a leader before serving clients anyway
    /// (etcd's --experimental-wait-cluster-ready-timeout).
    pub wait_cluster_ready_timeout: Duration,
    /// Serve the HTTP/JSON gateway (/v3/...) on the client URLs.
    pub enable_grpc_gateway: bool,
    /// Serve a CPU profile at /debug/pprof/profile on the client URLs.
    pub enable_pprof: bool,
    /// Origins allowed to make cross-origin requests to the HTTP gateway (`*`: any).
    pub cors: Vec<String>,
    /// Host headers accepted on plain-HTTP client URLs (`*`: any), against DNS rebinding.
    pub host_whitelist: Vec<String>,
    /// Histograms of every gRPC method's latency (etcd's --metrics=extensive).
    pub metrics_extensive: bool,
    /// Skip fsync of the raft log and store (etcd's --unsafe-no-fsync: loses writes on power loss).
    pub unsafe_no_fsync: bool,
    /// Lease checkpoints by the leader (none: off, etcd's default).
    pub lease_checkpoint: Option<LeaseCheckpointing>,
    /// Most learners the cluster may have at once.
    pub max_learners: usize,
    /// Applying a request that takes longer than this is logged as a warning.
    pub warning_apply_duration: Duration,
    /// A unary client request that takes longer than this is logged as a warning (zero: never).
    pub warning_unary_request_duration: Duration,
    /// Spans of gRPC requests exported to an OpenTelemetry collector (etcd 3.5's
    /// --experimental-enable-distributed-tracing and its settings); none: no tracing.
    pub distributed_tracing: Option<TracingExport>,
}

/// etcd's default bcrypt cost for password hashes.
pub const DEFAULT_BCRYPT_COST: u32 = 10;

impl Default for ServerConfig {
    /// etcd's defaults.
    fn default() -> Self {
        ServerConfig {
            name: "default".into(),
            data_dir: PathBuf::from("default.keel"),
            wal_dir: None,
            listen_client_urls: vec!["http://localhost:2379".into()],
            listen_client_http_urls: Vec::new(),
            advertise_client_urls: vec!["http://localhost:2379".into()],
            listen_peer_urls: vec!["http://localhost:2380".into()],
            initial_advertise_peer_urls: vec!["http://localhost:2380".into()],
            listen_metrics_urls: Vec::new(),
            socket: Default::default(),
            initial_cluster: vec![("default".into(), vec!["http://localhost:2380".into()])],
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "etcd-cluster".into(),
            discovery: None,
            force_new_cluster: false,
            strict_reconfig_check: true,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            initial_election_tick_advance: true,
            pre_vote: true,
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
            max_concurrent_streams: u32::MAX,
            grpc_keepalive: GrpcKeepalive::default(),
            quota_backend_bytes: 2 * 1024 * 1024 * 1024,
            snapshot_count: 100_000,
            snapshot_catch_up_entries: 5000,
            max_snapshots: 5,
            max_wals: 5,
            watch_progress_notify_interval: Duration::from_secs(600),
            auto_compaction: AutoCompaction::Off,
            client_tls: TlsConfig::default(),
            peer_tls: TlsConfig::default(),
            tls: TlsCommon::default(),
            auth_token: "simple".into(),
            auth_token_ttl: Duration::from_secs(300),
            bcrypt_cost: DEFAULT_BCRYPT_COST,
            initial_corrupt_check: false,
            corrupt_check_time: Duration::ZERO,
            bootstrap_defrag_threshold_bytes: 0,
            wait_cluster_ready_timeout: Duration::from_secs(5),
            enable_grpc_gateway: true,
            enable_pprof: false,
            cors: vec!["*".into()],
            host_whitelist: vec!["*".into()],
            metrics_extensive: false,
            unsafe_no_fsync: false,
            lease_checkpoint: None,
            max_learners: 1,
            warning_apply_duration: Duration::from_millis(100),
            warning_unary_request_duration: Duration::from_millis(300),
            distributed_tracing: None,
        }
    }
}

/// Socket options of listeners.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketOptions {
    /// SO_REUSEPORT: several processes may bind the same port (etcd's --socket-reuse-port).
    pub reuse_port: bool,
    /// SO_REUSEADDR: bind an address still in TIME_WAIT (etcd's --socket-reuse-address; Go and
    /// tokio set it on every Unix listener anyway).
    pub reuse_address: bool,
}

/// etcd's --experimental-distributed-tracing-* settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracingExport {
    /// The collector's `host:port` (OTLP over gRPC).
    pub address: String,
    /// The resource's `service.name`.
    pub service_name: String,
    /// The resource's `service.instance.id` (left out when empty).
    pub instance_id: String,
    /// Traces started here that are sampled, per million.
    pub sampling_per_million: u32,
}

/// The most `sampling_per_million` may be.
pub const MAX_SAMPLING_PER_MILLION: u32 = 1_000_000;

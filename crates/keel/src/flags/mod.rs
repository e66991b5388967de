//! etcd's server flags (etcd 3.4 and 3.5), each with its ETCD_* environment variable, etcd's
//! default and etcd's meaning, and etcd's YAML config file (`--config-file`, which replaces flags
//! and variables as in etcd). `convert.rs` validates them as etcd does and turns them into a
//! `ServerConfig`; `file.rs` reads the config file. A flag is never accepted and then ignored
//! without a word: what Keel does differently is logged and written in its help.

mod convert;
mod file;

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

pub use convert::Notes;
pub use file::args_from_config_file;

/// The flags of a member (`keel` with no subcommand, as `etcd`).
#[derive(Args, Clone, Debug)]
pub struct EtcdFlags {
    /// Path to the server configuration file (etcd's YAML keys). Note that if a configuration
    /// file is provided, other command line flags and environment variables will be ignored.
    #[arg(long, env = "ETCD_CONFIG_FILE", help_heading = "Member")]
    pub config_file: Option<PathBuf>,

    // ---- member ----
    /// Human-readable name for this member.
    #[arg(
        long,
        env = "ETCD_NAME",
        default_value = "default",
        help_heading = "Member"
    )]
    pub name: String,
    /// Path to the data directory [default: ${name}.keel].
    #[arg(long, env = "ETCD_DATA_DIR", help_heading = "Member")]
    pub data_dir: Option<PathBuf>,
    /// Path to the dedicated wal directory (Keel keeps its raft log there).
    #[arg(long, env = "ETCD_WAL_DIR", help_heading = "Member")]
    pub wal_dir: Option<PathBuf>,
    /// Number of committed transactions to trigger a snapshot to disk (Keel: a raft log
    /// compaction; members further behind get a snapshot).
    #[arg(
        long,
        env = "ETCD_SNAPSHOT_COUNT",
        default_value_t = 100_000,
        help_heading = "Member"
    )]
    pub snapshot_count: u64,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(
        long,
        env = "ETCD_HEARTBEAT_INTERVAL",
        default_value_t = 100,
        help_heading = "Member"
    )]
    pub heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(
        long,
        env = "ETCD_ELECTION_TIMEOUT",
        default_value_t = 1000,
        help_heading = "Member"
    )]
    pub election_timeout: u64,
    /// Whether to fast-forward initial election ticks on boot for faster election.
    #[arg(long, env = "ETCD_INITIAL_ELECTION_TICK_ADVANCE", default_value = "true", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", help_heading = "Member")]
    pub initial_election_tick_advance: bool,
    /// List of URLs to listen on for peer traffic (http, https, unix, unixs).
    #[arg(
        long,
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://localhost:2380",
        value_delimiter = ',',
        help_heading = "Member"
    )]
    pub listen_peer_urls: Vec<String>,
    /// List of URLs to listen on for client traffic (http, https, unix, unixs).
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://localhost:2379",
        value_delimiter = ',',
        help_heading = "Member"
    )]
    pub listen_client_urls: Vec<String>,
    /// List of additional URLs to listen on that serve only HTTP (the JSON gateway, /metrics,
    /// /health), not gRPC; then --listen-client-urls serve only gRPC.
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_HTTP_URLS",
        value_delimiter = ',',
        help_heading = "Member"
    )]
    pub listen_client_http_urls: Vec<String>,
    /// List of URLs to listen on for the metrics and health endpoints.
    #[arg(
        long,
        env = "ETCD_LISTEN_METRICS_URLS",
        value_delimiter = ',',
        help_heading = "Member"
    )]
    pub listen_metrics_urls: Vec<String>,
    /// Maximum number of snapshot files to retain (0 is unlimited; Keel keeps at most one
    /// snapshot image, so any limit holds).
    #[arg(
        long,
        env = "ETCD_MAX_SNAPSHOTS",
        default_value_t = 5,
        help_heading = "Member"
    )]
    pub max_snapshots: u32,
    /// Maximum number of wal files to retain (0 is unlimited; Keel's raft log deletes obsolete
    /// log files at once, so any limit holds).
    #[arg(
        long,
        env = "ETCD_MAX_WALS",
        default_value_t = 5,
        help_heading = "Member"
    )]
    pub max_wals: u32,
    /// Raise alarms when backend size exceeds the given quota (0 defaults to 2 GiB).
    #[arg(
        long,
        env = "ETCD_QUOTA_BACKEND_BYTES",
        default_value_t = 0,
        help_heading = "Member"
    )]
    pub quota_backend_bytes: i64,
    /// Maximum time before committing the backend transaction (Keel commits every applied
    /// batch at once, sooner than any interval).
    #[arg(long, env = "ETCD_BACKEND_BATCH_INTERVAL", value_parser = go_duration, help_heading = "Member")]
    pub backend_batch_interval: Option<Duration>,
    /// Maximum operations before committing the backend transaction (Keel commits every
    /// applied batch at once).
    #[arg(
        long,
        env = "ETCD_BACKEND_BATCH_LIMIT",
        default_value_t = 0,
        help_heading = "Member"
    )]
    pub backend_batch_limit: i64,
    /// Maximum number of operations permitted in a transaction.
    #[arg(
        long,
        env = "ETCD_MAX_TXN_OPS",
        default_value_t = 128,
        help_heading = "Member"
    )]
    pub max_txn_ops: usize,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1536 * 1024, help_heading = "Member")]
    pub max_request_bytes: usize,
    /// Maximum concurrent streams that each client can open at a time.
    #[arg(long, env = "ETCD_MAX_CONCURRENT_STREAMS", default_value_t = u32::MAX, help_heading = "Member")]
    pub max_concurrent_streams: u32,
    /// Minimum interval duration that a client should wait before pinging server.
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_MIN_TIME", default_value = "5s", value_parser = go_duration, help_heading = "Member")]
    pub grpc_keepalive_min_time: Duration,
    /// Frequency duration of server-to-client ping to check if a connection is alive (0 to
    /// disable).
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_INTERVAL", default_value = "2h", value_parser = go_duration, help_heading = "Member")]
    pub grpc_keepalive_interval: Duration,
    /// Additional duration of wait before closing a non-responsive connection (0 to disable).
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = go_duration, help_heading = "Member")]
    pub grpc_keepalive_timeout: Duration,
    /// Enable to set socket option SO_REUSEPORT on listeners allowing rebinding of a port
    /// already in use.
    #[arg(long, env = "ETCD_SOCKET_REUSE_PORT", default_value = "false", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", help_heading = "Member")]
    pub socket_reuse_port: bool,
    /// Enable to set socket option SO_REUSEADDR on listeners allowing binding to an address in
    /// TIME_WAIT state.
    #[arg(long, env = "ETCD_SOCKET_REUSE_ADDRESS", default_value = "false", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", help_heading = "Member")]
    pub socket_reuse_address: bool,

    // ---- clustering ----
    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380",
        value_delimiter = ',',
        help_heading = "Clustering"
    )]
    pub initial_advertise_peer_urls: Vec<String>,
    /// Initial cluster configuration for bootstrapping (name=peerURL,...)
    /// [default: ${name}=${initial-advertise-peer-urls}].
    #[arg(long, env = "ETCD_INITIAL_CLUSTER", help_heading = "Clustering")]
    pub initial_cluster: Option<String>,
    /// Initial cluster state ('new' or 'existing').
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new", value_parser = ["new", "existing"], help_heading = "Clustering")]
    pub initial_cluster_state: String,
    /// Initial cluster token for the etcd cluster during bootstrap.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster",
        help_heading = "Clustering"
    )]
    pub initial_cluster_token: String,
    /// List of this member's client URLs to advertise to the public (required when
    /// --listen-client-urls is given).
    #[arg(
        long,
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        value_delimiter = ',',
        help_heading = "Clustering"
    )]
    pub advertise_client_urls: Vec<String>,
    /// Discovery URL used to bootstrap the cluster.
    #[arg(long, env = "ETCD_DISCOVERY", help_heading = "Clustering")]
    pub discovery: Option<String>,
    /// Expected behavior ('exit' or 'proxy') when discovery services fails ('proxy' would
    /// start the v2 proxy, which Keel does not have: it exits either way).
    #[arg(long, env = "ETCD_DISCOVERY_FALLBACK", default_value = "proxy", value_parser = ["exit", "proxy"], help_heading = "Clustering")]
    pub discovery_fallback: String,
    /// HTTP proxy to use for traffic to discovery service.
    #[arg(long, env = "ETCD_DISCOVERY_PROXY", help_heading = "Clustering")]
    pub discovery_proxy: Option<String>,
    /// DNS srv domain used to bootstrap the cluster.
    #[arg(long, env = "ETCD_DISCOVERY_SRV", help_heading = "Clustering")]
    pub discovery_srv: Option<String>,
    /// Suffix to the dns srv name queried when bootstrapping.
    #[arg(long, env = "ETCD_DISCOVERY_SRV_NAME", help_heading = "Clustering")]
    pub discovery_srv_name: Option<String>,
    /// Reject reconfiguration requests that would cause quorum loss.
    #[arg(long, env = "ETCD_STRICT_RECONFIG_CHECK", default_value = "true", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", help_heading = "Clustering")]
    pub strict_reconfig_check: bool,
    /// Enable to run an additional Raft election phase (Keel's default: on, as etcd 3.5's).
    #[arg(long, env = "ETCD_PRE_VOTE", default_value = "true", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", help_heading = "Clustering")]
    pub pre_vote: bool,
    /// Accept etcd V2 client requests (refused: the v2 API is not served; etcd 3.6 removed it).
    #[arg(long, env = "ETCD_ENABLE_V2", default_value = "false", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", help_heading = "Clustering")]
    pub enable_v2: bool,
    /// v2store deprecation stage ('not-yet', 'write-only', 'write-only-drop-data', 'gone';
    /// Keel has no v2 store, as at 'gone').
    #[arg(long, env = "ETCD_V2_DEPRECATION", value_parser = ["not-yet", "write-only", "write-only-drop-data", "gone"], help_heading = "Clustering")]
    pub v2_deprecation: Option<String>,
    /// Auto compaction retention for mvcc key value store (periodic: a Go duration or a
    /// number of hours; revision: a number of revisions). 0 means disable auto compaction.
    #[arg(
        long,
        env = "ETCD_AUTO_COMPACTION_RETENTION",
        default_value = "0",
        help_heading = "Clustering"
    )]
    pub auto_compaction_retention: String,
    /// Interpret 'auto-compaction-retention' one of: 'periodic', 'revision'.
    #[arg(
        long,
        env = "ETCD_AUTO_COMPACTION_MODE",
        default_value = "periodic",
        help_heading = "Clustering"
    )]
    pub auto_compaction_mode: String,

    // ---- proxy (v2) ----
    /// Proxy mode setting ('off', 'readonly' or 'on'; the v2 proxy is not offered: use
    /// `keel grpc-proxy start` or `keel gateway start`).
    #[arg(long, env = "ETCD_PROXY", default_value = "off", value_parser = ["off", "readonly", "on"], help_heading = "Proxy (v2)")]
    pub proxy: String,
    /// Time (in milliseconds) an endpoint will be held in a failed state (v2 proxy).
    #[arg(
        long,
        env = "ETCD_PROXY_FAILURE_WAIT",
        default_value_t = 5000,
        help_heading = "Proxy (v2)"
    )]
    pub proxy_failure_wait: u64,
    /// Time (in milliseconds) of the endpoints refresh interval (v2 proxy).
    #[arg(
        long,
        env = "ETCD_PROXY_REFRESH_INTERVAL",
        default_value_t = 30000,
        help_heading = "Proxy (v2)"
    )]
    pub proxy_refresh_interval: u64,
    /// Time (in milliseconds) for a dial to timeout (v2 proxy).
    #[arg(
        long,
        env = "ETCD_PROXY_DIAL_TIMEOUT",
        default_value_t = 1000,
        help_heading = "Proxy (v2)"
    )]
    pub proxy_dial_timeout: u64,
    /// Time (in milliseconds) for a write to timeout (v2 proxy).
    #[arg(
        long,
        env = "ETCD_PROXY_WRITE_TIMEOUT",
        default_value_t = 5000,
        help_heading = "Proxy (v2)"
    )]
    pub proxy_write_timeout: u64,
    /// Time (in milliseconds) for a read to timeout (v2 proxy).
    #[arg(
        long,
        env = "ETCD_PROXY_READ_TIMEOUT",
        default_value_t = 0,
        help_heading = "Proxy (v2)"
    )]
    pub proxy_read_timeout: u64,

    // ---- security ----
    /// Path to the client server TLS cert file.
    #[arg(long, env = "ETCD_CERT_FILE", help_heading = "Security")]
    pub cert_file: Option<PathBuf>,
    /// Path to the client server TLS key file.
    #[arg(long, env = "ETCD_KEY_FILE", help_heading = "Security")]
    pub key_file: Option<PathBuf>,
    /// Enable client cert authentication.
    #[arg(long, env = "ETCD_CLIENT_CERT_AUTH", default_value = "false", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", help_heading = "Security")]
    pub client_cert_auth: bool,
    /// Path to the client certificate revocation list file.
    #[arg(long, env = "ETCD_CLIENT_CRL_FILE", help_heading = "Security")]
    pub client_crl_file: Option<PathBuf>,
    /// Allowed TLS hostname for client cert authentication.
    #[arg(
        long,
        env = "ETCD_CLIENT_CERT_ALLOWED_HOSTNAME",
        value_delimiter = ',',
        help_heading = "Security"
    )]
    pub client_cert_allowed_hostname: Vec<String>,
    /// Path to the client server TLS trusted CA cert file.
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE", help_heading = "Security")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Client TLS using generated certificates.
    #[arg(long, env = "ETCD_AUTO_TLS", default_value = "false", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", help_heading = "Security")]
    pub auto_tls: bool,
    /// Path to the peer server TLS cert file.
    #[arg(long, env = "ETCD_PEER_CERT_FILE", help_heading = "Security")]
    pub peer_cert_file: Option<PathBuf>,
    /// Path to the peer server TLS key file.
    #[arg(long, env = "ETCD_PEER_KEY_FILE", help_heading = "Security")]
    pub peer_key_file: Option<PathBuf>,
    /// Enable peer client cert authentication.
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_AUTH", default_value = "false", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", help_heading = "Security")]
    pub peer_client_cert_auth: bool,
    /// Path to the peer server TLS trusted CA file.
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE", help_heading = "Security")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Peer TLS using self-generated certificates if --peer-key-file and --peer-cert-file are
    /// not provided.
    #[arg(long, env = "ETCD_PEER_AUTO_TLS", default_value = "false", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", help_heading = "Security")]
    pub peer_auto_tls: bool,
    /// The validity period of the client and peer certificates that are automatically
    /// generated, in years.
    #[arg(
        long,
        env = "ETCD_SELF_SIGNED_CERT_VALIDITY",
        default_value_t = 1,
        help_heading = "Security"
    )]
    pub self_signed_cert_validity: u32,
    /// Path to the peer certificate revocation list file.
    #[arg(long, env = "ETCD_PEER_CRL_FILE", help_heading = "Security")]
    pub peer_crl_file: Option<PathBuf>,
    /// Allowed CommonName for inter peer authentication.
    #[arg(
        long,
        env = "ETCD_PEER_CERT_ALLOWED_CN",
        value_delimiter = ',',
        help_heading = "Security"
    )]
    pub peer_cert_allowed_cn: Vec<String>,
    /// Allowed TLS hostname for inter peer authentication.
    #[arg(
        long,
        env = "ETCD_PEER_CERT_ALLOWED_HOSTNAME",
        value_delimiter = ',',
        help_heading = "Security"
    )]
    pub peer_cert_allowed_hostname: Vec<String>,
    /// Comma-separated list of supported TLS cipher suites between client/server and peers
    /// (Go's names; empty will be auto-populated).
    #[arg(
        long,
        env = "ETCD_CIPHER_SUITES",
        value_delimiter = ',',
        help_heading = "Security"
    )]
    pub cipher_suites: Vec<String>,
    /// Minimum TLS version supported by etcd ('TLS1.2' or 'TLS1.3').
    #[arg(
        long,
        env = "ETCD_TLS_MIN_VERSION",
        default_value = "TLS1.2",
        help_heading = "Security"
    )]
    pub tls_min_version: String,
    /// Maximum TLS version supported by etcd (empty: the newest).
    #[arg(
        long,
        env = "ETCD_TLS_MAX_VERSION",
        default_value = "",
        help_heading = "Security"
    )]
    pub tls_max_version: String,
    /// Skip verification of SAN field in client certificate for peer connections (Keel never
    /// checks a peer's client certificate against the address it connects from).
    #[arg(long, env = "ETCD_EXPERIMENTAL_PEER_SKIP_CLIENT_SAN_VERIFICATION", default_value = "false", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", help_heading = "Security")]
    pub experimental_peer_skip_client_san_verification: bool,
    /// Comma-separated white list of origins for CORS, or cross-origin resource sharing
    /// (empty or * means allow all).
    #[arg(
        long,
        env = "ETCD_CORS",
        default_value = "*",
        value_delimiter = ',',
        help_heading = "Security"
    )]
    pub cors: Vec<String>,
    /// Comma-separated acceptable hostnames from HTTP client requests, if server is not secure
    /// (empty or * means allow all).
    #[arg(
        long,
        env = "ETCD_HOST_WHITELIST",
        default_value = "*",
        value_delimiter = ',',
        help_heading = "Security"
    )]
    pub host_whitelist: Vec<String>,

    // ---- auth ----
    /// Specify auth token specific options: 'simple', or
    /// 'jwt,pub-key=FILE,priv-key=FILE,sign-method=RS256,ttl=5m'.
    #[arg(
        long,
        env = "ETCD_AUTH_TOKEN",
        default_value = "simple",
        help_heading = "Auth"
    )]
    pub auth_token: String,
    /// The lifetime in seconds of the auth token.
    #[arg(
        long,
        env = "ETCD_AUTH_TOKEN_TTL",
        default_value_t = 300,
        help_heading = "Auth"
    )]
    pub auth_token_ttl: u64,
    /// Specify bcrypt algorithm cost factor for auth password hashing (4..=31).
    #[arg(long, env = "ETCD_BCRYPT_COST", default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=31), help_heading = "Auth")]
    pub bcrypt_cost: u32,

    // ---- profiling and monitoring ----
    /// Enable runtime profiling data via HTTP server: a CPU profile at client URL +
    /// /debug/pprof/profile (pprof format).
    #[arg(long, env = "ETCD_ENABLE_PPROF", default_value = "false", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", help_heading = "Profiling and monitoring")]
    pub enable_pprof: bool,
    /// Set level of detail for exported metrics, specify 'extensive' to include server side
    /// grpc histogram metrics.
    #[arg(long, env = "ETCD_METRICS", default_value = "basic", value_parser = ["basic", "extensive"], help_heading = "Profiling and monitoring")]
    pub metrics: String,

    // ---- logging ----
    /// Specify 'zap' for structured logging (JSON lines) or 'capnslog' (text lines).
    #[arg(long, env = "ETCD_LOGGER", default_value = "zap", value_parser = ["zap", "capnslog"], help_heading = "Logging")]
    pub logger: String,
    /// Specify 'stdout' or 'stderr' to skip journald logging even when running under systemd,
    /// 'systemd/journal', or list of comma separated output targets (files).
    #[arg(
        long,
        env = "ETCD_LOG_OUTPUTS",
        default_value = "default",
        value_delimiter = ',',
        help_heading = "Logging"
    )]
    pub log_outputs: Vec<String>,
    /// [Deprecated] use --log-outputs.
    #[arg(
        long,
        env = "ETCD_LOG_OUTPUT",
        value_delimiter = ',',
        help_heading = "Logging"
    )]
    pub log_output: Vec<String>,
    /// Configures log level. Only supports debug, info, warn, error, panic, or fatal.
    #[arg(long, env = "ETCD_LOG_LEVEL", default_value = "info", value_parser = ["debug", "info", "warn", "error", "panic", "fatal"], help_heading = "Logging")]
    pub log_level: String,
    /// [Deprecated] Enable debug-level logging for etcd. Use '--log-level=debug' instead.
    #[arg(long, env = "ETCD_DEBUG", default_value = "false", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", help_heading = "Logging")]
    pub debug: bool,
    /// [Deprecated] Specify a particular log level for each etcd package (eg:
    /// 'etcdmain=CRITICAL,etcdserver=DEBUG'); only with --logger=capnslog.
    #[arg(long, env = "ETCD_LOG_PACKAGE_LEVELS", help_heading = "Logging")]
    pub log_package_levels: Option<String>,
    /// Configures log format. Only supports json, console.
    #[arg(long, env = "ETCD_LOG_FORMAT", value_parser = ["json", "console"], help_heading = "Logging")]
    pub log_format: Option<String>,
    /// Enable log rotation of a single log-outputs file target.
    #[arg(long, env = "ETCD_ENABLE_LOG_ROTATION", default_value = "false", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", help_heading = "Logging")]
    pub enable_log_rotation: bool,
    /// Configures log rotation if enabled with a JSON logger config. Default:
    /// MaxSize=100(MB), MaxAge=0(days,no limit), MaxBackups=0(no limit),
    /// LocalTime=false(UTC), Compress=false(gzip).
    #[arg(
        long,
        env = "ETCD_LOG_ROTATION_CONFIG_JSON",
        default_value = r#"{"maxsize": 100, "maxage": 0, "maxbackups": 0, "localtime": false, "compress": false}"#,
        help_heading = "Logging"
    )]
    pub log_rotation_config_json: String,

    // ---- gateway ----
    /// Enable GRPC gateway (the HTTP/JSON API under /v3).
    #[arg(long, env = "ETCD_ENABLE_GRPC_GATEWAY", default_value = "true", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", help_heading = "Gateway")]
    pub enable_grpc_gateway: bool,

    // ---- experimental ----
    /// Enable to check data corruption before serving any client/peer traffic.
    #[arg(long, env = "ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK", default_value = "false", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", help_heading = "Experimental")]
    pub experimental_initial_corrupt_check: bool,
    /// Duration of time between cluster corruption check passes (0: none).
    #[arg(long, env = "ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME", default_value = "0s", value_parser = go_duration, help_heading = "Experimental")]
    pub experimental_corrupt_check_time: Duration,
    /// Enable to check data corruption of compacted revisions with the followers (leader).
    #[arg(long, env = "ETCD_EXPERIMENTAL_COMPACT_HASH_CHECK_ENABLED", default_value = "false", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", help_heading = "Experimental")]
    pub experimental_compact_hash_check_enabled: bool,
    /// Duration of time between leader checks followers compaction hashes.
    #[arg(long, env = "ETCD_EXPERIMENTAL_COMPACT_HASH_CHECK_TIME", default_value = "1m", value_parser = go_duration, help_heading = "Experimental")]
    pub experimental_compact_hash_check_time: Duration,
    /// v3 prefix for serving emulated v2 state (refused: Keel does not serve the v2 API).
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_ENABLE_V2V3",
        help_heading = "Experimental"
    )]
    pub experimental_enable_v2v3: Option<String>,
    /// The freelist type bbolt uses ('map' or 'array'; Keel's store is RocksDB, which keeps
    /// no freelist).
    #[arg(long, env = "ETCD_EXPERIMENTAL_BACKEND_BBOLT_FREELIST_TYPE", default_value = "map", value_parser = ["map", "array"], help_heading = "Experimental")]
    pub experimental_backend_bbolt_freelist_type: String,
    /// Enable leader to send regular checkpoints to other members to prevent reset of
    /// remaining TTL on leader change.
    #[arg(long, env = "ETCD_EXPERIMENTAL_ENABLE_LEASE_CHECKPOINT", default_value = "false", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", help_heading = "Experimental")]
    pub experimental_enable_lease_checkpoint: bool,
    /// Enable persisting remainingTTL to prevent indefinite auto-renewal of long lived leases.
    #[arg(long, env = "ETCD_EXPERIMENTAL_ENABLE_LEASE_CHECKPOINT_PERSIST", default_value = "false", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", help_heading = "Experimental")]
    pub experimental_enable_lease_checkpoint_persist: bool,
    /// Sets the maximum revisions deleted in each compaction batch (0: Keel's own batching).
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_COMPACTION_BATCH_LIMIT",
        default_value_t = 0,
        help_heading = "Experimental"
    )]
    pub experimental_compaction_batch_limit: i64,
    /// Sets the sleep interval between each compaction batch.
    #[arg(long, env = "ETCD_EXPERIMENTAL_COMPACTION_SLEEP_INTERVAL", value_parser = go_duration, help_heading = "Experimental")]
    pub experimental_compaction_sleep_interval: Option<Duration>,
    /// Duration of periodic watch progress notifications.
    #[arg(long, env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", default_value = "10m", value_parser = go_duration, help_heading = "Experimental")]
    pub experimental_watch_progress_notify_interval: Duration,
    /// Time duration after which a warning is generated if request takes more time.
    #[arg(long, env = "ETCD_EXPERIMENTAL_WARNING_APPLY_DURATION", default_value = "100ms", value_parser = go_duration, help_heading = "Experimental")]
    pub experimental_warning_apply_duration: Duration,
    /// Time duration after which a warning is generated if a unary request takes more time.
    #[arg(long, env = "ETCD_EXPERIMENTAL_WARNING_UNARY_REQUEST_DURATION", default_value = "300ms", value_parser = go_duration, help_heading = "Experimental")]
    pub experimental_warning_unary_request_duration: Duration,
    /// Enables the write transaction to use a shared buffer in its readonly check operations
    /// (bbolt's; Keel's write path has no separate read buffer).
    #[arg(long, env = "ETCD_EXPERIMENTAL_TXN_MODE_WRITE_WITH_SHARED_BUFFER", default_value = "true", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", help_heading = "Experimental")]
    pub experimental_txn_mode_write_with_shared_buffer: bool,
    /// Enable the defrag during etcd server bootstrap on condition that it will free at least
    /// the provided threshold of disk space. Needs to be set to non-zero value to take effect.
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_BOOTSTRAP_DEFRAG_THRESHOLD_MEGABYTES",
        default_value_t = 0,
        help_heading = "Experimental"
    )]
    pub experimental_bootstrap_defrag_threshold_megabytes: u64,
    /// Sets the maximum number of learners that can be available in the cluster membership.
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_MAX_LEARNERS",
        default_value_t = 1,
        help_heading = "Experimental"
    )]
    pub experimental_max_learners: usize,
    /// Enable to enforce etcd pages (in particular bbolt) to stay in RAM (mlockall).
    #[arg(long, env = "ETCD_EXPERIMENTAL_MEMORY_MLOCK", default_value = "false", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", help_heading = "Experimental")]
    pub experimental_memory_mlock: bool,
    /// Number of entries for a slow follower to catch-up after compacting the raft storage
    /// entries.
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_SNAPSHOT_CATCHUP_ENTRIES",
        default_value_t = 5000,
        help_heading = "Experimental"
    )]
    pub experimental_snapshot_catchup_entries: u64,
    /// Duration of time between two downgrade status checks.
    #[arg(long, env = "ETCD_EXPERIMENTAL_DOWNGRADE_CHECK_TIME", default_value = "5s", value_parser = go_duration, help_heading = "Experimental")]
    pub experimental_downgrade_check_time: Duration,
    /// Enable experimental distributed tracing using OpenTelemetry Tracing.
    #[arg(long, env = "ETCD_EXPERIMENTAL_ENABLE_DISTRIBUTED_TRACING", default_value = "false", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", help_heading = "Experimental")]
    pub experimental_enable_distributed_tracing: bool,
    /// Address for distributed tracing used for OpenTelemetry Tracing.
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_DISTRIBUTED_TRACING_ADDRESS",
        default_value = "localhost:4317",
        help_heading = "Experimental"
    )]
    pub experimental_distributed_tracing_address: String,
    /// Configures service name for distributed tracing.
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_DISTRIBUTED_TRACING_SERVICE_NAME",
        default_value = "etcd",
        help_heading = "Experimental"
    )]
    pub experimental_distributed_tracing_service_name: String,
    /// Configures service instance ID for distributed tracing.
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_DISTRIBUTED_TRACING_INSTANCE_ID",
        default_value = "",
        help_heading = "Experimental"
    )]
    pub experimental_distributed_tracing_instance_id: String,
    /// Number of samples to collect per million spans for distributed tracing.
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_DISTRIBUTED_TRACING_SAMPLING_RATE",
        default_value_t = 0,
        help_heading = "Experimental"
    )]
    pub experimental_distributed_tracing_sampling_rate: u64,
    /// Stop the gRPC health service while a member defragments (Keel's defragmentation
    /// does not stop traffic).
    #[arg(long, env = "ETCD_EXPERIMENTAL_STOP_GRPC_SERVICE_ON_DEFRAG", default_value = "false", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", help_heading = "Experimental")]
    pub experimental_stop_grpc_service_on_defrag: bool,
    /// Maximum duration to wait for the cluster to be ready.
    #[arg(long, env = "ETCD_EXPERIMENTAL_WAIT_CLUSTER_READY_TIMEOUT", default_value = "5s", value_parser = go_duration, help_heading = "Experimental")]
    pub experimental_wait_cluster_ready_timeout: Duration,

    // ---- unsafe ----
    /// Disables fsync, unsafe, will cause data loss.
    #[arg(long, env = "ETCD_UNSAFE_NO_FSYNC", default_value = "false", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", help_heading = "Unsafe")]
    pub unsafe_no_fsync: bool,
    /// Force to create a new one member cluster.
    #[arg(long, env = "ETCD_FORCE_NEW_CLUSTER", default_value = "false", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true", help_heading = "Unsafe")]
    pub force_new_cluster: bool,
}

/// Flags of etcd 2 that etcd still accepts and ignores (with a warning), as Keel does.
pub const IGNORED: &[&str] = &[
    "cluster-active-size",
    "cluster-remove-delay",
    "cluster-sync-interval",
    "config",
    "force",
    "max-result-buffer",
    "max-retry-attempts",
    "peer-heartbeat-interval",
    "peer-election-timeout",
    "retry-interval",
    "snapshot",
    "v",
    "vv",
];

/// Go's flag package also accepts `-flag`; etcd users write both. Rewrites `-flag` to `--flag`,
/// and drops etcd 2's ignored flags (and their values), naming them in the returned warnings.
pub fn normalize_go_style(args: impl Iterator<Item = String>) -> (Vec<String>, Vec<String>) {
    let mut out = Vec::new();
    let mut ignored = Vec::new();
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        let a = if a.len() > 2 && a.starts_with('-') && !a.starts_with("--") {
            format!("-{a}")
        } else {
            a
        };
        let name = a
            .strip_prefix("--")
            .map(|f| f.split('=').next().unwrap_or(f));
        match name {
            Some(name) if IGNORED.contains(&name) => {
                ignored.push(name.to_string());
                // `--flag value`: the value goes too.
                if !a.contains('=') && args.peek().is_some_and(|v| !v.starts_with('-')) {
                    args.next();
                }
            }
            _ => out.push(a),
        }
    }
    (out, ignored)
}

/// Go's strconv.ParseBool.
pub fn go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        other => Err(format!("parse error: invalid boolean value {other:?}")),
    }
}

/// A Go duration (`10m`, `1m30s`, `250ms`, `0`); etcd's config file also writes them as
/// nanoseconds, which arrive here as `<n>ns`.
pub fn go_duration(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_single_dash_flags_are_accepted() {
        let (args, ignored) = normalize_go_style(
            ["-name".to_string(), "x".to_string(), "-h".to_string()].into_iter(),
        );
        assert_eq!(args, vec!["--name", "x", "-h"]);
        assert!(ignored.is_empty());
    }

    #[test]
    fn etcd2_flags_are_dropped_with_their_values() {
        let (args, ignored) = normalize_go_style(
            [
                "keel",
                "-peer-heartbeat-interval",
                "50",
                "--snapshot=true",
                "--name",
                "a",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        assert_eq!(args, vec!["keel", "--name", "a"]);
        assert_eq!(ignored, vec!["peer-heartbeat-interval", "snapshot"]);
    }

    #[test]
    fn booleans_and_durations_read_like_go() {
        assert_eq!(go_bool("T"), Ok(true));
        assert_eq!(go_bool("0"), Ok(false));
        assert!(go_bool("yes").is_err());
        assert_eq!(go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(go_duration("0"), Ok(Duration::ZERO));
        assert_eq!(go_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(go_duration("soon").is_err());
    }
}

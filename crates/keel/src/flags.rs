//! etcd's command-line flags (and their ETCD_* environment variables), as far as Keel implements
//! them, turned into a `ServerConfig`. Flags etcd has but Keel does not implement yet are refused by
//! name rather than silently ignored.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use keel_server::{AutoCompaction, ClusterState, ServerConfig, TlsFiles};

/// The etcd flags Keel accepts.
#[derive(Args, Clone, Debug)]
pub struct EtcdFlags {
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,
    /// Path to the data directory [default: ${name}.keel].
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// List of URLs to listen on for client traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://localhost:2379",
        value_delimiter = ','
    )]
    pub listen_client_urls: Vec<String>,
    /// List of this member's client URLs to advertise to the public.
    #[arg(
        long,
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        default_value = "http://localhost:2379",
        value_delimiter = ','
    )]
    pub advertise_client_urls: Vec<String>,
    /// List of URLs to listen on for peer traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://localhost:2380",
        value_delimiter = ','
    )]
    pub listen_peer_urls: Vec<String>,
    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380",
        value_delimiter = ','
    )]
    pub initial_advertise_peer_urls: Vec<String>,
    /// Initial cluster configuration for bootstrapping (name=peerURL,...) [default: ${name}=${initial-advertise-peer-urls}].
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Initial cluster state ('new' or 'existing').
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new", value_parser = ["new", "existing"])]
    pub initial_cluster_state: String,
    /// Initial cluster token for the cluster during bootstrap.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1536 * 1024)]
    pub max_request_bytes: usize,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Raise alarms when backend size exceeds the given quota (0 defaults to the low space quota).
    #[arg(long, env = "ETCD_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: u64,
    /// Number of committed transactions to trigger a raft log compaction.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,
    /// Duration of periodic watch progress notifications (Go syntax: 10m, 500ms).
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL",
        default_value = "10m",
        value_parser = parse_duration
    )]
    pub experimental_watch_progress_notify_interval: Duration,
    /// Interpret 'auto-compaction-retention' one of: periodic|revision.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_MODE", default_value = "periodic")]
    pub auto_compaction_mode: String,
    /// Auto compaction retention for mvcc key value store. 0 means disable auto compaction
    /// (periodic: a Go duration, or a number of hours; revision: a number of revisions).
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,
    /// Path to the client server TLS cert file.
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Path to the client server TLS key file.
    #[arg(long, env = "ETCD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Path to the client server TLS trusted CA cert file.
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Enable client cert authentication.
    #[arg(long, env = "ETCD_CLIENT_CERT_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub client_cert_auth: Option<bool>,
    /// Path to the peer server TLS cert file (also presented to peers as a client certificate).
    #[arg(long, env = "ETCD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Path to the peer server TLS key file.
    #[arg(long, env = "ETCD_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// Path to the peer server TLS trusted CA file (peers' certificates are checked against it).
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Enable peer client cert authentication.
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub peer_client_cert_auth: Option<bool>,
    /// Specify auth token type and options: 'simple', or
    /// 'jwt,pub-key=FILE,priv-key=FILE,sign-method=RS256,ttl=5m'.
    #[arg(long, env = "ETCD_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,
    /// The TTL of simple tokens, in seconds (renewed on each use).
    #[arg(long, env = "ETCD_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// The cost of bcrypt password hashes (4..=31).
    #[arg(long, env = "ETCD_BCRYPT_COST", default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,
    /// Log level: debug, info, warn, error, panic, or fatal.
    #[arg(long, env = "ETCD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// etcd flags that exist but are not implemented by this build; using one is an error.
const NOT_YET: &[&str] = &[
    "auto-tls",
    "peer-auto-tls",
    "listen-metrics-urls",
    "metrics",
    "heartbeat-interval",
    "election-timeout",
    "discovery",
    "discovery-srv",
    "discovery-proxy",
    "force-new-cluster",
    "enable-v2",
    "enable-pprof",
    "proxy",
    "strict-reconfig-check",
    "pre-vote",
    "experimental-enable-lease-checkpoint",
    "experimental-initial-corrupt-check",
    "wal-dir",
    "max-snapshots",
    "max-wals",
    "cors",
    "host-whitelist",
    "config-file",
];

/// Refuses etcd flags (or ETCD_* variables) that this build does not implement, naming them.
pub fn check_not_implemented(
    args: &[String],
    env: impl Iterator<Item = (String, String)>,
) -> Result<(), String> {
    let mut used: Vec<String> = args
        .iter()
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_string())
        .filter(|f| NOT_YET.contains(&f.as_str()))
        .map(|f| format!("--{f}"))
        .collect();
    for (k, _) in env {
        let Some(flag) = k.strip_prefix("ETCD_") else {
            continue;
        };
        let flag = flag.to_ascii_lowercase().replace('_', "-");
        if NOT_YET.contains(&flag.as_str()) {
            used.push(k);
        }
    }
    if used.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "etcd flags not supported by this build of keel yet: {}",
            used.join(", ")
        ))
    }
}

/// Go's flag package also accepts `-flag`; etcd users write both. Rewrites `-flag` to `--flag`.
pub fn normalize_go_style(args: impl Iterator<Item = String>) -> Vec<String> {
    args.map(|a| {
        if a.len() > 2 && a.starts_with('-') && !a.starts_with("--") {
            format!("-{a}")
        } else {
            a
        }
    })
    .collect()
}

impl EtcdFlags {
    /// The member configuration these flags describe.
    pub fn to_config(&self) -> Result<ServerConfig, String> {
        let initial_cluster = match &self.initial_cluster {
            Some(s) => parse_initial_cluster(s)?,
            None => vec![(self.name.clone(), self.initial_advertise_peer_urls.clone())],
        };
        let defaults = ServerConfig::default();
        Ok(ServerConfig {
            name: self.name.clone(),
            data_dir: self
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{}.keel", self.name))),
            listen_client_urls: self.listen_client_urls.clone(),
            advertise_client_urls: self.advertise_client_urls.clone(),
            listen_peer_urls: self.listen_peer_urls.clone(),
            initial_advertise_peer_urls: self.initial_advertise_peer_urls.clone(),
            initial_cluster,
            initial_cluster_state: if self.initial_cluster_state == "existing" {
                ClusterState::Existing
            } else {
                ClusterState::New
            },
            initial_cluster_token: self.initial_cluster_token.clone(),
            max_request_bytes: self.max_request_bytes,
            max_txn_ops: self.max_txn_ops,
            quota_backend_bytes: if self.quota_backend_bytes == 0 {
                defaults.quota_backend_bytes
            } else {
                self.quota_backend_bytes
            },
            snapshot_count: self.snapshot_count,
            watch_progress_notify_interval: self.experimental_watch_progress_notify_interval,
            auto_compaction: parse_auto_compaction(
                &self.auto_compaction_mode,
                &self.auto_compaction_retention,
            )?,
            client_tls: self.client_tls()?,
            peer_tls: self.peer_tls()?,
            auth_token: self.auth_token.clone(),
            auth_token_ttl: std::time::Duration::from_secs(self.auth_token_ttl),
            bcrypt_cost: self.bcrypt_cost,
        })
    }

    /// TLS on the client URLs, from etcd's flags.
    fn client_tls(&self) -> Result<Option<TlsFiles>, String> {
        tls_files(
            "--",
            (&self.cert_file, &self.key_file, &self.trusted_ca_file),
            self.client_cert_auth,
        )
    }

    /// TLS between members, from etcd's --peer-* flags.
    fn peer_tls(&self) -> Result<Option<TlsFiles>, String> {
        tls_files(
            "--peer-",
            (
                &self.peer_cert_file,
                &self.peer_key_file,
                &self.peer_trusted_ca_file,
            ),
            self.peer_client_cert_auth,
        )
    }
}

type TlsPaths<'a> = (
    &'a Option<PathBuf>,
    &'a Option<PathBuf>,
    &'a Option<PathBuf>,
);

/// The TLS files named by one set of flags (`prefix` is `--` or `--peer-`).
fn tls_files(
    prefix: &str,
    (cert, key, ca): TlsPaths<'_>,
    cert_auth: Option<bool>,
) -> Result<Option<TlsFiles>, String> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert_file: cert.clone(),
            key_file: key.clone(),
            trusted_ca_file: ca.clone(),
            client_cert_auth: cert_auth.unwrap_or(false),
        })),
        (None, None) if cert_auth != Some(true) => Ok(None),
        _ => Err(format!(
            "{prefix}cert-file and {prefix}key-file go together (and {prefix}client-cert-auth needs them)"
        )),
    }
}

/// etcd's auto-compaction flags: periodic retention is a Go duration or a plain number of hours;
/// revision retention a number of revisions; "0" turns compaction off.
fn parse_auto_compaction(mode: &str, retention: &str) -> Result<AutoCompaction, String> {
    let bad = || format!("invalid --auto-compaction-retention {retention:?} for mode {mode:?}");
    if retention.trim() == "0" {
        return Ok(AutoCompaction::Off);
    }
    match mode {
        "periodic" => {
            let period = match retention.parse::<u64>() {
                Ok(hours) => Duration::from_secs(hours * 3600),
                Err(_) => humantime::parse_duration(retention).map_err(|_| bad())?,
            };
            if period.is_zero() {
                return Ok(AutoCompaction::Off);
            }
            Ok(AutoCompaction::Periodic(period))
        }
        "revision" => match retention.parse::<i64>() {
            Ok(n) if n > 0 => Ok(AutoCompaction::Revision(n)),
            _ => Err(bad()),
        },
        other => Err(format!(
            "invalid --auto-compaction-mode {other:?} (periodic or revision)"
        )),
    }
}

/// Parses a Go-style duration; zero is refused (it would notify continuously).
fn parse_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be greater than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{s:?} is not a duration like 10m or 500ms: {e}")),
    }
}

/// Parses `name=url,name=url2,other=url3` into members with their peer URLs, in first-seen order.
fn parse_initial_cluster(s: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (name, url) = part
            .split_once('=')
            .ok_or_else(|| format!("--initial-cluster: {part:?} is not name=peerURL"))?;
        match members.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => members.push((name.to_string(), vec![url.to_string()])),
        }
    }
    if members.is_empty() {
        return Err("--initial-cluster is empty".into());
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_cluster_groups_urls_by_name() {
        let m = parse_initial_cluster("a=http://1:2380,b=http://2:2380,a=http://3:2380").unwrap();
        assert_eq!(
            m[0],
            (
                "a".to_string(),
                vec!["http://1:2380".to_string(), "http://3:2380".to_string()]
            )
        );
        assert_eq!(m[1].0, "b");
        assert!(parse_initial_cluster("nonsense").is_err());
    }

    #[test]
    fn unimplemented_etcd_flags_are_named() {
        let args = vec![
            "--name=x".to_string(),
            "--heartbeat-interval=100".to_string(),
        ];
        let err = check_not_implemented(&args, std::iter::empty()).unwrap_err();
        assert!(err.contains("--heartbeat-interval"), "{err}");
        let env = vec![("ETCD_AUTO_TLS".to_string(), "x".to_string())];
        assert!(check_not_implemented(&[], env.into_iter())
            .unwrap_err()
            .contains("ETCD_AUTO_TLS"));
        assert!(check_not_implemented(&args[..1], std::iter::empty()).is_ok());
    }

    #[test]
    fn durations_read_like_go() {
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn auto_compaction_flags_read_as_etcd_reads_them() {
        let parse = parse_auto_compaction;
        assert_eq!(parse("periodic", "0"), Ok(AutoCompaction::Off));
        assert_eq!(
            parse("periodic", "72"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(72 * 3600)))
        );
        assert_eq!(
            parse("periodic", "30m"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(1800)))
        );
        assert_eq!(
            parse("revision", "1000"),
            Ok(AutoCompaction::Revision(1000))
        );
        assert!(parse("revision", "1h").is_err());
        assert!(parse("sometimes", "1").is_err());
    }

    #[test]
    fn go_style_single_dash_flags_are_accepted() {
        let args = normalize_go_style(
            ["-name".to_string(), "x".to_string(), "-h".to_string()].into_iter(),
        );
        assert_eq!(args, vec!["--name", "x", "-h"]);
    }
}

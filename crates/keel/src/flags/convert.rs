//! etcd's flags, validated with etcd's rules and messages (embed.Config.Validate, types.NewURLs),
//! turned into a `ServerConfig`. What Keel does differently from etcd for a flag is returned as a
//! note to log once logging is set up, never dropped silently.

use std::path::PathBuf;
use std::time::Duration;

use keel_server::{
    AutoCompaction, ClusterState, Discovery, GrpcKeepalive, ServerConfig, TlsCommon, TlsConfig,
    TracingExport, MAX_SAMPLING_PER_MILLION,
};

use super::EtcdFlags;

/// etcd's upper bound of --election-timeout.
const MAX_ELECTION_MS: u64 = 50_000;

/// Notes about flags Keel honours in its own way, to be logged at start.
pub type Notes = Vec<String>;

impl EtcdFlags {
    /// The member configuration these flags describe, and notes for the log; etcd's error
    /// message when they are invalid.
    pub fn to_config(&self) -> Result<(ServerConfig, Notes), String> {
        let mut notes = Notes::new();
        self.refuse_what_keel_does_not_serve()?;
        self.note_backend_knobs(&mut notes);
        for (flag, urls) in [
            ("--listen-peer-urls", &self.listen_peer_urls),
            ("--listen-client-urls", &self.listen_client_urls),
            (
                "--initial-advertise-peer-urls",
                &self.initial_advertise_peer_urls,
            ),
        ] {
            check_urls(flag, urls, false)?;
        }
        for (flag, urls) in [
            ("--listen-metrics-urls", &self.listen_metrics_urls),
            ("--listen-client-http-urls", &self.listen_client_http_urls),
            ("--advertise-client-urls", &self.advertise_client_urls),
        ] {
            check_urls(flag, urls, true)?;
        }
        check_bind_urls(&self.listen_peer_urls)?;
        check_bind_urls(&self.listen_client_urls)?;
        check_bind_urls(&self.listen_metrics_urls)?;
        let (heartbeat, election) = self.raft_timing()?;
        let initial_cluster = match &self.initial_cluster {
            Some(s) => parse_initial_cluster(s)?,
            None => vec![(self.name.clone(), self.initial_advertise_peer_urls.clone())],
        };
        let defaults = ServerConfig::default();
        let cfg = ServerConfig {
            name: self.name.clone(),
            data_dir: self
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{}.keel", self.name))),
            wal_dir: self.wal_dir.clone().filter(|d| !d.as_os_str().is_empty()),
            listen_client_urls: self.listen_client_urls.clone(),
            listen_client_http_urls: self.listen_client_http_urls.clone(),
            advertise_client_urls: self.advertise_client_urls()?,
            listen_peer_urls: self.listen_peer_urls.clone(),
            initial_advertise_peer_urls: self.initial_advertise_peer_urls.clone(),
            listen_metrics_urls: self.listen_metrics_urls.clone(),
            socket: keel_server::startup::SocketOptions {
                reuse_port: self.socket_reuse_port,
                reuse_address: self.socket_reuse_address,
            },
            initial_cluster,
            initial_cluster_state: if self.initial_cluster_state == "existing" {
                ClusterState::Existing
            } else {
                ClusterState::New
            },
            initial_cluster_token: self.initial_cluster_token.clone(),
            discovery: self.discovery_source(),
            distributed_tracing: self.distributed_tracing()?,
            force_new_cluster: self.force_new_cluster,
            strict_reconfig_check: self.strict_reconfig_check,
            heartbeat_interval: heartbeat,
            election_timeout: election,
            initial_election_tick_advance: self.initial_election_tick_advance,
            pre_vote: self.pre_vote,
            max_request_bytes: self.max_request_bytes,
            max_txn_ops: self.max_txn_ops,
            max_concurrent_streams: self.max_concurrent_streams,
            grpc_keepalive: GrpcKeepalive {
                min_time: self.grpc_keepalive_min_time,
                interval: self.grpc_keepalive_interval,
                timeout: self.grpc_keepalive_timeout,
            },
            quota_backend_bytes: match self.quota_backend_bytes {
                q if q <= 0 => defaults.quota_backend_bytes,
                q => q as u64,
            },
            snapshot_count: self.snapshot_count,
            snapshot_catch_up_entries: self.experimental_snapshot_catchup_entries,
            max_snapshots: self.max_snapshots,
            max_wals: self.max_wals,
            watch_progress_notify_interval: positive(
                "--experimental-watch-progress-notify-interval",
                self.experimental_watch_progress_notify_interval,
            )?,
            auto_compaction: parse_auto_compaction(
                &self.auto_compaction_mode,
                &self.auto_compaction_retention,
            )?,
            client_tls: TlsConfig {
                cert_file: self.cert_file.clone(),
                key_file: self.key_file.clone(),
                trusted_ca_file: self.trusted_ca_file.clone(),
                client_cert_auth: self.client_cert_auth,
                crl_file: self.client_crl_file.clone(),
                auto_tls: self.auto_tls,
                allowed_cn: Vec::new(),
                allowed_hostname: self.client_cert_allowed_hostname.clone(),
                skip_client_san_verify: false,
            },
            peer_tls: TlsConfig {
                cert_file: self.peer_cert_file.clone(),
                key_file: self.peer_key_file.clone(),
                trusted_ca_file: self.peer_trusted_ca_file.clone(),
                client_cert_auth: self.peer_client_cert_auth,
                crl_file: self.peer_crl_file.clone(),
                auto_tls: self.peer_auto_tls,
                allowed_cn: self.peer_cert_allowed_cn.clone(),
                allowed_hostname: self.peer_cert_allowed_hostname.clone(),
                skip_client_san_verify: self.experimental_peer_skip_client_san_verification,
            },
            tls: TlsCommon {
                cipher_suites: self.cipher_suites.clone(),
                min_version: self.tls_min_version.clone(),
                max_version: self.tls_max_version.clone(),
                self_signed_cert_validity_years: self.self_signed_cert_validity,
            },
            auth_token: self.auth_token.clone(),
            auth_token_ttl: Duration::from_secs(self.auth_token_ttl),
            bcrypt_cost: self.bcrypt_cost,
            initial_corrupt_check: self.experimental_initial_corrupt_check,
            corrupt_check_time: self.corrupt_check_time(&mut notes),
            bootstrap_defrag_threshold_bytes: self
                .experimental_bootstrap_defrag_threshold_megabytes
                * 1024
                * 1024,
            wait_cluster_ready_timeout: self.experimental_wait_cluster_ready_timeout,
            enable_grpc_gateway: self.enable_grpc_gateway,
            enable_pprof: self.enable_pprof,
            cors: self.cors.clone(),
            host_whitelist: self.host_whitelist.clone(),
            metrics_extensive: self.metrics == "extensive",
            unsafe_no_fsync: self.unsafe_no_fsync,
            max_learners: self.experimental_max_learners,
            lease_checkpoint: self.lease_checkpoint()?,
            warning_apply_duration: self.experimental_warning_apply_duration,
            warning_unary_request_duration: self.experimental_warning_unary_request_duration,
        };
        Ok((cfg, notes))
    }

    /// How often the leader compares hashes with the followers: --experimental-corrupt-check-time,
    /// or --experimental-compact-hash-check-time when etcd 3.5's compaction hash check is on
    /// (Keel's check hashes the whole history through the leader's revision, compacted part
    /// included, so it covers what that check does).
    fn corrupt_check_time(&self, notes: &mut Notes) -> Duration {
        if !self.experimental_compact_hash_check_enabled {
            return self.experimental_corrupt_check_time;
        }
        notes.push(
            "--experimental-compact-hash-check-enabled: the leader compares its followers' hashes of the whole history (compacted part included) every --experimental-compact-hash-check-time".into(),
        );
        match self.experimental_corrupt_check_time {
            d if d.is_zero() => self.experimental_compact_hash_check_time,
            d => d.min(self.experimental_compact_hash_check_time),
        }
    }

    /// etcd's lease checkpoints: persisting needs checkpointing on (etcd's own check).
    fn lease_checkpoint(&self) -> Result<Option<keel_server::LeaseCheckpointing>, String> {
        if self.experimental_enable_lease_checkpoint_persist
            && !self.experimental_enable_lease_checkpoint
        {
            return Err("setting experimental-enable-lease-checkpoint-persist requires experimental-enable-lease-checkpoint".into());
        }
        Ok(self
            .experimental_enable_lease_checkpoint
            .then_some(keel_server::LeaseCheckpointing {
                interval: Duration::from_secs(300),
                persist: self.experimental_enable_lease_checkpoint_persist,
            }))
    }

    /// etcd's rules: both positive, the election timeout at least five heartbeats and at most
    /// 50 s.
    fn raft_timing(&self) -> Result<(Duration, Duration), String> {
        let (tick, election) = (self.heartbeat_interval, self.election_timeout);
        if tick == 0 {
            return Err(format!("--heartbeat-interval must be >0 (set to {tick}ms)"));
        }
        if election == 0 {
            return Err(format!(
                "--election-timeout must be >0 (set to {election}ms)"
            ));
        }
        if 5 * tick > election {
            return Err(format!(
                "--election-timeout[{election}ms] should be at least as 5 times as --heartbeat-interval[{tick}ms]"
            ));
        }
        if election > MAX_ELECTION_MS {
            return Err(format!(
                "--election-timeout[{election}ms] is too long, and should be set less than {MAX_ELECTION_MS}ms"
            ));
        }
        Ok((Duration::from_millis(tick), Duration::from_millis(election)))
    }

    /// etcd: --advertise-client-urls must be given with --listen-client-urls (a member would
    /// otherwise advertise localhost while listening elsewhere); both unset mean localhost.
    fn advertise_client_urls(&self) -> Result<Vec<String>, String> {
        if !self.advertise_client_urls.is_empty() {
            return Ok(self.advertise_client_urls.clone());
        }
        if self.listen_client_urls != ["http://localhost:2379"] {
            return Err(
                "--advertise-client-urls is required when --listen-client-urls is set explicitly"
                    .into(),
            );
        }
        Ok(vec!["http://localhost:2379".into()])
    }

    /// The parts of etcd that Keel does not serve, refused with a message that says why.
    fn refuse_what_keel_does_not_serve(&self) -> Result<(), String> {
        if self.enable_v2 {
            return Err(
                "--enable-v2: keel does not serve the v2 API (etcd 3.6 removed it); \
                 v2 clients must move to the v3 API"
                    .into(),
            );
        }
        if self
            .experimental_enable_v2v3
            .as_deref()
            .is_some_and(|p| !p.is_empty())
        {
            return Err(
                "--experimental-enable-v2v3: keel does not serve the v2 API (etcd 3.6 \
                 removed it)"
                    .into(),
            );
        }
        if self.proxy != "off" {
            return Err(format!(
                "--proxy={}: the v2 proxy is not offered (etcd 3.6 removed it); run \
                 `keel grpc-proxy start` (v3 gRPC proxy) or `keel gateway start` (TCP) instead",
                self.proxy
            ));
        }
        let discovery = [
            ("--discovery", self.discovery.is_some()),
            ("--discovery-srv", self.discovery_srv.is_some()),
        ];
        let set = discovery.iter().filter(|(_, on)| *on).count()
            + usize::from(self.initial_cluster.is_some());
        if set > 1 {
            return Err(
                "multiple discovery or bootstrap flags are set. Choose one of \
                 \"initial-cluster\", \"discovery\" or \"discovery-srv\""
                    .into(),
            );
        }
        Ok(())
    }

    /// etcd 3.5's distributed tracing settings, when it is enabled.
    fn distributed_tracing(&self) -> Result<Option<TracingExport>, String> {
        if !self.experimental_enable_distributed_tracing {
            return Ok(None);
        }
        let rate = self.experimental_distributed_tracing_sampling_rate;
        if rate > u64::from(MAX_SAMPLING_PER_MILLION) {
            return Err(format!(
                "tracing sampling rate must be less than {MAX_SAMPLING_PER_MILLION}"
            ));
        }
        Ok(Some(TracingExport {
            address: self.experimental_distributed_tracing_address.clone(),
            service_name: self.experimental_distributed_tracing_service_name.clone(),
            instance_id: self.experimental_distributed_tracing_instance_id.clone(),
            sampling_per_million: rate as u32,
        }))
    }

    /// Where a new member learns its initial cluster, when not from --initial-cluster.
    fn discovery_source(&self) -> Option<Discovery> {
        let set = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
        if let Some(url) = set(&self.discovery) {
            return Some(Discovery::Service {
                url,
                proxy: set(&self.discovery_proxy),
            });
        }
        set(&self.discovery_srv).map(|domain| Discovery::Srv {
            domain,
            service_name: set(&self.discovery_srv_name),
        })
    }

    /// Knobs of etcd's bbolt backend that Keel's RocksDB store has no use for: accepted, and
    /// said so in the log.
    fn note_backend_knobs(&self, notes: &mut Notes) {
        if self.backend_batch_interval.is_some() || self.backend_batch_limit != 0 {
            notes.push(
                "--backend-batch-interval/--backend-batch-limit: keel commits every applied batch \
                 to its store at once, within any interval or limit"
                    .into(),
            );
        }
        if self.experimental_backend_bbolt_freelist_type != "map" {
            notes.push(
                "--experimental-backend-bbolt-freelist-type: keel's store is RocksDB, which keeps no bbolt freelist".into(),
            );
        }
        if !self.experimental_txn_mode_write_with_shared_buffer {
            notes.push(
                "--experimental-txn-mode-write-with-shared-buffer: keel's write path has no separate read buffer".into(),
            );
        }
        if self.v2_deprecation.as_deref().is_some_and(|v| v != "gone") {
            notes.push("--v2-deprecation: keel has no v2 store (as at stage 'gone')".into());
        }
        if self.experimental_compaction_batch_limit != 0
            || self.experimental_compaction_sleep_interval.is_some()
        {
            notes.push(
                "--experimental-compaction-batch-limit/--experimental-compaction-sleep-interval: keel deletes a compaction's revisions in the compaction's own write".into(),
            );
        }
        if self.experimental_downgrade_check_time != Duration::from_secs(5) {
            notes.push(
                "--experimental-downgrade-check-time: keel clusters do not downgrade (Maintenance.Downgrade is refused as etcd refuses an unsupported request)".into(),
            );
        }
        if self.experimental_stop_grpc_service_on_defrag {
            notes.push(
                "--experimental-stop-grpc-service-on-defrag: keel's defragmentation (a RocksDB compaction) does not stop traffic, so the gRPC health service keeps serving".into(),
            );
        }
    }
}

/// etcd's URL rules (types.NewURLs): scheme http, https, unix or unixs, `host:port`, no path.
fn check_urls(flag: &str, urls: &[String], may_be_empty: bool) -> Result<(), String> {
    if urls.is_empty() && !may_be_empty {
        return Err(format!("{flag}: no valid URLs given"));
    }
    for url in urls {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("URL scheme must be http, https, unix, or unixs: {url}"))?;
        if !matches!(scheme, "http" | "https" | "unix" | "unixs") {
            return Err(format!(
                "URL scheme must be http, https, unix, or unixs: {url}"
            ));
        }
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let host_port = host
            .rsplit_once(':')
            .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
        if !host_port {
            return Err(format!(
                "URL address does not have the form \"host:port\": {url}"
            ));
        }
        if !path.is_empty() && path != "/" {
            return Err(format!("URL must not contain a path: {url}"));
        }
    }
    Ok(())
}

/// etcd binds only to IPs (or localhost), never to a name it would have to resolve.
fn check_bind_urls(urls: &[String]) -> Result<(), String> {
    for url in urls {
        let Some(("http" | "https", rest)) = url.split_once("://") else {
            continue;
        };
        let host = rest
            .trim_end_matches('/')
            .rsplit_once(':')
            .map_or(rest, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host != "localhost" && host.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("expected IP in URL for binding ({url})"));
        }
    }
    Ok(())
}

fn positive(flag: &str, d: Duration) -> Result<Duration, String> {
    if d.is_zero() {
        return Err(format!("{flag} must be greater than zero"));
    }
    Ok(d)
}

/// etcd's auto-compaction flags: periodic retention is a Go duration or a plain number of hours;
/// revision retention a number of revisions; "0" turns compaction off.
fn parse_auto_compaction(mode: &str, retention: &str) -> Result<AutoCompaction, String> {
    let bad = || format!("invalid --auto-compaction-retention {retention:?} for mode {mode:?}");
    if !matches!(mode, "periodic" | "revision") {
        return Err(format!("unknown auto-compaction-mode {mode:?}"));
    }
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
        _ => match retention.parse::<i64>() {
            Ok(n) if n > 0 => Ok(AutoCompaction::Revision(n)),
            _ => Err(bad()),
        },
    }
}

/// Parses `name=url,name=url2,other=url3` into members with their peer URLs, in first-seen order.
fn parse_initial_cluster(s: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (name, url) = part
            .split_once('=')
            .ok_or_else(|| format!("--initial-cluster: {part:?} is not name=peerURL"))?;
        check_urls("--initial-cluster", &[url.to_string()], false)?;
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
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        etcd: EtcdFlags,
    }

    fn flags(args: &[&str]) -> EtcdFlags {
        let mut all = vec!["keel"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).expect("flags parse").etcd
    }

    #[test]
    fn initial_cluster_groups_urls_by_name() {
        let m = parse_initial_cluster(
            "a=http://1.1.1.1:2380,b=http://2.2.2.2:2380,a=http://3.3.3.3:2380",
        )
        .unwrap();
        assert_eq!(m[0].1.len(), 2);
        assert_eq!(m[1].0, "b");
        assert!(parse_initial_cluster("nonsense").is_err());
    }

    #[test]
    fn raft_timing_follows_etcds_rules() {
        let (cfg, _) = flags(&["--heartbeat-interval=50", "--election-timeout=500"])
            .to_config()
            .unwrap();
        assert_eq!(cfg.heartbeat_interval, Duration::from_millis(50));
        assert_eq!(cfg.election_timeout, Duration::from_millis(500));
        let err = flags(&["--heartbeat-interval=300", "--election-timeout=1000"])
            .to_config()
            .unwrap_err();
        assert_eq!(
            err,
            "--election-timeout[1000ms] should be at least as 5 times as --heartbeat-interval[300ms]"
        );
        let err = flags(&["--election-timeout=60000"])
            .to_config()
            .unwrap_err();
        assert!(err.contains("is too long"), "{err}");
    }

    #[test]
    fn listen_client_urls_need_advertise_client_urls() {
        let err = flags(&["--listen-client-urls=http://127.0.0.1:3000"])
            .to_config()
            .unwrap_err();
        assert!(err.contains("--advertise-client-urls is required"), "{err}");
        let (cfg, _) = flags(&[]).to_config().unwrap();
        assert_eq!(cfg.advertise_client_urls, vec!["http://localhost:2379"]);
    }

    #[test]
    fn urls_are_checked_as_etcd_checks_them() {
        assert!(check_urls("f", &["ftp://1.2.3.4:1".into()], false)
            .unwrap_err()
            .contains("scheme"));
        assert!(check_urls("f", &["http://1.2.3.4".into()], false)
            .unwrap_err()
            .contains("host:port"));
        assert!(check_urls("f", &["http://1.2.3.4:1/x".into()], false)
            .unwrap_err()
            .contains("path"));
        assert!(check_urls("f", &["unix://etcd.unix:1".into()], false).is_ok());
        assert!(check_bind_urls(&["http://example.com:1".into()])
            .unwrap_err()
            .contains("expected IP"));
        assert!(check_bind_urls(&["http://localhost:1".into(), "unix://a:1".into()]).is_ok());
    }

    #[test]
    fn v2_and_its_proxy_are_refused_with_a_reason() {
        let err = flags(&["--enable-v2"]).to_config().unwrap_err();
        assert!(err.contains("v2 API"), "{err}");
        let err = flags(&["--proxy=on"]).to_config().unwrap_err();
        assert!(err.contains("grpc-proxy"), "{err}");
        assert!(flags(&["--enable-v2=false"]).to_config().is_ok());
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
    fn tls_flags_fill_both_sides() {
        let (cfg, _) = flags(&[
            "--peer-auto-tls",
            "--peer-cert-allowed-cn=example.com",
            "--client-crl-file=/x.crl",
            "--cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        ])
        .to_config()
        .unwrap();
        assert!(cfg.peer_tls.auto_tls);
        assert_eq!(cfg.peer_tls.allowed_cn, vec!["example.com"]);
        assert_eq!(cfg.client_tls.crl_file, Some(PathBuf::from("/x.crl")));
        assert_eq!(cfg.tls.cipher_suites.len(), 1);
    }
}

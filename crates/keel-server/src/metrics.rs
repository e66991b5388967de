//! `/metrics` (Prometheus text format) and `/health` on the client URLs. Gauges are read from the
//! member's state when scraped, so the request paths pay nothing for them. Names follow etcd's
//! where etcd has the metric; replication per member is Keel's own (`keel_raft_member_*`).

use std::sync::Arc;
use std::time::Instant;

use prometheus::{Encoder, GaugeVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::server::Core;

/// The metrics of one member.
pub struct Metrics {
    registry: Registry,
    has_leader: IntGauge,
    is_leader: IntGauge,
    is_learner: IntGauge,
    leader_changes: IntGauge,
    term: IntGauge,
    commit_index: IntGauge,
    applied_index: IntGauge,
    db_total: IntGauge,
    db_in_use: IntGauge,
    revision: IntGauge,
    compact_revision: IntGauge,
    matched: IntGaugeVec,
    lag_entries: IntGaugeVec,
    lag_seconds: GaugeVec,
    active: IntGaugeVec,
    last_contact: GaugeVec,
    snapshot_sent: IntGaugeVec,
    snapshot_total: IntGaugeVec,
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn member_gauge(registry: &Registry, name: &str, help: &str) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), &["member", "name"]).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn member_seconds(registry: &Registry, name: &str, help: &str) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), &["member", "name"]).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        let r = Registry::new();
        Metrics {
            has_leader: gauge(
                &r,
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            ),
            is_leader: gauge(
                &r,
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            ),
            is_learner: gauge(
                &r,
                "etcd_server_is_learner",
                "Whether or not this member is a learner. 1 if is, 0 otherwise.",
            ),
            leader_changes: gauge(
                &r,
                "etcd_server_leader_changes_seen_total",
                "The number of leader changes seen.",
            ),
            term: gauge(&r, "etcd_server_raft_term", "The current raft term."),
            commit_index: gauge(
                &r,
                "etcd_server_raft_committed_index",
                "The highest raft index known committed.",
            ),
            applied_index: gauge(
                &r,
                "etcd_server_raft_applied_index",
                "The raft index the state machine has applied.",
            ),
            db_total: gauge(
                &r,
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database in bytes.",
            ),
            db_in_use: gauge(
                &r,
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "Size of the underlying database logically in use in bytes.",
            ),
            revision: gauge(
                &r,
                "etcd_mvcc_current_revision",
                "The current revision of the store.",
            ),
            compact_revision: gauge(
                &r,
                "etcd_mvcc_compact_revision",
                "The revision of the last compaction.",
            ),
            matched: member_gauge(
                &r,
                "keel_raft_member_matched_index",
                "Highest raft index known replicated to the member (reported by the leader).",
            ),
            lag_entries: member_gauge(
                &r,
                "keel_raft_member_lag_entries",
                "Raft entries the member lacks of the leader's log.",
            ),
            lag_seconds: member_seconds(
                &r,
                "keel_raft_member_lag_seconds",
                "How long the member has been behind the leader's last index.",
            ),
            active: member_gauge(
                &r,
                "keel_raft_member_active",
                "Whether the member answered the leader within an election timeout.",
            ),
            last_contact: member_seconds(
                &r,
                "keel_raft_member_last_contact_seconds",
                "Seconds since the member last answered the leader.",
            ),
            snapshot_sent: member_gauge(
                &r,
                "keel_raft_member_snapshot_bytes_sent",
                "Bytes of the snapshot being sent to the member.",
            ),
            snapshot_total: member_gauge(
                &r,
                "keel_raft_member_snapshot_bytes_total",
                "Size of the snapshot being sent to the member.",
            ),
            registry: r,
        }
    }
}

impl Metrics {
    /// The current metrics of `core`, in Prometheus's text format.
    pub fn render(&self, core: &Core) -> String {
        self.update(core);
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    fn update(&self, core: &Core) {
        let status = core.raft_status();
        let me = core.identity.member_id;
        self.has_leader.set((status.leader_id != 0) as i64);
        self.is_leader.set((status.leader_id == me) as i64);
        self.is_learner.set(core.is_learner() as i64);
        self.leader_changes.set(status.leader_changes as i64);
        self.term.set(status.term as i64);
        self.commit_index.set(status.commit_index as i64);
        self.applied_index.set(core.store.applied_index() as i64);
        let size = core.store.size();
        self.db_total.set(size.total as i64);
        self.db_in_use.set(size.in_use as i64);
        self.revision.set(core.store.current_revision());
        self.compact_revision.set(core.store.compacted_revision());

        let per_member: [&dyn Reset; 7] = [
            &self.matched,
            &self.lag_entries,
            &self.lag_seconds,
            &self.active,
            &self.last_contact,
            &self.snapshot_sent,
            &self.snapshot_total,
        ];
        per_member.iter().for_each(|g| g.reset_all());
        let transfers = core.transport_snapshot_transfers();
        let now = Instant::now();
        for m in core.members() {
            let id = format!("{:x}", m.id);
            let labels = [id.as_str(), m.name.as_str()];
            if let Some(p) = status.progress.iter().find(|p| p.id == m.id) {
                self.matched
                    .with_label_values(&labels)
                    .set(p.matched as i64);
                self.lag_entries
                    .with_label_values(&labels)
                    .set(status.last_index.saturating_sub(p.matched) as i64);
                self.lag_seconds
                    .with_label_values(&labels)
                    .set(p.behind_since.map_or(0.0, |t| (now - t).as_secs_f64()));
                self.active.with_label_values(&labels).set(p.active as i64);
                if let Some(t) = p.last_contact {
                    self.last_contact
                        .with_label_values(&labels)
                        .set((now - t).as_secs_f64());
                }
            }
            if let Some(t) = transfers.get(&m.id) {
                self.snapshot_sent
                    .with_label_values(&labels)
                    .set(t.sent as i64);
                self.snapshot_total
                    .with_label_values(&labels)
                    .set(t.total as i64);
            }
        }
    }
}

/// Per-member gauges forget members that left (and followers report none).
trait Reset {
    fn reset_all(&self);
}

impl Reset for IntGaugeVec {
    fn reset_all(&self) {
        self.reset();
    }
}

impl Reset for GaugeVec {
    fn reset_all(&self) {
        self.reset();
    }
}

/// The HTTP routes beside gRPC on the client URLs.
pub fn routes(core: Arc<Core>) -> axum::Router {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    let metrics = Arc::new(Metrics::default());
    let health_core = core.clone();
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = metrics.render(&core);
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body) }
            }),
        )
        .route(
            "/health",
            get(move || {
                // etcd's answer: healthy while the member knows a leader.
                let healthy = health_core.leader_id() != 0;
                async move {
                    let (code, body) = if healthy {
                        (StatusCode::OK, r#"{"health":"true","reason":""}"#)
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            r#"{"health":"false","reason":"RAFT NO LEADER"}"#,
                        )
                    };
                    (code, [(header::CONTENT_TYPE, "application/json")], body)
                }
            }),
        )
}

//! `/metrics` (Prometheus text format) on the client URLs and --listen-metrics-urls. Gauges are
//! read from the member's state when scraped, so the request paths pay nothing for them; the
//! request paths only count and time (`grpc.rs`), and open spans when distributed tracing is on
//! (`traces.rs`). Names follow etcd's (and go-grpc-prometheus's)
//! where etcd has the metric; replication per member is Keel's own (`keel_raft_member_*`).

mod grpc;
pub mod traces;

use std::sync::Arc;

use prometheus::{Encoder, GaugeVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use grpc::request_metrics;
pub use grpc::{health_checked, ObserveGrpc};

use crate::member::Member;
use crate::member::ReplicaState;

/// The metrics of one member.
pub struct Metrics {
    registry: Registry,
    keys: IntGauge,
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
    proposals_committed: IntGauge,
    proposals_applied: IntGauge,
    proposals_pending: IntGauge,
    matched: IntGaugeVec,
    lag_entries: IntGaugeVec,
    lag_seconds: GaugeVec,
    active: IntGaugeVec,
    last_contact: GaugeVec,
    snapshot_sent: IntGaugeVec,
    snapshot_total: IntGaugeVec,
    state: IntGaugeVec,
    applied: IntGaugeVec,
    bootstrap_progress: GaugeVec,
}

/// A gauge that is 1 for its one label value (etcd's version gauges).
fn constant(registry: &Registry, name: &str, help: &str, label: &str, value: &str) {
    let g = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    g.with_label_values(&[value]).set(1);
    registry.register(Box::new(g)).expect("unique metric");
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

impl Metrics {
    /// A member's metrics; `extensive` adds the gRPC latency histograms (etcd's
    /// --metrics=extensive).
    pub fn new(extensive: bool) -> Self {
        let r = Registry::new();
        constant(
            &r,
            "etcd_server_version",
            "Which version is running. 1 for 'server_version' label with current version.",
            "server_version",
            crate::version::SERVER,
        );
        constant(
            &r,
            "etcd_cluster_version",
            "Which version is running. 1 for 'cluster_version' label with current cluster version",
            "cluster_version",
            crate::version::CLUSTER_MINOR,
        );
        Metrics {
            keys: gauge(
                &r,
                "etcd_debugging_mvcc_keys_total",
                "Total number of keys.",
            ),
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
            proposals_committed: gauge(
                &r,
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
            ),
            proposals_applied: gauge(
                &r,
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
            ),
            proposals_pending: gauge(
                &r,
                "etcd_server_proposals_pending",
                "The current number of pending proposals to commit.",
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
                "How long ago the oldest entry the member lacks was appended to the leader's log.",
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
            state: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "keel_raft_member_state",
                        "1 for the member's replication state (connecting, replicating, \
                         bootstrapping, ready, disconnected, error), 0 for the others.",
                    ),
                    &["member", "name", "state"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            applied: member_gauge(
                &r,
                "keel_raft_member_applied_index",
                "The highest raft index the member has applied, as it last told the leader.",
            ),
            bootstrap_progress: member_seconds(
                &r,
                "keel_raft_member_bootstrap_progress",
                "0..1 while the member bootstraps from a snapshot: the transfer, then the install.",
            ),
            registry: {
                let m = request_metrics();
                let mvcc = keel_state::metrics::mvcc();
                let counters = crate::member::counters();
                let shared: [Box<dyn prometheus::core::Collector>; 11] = [
                    Box::new(m.started.clone()),
                    Box::new(m.health_success.clone()),
                    Box::new(m.health_failures.clone()),
                    Box::new(m.handled.clone()),
                    Box::new(counters.proposals_failed.clone()),
                    Box::new(counters.backend_commit.clone()),
                    Box::new(mvcc.put.clone()),
                    Box::new(mvcc.delete.clone()),
                    Box::new(mvcc.range.clone()),
                    Box::new(mvcc.txn.clone()),
                    Box::new(keel_raft::wal_fsync_seconds().clone()),
                ];
                for c in shared {
                    r.register(c).expect("unique metric");
                }
                if extensive {
                    r.register(Box::new(m.handling.clone()))
                        .expect("unique metric");
                }
                r
            },
        }
    }
}

impl Metrics {
    /// The current metrics of `member`, in Prometheus's text format.
    pub fn render(&self, member: &Member) -> String {
        self.update(member);
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    fn update(&self, member: &Member) {
        let status = member.raft_status();
        let me = member.id();
        self.has_leader.set((status.leader_id != 0) as i64);
        self.is_leader.set((status.leader_id == me) as i64);
        self.is_learner.set(member.is_learner() as i64);
        self.leader_changes.set(status.leader_changes as i64);
        self.term.set(status.term as i64);
        self.commit_index.set(status.commit_index as i64);
        self.applied_index
            .set(member.store().applied_index() as i64);
        let size = member.store().size();
        self.db_total.set(size.total as i64);
        self.db_in_use.set(size.in_use as i64);
        self.revision.set(member.store().current_revision());
        self.keys.set(member.store().live_keys() as i64);
        self.compact_revision
            .set(member.store().compacted_revision());
        self.proposals_committed.set(status.commit_index as i64);
        self.proposals_applied
            .set(member.store().applied_index() as i64);
        self.proposals_pending
            .set(member.proposals_pending() as i64);

        let per_member: [&dyn Reset; 10] = [
            &self.matched,
            &self.lag_entries,
            &self.lag_seconds,
            &self.active,
            &self.last_contact,
            &self.snapshot_sent,
            &self.snapshot_total,
            &self.state,
            &self.applied,
            &self.bootstrap_progress,
        ];
        per_member.iter().for_each(|g| g.reset_all());
        if status.role != keel_raft::Role::Leader {
            return;
        }
        for m in member.replication().members {
            let id = format!("{:x}", m.id);
            let labels = [id.as_str(), m.name.as_str()];
            self.matched
                .with_label_values(&labels)
                .set(m.matched_index as i64);
            self.lag_entries
                .with_label_values(&labels)
                .set(m.lag_entries as i64);
            self.lag_seconds
                .with_label_values(&labels)
                .set(m.lag.as_secs_f64());
            self.active.with_label_values(&labels).set(m.active as i64);
            if let Some(d) = m.last_contact {
                self.last_contact
                    .with_label_values(&labels)
                    .set(d.as_secs_f64());
            }
            if let Some(applied) = m.applied_index {
                self.applied.with_label_values(&labels).set(applied as i64);
            }
            for state in ReplicaState::ALL {
                self.state
                    .with_label_values(&[id.as_str(), m.name.as_str(), state.as_str()])
                    .set((state == m.state) as i64);
            }
            if let Some(b) = m.bootstrap {
                self.snapshot_sent
                    .with_label_values(&labels)
                    .set(b.bytes_sent as i64);
                self.snapshot_total
                    .with_label_values(&labels)
                    .set(b.bytes_total as i64);
                self.bootstrap_progress
                    .with_label_values(&labels)
                    .set(b.progress);
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

/// The HTTP routes beside gRPC on the client URLs, and on --listen-metrics-urls: `/metrics`
/// and the health checks.
pub fn routes(member: Arc<Member>, extensive: bool) -> axum::Router {
    use axum::http::header;
    use axum::routing::get;
    let metrics = Arc::new(Metrics::new(extensive));
    let health = crate::ops::health::routes(member.clone());
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = metrics.render(&member);
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body) }
            }),
        )
        .merge(health)
}

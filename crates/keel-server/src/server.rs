//! A running member: storage, the raft driver, the apply loop, and the request paths the services
//! share (propose and wait; linearizable read barrier; response headers).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keel_mvcc::Store;
use keel_raft::{ConfChange, ConfChangeType, LogStore, Node, NodeConfig, RaftStatus, Transport};
use keel_rpc::etcd::{PbMember as Member, PbResponseHeader};
use keel_rpc::{InternalRequest, MemberAttributes, MemberChange, RequestAuth, RequestBody};
use prost::Message;
use tokio::sync::watch;
use tonic::metadata::{Ascii, MetadataMap, MetadataValue};

use crate::alarm::Alarms;
use crate::apply::{ApplyLoop, Machine, Response};
use crate::auth::{AuthStore, Credentials, Tokens};
use crate::config::{ClusterState, ServerConfig};
use crate::lease::Lessor;
use crate::membership::{cluster_id, member_id, Identity, Membership};
use crate::raft_conf::conf_state;
use crate::snapshot::{decode_position, Checkpoints, META_INSTALLED};
use crate::startup::tls::{self, Side};
use crate::startup::{incoming, Listener};
use crate::wait::Registry;
use crate::{service, ServerError};
use keel_state::Proposal;

/// How long a proposal may take to apply before the client gets `request timed out` (etcd: 5 s plus
/// two election timeouts).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);
/// How long in-flight requests may run after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// gRPC message size allowed above --max-request-bytes, so an oversized request reaches the server
/// and gets etcd's `request is too large` rather than a transport error.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Errors that stop a member from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration cannot describe a member.
    #[error("{0}")]
    Config(String),
    /// Storage could not be opened.
    #[error("opening storage: {0}")]
    Storage(String),
    /// A listener could not be bound.
    #[error("listening on {url}: {source}")]
    Listen {
        /// The URL that failed.
        url: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Why a member stopped serving other than by its shutdown signal.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The gRPC server failed.
    #[error("serving: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The cluster removed this member (MemberRemove).
    #[error("the member has been permanently removed from the cluster")]
    Removed,
    /// The task serving the member failed.
    #[error("serving task: {0}")]
    Internal(String),
    /// --experimental-initial-corrupt-check found this member's data differs from a peer's.
    #[error(transparent)]
    Corrupt(#[from] crate::corrupt::Inconsistent),
}

/// The state every service shares.
pub struct Core {
    /// The MVCC store (read side for services).
    pub store: Arc<Store>,
    node: Node,
    registry: Arc<Registry>,
    applied: watch::Receiver<u64>,
    /// Committed changes, for watchers.
    pub hub: Arc<crate::watch::Hub>,
    /// The leases.
    pub leases: Arc<Lessor>,
    /// Where leader-only requests are forwarded.
    pub(crate) leader_link: crate::forward::LeaderLink,
    /// Cluster identity and members.
    pub identity: Identity,
    /// This member's name.
    pub name: String,
    /// The cluster's members (replicated).
    pub membership: Arc<Membership>,
    /// Client URLs this member advertises.
    pub client_urls: Vec<String>,
    /// Largest proposal accepted.
    pub max_request_bytes: usize,
    /// Most ops per txn.
    pub max_txn_ops: usize,
    /// How often watchers that asked for progress notifications get one when idle.
    pub watch_progress_notify_interval: Duration,
    next_id: AtomicU64,
    /// Where snapshots are made and received.
    snap_dir: std::path::PathBuf,
    transport: Arc<Transport>,
    /// The raised alarms (replicated).
    pub alarms: Arc<Alarms>,
    /// Users, roles, permissions and tokens.
    pub auth: Arc<AuthStore>,
    /// The bcrypt cost of new password hashes.
    pub bcrypt_cost: u32,
    /// Backend space quota in bytes: above it, this member raises NOSPACE.
    quota_bytes: u64,
    /// The store's size on disk, refreshed in the background (the quota check reads it).
    db_size: AtomicU64,
    /// Membership and request limits from the configuration.
    pub(crate) limits: Limits,
    /// A member that has not answered the leader for this long is disconnected.
    pub(crate) election_timeout: Duration,
    /// What the other members last told this one (while it leads) of themselves.
    pub(crate) reports: crate::replication::Reports,
    /// Raised when the member stops serving: every client stream's task ends (see `spawn_stream`).
    stopping: watch::Sender<bool>,
}

/// Limits the configuration sets on requests and membership changes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Refuse membership changes that would leave too few started voters (etcd's
    /// --strict-reconfig-check).
    pub strict_reconfig_check: bool,
    /// Most learners at once (etcd's --experimental-max-learners).
    pub max_learners: usize,
    /// The leader's lease checkpoints, when on (etcd's --experimental-enable-lease-checkpoint).
    pub lease_checkpoint: Option<crate::config::LeaseCheckpointing>,
}

impl Core {
    /// Spawns the task behind a client stream (a watch, keep-alives, an election observer),
    /// owned by this member: it ends with its stream, or when the member stops serving, so that
    /// no stream a client keeps open (an idle watch) holds the store after shutdown.
    pub(crate) fn spawn_stream(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut stopping = self.stopping.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                () = task => {}
                // The guard `wait_for` returns is dropped at once (held, the future would not
                // be Send).
                _ = async { stopping.wait_for(|&s| s).await.map(|_| ()) } => {}
            }
        });
    }

    /// Ends every client stream's task (see `spawn_stream`).
    fn stop_streams(&self) {
        self.stopping.send_replace(true);
    }

    /// What raft last reported.
    pub fn raft_status(&self) -> RaftStatus {
        self.node.status()
    }

    /// The raft term (cheap: no copy of the replication progress).
    fn term(&self) -> u64 {
        self.node.term()
    }

    /// Whether this member leads (cheap: no copy of the replication progress).
    pub fn is_leader(&self) -> bool {
        self.node.role().0 == keel_raft::Role::Leader
    }

    /// The leader this member knows, 0 for none (cheap).
    pub fn leader_id(&self) -> u64 {
        self.node.role().1
    }

    /// How this member dials peer URLs (with its peer TLS for https ones).
    pub(crate) fn dialer(&self) -> &keel_raft::Dialer {
        self.transport.dialer()
    }

    /// The peer transport (snapshot transfers and their failures).
    pub(crate) fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The snapshot this member is receiving or installing.
    pub(crate) fn bootstrap(&self) -> &keel_raft::Bootstrap {
        self.transport.bootstrap()
    }

    /// Whether this member is a learner (it replicates but serves only serializable reads).
    pub fn is_learner(&self) -> bool {
        self.membership.is_learner(self.identity.member_id)
    }

    /// A response header for `revision`, with this member's identity and raft term.
    pub fn header(&self, revision: i64) -> Option<PbResponseHeader> {
        Some(PbResponseHeader {
            cluster_id: self.identity.cluster_id,
            member_id: self.identity.member_id,
            revision,
            raft_term: self.term(),
        })
    }

    /// Completes a header the state machine filled with a revision only.
    pub fn fill_header(&self, header: &mut Option<PbResponseHeader>) {
        let revision = header.as_ref().map_or(0, |h| h.revision);
        *header = self.header(revision);
    }

    /// The members, with the client URLs each published (this member's own always current).
    pub fn members(&self) -> Vec<Member> {
        let mut members = self.membership.list();
        for m in members
            .iter_mut()
            .filter(|m| m.id == self.identity.member_id)
        {
            m.client_ur_ls = self.client_urls.clone();
        }
        members
    }

    /// A fresh id, unique across members and restarts.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Who a client request comes from: the token in its metadata (`token`, or the gateway's
    /// `authorization`), else the common name of its client certificate.
    pub fn caller<T>(&self, req: &tonic::Request<T>) -> Result<RequestAuth, ServerError> {
        Credentials::of(req).identify(&self.auth)
    }

    /// The caller of a request only a root user may make.
    pub fn admin<T>(&self, req: &tonic::Request<T>) -> Result<RequestAuth, ServerError> {
        let who = self.caller(req)?;
        self.auth.check_admin(&who)?;
        Ok(who)
    }

    /// Proposers waiting for their entries to be applied.
    pub fn proposals_pending(&self) -> usize {
        self.registry.pending()
    }

    /// Proposes a client's mutation through raft for `who` and waits until it is applied (the
    /// state machine checks `who`'s permissions).
    pub async fn propose<P: Proposal>(
        &self,
        who: &RequestAuth,
        request: P,
    ) -> Result<P::Reply, ServerError> {
        if self.is_learner() {
            return Err(ServerError::NotSupportedForLearner);
        }
        let body = request.into_body();
        if crate::apply::grows(&body) {
            self.check_quota(body.encoded_len() as u64).await?;
        }
        let applied = self.propose_as(Some(who.clone()), body, false).await?;
        Ok(P::reply(applied)?)
    }

    /// Proposes the member's own mutation (acting with every permission) and waits for it.
    pub(crate) async fn propose_internal(
        &self,
        body: RequestBody,
    ) -> Result<Response, ServerError> {
        self.propose_as(None, body, false).await
    }

    /// As `propose_internal`, but taken only into this member's log while it leads (see
    /// `Node::propose_as_leader`): `NotLeader` otherwise.
    pub(crate) async fn propose_as_leader(
        &self,
        body: RequestBody,
    ) -> Result<Response, ServerError> {
        self.propose_as(None, body, true).await
    }

    /// etcd's quota check: a write that would take the store past the quota raises NOSPACE (for
    /// every member, through raft) and is refused, as is every growing write while it is raised.
    async fn check_quota(&self, cost: u64) -> Result<(), ServerError> {
        if self.alarms.nospace() {
            return Err(ServerError::State(keel_state::StateError::NoSpace));
        }
        if self.db_size.load(Ordering::Relaxed) + cost <= self.quota_bytes {
            return Ok(());
        }
        tracing::warn!(
            quota = self.quota_bytes,
            size = self.db_size.load(Ordering::Relaxed),
            "backend quota exceeded; raising NOSPACE"
        );
        let raise = RequestBody::Alarm(keel_rpc::etcd::PbAlarmRequest {
            action: 1,
            member_id: self.identity.member_id,
            alarm: crate::alarm::NOSPACE,
        });
        if let Err(e) = self.propose_internal(raise).await {
            tracing::warn!(error = %e, "raising NOSPACE failed");
        }
        Err(ServerError::State(keel_state::StateError::NoSpace))
    }

    /// Proposes a client's alarm change (Maintenance.Alarm) and waits for it; the alarms it changed.
    pub async fn propose_alarm(
        &self,
        who: &RequestAuth,
        r: keel_rpc::etcd::PbAlarmRequest,
    ) -> Result<Vec<keel_rpc::etcd::PbAlarmMember>, ServerError> {
        let applied = self
            .propose_as(Some(who.clone()), RequestBody::Alarm(r), false)
            .await?;
        Ok(keel_rpc::etcd::PbAlarmRequest::reply(applied)?)
    }

    /// A checkpoint of the whole store for a client's snapshot (the caller removes it).
    pub fn backup_checkpoint(&self) -> Result<std::path::PathBuf, ServerError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = self.snap_dir.join(format!("backup-{nanos}"));
        self.store.checkpoint(&dir)?;
        Ok(dir)
    }

    /// Refreshes the store size the quota check reads.
    pub(crate) fn refresh_db_size(&self) {
        self.db_size
            .store(self.store.size().total, Ordering::Relaxed);
    }

    /// Proposes a mutation (for a client, or the member's own) and waits for it.
    async fn propose_as(
        &self,
        auth: Option<RequestAuth>,
        body: RequestBody,
        leader_only: bool,
    ) -> Result<Response, ServerError> {
        let id = self.next_id();
        let data = InternalRequest {
            id,
            body: Some(body),
            auth,
        }
        .encode_to_vec();
        if data.len() > self.max_request_bytes {
            return Err(ServerError::RequestTooLarge);
        }
        let applied = self.registry.register(id);
        let registry = self.registry.clone();
        let refused = Box::new(move |e: keel_raft::RaftError| {
            crate::metrics::proposals_failed().inc();
            registry.fail(id, e.into());
        });
        let proposed = if leader_only {
            self.node.propose_as_leader(data, refused)
        } else {
            self.node.propose(data, refused)
        };
        if let Err(e) = proposed {
            self.registry.cancel(id);
            crate::metrics::proposals_failed().inc();
            return Err(e.into());
        }
        let res = self.wait_applied(id, applied).await;
        if matches!(res, Err(ServerError::Timeout | ServerError::Stopped)) {
            crate::metrics::proposals_failed().inc();
        }
        res
    }

    /// Proposes a raft membership change about `member` and waits until it is applied; returns
    /// the members after it.
    pub async fn propose_member_change(
        &self,
        change: ConfChangeType,
        member: Member,
    ) -> Result<Vec<Member>, ServerError> {
        let id = self.next_id();
        let mut cc = ConfChange::default();
        cc.set_change_type(change);
        cc.node_id = member.id;
        cc.context = MemberChange {
            id,
            member: Some(member),
        }
        .encode_to_vec()
        .into();
        let applied = self.registry.register(id);
        if let Err(e) = self.node.propose_conf_change(cc).await {
            self.registry.cancel(id);
            return Err(e.into());
        }
        match self.wait_applied(id, applied).await? {
            Response::Members(members) => Ok(members),
            other => Err(ServerError::Internal(format!(
                "unexpected response to a membership change: {other:?}"
            ))),
        }
    }

    async fn wait_applied(
        &self,
        id: u64,
        applied: tokio::sync::oneshot::Receiver<crate::apply::Applied>,
    ) -> Result<Response, ServerError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, applied).await {
            Ok(Ok(res)) => res,
            Ok(Err(_)) => Err(ServerError::Stopped),
            Err(_) => {
                self.registry.cancel(id);
                Err(ServerError::Timeout)
            }
        }
    }

    /// Hands leadership to member `target`, as etcd's MoveLeader: only the leader may, only to a
    /// voting member; returns once `target` leads.
    pub async fn move_leader(&self, target: u64) -> Result<(), ServerError> {
        let status = self.raft_status();
        if status.leader_id != self.identity.member_id {
            return Err(ServerError::NotLeader);
        }
        let voter = self.membership.get(target).is_some_and(|m| !m.is_learner);
        if !voter {
            return Err(ServerError::BadLeaderTransferee);
        }
        if target == self.identity.member_id {
            return Ok(());
        }
        tracing::info!(
            target = format!("{target:x}"),
            "leadership transfer starting"
        );
        self.node.transfer_leader(target);
        let moved = tokio::time::timeout(REQUEST_TIMEOUT, async {
            while self.leader_id() != target {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        moved.map_err(|_| ServerError::LeaderTransferTimeout)
    }

    /// Waits until this member has applied everything committed when the call began (ReadIndex).
    pub async fn linearizable_barrier(&self) -> Result<(), ServerError> {
        if self.is_learner() {
            return Err(ServerError::NotSupportedForLearner);
        }
        let reached = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let index = self.node.read_index().await?;
            let mut applied = self.applied.clone();
            let reached = applied.wait_for(|&a| a >= index).await.is_ok();
            if reached {
                Ok(())
            } else {
                Err(ServerError::Stopped)
            }
        })
        .await;
        reached.unwrap_or(Err(ServerError::Timeout))
    }
}

/// The member's gRPC services as one in-process tower service (an embedding application's client:
/// the same services, codec and checks as over TCP, without the network).
pub fn local_routes(core: &Arc<Core>) -> tonic::service::Routes {
    service::grpc_routes(core.clone(), core.max_request_bytes + GRPC_OVERHEAD_BYTES)
}

/// The auth token a request carries: gRPC clients send `token`, the HTTP gateway `authorization`.
pub fn token_of(metadata: &MetadataMap) -> Option<MetadataValue<Ascii>> {
    metadata
        .get("token")
        .or_else(|| metadata.get("authorization"))
        .cloned()
}

/// A started member.
pub struct Server {
    core: Arc<Core>,
    listeners: Vec<Listener>,
    http_listeners: Vec<Listener>,
    peer_listeners: Vec<Listener>,
    metrics_listeners: Vec<Listener>,
    transport: Arc<Transport>,
    apply_thread: Option<JoinHandle<()>>,
    cfg: ServerConfig,
}

impl Server {
    /// Opens the data dir, replays what was committed but not applied, starts raft and binds the
    /// client listeners.
    pub async fn start(mut cfg: ServerConfig) -> Result<Server, StartError> {
        let storage = |e: &dyn std::fmt::Display| StartError::Storage(e.to_string());
        let member_dir = cfg.data_dir.join("member");
        import_etcd_member(&cfg)?;
        std::fs::create_dir_all(&member_dir)
            .map_err(|e| StartError::Storage(format!("{}: {e}", member_dir.display())))?;
        let client_tls = tls::build(
            Side::Client,
            &cfg.client_tls,
            &cfg.tls,
            &cfg.data_dir,
            &url_hosts(&cfg.listen_client_urls),
        )
        .map_err(StartError::Config)?;
        let peer_tls = tls::build(
            Side::Peer,
            &cfg.peer_tls,
            &cfg.tls,
            &cfg.data_dir,
            &url_hosts(&cfg.listen_peer_urls),
        )
        .map_err(StartError::Config)?;
        if let Some(tracing) = &cfg.distributed_tracing {
            crate::metrics::traces::install(tracing).map_err(StartError::Config)?;
        }
        let dialer = keel_raft::Dialer::new(peer_tls.as_ref().map(|t| t.client.clone()));
        let store = Arc::new(Store::open(&member_dir.join("kv")).map_err(|e| storage(&e))?);
        defragment_at_start(&store, cfg.bootstrap_defrag_threshold_bytes);
        if Identity::load(&store).map_err(|e| storage(&e))?.is_none() {
            if let Some(cluster) = crate::startup::discovery::initial_cluster(&cfg)
                .await
                .map_err(StartError::Config)?
            {
                cfg.initial_cluster = cluster;
            }
        }
        let (identity, seeds) = establish_identity(&cfg, &store, &dialer).await?;
        let membership = Arc::new(Membership::load(&store).map_err(|e| storage(&e))?);
        // etcd's --wal-dir: the raft log (Keel's WAL) on a disk of its own.
        let raft_dir = cfg
            .wal_dir
            .clone()
            .unwrap_or_else(|| member_dir.join("raft"));
        let mut log = LogStore::open(&raft_dir).map_err(|e| storage(&e))?;
        if cfg.unsafe_no_fsync {
            tracing::warn!("--unsafe-no-fsync: the raft log is not synced; a power loss can lose acknowledged writes");
            log = log.without_fsync();
        }
        repair_interrupted_install(&store, &membership, &mut log)?;
        if cfg.force_new_cluster && !log.is_empty() {
            force_new_cluster(&store, &membership, &mut log, identity.member_id)?;
        }
        let snap_dir = member_dir.join("snap");
        let checkpoints =
            Checkpoints::new(store.clone(), snap_dir.clone()).map_err(|e| storage(&e))?;
        log.set_snapshot_source(Arc::new(checkpoints));
        let transport = Transport::new(
            tokio::runtime::Handle::current(),
            identity.cluster_id,
            identity.member_id,
            dialer,
        );
        // A member that joined and has not received the cluster's state yet knows its peers only
        // from the member it joined through.
        let peers = if membership.list().is_empty() {
            seeds
        } else {
            membership.list()
        };
        for m in peers.iter().filter(|m| m.id != identity.member_id) {
            transport.add_peer(m.id, m.peer_ur_ls.clone());
        }
        let (committed_tx, committed_rx) = mpsc::channel();
        let node = Node::start(
            raft_config(
                &cfg,
                identity.member_id,
                conf_state(&membership.list()).voters,
                store.applied_index(),
            ),
            log,
            committed_tx,
            transport.clone(),
        )
        .map_err(|e| storage(&e))?;
        let (applied_tx, applied_rx) = watch::channel(store.applied_index());
        let registry = Arc::new(Registry::default());
        let hub = Arc::new(crate::watch::Hub::new(store.clone()));
        let leases = Arc::new(Lessor::restore(&store).map_err(|e| storage(&e))?);
        let alarms = Arc::new(Alarms::load(&store).map_err(|e| storage(&e))?);
        let tokens =
            Tokens::from_flag(&cfg.auth_token, cfg.auth_token_ttl).map_err(StartError::Config)?;
        let auth = Arc::new(AuthStore::load(&store, Box::new(tokens)).map_err(|e| storage(&e))?);
        let core = Arc::new(Core {
            store: store.clone(),
            node,
            registry: registry.clone(),
            hub: hub.clone(),
            leases: leases.clone(),
            leader_link: Default::default(),
            name: cfg.name.clone(),
            membership: membership.clone(),
            applied: applied_rx,
            client_urls: cfg.advertise_client_urls.clone(),
            max_request_bytes: cfg.max_request_bytes,
            max_txn_ops: cfg.max_txn_ops,
            watch_progress_notify_interval: cfg.watch_progress_notify_interval,
            next_id: AtomicU64::new(first_request_id(identity.member_id)),
            identity,
            snap_dir,
            transport: transport.clone(),
            alarms: alarms.clone(),
            auth: auth.clone(),
            bcrypt_cost: cfg.bcrypt_cost,
            quota_bytes: cfg.quota_backend_bytes,
            db_size: AtomicU64::new(0),
            limits: Limits {
                strict_reconfig_check: cfg.strict_reconfig_check,
                max_learners: cfg.max_learners,
                lease_checkpoint: cfg.lease_checkpoint,
            },
            election_timeout: cfg.election_timeout,
            reports: Default::default(),
            stopping: watch::channel(false).0,
        });
        core.refresh_db_size();
        let weak = Arc::downgrade(&core);
        let leader = weak.clone();
        let apply = ApplyLoop {
            leading_at: Box::new(move |term| {
                leader
                    .upgrade()
                    .is_some_and(|c| c.is_leader() && c.term() == term)
            }),
            catch_up_entries: cfg.snapshot_catch_up_entries,
            warn_apply_after: cfg.warning_apply_duration,
            compacted_at: store.applied_index(),
            delay: crate::fault::ApplyDelay::from_env(),
            store,
            committed: committed_rx,
            registry,
            applied: applied_tx,
            hub,
            machine: Machine {
                leases,
                members: membership,
                alarms,
                auth,
            },
            snapshot_count: cfg.snapshot_count,
            bootstrap: transport.bootstrap().clone(),
            compact_log: Box::new(move |index| {
                if let Some(core) = weak.upgrade() {
                    core.node.compact_log(index);
                }
            }),
        };
        let apply_thread = std::thread::Builder::new()
            .name("apply".into())
            .spawn(move || apply.run())
            .map_err(|e| storage(&e))?;
        let client_server_tls = client_tls.as_ref().map(|t| &t.server);
        let listeners = bind_all(
            &cfg.listen_client_urls,
            client_server_tls,
            "--listen-client-urls",
            cfg.socket,
        )
        .await?;
        let peer_listeners = bind_all(
            &cfg.listen_peer_urls,
            peer_tls.as_ref().map(|t| &t.server),
            "--listen-peer-urls",
            cfg.socket,
        )
        .await?;
        let http_listeners = bind_all(
            &cfg.listen_client_http_urls,
            client_server_tls,
            "--listen-client-http-urls",
            cfg.socket,
        )
        .await?;
        let metrics_listeners = bind_all(
            &cfg.listen_metrics_urls,
            client_server_tls,
            "--listen-metrics-urls",
            cfg.socket,
        )
        .await?;
        tracing::info!(
            name = %cfg.name,
            member_id = format!("{:x}", core.identity.member_id),
            cluster_id = format!("{:x}", core.identity.cluster_id),
            revision = core.store.current_revision(),
            applied_index = core.store.applied_index(),
            "member started"
        );
        Ok(Server {
            core,
            listeners,
            http_listeners,
            peer_listeners,
            metrics_listeners,
            transport,
            apply_thread: Some(apply_thread),
            cfg,
        })
    }

    /// The shared state, for embedding.
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// The addresses the client listeners are bound to.
    pub fn client_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(Listener::local_addr)
            .collect()
    }

    /// Serves clients until `shutdown` resolves.
    pub async fn serve(
        mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let clients = incoming(
            std::mem::take(&mut self.listeners),
            "serving client requests",
        );
        let peers = incoming(std::mem::take(&mut self.peer_listeners), "serving peers");
        let (peer_stop_tx, mut peer_stop_rx) = watch::channel(false);
        let peer_server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(
                    self.transport
                        .service(self.core.node.stepper(), self.core.snap_dir.clone()),
                )
                // A member joining with --initial-cluster-state=existing asks for the members here.
                .add_service(service::PeerMembershipService::server(self.core.clone()))
                // Followers forward keep-alives, time-to-live and learner promotions here (see
                // forward.rs).
                .add_service(keel_rpc::etcd::PbLeaseServer::new(
                    service::LeaseService::new(self.core.clone()),
                ))
                .add_service(keel_rpc::etcd::PbClusterServer::new(
                    service::ClusterService::new(self.core.clone()),
                ))
                .add_service(service::AdminService::server(self.core.clone()))
                .serve_with_incoming_shutdown(peers, async move {
                    let _ = peer_stop_rx.wait_for(|&stop| stop).await;
                }),
        );
        if self.cfg.initial_corrupt_check {
            if let Err(e) = crate::corrupt::initial_check(&self.core).await {
                let _ = peer_stop_tx.send(true);
                peer_server.abort();
                let _ = peer_server.await;
                self.stop_raft();
                return Err(e.into());
            }
        }
        let corrupt_checks = (!self.cfg.corrupt_check_time.is_zero()).then(|| {
            tokio::spawn(crate::corrupt::run_periodic(
                self.core.clone(),
                self.cfg.corrupt_check_time,
            ))
        });
        let expiry = tokio::spawn(crate::expiry::run(self.core.clone()));
        let publish = tokio::spawn(publish_attributes(self.core.clone()));
        let sizes = tokio::spawn(refresh_db_size(self.core.clone()));
        let replicas = tokio::spawn(crate::replication::poll(Arc::downgrade(&self.core)));
        let compactor = tokio::spawn(crate::compactor::run(
            self.core.clone(),
            self.cfg.auto_compaction,
        ));
        let (removed_tx, mut removed_rx) = watch::channel(false);
        let peers = tokio::spawn(follow_membership(
            self.core.clone(),
            self.transport.clone(),
            removed_tx,
        ));
        let max = self.core.max_request_bytes + GRPC_OVERHEAD_BYTES;
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let metrics = serve_metrics(
            self.core.clone(),
            self.cfg.metrics_extensive,
            std::mem::take(&mut self.metrics_listeners),
            stop_rx.clone(),
        );
        self.wait_cluster_ready().await;
        let http_only = std::mem::take(&mut self.http_listeners);
        let serves = if http_only.is_empty() {
            service::Serves::Both
        } else {
            service::Serves::Grpc
        };
        let http = (!http_only.is_empty()).then(|| {
            let mut stop = stop_rx.clone();
            tokio::spawn(
                service::router(self.core.clone(), max, &self.cfg, service::Serves::Http)
                    .serve_with_incoming_shutdown(
                        incoming(http_only, "serving client HTTP requests"),
                        async move {
                            let _ = stop.wait_for(|&stop| stop).await;
                        },
                    ),
            )
        });
        let serve = service::router(self.core.clone(), max, &self.cfg, serves)
            .serve_with_incoming_shutdown(clients, async move {
                let _ = stop_rx.wait_for(|&stop| stop).await;
            });
        tokio::pin!(serve);
        let mut removed = false;
        let res = tokio::select! {
            res = &mut serve => res,
            // The guard `wait_for` returns is dropped at once (held, the future would not be Send).
            _ = async { removed_rx.wait_for(|&removed| removed).await.map(|_| ()) } => {
                tracing::error!("this member was removed from the cluster; stopping");
                removed = true;
                let _ = stop_tx.send(true);
                self.core.stop_streams();
                tokio::time::timeout(SHUTDOWN_GRACE, &mut serve).await.unwrap_or(Ok(()))
            }
            _ = shutdown => {
                // Open client connections would hold a graceful shutdown forever: give in-flight
                // requests a moment, then stop.
                let _ = stop_tx.send(true);
                self.core.stop_streams();
                tokio::time::timeout(SHUTDOWN_GRACE, &mut serve).await.unwrap_or(Ok(()))
            }
        };
        // However serving ended: no client stream outlives it.
        self.core.stop_streams();
        let _ = peer_stop_tx.send(true);
        peer_server.abort();
        let _ = peer_server.await;
        metrics.abort();
        let _ = metrics.await;
        if let Some(http) = http {
            http.abort();
            let _ = http.await;
        }
        // Awaited once aborted, so that nothing they hold (the store) outlives `serve`.
        for task in [expiry, publish, peers, sizes, compactor, replicas]
            .into_iter()
            .chain(corrupt_checks)
        {
            task.abort();
            let _ = task.await;
        }
        self.stop_raft();
        if removed {
            return Err(ServeError::Removed);
        }
        Ok(res?)
    }
}

impl Server {
    /// etcd 3.5 serves clients once the cluster is ready (it has a leader), or after
    /// --experimental-wait-cluster-ready-timeout without one.
    async fn wait_cluster_ready(&self) {
        let timeout = self.cfg.wait_cluster_ready_timeout;
        let ready = tokio::time::timeout(timeout, async {
            while self.core.leader_id() == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        if ready.is_err() {
            tracing::warn!(?timeout, "timed out waiting for the ready notification");
        }
    }

    /// Stops the peer transport, raft and the apply loop (which finishes the batch it has).
    fn stop_raft(&mut self) {
        self.transport.shutdown();
        // Stopping raft closes the apply loop's input; it finishes the batch it has, then ends.
        self.core.node.shutdown();
        if let Some(t) = self.apply_thread.take() {
            let _ = t.join();
        }
        crate::metrics::traces::flush();
    }
}

/// Serves /metrics and the health checks on --listen-metrics-urls (HTTP/1.1 and h2) until `stop`.
fn serve_metrics(
    core: Arc<Core>,
    extensive: bool,
    listeners: Vec<Listener>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if listeners.is_empty() {
            return;
        }
        let routes = tonic::service::Routes::from(crate::metrics::routes(core, extensive));
        let served = tonic::transport::Server::builder()
            .accept_http1(true)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming(listeners, "serving metrics"), async move {
                let _ = stop.wait_for(|&stop| stop).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "serving metrics failed");
        }
    })
}

/// Publishes this member's name and client URLs through raft (as etcd does on every start),
/// retried until it is applied, and logs etcd's readiness lines on the way: the cluster version's
/// capabilities once the cluster has a leader, then the publication.
async fn publish_attributes(core: Arc<Core>) {
    let mine = MemberAttributes {
        member_id: core.identity.member_id,
        name: core.name.clone(),
        client_urls: core.client_urls.clone(),
    };
    while core.leader_id() == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(
        cluster_version = crate::version::CLUSTER,
        "enabled capabilities for version {}",
        crate::version::CLUSTER_MINOR
    );
    loop {
        match core
            .propose_internal(RequestBody::MemberAttributes(mine.clone()))
            .await
        {
            Ok(_) => {
                tracing::info!(
                    local_member_id = format!("{:x}", mine.member_id),
                    local_member_attributes =
                        format!("{{Name:{} ClientURLs:{:?}}}", mine.name, mine.client_urls),
                    cluster_id = format!("{:x}", core.identity.cluster_id),
                    "published local member to cluster through raft"
                );
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "publishing member attributes; will retry");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Keeps the store size the quota check reads fresh (reading RocksDB's properties on every write
/// would cost the hot path more than a slightly stale size costs the quota).
async fn refresh_db_size(core: Arc<Core>) {
    let mut every = tokio::time::interval(Duration::from_millis(100));
    loop {
        every.tick().await;
        core.refresh_db_size();
    }
}

/// Keeps the transport's peers in line with the membership (members added, removed, given new
/// peer URLs), and raises `removed` once this member is removed from the cluster.
async fn follow_membership(
    core: Arc<Core>,
    transport: Arc<Transport>,
    removed: watch::Sender<bool>,
) {
    let (changed, mut changes) = watch::channel(());
    core.membership.on_change(move || {
        changed.send_replace(());
    });
    loop {
        let members = core.membership.list();
        let me = core.identity.member_id;
        if core.membership.is_removed(me) {
            let _ = removed.send(true);
            return;
        }
        // Until the state machine knows the members (a joining member before its first
        // snapshot), the seed peers stay.
        if !members.is_empty() {
            let current: std::collections::HashMap<u64, Vec<String>> =
                transport.peers().into_iter().collect();
            for m in members.iter().filter(|m| m.id != me) {
                if current.get(&m.id) != Some(&m.peer_ur_ls) {
                    tracing::info!(peer = format!("{:x}", m.id), urls = ?m.peer_ur_ls, "peer added");
                    transport.add_peer(m.id, m.peer_ur_ls.clone());
                }
            }
            for id in current
                .keys()
                .filter(|id| !members.iter().any(|m| m.id == **id))
            {
                tracing::info!(peer = format!("{id:x}"), "peer removed");
                transport.remove_peer(*id);
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// The first proposal id: the member id's low 16 bits, then the start time in milliseconds, so ids
/// stay unique across restarts and members (as etcd's idutil does).
fn first_request_id(member_id: u64) -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    ((member_id & 0xffff) << 48) | ((ms << 8) & ((1 << 48) - 1))
}

/// Creates a new member's data dir from a snapshot file (`keel snapshot restore`): every key,
/// revision and lease of the snapshot, and the membership of the new cluster `cfg` describes (as
/// etcd's restore, each member of the new cluster is restored from the same file).
pub fn restore(file: &std::path::Path, cfg: &ServerConfig) -> Result<(), StartError> {
    let member_dir = cfg.data_dir.join("member");
    if member_dir.exists() {
        return Err(StartError::Config(format!(
            "data-dir {} exists; restore into a new one",
            cfg.data_dir.display()
        )));
    }
    let new_data_dir = !cfg.data_dir.exists();
    let restored = restore_into(file, cfg, &member_dir);
    if restored.is_err() {
        // Nothing half-made is left behind: the same restore can be run again.
        let _ = std::fs::remove_dir_all(if new_data_dir {
            &cfg.data_dir
        } else {
            &member_dir
        });
    }
    restored
}

fn restore_into(
    file: &std::path::Path,
    cfg: &ServerConfig,
    member_dir: &std::path::Path,
) -> Result<(), StartError> {
    let io = |e: &dyn std::fmt::Display| StartError::Storage(e.to_string());
    let (identity, members) = bootstrap_identity(cfg)?;
    let store = Store::open(&member_dir.join("kv")).map_err(|e| io(&e))?;
    // The restored state is where the new cluster's raft log starts (index 1, term 1): the first
    // start moves the empty log there, as after any snapshot installation.
    let position = crate::snapshot::encode_position(keel_raft::BOOTSTRAP_INDEX, 1);
    let scratch = member_dir.join("snap").join("restore");
    crate::backup::restore(file, &store, &scratch, (META_INSTALLED, &position))
        .map_err(|e| io(&e))?;
    let mut wb = store.write_batch();
    identity.record(&mut wb);
    Membership::bootstrap(&mut wb, &members);
    Membership::bootstrap_removed(&mut wb, &[]);
    crate::alarm::Alarms::clear(&mut wb);
    wb.commit(keel_raft::BOOTSTRAP_INDEX)
        .and_then(|_| store.sync())
        .map_err(|e| io(&e))?;
    drop(store);
    tracing::info!(
        data_dir = %cfg.data_dir.display(),
        member_id = format!("{:x}", identity.member_id),
        cluster_id = format!("{:x}", identity.cluster_id),
        "restored a snapshot"
    );
    Ok(())
}

/// A data dir etcd wrote becomes Keel's before anything opens it (see `backup::data_dir`).
fn import_etcd_member(cfg: &ServerConfig) -> Result<(), StartError> {
    let imported = crate::backup::data_dir::import_if_etcd(
        &cfg.data_dir,
        cfg.wal_dir.as_deref(),
        cfg.bcrypt_cost,
    )
    .map_err(|e| {
        StartError::Storage(format!(
            "importing etcd's data dir {}: {e}",
            cfg.data_dir.display()
        ))
    })?;
    if let Some(i) = imported {
        tracing::info!(
            data_dir = %cfg.data_dir.display(),
            member_id = format!("{:x}", i.member_id),
            cluster_id = format!("{:x}", i.cluster_id),
            applied_index = i.applied,
            revision = i.revision,
            entries_to_replay = i.entries,
            members = i.members,
            etcd_files_kept_at = %i.kept_at.display(),
            "imported an etcd data dir"
        );
    }
    Ok(())
}

/// Who this member is: as recorded in the data dir, else bootstrapped from the initial cluster
/// (`new`), else learned from the running cluster (`existing`). Also returns the members to talk
/// to before the state machine knows any (a joining member's seeds).
async fn establish_identity(
    cfg: &ServerConfig,
    store: &Store,
    dialer: &keel_raft::Dialer,
) -> Result<(Identity, Vec<Member>), StartError> {
    let storage = |e: ServerError| StartError::Storage(e.to_string());
    if let Some(identity) = Identity::load(store).map_err(|e| storage(e.into()))? {
        check_token(cfg, &identity)?;
        return Ok((identity, Vec::new()));
    }
    if store.applied_index() > 0 {
        return Err(StartError::Storage(format!(
            "{} holds data but no member identity (written by an older Keel?); refusing to bootstrap over it",
            cfg.data_dir.display()
        )));
    }
    let (identity, members) = match cfg.initial_cluster_state {
        ClusterState::New => bootstrap_identity(cfg)?,
        ClusterState::Existing => join_identity(cfg, dialer).await?,
    };
    if cfg.initial_cluster_state == ClusterState::New {
        // Identity, members and the applied index in one write: a crash leaves all or nothing.
        // The state machine starts where the bootstrapped raft log does.
        let mut wb = store.write_batch();
        identity.record(&mut wb);
        Membership::bootstrap(&mut wb, &members);
        wb.commit(keel_raft::BOOTSTRAP_INDEX)
            .and_then(|_| store.sync())
            .map_err(|e| StartError::Storage(e.to_string()))?;
    } else {
        identity.save(store).map_err(|e| storage(e.into()))?;
    }
    Ok((identity, members))
}

/// A data dir bootstrapped with one cluster token refuses to start with another: the flags
/// describe a different cluster than the one the data belongs to.
fn check_token(cfg: &ServerConfig, identity: &Identity) -> Result<(), StartError> {
    if cfg.initial_cluster_state == ClusterState::New
        && !identity.token.is_empty()
        && identity.token != cfg.initial_cluster_token
    {
        return Err(StartError::Config(format!(
            "member {:x} in {} belongs to cluster {:x} bootstrapped with --initial-cluster-token={:?}, \
             not {:?}: refusing to start with another cluster's configuration",
            identity.member_id,
            cfg.data_dir.display(),
            identity.cluster_id,
            identity.token,
            cfg.initial_cluster_token
        )));
    }
    Ok(())
}

fn bootstrap_identity(cfg: &ServerConfig) -> Result<(Identity, Vec<Member>), StartError> {
    let members: Vec<Member> = cfg
        .initial_cluster
        .iter()
        .map(|(name, urls)| Member {
            id: member_id(urls, &cfg.initial_cluster_token),
            name: name.clone(),
            peer_ur_ls: urls.clone(),
            ..Default::default()
        })
        .collect();
    let me = find_self(cfg)?;
    let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    let identity = Identity {
        cluster_id: cluster_id(&ids),
        member_id: member_id(&me, &cfg.initial_cluster_token),
        token: cfg.initial_cluster_token.clone(),
    };
    Ok((identity, members))
}

/// Whether two lists of URLs are the same, as etcd's URLStringsEqual decides: equal as strings,
/// or naming the same schemes and addresses once their host names are resolved (SRV discovery
/// names members by host name; they advertise IPs). Resolves with the system's resolver, once
/// at start-up.
fn same_urls(a: &[String], b: &[String]) -> bool {
    use std::net::ToSocketAddrs;
    let resolved = |urls: &[String]| -> Option<Vec<(bool, String)>> {
        let mut out = urls
            .iter()
            .map(|u| {
                let t = keel_raft::Target::parse(u).ok()?;
                let at = match &t.address {
                    keel_raft::dial::Address::Tcp(hp) => {
                        hp.to_socket_addrs().ok()?.next()?.to_string()
                    }
                    keel_raft::dial::Address::Unix(path) => path.display().to_string(),
                };
                Some((t.secure, at))
            })
            .collect::<Option<Vec<_>>>()?;
        out.sort();
        Some(out)
    };
    let (mut x, mut y) = (a.to_vec(), b.to_vec());
    x.sort();
    y.sort();
    x == y || matches!((resolved(a), resolved(b)), (Some(p), Some(q)) if p == q)
}

/// This member's peer URLs in --initial-cluster, checked against --initial-advertise-peer-urls.
fn find_self(cfg: &ServerConfig) -> Result<Vec<String>, StartError> {
    let (_, urls) = cfg
        .initial_cluster
        .iter()
        .find(|(name, _)| *name == cfg.name)
        .ok_or_else(|| {
            StartError::Config(format!(
                "couldn't find local name {:?} in the initial cluster configuration (--initial-cluster)",
                cfg.name
            ))
        })?;
    let mut mine = urls.clone();
    mine.sort();
    if !same_urls(urls, &cfg.initial_advertise_peer_urls) {
        let mut advertised = cfg.initial_advertise_peer_urls.clone();
        advertised.sort();
        return Err(StartError::Config(format!(
            "--initial-cluster has {}={} but --initial-advertise-peer-urls is {}",
            cfg.name,
            mine.join(","),
            advertised.join(",")
        )));
    }
    Ok(mine)
}

/// Joins a running cluster: asks the other members of --initial-cluster for the member list and
/// finds this member in it by its peer URLs (it was added with MemberAdd first).
async fn join_identity(
    cfg: &ServerConfig,
    dialer: &keel_raft::Dialer,
) -> Result<(Identity, Vec<Member>), StartError> {
    let mine = find_self(cfg)?;
    let others: Vec<&String> = cfg
        .initial_cluster
        .iter()
        .filter(|(name, _)| *name != cfg.name)
        .flat_map(|(_, urls)| urls)
        .collect();
    let mut last_error = String::from("--initial-cluster names no other member");
    for url in others {
        match crate::service::fetch_members(url, dialer).await {
            Ok((cluster_id, members)) => {
                let me = members.iter().find(|m| {
                    let mut urls = m.peer_ur_ls.clone();
                    urls.sort();
                    urls == mine
                });
                let Some(me) = me else {
                    return Err(StartError::Config(format!(
                        "no member of cluster {cluster_id:x} has peer URLs {}: add this member with `etcdctl member add` first",
                        mine.join(",")
                    )));
                };
                tracing::info!(
                    via = %url,
                    member_id = format!("{:x}", me.id),
                    cluster_id = format!("{cluster_id:x}"),
                    "joining a running cluster"
                );
                let identity = Identity {
                    cluster_id,
                    member_id: me.id,
                    token: String::new(),
                };
                return Ok((identity, members));
            }
            Err(e) => last_error = format!("{url}: {e}"),
        }
    }
    Err(StartError::Config(format!(
        "--initial-cluster-state=existing: could not get the member list from the cluster ({last_error})"
    )))
}

/// etcd's --experimental-bootstrap-defrag-threshold-megabytes: defragment before serving when
/// that frees at least `threshold` bytes.
fn defragment_at_start(store: &Store, threshold: u64) {
    if threshold == 0 {
        return;
    }
    let size = store.size();
    let free = size.total.saturating_sub(size.in_use);
    if free < threshold {
        tracing::info!(
            free_bytes = free,
            threshold_bytes = threshold,
            "skipping defragmentation at start-up"
        );
        return;
    }
    tracing::info!(
        free_bytes = free,
        threshold_bytes = threshold,
        "defragmenting at start-up"
    );
    store.defragment();
}

/// etcd's --force-new-cluster: this member restarts as a one-member cluster with its data (the
/// way back from a cluster that lost its quorum for good). Every other member is removed through
/// entries appended to this member's log and committed at once; what was not committed goes.
fn force_new_cluster(
    store: &Store,
    membership: &Membership,
    log: &mut LogStore,
    me: u64,
) -> Result<(), StartError> {
    let storage = |e: &dyn std::fmt::Display| StartError::Storage(e.to_string());
    // What the state machine applied is committed even when the log's record of it lags.
    if store.applied_index() > log.hard_state().commit {
        log.raise_commit(store.applied_index())
            .map_err(|e| storage(&e))?;
    }
    let cs = log.conf_state();
    let mut others: Vec<u64> = cs
        .voters
        .iter()
        .chain(cs.learners.iter())
        .copied()
        .chain(membership.list().iter().map(|m| m.id))
        .filter(|id| *id != me)
        .collect();
    others.sort_unstable();
    others.dedup();
    let removals: Vec<(u64, Vec<u8>)> = others
        .iter()
        .map(|&id| {
            let change = MemberChange {
                id: 0,
                member: Some(Member {
                    id,
                    ..Default::default()
                }),
            };
            (id, change.encode_to_vec())
        })
        .collect();
    tracing::warn!(
        local_member_id = format!("{me:x}"),
        removed = ?others.iter().map(|id| format!("{id:x}")).collect::<Vec<_>>(),
        "forcing restart as a one-member cluster (--force-new-cluster); discarding uncommitted entries"
    );
    log.force_new_cluster(me, &removals)
        .map_err(|e| storage(&e))
}

/// A crash between installing a snapshot in the state machine and moving the raft log past it
/// leaves the state machine ahead of the log: move the log now.
fn repair_interrupted_install(
    store: &Store,
    membership: &Membership,
    log: &mut LogStore,
) -> Result<(), StartError> {
    let applied = store.applied_index();
    if applied <= log.last_index() {
        return Ok(());
    }
    let position = store
        .get_meta(META_INSTALLED)
        .map_err(|e| StartError::Storage(e.to_string()))?
        .as_deref()
        .and_then(decode_position);
    let Some((index, term)) = position.filter(|(index, _)| *index == applied) else {
        if log.is_empty() {
            // A new cluster's state machine, about to be bootstrapped with the log.
            return Ok(());
        }
        return Err(StartError::Storage(format!(
            "the state machine applied index {applied} is beyond the raft log (last index {})",
            log.last_index()
        )));
    };
    tracing::warn!(
        index,
        term,
        "finishing a snapshot installation interrupted by a restart"
    );
    let meta = keel_raft::SnapshotMetadata {
        index,
        term,
        conf_state: Some(conf_state(&membership.list())).into(),
        ..Default::default()
    };
    log.apply_snapshot(&meta)
        .map_err(|e| StartError::Storage(e.to_string()))
}

/// Binds a listener for each URL (`what`: the flag naming them, for errors).
async fn bind_all(
    urls: &[String],
    tls: Option<&Arc<rustls::ServerConfig>>,
    what: &str,
    options: crate::startup::SocketOptions,
) -> Result<Vec<Listener>, StartError> {
    let mut listeners = Vec::new();
    for url in urls {
        listeners.push(Listener::bind_with(url, tls, what, options).await?);
    }
    Ok(listeners)
}

/// The hosts of `urls` (what a self-signed certificate for them names).
fn url_hosts(urls: &[String]) -> Vec<String> {
    urls.iter()
        .filter_map(|u| keel_raft::Target::parse(u).ok())
        .map(|t| t.host)
        .collect()
}

/// The raft settings etcd's flags describe: a tick per heartbeat interval, an election after
/// --election-timeout worth of ticks.
fn raft_config(cfg: &ServerConfig, id: u64, voters: Vec<u64>, applied: u64) -> NodeConfig {
    let mut raft = NodeConfig::new(id, voters, applied);
    raft.tick_interval = cfg.heartbeat_interval;
    let ticks = cfg.election_timeout.as_millis() / cfg.heartbeat_interval.as_millis().max(1);
    raft.election_ticks = (ticks as usize).max(2);
    raft.pre_vote = cfg.pre_vote;
    raft.initial_election_tick_advance = cfg.initial_election_tick_advance;
    raft
}

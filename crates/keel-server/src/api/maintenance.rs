//! etcd's Maintenance service: status, alarms, defragmentation, hashes, snapshots, leader
//! transfer. Downgrade answers with etcd's `not capable` error.

use std::sync::Arc;

use keel_rpc::etcd::{
    PbAlarmRequest as AlarmRequest, PbAlarmResponse as AlarmResponse,
    PbDefragmentRequest as DefragmentRequest, PbDefragmentResponse as DefragmentResponse,
    PbDowngradeRequest as DowngradeRequest, PbDowngradeResponse as DowngradeResponse,
    PbHashKvRequest as HashKvRequest, PbHashKvResponse as HashKvResponse,
    PbHashRequest as HashRequest, PbHashResponse as HashResponse, PbMaintenanceService,
    PbMoveLeaderRequest as MoveLeaderRequest, PbMoveLeaderResponse as MoveLeaderResponse,
    PbSnapshotRequest as SnapshotRequest, PbSnapshotResponse as SnapshotResponse,
    PbStatusRequest as StatusRequest, PbStatusResponse as StatusResponse,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::credentials::admin;
use super::not_capable;
use crate::backup;
use crate::member::Member;
use crate::ServerError;

/// The etcd API version Keel speaks, reported in Status.
pub const API_VERSION: &str = crate::version::SERVER;

/// The Maintenance service.
pub struct MaintenanceService {
    member: Arc<Member>,
}

impl MaintenanceService {
    /// A Maintenance service over `member`.
    pub fn new(member: Arc<Member>) -> Self {
        MaintenanceService { member }
    }
}

#[tonic::async_trait]
impl PbMaintenanceService for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        // GET lists every raised alarm; ACTIVATE/DEACTIVATE (root only: an alarm stops writes
        // cluster-wide) go through raft and answer with the alarm they changed, as etcd does.
        let alarms = if req.get_ref().action == 0 {
            self.member.alarms().list()
        } else {
            let who = admin(&self.member, &req)?;
            self.member.propose_alarm(&who, req.into_inner()).await?
        };
        Ok(Response::new(AlarmResponse {
            header: self.member.header(self.member.store().current_revision()),
            alarms,
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let raft = self.member.raft_status();
        let size = self.member.store().size();
        let mut errors = Vec::new();
        if raft.leader_id == 0 {
            errors.push(ServerError::NoLeader.to_string());
        }
        for a in self.member.alarms().list() {
            errors.push(format!(
                "memberID:{} alarm:{} ",
                a.member_id,
                crate::alarm::name(a.alarm)
            ));
        }
        Ok(Response::new(StatusResponse {
            header: self.member.header(self.member.store().current_revision()),
            version: API_VERSION.into(),
            db_size: size.total as i64,
            leader: raft.leader_id,
            raft_index: raft.commit_index,
            raft_term: raft.term,
            raft_applied_index: self.member.store().applied_index(),
            errors,
            db_size_in_use: size.in_use as i64,
            is_learner: self.member.is_learner(),
            ..Default::default()
        }))
    }

    async fn defragment(
        &self,
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        admin(&self.member, &req)?;
        let store = self.member.store().clone();
        // RocksDB compacts in the background of this call; readers are never blocked by it.
        self.member.blocking(move || store.defragment()).await?;
        // The quota check reads the size at once: a write right after a defragmentation that made
        // room (and a disarm) must see the room.
        self.member.refresh_db_size();
        // etcd 3.4 answers with no header (clients, the etcd-client crate's tests among them,
        // rely on it).
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        admin(&self.member, &req)?;
        let store = self.member.store().clone();
        let hash = self
            .member
            .blocking(move || store.hash_all())
            .await?
            .map_err(ServerError::from)?;
        Ok(Response::new(HashResponse {
            header: self.member.header(self.member.store().current_revision()),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        admin(&self.member, &req)?;
        let rev = req.into_inner().revision;
        let store = self.member.store().clone();
        let h = self
            .member
            .blocking(move || store.hash_kv(rev))
            .await?
            .map_err(ServerError::from)?;
        Ok(Response::new(HashKvResponse {
            header: self.member.header(self.member.store().current_revision()),
            hash: h.hash,
            compact_revision: h.compact_revision,
            hash_revision: h.revision,
        }))
    }

    type SnapshotStream = ReceiverStream<Result<SnapshotResponse, Status>>;

    /// The whole store, as `etcdctl snapshot save` expects: a stream of pieces with the bytes still
    /// to come, the last piece the SHA-256 of all before it (see backup.rs).
    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        admin(&self.member, &req)?;
        let dir = self.member.backup_checkpoint()?;
        let internal =
            |e: &dyn std::fmt::Display| Status::from(ServerError::Internal(e.to_string()));
        let header = self.member.header(self.member.store().current_revision());
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let db = dir.with_extension("db");
            let sent = send_etcd_snapshot(&dir, &db, |blob, remaining_bytes| {
                let piece = SnapshotResponse {
                    header,
                    remaining_bytes,
                    blob,
                    ..Default::default()
                };
                tx.blocking_send(Ok(piece)).is_ok()
            });
            if let Err(e) = sent {
                let _ = tx.blocking_send(Err(internal(&e)));
            }
            let _ = std::fs::remove_dir_all(&dir);
            let _ = std::fs::remove_file(&db);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        admin(&self.member, &req)?;
        self.member.move_leader(req.into_inner().target_id).await?;
        // As etcd 3.4: no header.
        Ok(Response::new(MoveLeaderResponse { header: None }))
    }

    async fn downgrade(
        &self,
        _: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        not_capable()
    }
}

/// Bytes per snapshot message (etcd sends 32 KiB; larger pieces cost fewer messages).
const SNAPSHOT_PIECE: usize = 1024 * 1024;

/// Writes the checkpoint `dir` as etcd's database `db`, then hands it out in pieces with the
/// bytes still to come, and its SHA-256 last (as etcd's server does). `out` returns false to stop
/// early (the client went away).
fn send_etcd_snapshot(
    dir: &std::path::Path,
    db: &std::path::Path,
    mut out: impl FnMut(Vec<u8>, u64) -> bool,
) -> Result<(), backup::BackupError> {
    use sha2::Digest;
    use std::io::Read;
    let size = backup::export(dir, db)?;
    tracing::info!(bytes = size, "sending a snapshot to a client");
    let mut remaining = size + backup::DIGEST_LEN;
    let mut hash = sha2::Sha256::new();
    let mut f = std::fs::File::open(db)?;
    loop {
        let mut piece = vec![0u8; SNAPSHOT_PIECE];
        let n = f.read(&mut piece)?;
        if n == 0 {
            break;
        }
        piece.truncate(n);
        hash.update(&piece);
        remaining -= n as u64;
        if !out(piece, remaining) {
            return Ok(());
        }
    }
    out(hash.finalize().to_vec(), 0);
    Ok(())
}

//! `keel --data-dir DIR` on a data dir etcd (or `etcdctl snapshot restore`) wrote: the member's
//! state imported into Keel's layout before the member starts.
//!
//! etcd's member is its backend (`member/snap/db`, everything applied up to its consistent
//! index), its raft snapshot files (`member/snap/*.snap`, the members in a v2 store), and its WAL
//! (`member/wal/*.wal`, every entry since the last snapshot, applied or not, and the hard state).
//! The import keeps the member's and cluster's ids and raft's terms and indexes: the backend
//! becomes the state machine at the consistent index, and the WAL's entries after it become
//! Keel's raft log, rewritten in Keel's encoding, which Keel's apply loop then replays as after
//! any restart. So every member of an etcd cluster can be imported and the cluster goes on.
//!
//! The etcd files are never changed: `member` is renamed `member.etcd` and the import is written
//! to `member.import`, renamed `member` when complete. A crash before that leaves `member.etcd`
//! alone, which the next start imports again; a failed import renames it back.

use std::path::{Path, PathBuf};

use keel_mvcc::Store;
use keel_raft::{HardState, LogStore, SnapshotMetadata};

use super::etcd_entries::{apply_membership, only_membership, to_keel, Members};
use super::etcd_wal::{newest_snap, read_wal, wal_files, Wal};
use super::{etcd, BackupError};
use crate::member::conf_state;
use crate::member::{encode_position, META_INSTALLED};
use crate::membership::{Identity, Membership};

/// What an import brought in.
#[derive(Debug)]
pub struct Imported {
    /// The member's id.
    pub member_id: u64,
    /// Its cluster's.
    pub cluster_id: u64,
    /// The raft index the imported state machine is at.
    pub applied: u64,
    /// The store revision there.
    pub revision: i64,
    /// WAL entries after it, now Keel's raft log, to be replayed.
    pub entries: usize,
    /// The members.
    pub members: usize,
    /// Where etcd's files are kept.
    pub kept_at: PathBuf,
}

/// Imports `data_dir` if it holds an etcd member (or an interrupted import of one); `None` if it
/// does not. `wal_dir` is `--wal-dir`; `bcrypt_cost` hashes the passwords etcd 3.4's entries
/// carry in the clear.
pub fn import_if_etcd(
    data_dir: &Path,
    wal_dir: Option<&Path>,
    bcrypt_cost: u32,
) -> Result<Option<Imported>, BackupError> {
    let member = data_dir.join("member");
    let aside = data_dir.join("member.etcd");
    if let Some(dir) = wal_dir {
        if !wal_files(dir)?.is_empty() {
            return Err(BackupError::Invalid(format!(
                "--wal-dir {} holds etcd's WAL: move its files to {} and start without --wal-dir to import the member",
                dir.display(),
                member.join("wal").display()
            )));
        }
    }
    let fresh = !member.join("kv").exists() && !wal_files(&member.join("wal"))?.is_empty();
    let resumed = aside.exists() && !member.exists();
    if !fresh && !resumed {
        return Ok(None);
    }
    if wal_dir.is_some() {
        return Err(BackupError::Invalid(format!(
            "{} is an etcd member's: start once without --wal-dir to import it",
            data_dir.display()
        )));
    }
    if fresh {
        if aside.exists() {
            return Err(BackupError::Invalid(format!(
                "{} and {} both exist: remove the one that is not this member's",
                member.display(),
                aside.display()
            )));
        }
        std::fs::rename(&member, &aside)?;
        sync_dir(data_dir)?;
    }
    let staging = data_dir.join("member.import");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    match import(&aside, &staging, bcrypt_cost) {
        Ok(mut imported) => {
            std::fs::rename(&staging, &member)?;
            sync_dir(data_dir)?;
            imported.kept_at = aside;
            Ok(Some(imported))
        }
        Err(e) => {
            // etcd's files go back where etcd looks for them.
            let _ = std::fs::remove_dir_all(&staging);
            std::fs::rename(&aside, &member)?;
            sync_dir(data_dir)?;
            Err(e)
        }
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Imports etcd's member dir `src` into Keel's member dir `dst` (new).
fn import(src: &Path, dst: &Path, bcrypt_cost: u32) -> Result<Imported, BackupError> {
    let db = src.join("snap").join("db");
    let wal = read_wal(&src.join("wal"))?;
    if wal.member_id == 0 {
        return Err(BackupError::Invalid(format!(
            "{}: the WAL names no member",
            src.join("wal").display()
        )));
    }
    let snap = newest_snap(&src.join("snap"), wal.hard_state.commit)?;
    let snap_at = snap.as_ref().map_or((0, 0), |s| (s.index, s.term));
    let members = snap
        .as_ref()
        .map(|s| Members::from_v2_store(&s.store))
        .unwrap_or_default();
    // Where the state machine starts: what the backend applied, or the snapshot if that is newer
    // (entries since changed no key, or the backend would have recorded them), as etcd restarts.
    let mut applied = etcd::consistent_index(&db)?.max(snap_at.0);
    if applied == 0 {
        // A member that never wrote a key: its first entries only made the membership.
        applied = wal
            .entries
            .iter()
            .take_while(|e| e.index <= wal.hard_state.commit && only_membership(e))
            .last()
            .map_or(0, |e| e.index);
    }
    check_covers(&wal, snap_at.0, applied)?;
    let term = if applied == snap_at.0 {
        snap_at.1
    } else {
        wal.term(applied).unwrap_or_default()
    };

    std::fs::create_dir_all(dst)?;
    let store = Store::open(&dst.join("kv"))?;
    let position = encode_position(applied, term);
    etcd::import(&db, &store, (META_INSTALLED, &position), Some(applied))?;
    let removed: Vec<u64> = members.removed.iter().copied().collect();
    let mut wb = store.write_batch();
    Identity {
        cluster_id: wal.cluster_id,
        member_id: wal.member_id,
        token: String::new(),
    }
    .record(&mut wb);
    Membership::bootstrap(&mut wb, &members.list());
    Membership::bootstrap_removed(&mut wb, &removed);
    wb.commit(applied)?;
    // The members at `applied`: the snapshot's, changed by the entries after it as Keel's apply
    // loop changes them.
    let membership = Membership::load(&store).map_err(|e| BackupError::Invalid(e.to_string()))?;
    let mut wb = store.write_batch();
    for e in wal
        .entries
        .iter()
        .filter(|e| e.index > snap_at.0 && e.index <= applied)
    {
        apply_membership(e, &membership, &mut wb)?;
    }
    wb.commit(applied).and_then(|_| store.sync())?;
    let list = membership.list();
    let revision = store.current_revision();
    drop(store);

    let tail: Vec<_> = wal
        .entries
        .iter()
        .filter(|e| e.index > applied)
        .map(|e| to_keel(e, bcrypt_cost))
        .collect::<Result<_, _>>()?;
    let mut log =
        LogStore::open(&dst.join("raft")).map_err(|e| BackupError::Invalid(e.to_string()))?;
    let raft = |e: keel_raft::RaftError| BackupError::Invalid(format!("writing the raft log: {e}"));
    log.apply_snapshot(&SnapshotMetadata {
        index: applied,
        term,
        conf_state: Some(conf_state(&list)).into(),
        ..Default::default()
    })
    .map_err(raft)?;
    let hs = HardState {
        term: wal.hard_state.term.max(term),
        vote: wal.hard_state.vote,
        commit: wal.hard_state.commit.max(applied),
        ..Default::default()
    };
    log.append(&tail, Some(&hs)).map_err(raft)?;
    Ok(Imported {
        member_id: wal.member_id,
        cluster_id: wal.cluster_id,
        applied,
        revision,
        entries: tail.len(),
        members: list.len(),
        kept_at: PathBuf::new(),
    })
}

/// The WAL must hold every entry from the snapshot (or the log's start) on: the membership is
/// rebuilt from them, and those after `applied` are replayed.
fn check_covers(wal: &Wal, snap_index: u64, applied: u64) -> Result<(), BackupError> {
    let Some(first) = wal.entries.first().map(|e| e.index) else {
        return Ok(());
    };
    let last = wal.entries.last().map_or(0, |e| e.index);
    if first > snap_index + 1 || (applied > snap_index && last < applied) {
        return Err(BackupError::Invalid(format!(
            "the WAL holds entries {first}..={last}, not every entry after the snapshot at index {snap_index}"
        )));
    }
    Ok(())
}

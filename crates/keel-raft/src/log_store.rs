//! The raft log and raft state on RocksDB (`raft_log` and `raft_state` families), as raft-rs's
//! `Storage`. Entries and the HardState that goes with them are written in one synced batch: nothing
//! is acknowledged to raft before it is on disk. A tail of recent entries is cached in memory because
//! raft asks for terms and fresh entries far more often than it asks for old ones.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use rocksdb::{ColumnFamilyDescriptor, Options, WriteOptions, DB};

use crate::{RaftError, Result};

const CF_LOG: &str = "raft_log";
const CF_STATE: &str = "raft_state";
const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_CONF_STATE: &[u8] = b"conf_state";
/// (index, term) of the last entry removed by log compaction.
const KEY_TRUNCATED: &[u8] = b"truncated";
/// Entries kept in the in-memory tail.
const TAIL_CAPACITY: usize = 4096;
/// A bootstrapped log starts as if compacted through this index (term 1): the state machine was
/// created at it, so a member that joins later, with an empty log, is sent a snapshot rather than
/// entries it could not make sense of.
pub const BOOTSTRAP_INDEX: u64 = 1;

/// A state-machine snapshot raft can send to a member behind the compacted log.
pub struct SnapshotImage {
    /// The raft index the state machine image was applied through.
    pub index: u64,
    /// The membership as of `index`.
    pub conf_state: ConfState,
    /// Where the image is (a directory the transport streams).
    pub data: Vec<u8>,
}

/// Makes state-machine snapshots on request (the state machine's side of raft's `Storage::snapshot`).
pub trait SnapshotSource: Send + Sync {
    /// An image applied through at least `min_index`, made now if none is recent enough.
    /// (The image must be at `min_index` or later and its membership must include `to`: raft
    /// refuses a snapshot that does not name its receiver, e.g. one made before it was added.)
    fn snapshot(&self, min_index: u64, to: u64) -> std::result::Result<SnapshotImage, String>;
}

/// The raft log store.
pub struct LogStore {
    db: DB,
    hard_state: HardState,
    conf_state: ConfState,
    truncated_index: u64,
    truncated_term: u64,
    last_index: u64,
    /// The newest entries, contiguous and ending at `last_index`.
    tail: VecDeque<Entry>,
    /// Where snapshots for lagging members come from.
    snapshots: Option<Arc<dyn SnapshotSource>>,
    /// Whether writes are synced (always, but in the simulation).
    fsync: bool,
}

fn storage_err(e: impl std::error::Error + Send + Sync + 'static) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

impl LogStore {
    /// Opens (or creates) the log store under `path`.
    pub fn open(path: &Path) -> Result<LogStore> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Entries live until the next log compaction (every `snapshot_count` applied entries), so
        // a memtable as large as RocksDB's default (64 MiB) drops most of them at its flush (the
        // compaction's range deletion covers them) instead of writing them to SST files and
        // compacting them away later: 8 MiB cost ~3 % more member CPU per put.
        let cfs = [CF_LOG, CF_STATE].map(|n| {
            let mut cf = Options::default();
            cf.set_write_buffer_size(64 << 20);
            ColumnFamilyDescriptor::new(n, cf)
        });
        // The hard state is written with every append but never fills its memtable, so RocksDB
        // would keep every WAL file since its last flush (by default up to four times all
        // memtables) and replay them all at start-up; past 64 MiB of WAL it flushes it instead.
        opts.set_max_total_wal_size(64 << 20);
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        let mut store = LogStore {
            db,
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            truncated_index: 0,
            truncated_term: 0,
            last_index: 0,
            tail: VecDeque::new(),
            snapshots: None,
            fsync: true,
        };
        store.load()?;
        Ok(store)
    }

    /// Writes without fsync: for the deterministic simulation (its crashes happen inside one
    /// process, where the page cache survives them, so a sync would only cost time) and for
    /// etcd's --unsafe-no-fsync (a power loss may then lose acknowledged writes).
    pub fn without_fsync(mut self) -> Self {
        self.fsync = false;
        self
    }

    /// Every log write is synced: it is the durability point.
    fn write_options(&self) -> WriteOptions {
        let mut wo = WriteOptions::default();
        wo.set_sync(self.fsync);
        wo
    }

    fn load(&mut self) -> Result<()> {
        if let Some(b) = self.db.get_cf(self.cf(CF_STATE), KEY_HARD_STATE)? {
            self.hard_state = HardState::parse_from_bytes(&b)?;
        }
        if let Some(b) = self.db.get_cf(self.cf(CF_STATE), KEY_CONF_STATE)? {
            self.conf_state = ConfState::parse_from_bytes(&b)?;
        }
        if let Some(b) = self.db.get_cf(self.cf(CF_STATE), KEY_TRUNCATED)? {
            let b: [u8; 16] = b
                .as_slice()
                .try_into()
                .map_err(|_| RaftError::Corrupt("truncated marker".into()))?;
            self.truncated_index = u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
            self.truncated_term = u64::from_be_bytes(b[8..].try_into().expect("8 bytes"));
        }
        self.last_index = self.truncated_index;
        let mut iter = self.db.raw_iterator_cf(self.cf(CF_LOG));
        iter.seek_to_last();
        if let Some(k) = iter.key() {
            self.last_index = decode_index(k)?;
        }
        iter.status()?;
        Ok(())
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        // Both families are created by `open` (create_missing_column_families).
        self.db
            .cf_handle(name)
            .expect("column family opened at start")
    }

    /// Whether this store has never been initialized (no conf state, no log).
    pub fn is_empty(&self) -> bool {
        self.conf_state.voters.is_empty()
            && self.conf_state.learners.is_empty()
            && self.last_index == 0
    }

    /// Sets where snapshots come from.
    pub fn set_snapshot_source(&mut self, source: Arc<dyn SnapshotSource>) {
        self.snapshots = Some(source);
    }

    /// Initializes an empty store as a new cluster's: `conf_state` as the membership, and the log
    /// starting after [`BOOTSTRAP_INDEX`].
    pub fn bootstrap(&mut self, conf_state: ConfState) -> Result<()> {
        let meta = SnapshotMetadata {
            index: BOOTSTRAP_INDEX,
            term: 1,
            conf_state: Some(conf_state).into(),
            ..Default::default()
        };
        self.apply_snapshot(&meta)
    }

    /// Replaces the log with a snapshot's position: every entry goes, the log continues after
    /// `meta.index`, and the membership is the snapshot's. The state machine has installed the
    /// image already.
    pub fn apply_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<()> {
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_range_cf(self.cf(CF_LOG), 0u64.to_be_bytes(), u64::MAX.to_be_bytes());
        let mut marker = meta.index.to_be_bytes().to_vec();
        marker.extend_from_slice(&meta.term.to_be_bytes());
        batch.put_cf(self.cf(CF_STATE), KEY_TRUNCATED, marker);
        let cs = meta.get_conf_state();
        batch.put_cf(self.cf(CF_STATE), KEY_CONF_STATE, cs.write_to_bytes()?);
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        batch.put_cf(self.cf(CF_STATE), KEY_HARD_STATE, hs.write_to_bytes()?);
        self.db.write_opt(batch, &self.write_options())?;
        self.hard_state = hs;
        self.conf_state = cs.clone();
        self.truncated_index = meta.index;
        self.truncated_term = meta.term;
        self.last_index = meta.index;
        self.tail.clear();
        Ok(())
    }

    /// The last index in the log (or of the snapshot it starts after).
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// The current HardState (as last persisted or about to be).
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The current membership as raft knows it.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Records the membership durably (bootstrap and applied conf changes).
    pub fn set_conf_state(&mut self, cs: ConfState) -> Result<()> {
        self.db.put_cf_opt(
            self.cf(CF_STATE),
            KEY_CONF_STATE,
            cs.write_to_bytes()?,
            &self.write_options(),
        )?;
        self.conf_state = cs;
        Ok(())
    }

    /// Appends `entries` (replacing any conflicting tail) and records `hard_state`, in one synced
    /// write batch. This is the durability point of every write. A change of the commit index
    /// alone is only noted.
    pub fn append(&mut self, entries: &[Entry], hard_state: Option<&HardState>) -> Result<()> {
        let mut batch = rocksdb::WriteBatch::default();
        if let Some(first) = entries.first() {
            let new_last = entries[entries.len() - 1].index;
            for e in entries {
                batch.put_cf(self.cf(CF_LOG), e.index.to_be_bytes(), e.write_to_bytes()?);
            }
            // A leader change can truncate our uncommitted tail: drop what the new entries replace.
            if new_last < self.last_index {
                batch.delete_range_cf(
                    self.cf(CF_LOG),
                    (new_last + 1).to_be_bytes(),
                    (self.last_index + 1).to_be_bytes(),
                );
            }
            while self.tail.back().is_some_and(|e| e.index >= first.index) {
                self.tail.pop_back();
            }
            if self.tail.back().is_some_and(|e| e.index + 1 != first.index) {
                self.tail.clear();
            }
            self.tail.extend(entries.iter().cloned());
            while self.tail.len() > TAIL_CAPACITY {
                self.tail.pop_front();
            }
            self.last_index = new_last;
        }
        // Only new entries, a term or a vote must be durable before raft goes on; a commit index
        // alone (a leader counting acks, a follower told by a heartbeat) is written with the next
        // append, as etcd's MustSync has it: raft learns a lost one again, and start-up raises it
        // to what the state machine applied (see `raise_commit`).
        let must_sync = !entries.is_empty()
            || hard_state.is_some_and(|hs| {
                hs.term != self.hard_state.term || hs.vote != self.hard_state.vote
            });
        if let Some(hs) = hard_state {
            self.hard_state = hs.clone();
        }
        if !must_sync {
            return Ok(());
        }
        batch.put_cf(
            self.cf(CF_STATE),
            KEY_HARD_STATE,
            self.hard_state.write_to_bytes()?,
        );
        let started = std::time::Instant::now();
        self.db.write_opt(batch, &self.write_options())?;
        wal_fsync_seconds().observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// etcd's --force-new-cluster: this member alone becomes the cluster, with everything it has
    /// committed. The uncommitted tail (never acknowledged) goes; raft's membership becomes `me`
    /// alone; and an entry removing each of `others` is appended and marked committed, so the
    /// state machine's membership follows when it applies them (as etcd appends conf changes to
    /// its WAL). `contexts` are the entries' contexts, one per removed member.
    pub fn force_new_cluster(&mut self, me: u64, others: &[(u64, Vec<u8>)]) -> Result<()> {
        use raft::eraftpb::{ConfChange, ConfChangeType, EntryType};
        let commit = self.hard_state.commit.max(self.truncated_index);
        let term = if commit > self.truncated_index {
            raft::Storage::term(self, commit).map_err(RaftError::Raft)?
        } else {
            self.truncated_term
        }
        .max(self.hard_state.term);
        let mut batch = rocksdb::WriteBatch::default();
        if self.last_index > commit {
            batch.delete_range_cf(
                self.cf(CF_LOG),
                (commit + 1).to_be_bytes(),
                (self.last_index + 1).to_be_bytes(),
            );
        }
        // A cache of the latest entries; reads fall back to the log.
        self.tail.clear();
        let mut last = commit;
        for (id, context) in others {
            last += 1;
            let mut cc = ConfChange::default();
            cc.set_change_type(ConfChangeType::RemoveNode);
            cc.node_id = *id;
            cc.context = context.clone().into();
            let mut e = Entry::default();
            e.set_entry_type(EntryType::EntryConfChange);
            e.index = last;
            e.term = term;
            e.data = cc.write_to_bytes()?.into();
            batch.put_cf(self.cf(CF_LOG), last.to_be_bytes(), e.write_to_bytes()?);
        }
        let cs = ConfState {
            voters: vec![me],
            ..Default::default()
        };
        batch.put_cf(self.cf(CF_STATE), KEY_CONF_STATE, cs.write_to_bytes()?);
        let mut hs = self.hard_state.clone();
        hs.commit = last;
        hs.term = term;
        batch.put_cf(self.cf(CF_STATE), KEY_HARD_STATE, hs.write_to_bytes()?);
        self.db.write_opt(batch, &self.write_options())?;
        self.hard_state = hs;
        self.conf_state = cs;
        self.last_index = last;
        Ok(())
    }

    /// Notes a newer commit index; persisted with the next append (raft recovers it if lost).
    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
    }

    /// Persists a commit index learned at start-up (see `Node::stepwise`); never beyond the log.
    pub fn raise_commit(&mut self, commit: u64) -> Result<()> {
        if commit > self.last_index {
            return Err(RaftError::Corrupt(format!(
                "state machine applied index {commit} is beyond the raft log (last index {})",
                self.last_index
            )));
        }
        self.hard_state.commit = commit;
        self.db.put_cf_opt(
            self.cf(CF_STATE),
            KEY_HARD_STATE,
            self.hard_state.write_to_bytes()?,
            &self.write_options(),
        )?;
        Ok(())
    }

    /// Drops entries up to and including `index` (the state machine has them durably).
    pub fn compact(&mut self, index: u64) -> Result<()> {
        if index <= self.truncated_index || index > self.last_index {
            return Ok(());
        }
        let term = self.entry_term(index)?;
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_range_cf(
            self.cf(CF_LOG),
            (self.truncated_index + 1).to_be_bytes(),
            (index + 1).to_be_bytes(),
        );
        let mut marker = index.to_be_bytes().to_vec();
        marker.extend_from_slice(&term.to_be_bytes());
        batch.put_cf(self.cf(CF_STATE), KEY_TRUNCATED, marker);
        self.db.write_opt(batch, &self.write_options())?;
        self.truncated_index = index;
        self.truncated_term = term;
        tracing::info!(index, term, "raft log compacted");
        while self.tail.front().is_some_and(|e| e.index <= index) {
            self.tail.pop_front();
        }
        Ok(())
    }

    fn tail_entry(&self, index: u64) -> Option<&Entry> {
        let first = self.tail.front()?.index;
        if index < first {
            return None;
        }
        self.tail.get((index - first) as usize)
    }

    fn entry_term(&self, index: u64) -> Result<u64> {
        if let Some(e) = self.tail_entry(index) {
            return Ok(e.term);
        }
        let b = self
            .db
            .get_cf(self.cf(CF_LOG), index.to_be_bytes())?
            .ok_or_else(|| RaftError::Corrupt(format!("raft log entry {index} missing")))?;
        Ok(Entry::parse_from_bytes(&b)?.term)
    }

    fn read_entries(&self, low: u64, high: u64, max_size: Option<u64>) -> Result<Vec<Entry>> {
        let mut out = Vec::with_capacity((high - low).min(1024) as usize);
        let mut size = 0u64;
        let mut push = |e: Entry, out: &mut Vec<Entry>| {
            size += e.compute_size() as u64;
            let over = max_size.is_some_and(|m| size > m) && !out.is_empty();
            if !over {
                out.push(e);
            }
            !over
        };
        let cached_from = self.tail.front().map_or(u64::MAX, |e| e.index);
        let mut index = low;
        if index < cached_from {
            let mut iter = self.db.raw_iterator_cf(self.cf(CF_LOG));
            iter.seek(low.to_be_bytes());
            while index < high.min(cached_from) {
                let (Some(k), Some(v)) = (iter.key(), iter.value()) else {
                    break;
                };
                if decode_index(k)? != index {
                    return Err(RaftError::Corrupt(format!("raft log gap at {index}")));
                }
                if !push(Entry::parse_from_bytes(v)?, &mut out) {
                    return Ok(out);
                }
                index += 1;
                iter.next();
            }
            iter.status()?;
        }
        while index < high {
            let e = self
                .tail_entry(index)
                .ok_or_else(|| RaftError::Corrupt(format!("raft log gap at {index}")))?;
            if !push(e.clone(), &mut out) {
                break;
            }
            index += 1;
        }
        Ok(out)
    }
}

fn decode_index(k: &[u8]) -> Result<u64> {
    Ok(u64::from_be_bytes(
        k.try_into()
            .map_err(|_| RaftError::Corrupt("raft log key".into()))?,
    ))
}

/// How long each synced append of the raft log took (etcd's `etcd_disk_wal_fsync_duration_seconds`,
/// with etcd's buckets: 1 ms doubling to about 8 s).
pub fn wal_fsync_seconds() -> &'static prometheus::Histogram {
    static H: std::sync::OnceLock<prometheus::Histogram> = std::sync::OnceLock::new();
    H.get_or_init(|| {
        let opts = prometheus::HistogramOpts::new(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
        )
        .buckets(prometheus::exponential_buckets(0.001, 2.0, 14).expect("valid buckets"));
        prometheus::Histogram::with_opts(opts).expect("valid histogram")
    })
}

impl raft::Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        self.read_entries(low, high, max_size.into())
            .map_err(storage_err)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.truncated_index {
            return Ok(self.truncated_term);
        }
        if idx < self.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        self.entry_term(idx).map_err(storage_err)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.truncated_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let unavailable = || raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable);
        let source = self.snapshots.as_ref().ok_or_else(unavailable)?;
        // The receiver continues from the log after the image: it must not be older than the log.
        let image = source
            .snapshot(request_index.max(self.truncated_index), to)
            .map_err(|e| {
                tracing::warn!(error = %e, to = format!("{to:x}"), "making a snapshot failed");
                unavailable()
            })?;
        let term = raft::Storage::term(self, image.index).map_err(|_| unavailable())?;
        let snap = Snapshot {
            data: image.data.into(),
            metadata: Some(SnapshotMetadata {
                index: image.index,
                term,
                conf_state: Some(image.conf_state).into(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        tracing::info!(
            to = format!("{to:x}"),
            index = image.index,
            term,
            "sending a snapshot"
        );
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8; 10].into(),
            ..Default::default()
        }
    }

    #[test]
    fn entries_and_hard_state_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = LogStore::open(dir.path()).unwrap();
            assert!(s.is_empty());
            let hs = HardState {
                term: 2,
                commit: 3,
                ..Default::default()
            };
            s.append(&(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>(), Some(&hs))
                .unwrap();
            // A new leader overwrites the uncommitted tail from index 4.
            s.append(&[entry(4, 2)], None).unwrap();
        }
        let s = LogStore::open(dir.path()).unwrap();
        assert_eq!(s.last_index(), 4);
        assert_eq!(s.term(4).unwrap(), 2);
        assert_eq!(s.hard_state().commit, 3);
        let got = s
            .entries(2, 5, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(
            got.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
            vec![(2, 1), (3, 1), (4, 2)]
        );
    }

    #[test]
    fn the_wal_a_restart_replays_stays_bounded() {
        // The hard state goes with every append but never fills a memtable: unless the total WAL
        // is capped, it keeps every WAL file alive, and a restart replays them all.
        let dir = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(dir.path()).unwrap().without_fsync();
        let data = vec![7u8; 256 << 10];
        for i in 1..=640 {
            let hs = HardState {
                term: 1,
                commit: i,
                ..Default::default()
            };
            let e = Entry {
                index: i,
                term: 1,
                data: data.clone().into(),
                ..Default::default()
            };
            s.append(&[e], Some(&hs)).unwrap();
            if i % 100 == 0 {
                s.compact(i - 50).unwrap();
            }
        }
        // 160 MiB appended; obsolete WAL files are deleted after their flush, in the background.
        let wal_bytes = || -> u64 {
            std::fs::read_dir(dir.path())
                .unwrap()
                .map(|f| f.unwrap())
                .filter(|f| f.file_name().to_string_lossy().ends_with(".log"))
                .map(|f| f.metadata().unwrap().len())
                .sum()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while wal_bytes() > 100 << 20 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(wal_bytes() <= 100 << 20, "{} MiB of WAL", wal_bytes() >> 20);
    }

    #[test]
    fn a_vote_is_synced_at_once_and_a_commit_index_with_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let hs = |term, vote, commit| HardState {
            term,
            vote,
            commit,
            ..Default::default()
        };
        {
            let mut s = LogStore::open(dir.path()).unwrap();
            s.append(&[entry(1, 1), entry(2, 1)], Some(&hs(1, 0, 0)))
                .unwrap();
            // A follower told the commit index by a heartbeat: no write (and no fsync) for it.
            s.append(&[], Some(&hs(1, 0, 2))).unwrap();
            assert_eq!(s.hard_state().commit, 2);
        }
        {
            let mut s = LogStore::open(dir.path()).unwrap();
            assert_eq!(s.hard_state(), &hs(1, 0, 0));
            // A vote in a new term must be on disk before it is answered, entries or not.
            s.append(&[], Some(&hs(2, 3, 0))).unwrap();
            s.append(&[], Some(&hs(2, 3, 2))).unwrap();
        }
        {
            let mut s = LogStore::open(dir.path()).unwrap();
            assert_eq!(s.hard_state(), &hs(2, 3, 0));
            // The next append carries the commit index noted since.
            s.append(&[], Some(&hs(2, 3, 1))).unwrap();
            s.append(&[entry(3, 2)], None).unwrap();
        }
        let s = LogStore::open(dir.path()).unwrap();
        assert_eq!(s.hard_state(), &hs(2, 3, 1));
        assert_eq!(s.last_index(), 3);
    }

    #[test]
    fn compaction_drops_the_prefix_and_keeps_its_term() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(dir.path()).unwrap();
        s.append(
            &(1..=10).map(|i| entry(i, 1 + i / 5)).collect::<Vec<_>>(),
            None,
        )
        .unwrap();
        s.compact(6).unwrap();
        drop(s);
        let s = LogStore::open(dir.path()).unwrap();
        assert_eq!(s.first_index().unwrap(), 7);
        assert_eq!(s.term(6).unwrap(), 2);
        assert!(matches!(
            s.term(5),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(
            s.entries(7, 11, None, GetEntriesContext::empty(false))
                .unwrap()
                .len(),
            4
        );
        // max_size still returns at least one entry.
        assert_eq!(
            s.entries(7, 11, Some(1), GetEntriesContext::empty(false))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn a_snapshot_replaces_the_log_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = LogStore::open(dir.path()).unwrap();
            s.bootstrap(ConfState {
                voters: vec![1, 2, 3],
                ..Default::default()
            })
            .unwrap();
            // A bootstrapped log starts after BOOTSTRAP_INDEX: a member with an empty log is
            // sent a snapshot, never entry 1.
            assert_eq!(s.first_index().unwrap(), BOOTSTRAP_INDEX + 1);
            assert!(s.term(0).is_err());
            s.append(&(2..=9).map(|i| entry(i, 1)).collect::<Vec<_>>(), None)
                .unwrap();
            let meta = SnapshotMetadata {
                index: 20,
                term: 3,
                conf_state: Some(ConfState {
                    voters: vec![1, 2],
                    learners: vec![4],
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            };
            s.apply_snapshot(&meta).unwrap();
        }
        let s = LogStore::open(dir.path()).unwrap();
        assert_eq!(s.first_index().unwrap(), 21);
        assert_eq!(s.last_index(), 20);
        assert_eq!(s.term(20).unwrap(), 3);
        assert!(s
            .entries(5, 6, None, GetEntriesContext::empty(false))
            .is_err());
        assert_eq!(s.hard_state().commit, 20);
        assert_eq!(s.conf_state().voters, vec![1, 2]);
        assert_eq!(s.conf_state().learners, vec![4]);
    }
}

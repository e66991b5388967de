//! etcd's write-ahead log (`member/wal/*.wal`) and raft snapshot files (`member/snap/*.snap`), read
//! as etcd 3.4/3.5 write them, for importing an etcd data dir.
//!
//! A WAL file is a sequence of frames: an 8-byte little-endian length (the low 56 bits; when the top
//! bit is set, the low 3 bits of the top byte count padding after the record), then a
//! `walpb.Record`. Every record's CRC-32C chains over the data of all records before it, across
//! files; a `crc` record at the start of each file carries the chain over. A zero length is the end
//! (files are preallocated with zeros), and so is a torn last record of the last file: etcd never
//! acknowledged it.

use std::path::{Path, PathBuf};

use prost::Message;

use super::BackupError;

/// etcd's `walpb.Record`.
#[derive(Clone, PartialEq, prost::Message)]
struct Record {
    #[prost(int64, tag = "1")]
    kind: i64,
    #[prost(uint32, tag = "2")]
    crc: u32,
    #[prost(bytes = "vec", tag = "3")]
    data: Vec<u8>,
}

const METADATA: i64 = 1;
const ENTRY: i64 = 2;
const STATE: i64 = 3;
const CRC: i64 = 4;
const SNAPSHOT: i64 = 5;

/// etcd's `etcdserverpb.Metadata`: who wrote the WAL.
#[derive(Clone, PartialEq, prost::Message)]
struct Metadata {
    #[prost(uint64, tag = "1")]
    node_id: u64,
    #[prost(uint64, tag = "2")]
    cluster_id: u64,
}

/// etcd's `raftpb.Entry`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EtcdEntry {
    /// 0 normal, 1 conf change, 2 conf change v2.
    #[prost(int32, tag = "1")]
    pub kind: i32,
    /// The term the entry was proposed in.
    #[prost(uint64, tag = "2")]
    pub term: u64,
    /// Its index.
    #[prost(uint64, tag = "3")]
    pub index: u64,
    /// An `InternalRaftRequest`, a v2 `Request`, or a `raftpb.ConfChange`.
    #[prost(bytes = "vec", tag = "4")]
    pub data: Vec<u8>,
}

/// etcd's `raftpb.HardState`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct EtcdHardState {
    /// The member's current term.
    #[prost(uint64, tag = "1")]
    pub term: u64,
    /// Whom it voted for in that term.
    #[prost(uint64, tag = "2")]
    pub vote: u64,
    /// The highest index it knows committed.
    #[prost(uint64, tag = "3")]
    pub commit: u64,
}

/// etcd's `walpb.Snapshot`: a raft snapshot's position, recorded in the WAL.
#[derive(Clone, Copy, PartialEq, prost::Message)]
struct WalSnapshot {
    #[prost(uint64, tag = "1")]
    index: u64,
    #[prost(uint64, tag = "2")]
    term: u64,
}

/// What an etcd member's WAL holds.
#[derive(Debug, Default)]
pub struct Wal {
    /// The member's id.
    pub member_id: u64,
    /// Its cluster's id.
    pub cluster_id: u64,
    /// The last hard state recorded.
    pub hard_state: EtcdHardState,
    /// The entries, each index once (a later entry replaced what it conflicted with), in order.
    pub entries: Vec<EtcdEntry>,
}

impl Wal {
    /// The term of the entry at `index`, if the WAL holds it.
    pub fn term(&self, index: u64) -> Option<u64> {
        let first = self.entries.first()?.index;
        let i = usize::try_from(index.checked_sub(first)?).ok()?;
        self.entries.get(i).map(|e| e.term)
    }
}

/// The WAL files in `dir` (`%016x-%016x.wal`, sequence then first index), in order.
pub fn wal_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    files.sort();
    Ok(files)
}

/// Reads every WAL file in `dir`.
pub fn read_wal(dir: &Path) -> Result<Wal, BackupError> {
    let files = wal_files(dir)?;
    if files.is_empty() {
        return Err(BackupError::Invalid(format!(
            "{}: no WAL files",
            dir.display()
        )));
    }
    let mut wal = Wal::default();
    let mut crc = 0u32;
    for (n, file) in files.iter().enumerate() {
        let bytes = std::fs::read(file)?;
        let last_file = n + 1 == files.len();
        let bad = |what: String| BackupError::Invalid(format!("{}: {what}", file.display()));
        let mut off = 0usize;
        while off + 8 <= bytes.len() {
            let len = u64::from_le_bytes(bytes[off..off + 8].try_into().expect("8 bytes"));
            if len == 0 {
                break; // preallocated space: the end of this file
            }
            let rec_len = (len & !(0xff << 56)) as usize;
            let pad = if len >> 63 == 1 {
                ((len >> 56) & 0x7) as usize
            } else {
                0
            };
            let start = off + 8;
            let Some(frame) = bytes.get(start..start + rec_len + pad) else {
                if last_file {
                    break; // torn last record: never acknowledged
                }
                return Err(bad(format!("record at offset {off} runs past the file")));
            };
            let rec = match Record::decode(&frame[..rec_len]) {
                Ok(rec) => rec,
                Err(_) if last_file && is_torn(frame) => break,
                Err(e) => return Err(bad(format!("record at offset {off}: {e}"))),
            };
            if rec.kind == CRC {
                // The chain so far, carried into a new file; a reader starting here takes it.
                if crc != 0 && rec.crc != crc {
                    return Err(bad(format!("CRC mismatch at offset {off}")));
                }
                crc = rec.crc;
            } else {
                crc = crc32c::crc32c_append(crc, &rec.data);
                if rec.crc != crc {
                    if last_file && is_torn(frame) {
                        break;
                    }
                    return Err(bad(format!("CRC mismatch at offset {off}")));
                }
                wal.record(rec.kind, &rec.data)
                    .map_err(|e| bad(format!("record at offset {off}: {e}")))?;
            }
            off = start + rec_len + pad;
        }
    }
    Ok(wal)
}

impl Wal {
    fn record(&mut self, kind: i64, data: &[u8]) -> Result<(), String> {
        match kind {
            METADATA => {
                let m = Metadata::decode(data).map_err(|e| e.to_string())?;
                if self.member_id != 0
                    && (m.node_id, m.cluster_id) != (self.member_id, self.cluster_id)
                {
                    return Err("metadata names another member".into());
                }
                self.member_id = m.node_id;
                self.cluster_id = m.cluster_id;
            }
            ENTRY => {
                let e = EtcdEntry::decode(data).map_err(|e| e.to_string())?;
                // An entry at an index already read replaces it and everything after it (a new
                // leader overwrote an uncommitted tail).
                if let Some(first) = self.entries.first().map(|f| f.index) {
                    let keep = e.index.saturating_sub(first) as usize;
                    if e.index > first + self.entries.len() as u64 {
                        return Err(format!(
                            "entry {} does not follow entry {}",
                            e.index,
                            first + self.entries.len() as u64 - 1
                        ));
                    }
                    self.entries.truncate(keep);
                }
                self.entries.push(e);
            }
            STATE => {
                let hs = EtcdHardState::decode(data).map_err(|e| e.to_string())?;
                // etcd writes an empty hard state when nothing changed; it keeps the last one.
                if hs != EtcdHardState::default() {
                    self.hard_state = hs;
                }
            }
            SNAPSHOT => {
                WalSnapshot::decode(data).map_err(|e| e.to_string())?;
            }
            other => return Err(format!("unknown record type {other}")),
        }
        Ok(())
    }
}

/// Whether a record that fails to decode was torn by a crash mid-write: some 512-byte sector of it
/// is all zeros (etcd's test).
fn is_torn(frame: &[u8]) -> bool {
    frame.chunks(512).any(|s| s.iter().all(|b| *b == 0))
}

/// etcd's `snappb.Snapshot`: a raft snapshot with its CRC.
#[derive(Clone, PartialEq, prost::Message)]
struct SnapFile {
    #[prost(uint32, tag = "1")]
    crc: u32,
    #[prost(bytes = "vec", tag = "2")]
    data: Vec<u8>,
}

/// etcd's `raftpb.Snapshot`.
#[derive(Clone, PartialEq, prost::Message)]
struct RaftSnapshot {
    #[prost(bytes = "vec", tag = "1")]
    data: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    metadata: Option<RaftSnapshotMetadata>,
}

/// etcd's `raftpb.SnapshotMetadata` (the conf state is read from the store instead).
#[derive(Clone, Copy, PartialEq, prost::Message)]
struct RaftSnapshotMetadata {
    #[prost(uint64, tag = "2")]
    index: u64,
    #[prost(uint64, tag = "3")]
    term: u64,
}

/// A raft snapshot file: its position and the v2 store (JSON) it holds, where etcd keeps its
/// members.
#[derive(Debug)]
pub struct SnapV2 {
    /// The last index it covers.
    pub index: u64,
    /// That entry's term.
    pub term: u64,
    /// etcd's v2 store, as JSON.
    pub store: serde_json::Value,
}

/// The newest snapshot file in `dir` covering no entry past `max_index`, skipping damaged ones
/// (as etcd does); `None` when there is none.
pub fn newest_snap(dir: &Path, max_index: u64) -> Result<Option<SnapV2>, BackupError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .collect();
    files.sort();
    for file in files.iter().rev() {
        match read_snap(file) {
            Ok(s) if s.index <= max_index => return Ok(Some(s)),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "skipping a damaged etcd snapshot file")
            }
        }
    }
    Ok(None)
}

fn read_snap(file: &Path) -> Result<SnapV2, BackupError> {
    let bad = |what: String| BackupError::Invalid(format!("{}: {what}", file.display()));
    let f = SnapFile::decode(&std::fs::read(file)?[..]).map_err(|e| bad(e.to_string()))?;
    if crc32c::crc32c(&f.data) != f.crc {
        return Err(bad("CRC mismatch".into()));
    }
    let s = RaftSnapshot::decode(&f.data[..]).map_err(|e| bad(e.to_string()))?;
    let meta = s.metadata.unwrap_or_default();
    let store = serde_json::from_slice(&s.data).map_err(|e| bad(format!("v2 store: {e}")))?;
    Ok(SnapV2 {
        index: meta.index,
        term: meta.term,
        store,
    })
}

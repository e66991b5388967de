//! Raft snapshots of the state machine: checkpoints of the store made when raft must send one to a
//! member behind the compacted log, and the installation of a received one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_mvcc::{CheckpointReader, Store};
use keel_raft::{SnapshotImage, SnapshotSource};
use parking_lot::Mutex;

use super::raft_conf::conf_state;
use keel_state::membership::{decode_members, META_MEMBERS_KEY};

/// Where installed snapshots record their raft position (index, term), for start-up repair.
pub const META_INSTALLED: &[u8] = b"local/installed_snapshot";
/// Checkpoints kept: the newest, and the one before it (a transfer may still be reading it).
const KEEP: usize = 2;

/// Makes and keeps checkpoints under `<data-dir>/member/snap`.
pub struct Checkpoints {
    store: Arc<Store>,
    dir: PathBuf,
    /// The checkpoints made, oldest first: (applied index, directory, image).
    made: Mutex<Vec<(u64, PathBuf, keel_raft::ConfState)>>,
}

impl Checkpoints {
    /// Checkpoints of `store` made in `dir`. Leftovers of an earlier run are removed.
    pub fn new(store: Arc<Store>, dir: PathBuf) -> std::io::Result<Checkpoints> {
        clear_dir(&dir)?;
        Ok(Checkpoints {
            store,
            dir,
            made: Mutex::default(),
        })
    }

    fn make(&self) -> Result<(u64, PathBuf, keel_raft::ConfState), String> {
        let partial = self.dir.join("checkpoint.partial");
        let _ = std::fs::remove_dir_all(&partial);
        self.store
            .checkpoint(&partial)
            .map_err(|e| format!("checkpoint: {e}"))?;
        let (index, members) = {
            let cp = CheckpointReader::open(&partial).map_err(|e| e.to_string())?;
            let members = cp
                .get_meta(META_MEMBERS_KEY)
                .map_err(|e| e.to_string())?
                .unwrap_or_default();
            (cp.applied_index().map_err(|e| e.to_string())?, members)
        };
        let members = decode_members(&members).map_err(|e| e.to_string())?;
        let dir = self.dir.join(format!("checkpoint-{index:016x}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&partial, &dir).map_err(|e| e.to_string())?;
        tracing::info!(index, dir = %dir.display(), "made a snapshot checkpoint");
        Ok((index, dir, conf_state(&members)))
    }
}

impl SnapshotSource for Checkpoints {
    fn snapshot(&self, min_index: u64, to: u64) -> Result<SnapshotImage, String> {
        let mut made = self.made.lock();
        let names =
            |cs: &keel_raft::ConfState| cs.voters.contains(&to) || cs.learners.contains(&to);
        let fresh = made
            .last()
            .filter(|(index, _, cs)| *index >= min_index && names(cs))
            .cloned();
        let (index, dir, conf_state) = match fresh {
            Some(c) => c,
            None => {
                let c = self.make()?;
                made.retain(|(index, ..)| *index != c.0);
                made.push(c.clone());
                while made.len() > KEEP {
                    let (_, old, _) = made.remove(0);
                    let _ = std::fs::remove_dir_all(old);
                }
                c
            }
        };
        Ok(SnapshotImage {
            index,
            conf_state,
            data: dir.to_string_lossy().into_owned().into_bytes(),
        })
    }
}

/// Removes everything in `dir` (creating it if needed).
fn clear_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for e in std::fs::read_dir(dir)? {
        let path = e?.path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Encodes a raft position for [`META_INSTALLED`].
pub fn encode_position(index: u64, term: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&index.to_be_bytes());
    b[8..].copy_from_slice(&term.to_be_bytes());
    b
}

/// Decodes a raft position recorded by [`encode_position`].
pub fn decode_position(b: &[u8]) -> Option<(u64, u64)> {
    let b: [u8; 16] = b.try_into().ok()?;
    Some((
        u64::from_be_bytes(b[..8].try_into().ok()?),
        u64::from_be_bytes(b[8..].try_into().ok()?),
    ))
}

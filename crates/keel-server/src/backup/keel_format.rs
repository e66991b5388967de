//! Keel's first snapshot format, which `keel snapshot restore` still reads (snapshots are now
//! written in etcd's format): a checkpoint of the whole store (every RocksDB file, one consistent
//! point) followed, as etcd's snapshots are, by the SHA-256 of everything before it.
//!
//! Layout: `KEELSNAP1\n`, then per file: name length (u16 BE), name, size (u64 BE), bytes; then a
//! zero name length and zero padding to a multiple of 512 bytes (etcdctl checks that a snapshot is
//! whole pages plus the digest); then the 32-byte digest.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::BackupError;

/// The first bytes of a snapshot file.
pub const MAGIC: &[u8] = b"KEELSNAP1\n";
const DIGEST_LEN: u64 = 32;
/// The body (all before the digest) is a whole number of these.
#[cfg(test)]
const PAGE: u64 = 512;
/// Bytes per piece handed to the writer.
#[cfg(test)]
const PIECE: usize = 1024 * 1024;

#[cfg(test)]
/// The files of a checkpoint directory, sorted, with their sizes.
fn files(dir: &Path) -> std::io::Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let meta = e.metadata()?;
        if meta.is_file() {
            out.push((e.file_name().to_string_lossy().into_owned(), meta.len()));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
/// The size of the snapshot file `dir` makes, digest included.
pub fn encoded_len(dir: &Path) -> std::io::Result<u64> {
    let body = MAGIC.len() as u64 + entries_len(&files(dir)?) + 2;
    Ok(body.div_ceil(PAGE) * PAGE + DIGEST_LEN)
}

#[cfg(test)]
/// Bytes the file entries take.
fn entries_len(files: &[(String, u64)]) -> u64 {
    files
        .iter()
        .map(|(name, size)| 2 + name.len() as u64 + 8 + size)
        .sum()
}

#[cfg(test)]
/// The end marker and padding after `body` bytes of files.
fn trailer(body: u64) -> Vec<u8> {
    let end = body + 2;
    vec![0u8; (2 + end.div_ceil(PAGE) * PAGE - end) as usize]
}

#[cfg(test)]
/// Writes the snapshot of checkpoint `dir` to `out` in pieces (blocking); `out` returns false to
/// stop early (the receiver went away).
pub fn encode(dir: &Path, mut out: impl FnMut(Vec<u8>) -> bool) -> Result<(), BackupError> {
    let list = files(dir)?;
    let body = MAGIC.len() as u64 + entries_len(&list);
    let mut hash = Sha256::new();
    let mut emit = |piece: Vec<u8>| {
        hash.update(&piece);
        out(piece)
    };
    let mut head = MAGIC.to_vec();
    for (name, size) in list {
        head.extend_from_slice(&(name.len() as u16).to_be_bytes());
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(&size.to_be_bytes());
        if !emit(std::mem::take(&mut head)) {
            return Ok(());
        }
        let mut f = File::open(dir.join(&name))?.take(size);
        loop {
            let mut piece = vec![0u8; PIECE];
            let n = f.read(&mut piece)?;
            if n == 0 {
                break;
            }
            piece.truncate(n);
            if !emit(piece) {
                return Ok(());
            }
        }
    }
    if !head.is_empty() && !emit(head) {
        return Ok(());
    }
    if !emit(trailer(body)) {
        return Ok(());
    }
    let digest = hash.finalize().to_vec();
    out(digest);
    Ok(())
}

/// Checks the digest of the snapshot file at `path`, then unpacks its checkpoint into `into`
/// (created; must not exist).
pub fn decode(path: &Path, into: &Path) -> Result<PathBuf, BackupError> {
    let invalid = |why: &str| BackupError::Invalid(format!("{}: {why}", path.display()));
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    if len < MAGIC.len() as u64 + DIGEST_LEN {
        return Err(invalid("too short"));
    }
    let body_len = len - DIGEST_LEN;
    let mut hash = Sha256::new();
    std::io::copy(&mut (&mut f).take(body_len), &mut HashWriter(&mut hash))?;
    let mut digest = [0u8; 32];
    f.read_exact(&mut digest)?;
    if hash.finalize().as_slice() != digest {
        return Err(invalid("checksum mismatch (damaged or truncated)"));
    }
    f.seek(SeekFrom::Start(0))?;
    let mut r = BufReader::new(f.take(body_len));
    let mut magic = vec![0u8; MAGIC.len()];
    r.read_exact(&mut magic)?;
    if magic != MAGIC {
        return Err(invalid("not a Keel snapshot"));
    }
    std::fs::create_dir_all(into)?;
    loop {
        let mut n = [0u8; 2];
        match r.read_exact(&mut n) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
        if n == [0, 0] {
            // The end marker; padding follows.
            break;
        }
        let mut name = vec![0u8; u16::from_be_bytes(n) as usize];
        r.read_exact(&mut name)?;
        let name = String::from_utf8(name).map_err(|_| invalid("file name"))?;
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(invalid("file name"));
        }
        let mut size = [0u8; 8];
        r.read_exact(&mut size)?;
        let size = u64::from_be_bytes(size);
        let mut out = File::create(into.join(&name))?;
        let copied = std::io::copy(&mut (&mut r).take(size), &mut out)?;
        if copied != size {
            return Err(invalid("truncated file"));
        }
        out.sync_all()?;
    }
    Ok(into.to_path_buf())
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("a"), b"hello").unwrap();
        std::fs::write(src.join("b"), vec![7u8; 3 * PIECE + 5]).unwrap();
        std::fs::write(src.join("empty"), b"").unwrap();
        let mut bytes = Vec::new();
        encode(&src, |p| {
            bytes.extend(p);
            true
        })
        .unwrap();
        assert_eq!(bytes.len() as u64, encoded_len(&src).unwrap());
        assert_eq!(bytes.len() % 512, 32, "whole pages plus the digest");
        let file = dir.path().join("snap.db");
        std::fs::write(&file, &bytes).unwrap();
        let out = decode(&file, &dir.path().join("out")).unwrap();
        assert_eq!(std::fs::read(out.join("a")).unwrap(), b"hello");
        assert_eq!(std::fs::read(out.join("b")).unwrap().len(), 3 * PIECE + 5);
        assert!(out.join("empty").exists());
        // One flipped byte: refused.
        bytes[20] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        assert!(matches!(
            decode(&file, &dir.path().join("out2")),
            Err(BackupError::Invalid(_))
        ));
    }
}

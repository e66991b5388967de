//! Reads a bbolt database read-only, page by page (positional reads; no mmap, so a truncated or
//! damaged file is an error instead of a bus error), checking each page it walks.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::page::{
    get_u32, get_u64, slice, Header, Meta, BRANCH, BUCKET_HEADER, BUCKET_LEAF, ELEMENT, LEAF,
    PAGE_HEADER,
};
use crate::{BoltError, Result, PAGE_SIZE};

/// Deeper than any real tree (bbolt's fan-out makes 10 levels hold more than a file can): a
/// deeper walk means a cycle.
const MAX_DEPTH: usize = 32;

/// Called with each leaf element's flags, key and value.
type Visit<'a> = dyn FnMut(u32, &[u8], &[u8]) -> Result<()> + 'a;

/// A read-only bbolt database.
pub struct Reader {
    file: File,
    page_size: usize,
    meta: Meta,
}

/// Where a bucket's tree is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bucket {
    /// Its root page.
    Page(u64),
    /// Inline: the leaf page held in its header's value.
    Inline(Vec<u8>),
}

impl Reader {
    /// Opens the database in `path` and picks its current meta page as bbolt does: the one with
    /// the higher transaction id, if it is valid, else the other.
    pub fn open(path: &Path) -> Result<Reader> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut first = vec![0u8; PAGE_SIZE];
        file.read_exact_at(&mut first, 0)
            .map_err(|_| BoltError::Invalid(format!("{len} bytes: too small for a database")))?;
        let meta0 = Meta::read(&first);
        let page_size = meta0.as_ref().map_or(PAGE_SIZE, |m| m.page_size as usize);
        if !(512..=(1 << 20)).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(BoltError::Invalid(format!("page size {page_size}")));
        }
        let mut second = vec![0u8; page_size];
        let meta1 = file
            .read_exact_at(&mut second, page_size as u64)
            .map_err(BoltError::from)
            .and_then(|()| Meta::read(&second));
        let meta = match (meta0, meta1) {
            (Ok(a), Ok(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Ok(m), Err(_)) | (Err(_), Ok(m)) => m,
            (Err(e), Err(_)) => return Err(e),
        };
        if meta.pgid.saturating_mul(page_size as u64) > len {
            return Err(BoltError::Invalid(format!(
                "{len} bytes, but the database has {} pages of {page_size}: truncated",
                meta.pgid
            )));
        }
        Ok(Reader {
            file,
            page_size,
            meta,
        })
    }

    /// Bytes the database's pages take (bbolt's `Tx.Size`).
    pub fn size(&self) -> u64 {
        self.meta.pgid * self.page_size as u64
    }

    /// The top-level buckets, by name.
    pub fn buckets(&self) -> Result<Vec<(Vec<u8>, Bucket)>> {
        let mut out = Vec::new();
        self.walk(self.meta.root, 0, &mut |flags, k, v| {
            if flags & BUCKET_LEAF == 0 {
                return Err(BoltError::Invalid(format!(
                    "root bucket entry {} is not a bucket",
                    String::from_utf8_lossy(k)
                )));
            }
            out.push((k.to_vec(), bucket_of(v)?));
            Ok(())
        })?;
        Ok(out)
    }

    /// The bucket named `name`, if there is one.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<Bucket>> {
        Ok(self
            .buckets()?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b))
    }

    /// Calls `f` with every key and value of `bucket`, in key order (nested buckets' entries are
    /// given as their headers, flagged).
    pub fn for_each(
        &self,
        bucket: &Bucket,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut each = |_flags: u32, k: &[u8], v: &[u8]| f(k, v);
        match bucket {
            Bucket::Page(root) => self.walk(*root, 0, &mut each),
            Bucket::Inline(page) => leaf_elements(page, &mut each),
        }
    }

    /// One page and its overflow, checked to be what the tree says it is.
    fn page(&self, id: u64) -> Result<Vec<u8>> {
        if id < 2 || id >= self.meta.pgid {
            return Err(BoltError::Invalid(format!(
                "page {id} is outside the database's {} pages",
                self.meta.pgid
            )));
        }
        let mut page = vec![0u8; self.page_size];
        self.file
            .read_exact_at(&mut page, id * self.page_size as u64)?;
        let h = Header::read(&page)?;
        if h.id != id {
            return Err(BoltError::Invalid(format!(
                "page {id} says it is page {}",
                h.id
            )));
        }
        if h.overflow > 0 {
            let end = id + 1 + u64::from(h.overflow);
            if end > self.meta.pgid {
                return Err(BoltError::Invalid(format!(
                    "page {id}'s {} overflow pages pass the end",
                    h.overflow
                )));
            }
            page.resize((1 + h.overflow as usize) * self.page_size, 0);
            self.file.read_exact_at(
                &mut page[self.page_size..],
                (id + 1) * self.page_size as u64,
            )?;
        }
        Ok(page)
    }

    fn walk(&self, id: u64, depth: usize, f: &mut Visit<'_>) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(BoltError::Invalid(format!(
                "page {id}: the tree is too deep"
            )));
        }
        let page = self.page(id)?;
        let h = Header::read(&page)?;
        match h.flags {
            LEAF => leaf_elements(&page, f),
            BRANCH => {
                for i in 0..h.count as usize {
                    let el = PAGE_HEADER + i * ELEMENT;
                    let child = get_u64(&page, el + 8)?;
                    self.walk(child, depth + 1, f)?;
                }
                Ok(())
            }
            other => Err(BoltError::Invalid(format!(
                "page {id}: type {other:#x} inside a bucket's tree"
            ))),
        }
    }
}

/// The elements of a leaf page (or an inline bucket's pseudo page).
fn leaf_elements(page: &[u8], f: &mut Visit<'_>) -> Result<()> {
    let h = Header::read(page)?;
    if h.flags != LEAF {
        return Err(BoltError::Invalid(format!(
            "page {}: type {:#x} where a leaf was expected",
            h.id, h.flags
        )));
    }
    for i in 0..h.count as usize {
        let el = PAGE_HEADER + i * ELEMENT;
        let flags = get_u32(page, el)?;
        let pos = get_u32(page, el + 4)? as usize;
        let ksize = get_u32(page, el + 8)? as usize;
        let vsize = get_u32(page, el + 12)? as usize;
        let key = slice(page, el + pos, ksize)?;
        let value = slice(page, el + pos + ksize, vsize)?;
        f(flags, key, value)?;
    }
    Ok(())
}

fn bucket_of(header: &[u8]) -> Result<Bucket> {
    let root = get_u64(header, 0)?;
    if root != 0 {
        return Ok(Bucket::Page(root));
    }
    Ok(Bucket::Inline(header[BUCKET_HEADER..].to_vec()))
}

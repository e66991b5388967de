//! Writes a fresh bbolt database bottom-up: leaves as the sorted keys come, each branch level
//! once its page is full, the root bucket, and the two meta pages last.

use std::io::{Seek, SeekFrom, Write};

use crate::page::{
    put_u32, put_u64, Header, Meta, BRANCH, BUCKET_HEADER, BUCKET_LEAF, ELEMENT, LEAF, NO_FREELIST,
    PAGE_HEADER,
};
use crate::{BoltError, Result, PAGE_SIZE};

/// Builds a database into `out` (a file: the meta pages are written last, at its start).
pub struct Writer<F: Write + Seek> {
    out: F,
    /// The next page to write.
    next: u64,
    /// Every finished bucket: its name, its root page (None: empty, written inline).
    buckets: Vec<(Vec<u8>, Option<u64>)>,
}

impl<F: Write + Seek> Writer<F> {
    /// Starts a database in `out`.
    pub fn new(mut out: F) -> Result<Writer<F>> {
        out.seek(SeekFrom::Start(2 * PAGE_SIZE as u64))?;
        Ok(Writer {
            out,
            next: 2,
            buckets: Vec::new(),
        })
    }

    /// Starts the top-level bucket `name`; its keys must be put in ascending order, and the
    /// bucket finished before the next one starts.
    pub fn bucket(&mut self, name: &[u8]) -> Result<BucketWriter<'_, F>> {
        if self.buckets.iter().any(|(n, _)| n == name) {
            return Err(BoltError::Order(format!(
                "bucket {} written twice",
                String::from_utf8_lossy(name)
            )));
        }
        Ok(BucketWriter::new(self, name.to_vec(), 0))
    }

    /// Writes the root bucket, the freelist and the meta pages; returns the output, flushed.
    pub fn finish(mut self) -> Result<F> {
        let mut buckets = std::mem::take(&mut self.buckets);
        buckets.sort();
        let mut root = BucketWriter::new(&mut self, Vec::new(), BUCKET_LEAF);
        for (name, page) in &buckets {
            let mut header = vec![0u8; BUCKET_HEADER];
            match page {
                Some(page) => put_u64(&mut header, 0, *page),
                // An empty bucket is inline, as bbolt creates one: a zero root, then an empty
                // leaf page in the value.
                None => {
                    header.resize(BUCKET_HEADER + PAGE_HEADER, 0);
                    Header {
                        id: 0,
                        flags: LEAF,
                        count: 0,
                        overflow: 0,
                    }
                    .write(&mut header[BUCKET_HEADER..]);
                }
            }
            root.put(name, &header)?;
        }
        let root = root.root()?.unwrap_or(0);
        let root = if root == 0 {
            // No bucket at all: the root bucket is still a (empty) leaf page.
            self.node(LEAF, 0, &[])?
        } else {
            root
        };
        // No freelist page, as etcd writes its files (bbolt's NoFreelistSync): every page below
        // the high-water mark belongs to the tree, so a reader finds nothing free.
        let meta = Meta {
            page_size: PAGE_SIZE as u32,
            flags: 0,
            root,
            sequence: 0,
            freelist: NO_FREELIST,
            pgid: self.next,
            txid: 2,
        };
        self.out.seek(SeekFrom::Start(0))?;
        // As bbolt's own copy (Tx.WriteTo) leaves them: meta 0 at txid T, meta 1 at T-1, so the
        // next transaction (T+1) writes meta 1.
        self.out.write_all(&meta.page(0, PAGE_SIZE))?;
        self.out
            .write_all(&Meta { txid: 1, ..meta }.page(1, PAGE_SIZE))?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// Writes one node (`body`: its elements and data) as the next page(s); its page id.
    fn node(&mut self, flags: u16, count: usize, body: &[u8]) -> Result<u64> {
        let id = self.next;
        let pages = (PAGE_HEADER + body.len()).div_ceil(PAGE_SIZE).max(1);
        let count = u16::try_from(count)
            .map_err(|_| BoltError::Order(format!("{count} elements in one page")))?;
        let mut page = vec![0u8; pages * PAGE_SIZE];
        Header {
            id,
            flags,
            count,
            overflow: (pages - 1) as u32,
        }
        .write(&mut page);
        page[PAGE_HEADER..PAGE_HEADER + body.len()].copy_from_slice(body);
        self.out.write_all(&page)?;
        self.next += pages as u64;
        Ok(id)
    }
}

/// A node being filled: its elements, and the page bytes they take.
#[derive(Default)]
struct Node {
    /// Key, and value (leaf) or child page (branch, 8 bytes).
    items: Vec<(Vec<u8>, Vec<u8>)>,
    bytes: usize,
}

impl Node {
    fn fits(&self, key: &[u8], value: &[u8]) -> bool {
        self.items.is_empty() || self.bytes + ELEMENT + key.len() + value.len() <= PAGE_SIZE
    }

    fn push(&mut self, key: Vec<u8>, value: Vec<u8>) {
        if self.items.is_empty() {
            self.bytes = PAGE_HEADER;
        }
        self.bytes += ELEMENT + key.len() + value.len();
        self.items.push((key, value));
    }

    /// The page body: the elements, then each key (and leaf value) in order. `pos` is counted
    /// from the element to its key.
    fn encode(&self, branch: bool, leaf_flags: u32) -> Vec<u8> {
        let n = self.items.len();
        let mut body = vec![0u8; n * ELEMENT];
        for (i, (k, v)) in self.items.iter().enumerate() {
            let el = i * ELEMENT;
            let pos = (body.len() - el) as u32;
            if branch {
                put_u32(&mut body, el, pos);
                put_u32(&mut body, el + 4, k.len() as u32);
                body[el + 8..el + 16].copy_from_slice(v);
                body.extend_from_slice(k);
            } else {
                put_u32(&mut body, el, leaf_flags);
                put_u32(&mut body, el + 4, pos);
                put_u32(&mut body, el + 8, k.len() as u32);
                put_u32(&mut body, el + 12, v.len() as u32);
                body.extend_from_slice(k);
                body.extend_from_slice(v);
            }
        }
        body
    }
}

/// Writes one bucket's B+tree as its keys come.
pub struct BucketWriter<'w, F: Write + Seek> {
    w: &'w mut Writer<F>,
    name: Vec<u8>,
    /// The flags of every leaf element (sub-bucket entries in the root bucket).
    leaf_flags: u32,
    leaf: Node,
    /// Branch nodes being filled; `levels[0]` points at leaves.
    levels: Vec<Node>,
    last: Option<Vec<u8>>,
}

impl<'w, F: Write + Seek> BucketWriter<'w, F> {
    fn new(w: &'w mut Writer<F>, name: Vec<u8>, leaf_flags: u32) -> BucketWriter<'w, F> {
        BucketWriter {
            w,
            name,
            leaf_flags,
            leaf: Node::default(),
            levels: Vec::new(),
            last: None,
        }
    }

    /// Adds `key` = `value`; keys must ascend strictly.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        if self.last.as_deref().is_some_and(|last| last >= key) {
            return Err(BoltError::Order(format!(
                "key {key:?} after {:?} in bucket {}",
                self.last.as_deref().unwrap_or_default(),
                String::from_utf8_lossy(&self.name)
            )));
        }
        if !self.leaf.fits(key, value) {
            self.flush_leaf()?;
        }
        self.leaf.push(key.to_vec(), value.to_vec());
        self.last = Some(key.to_vec());
        Ok(())
    }

    /// Ends the bucket.
    pub fn finish(mut self) -> Result<()> {
        let root = self.root()?;
        let name = std::mem::take(&mut self.name);
        self.w.buckets.push((name, root));
        Ok(())
    }

    fn flush_leaf(&mut self) -> Result<()> {
        let leaf = std::mem::take(&mut self.leaf);
        let (first, page) = self.write(LEAF, leaf)?;
        self.point(0, first, page)
    }

    /// Writes `node` as a page of type `flags`; its first key and its page.
    fn write(&mut self, flags: u16, node: Node) -> Result<(Vec<u8>, u64)> {
        let body = node.encode(flags == BRANCH, self.leaf_flags);
        let page = self.w.node(flags, node.items.len(), &body)?;
        let first = node.items.into_iter().next().map(|(k, _)| k);
        Ok((first.unwrap_or_default(), page))
    }

    /// Adds a child (its first key, its page) to the branch node at `level`, writing that node
    /// first when it is full.
    fn point(&mut self, level: usize, key: Vec<u8>, page: u64) -> Result<()> {
        if self.levels.len() == level {
            self.levels.push(Node::default());
        }
        let child = page.to_le_bytes().to_vec();
        if !self.levels[level].fits(&key, &[]) {
            self.flush_branch(level)?;
        }
        // A branch element has no value bytes: its 8-byte page id is in the element.
        let node = &mut self.levels[level];
        if node.items.is_empty() {
            node.bytes = PAGE_HEADER;
        }
        node.bytes += ELEMENT + key.len();
        node.items.push((key, child));
        Ok(())
    }

    fn flush_branch(&mut self, level: usize) -> Result<()> {
        let node = std::mem::take(&mut self.levels[level]);
        let (first, page) = self.write(BRANCH, node)?;
        self.point(level + 1, first, page)
    }

    /// Writes what is pending; the root page (None for a bucket without keys).
    fn root(&mut self) -> Result<Option<u64>> {
        if self.leaf.items.is_empty() && self.levels.is_empty() {
            return Ok(None);
        }
        if !self.leaf.items.is_empty() {
            self.flush_leaf()?;
        }
        let mut level = 0;
        loop {
            let top = level + 1 == self.levels.len();
            if top && self.levels[level].items.len() == 1 {
                let child = &self.levels[level].items[0].1;
                return Ok(Some(u64::from_le_bytes(
                    child[..8].try_into().expect("8-byte page id"),
                )));
            }
            self.flush_branch(level)?;
            level += 1;
        }
    }
}

//! The revisioned store: values by revision in RocksDB (`kv` family), the key index beside them
//! (`key_index`, see `index.rs`), the keys attached to each lease (`lease_keys`), and the store's
//! bookkeeping (`meta` family). Nothing of the store is held in memory but a few counters: opening
//! it costs the same whatever its size. Readers get a consistent view at any retained revision; the
//! single writer (the apply loop) groups many write transactions into one RocksDB write batch.
//! This file must never make a change visible to readers before its write batch is committed.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use keel_proto::etcd::PbKeyValue as KeyValue;
use parking_lot::RwLock;
use prost::Message;
use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamilyDescriptor, IteratorMode, Options,
    ReadOptions, WriteOptions, DB,
};

use crate::compaction::Compactor;
use crate::index::{self, decode_key, newest_at, visit, Cursor, Entry, Found, KeySpan, Overlaid};
use crate::{MvccError, Result, Revision};

pub(crate) const CF_KV: &str = "kv";
pub(crate) const CF_META: &str = "meta";
const CF_LEASE: &str = "lease";
const CF_AUTH: &str = "auth";
pub(crate) const CF_INDEX: &str = "key_index";
pub(crate) const CF_LEASE_KEYS: &str = "lease_keys";
pub(crate) const FAMILIES: [&str; 6] = [CF_KV, CF_META, CF_LEASE, CF_AUTH, CF_INDEX, CF_LEASE_KEYS];
pub(crate) const META_APPLIED_INDEX: &[u8] = b"applied_index";
pub(crate) const META_CURRENT_REV: &[u8] = b"current_rev";
pub(crate) const META_COMPACT_REV: &[u8] = b"compact_rev";
/// The compaction point the background half has carried out on disk.
pub(crate) const META_COMPACT_DONE: &[u8] = b"compact_done";
/// Where the background half of a compaction goes on (a revision key).
pub(crate) const META_COMPACT_NEXT: &[u8] = b"compact_next";
const META_LIVE_KEYS: &[u8] = b"live_keys";
/// Bytes of records and index entries ever written, and deleted by compaction: their difference is
/// the live size the space quota counts.
const META_BYTES_WRITTEN: &[u8] = b"bytes_written";
pub(crate) const META_BYTES_FREED: &[u8] = b"bytes_freed";
/// Present once the key index is built (absent after an import, or in a store of an older Keel).
pub(crate) const META_INDEX_FORMAT: &[u8] = b"index_format";
const INDEX_FORMAT: i64 = 1;

/// The block cache all families share: with the index on disk, memory is this, the memtables and
/// RocksDB's table metadata, whatever the number of keys.
const BLOCK_CACHE_BYTES: usize = 256 << 20;
/// Records per write while building the index.
const BUILD_BATCH: usize = 10_000;

/// How a range read is done.
#[derive(Clone, Debug, Default)]
pub struct RangeOptions {
    /// Store revision to read at; 0 = the current one.
    pub rev: i64,
    /// Return at most this many keys; 0 = no limit. `count` still counts every key in the span.
    pub limit: usize,
    /// Count the keys only, fetch no value.
    pub count_only: bool,
}

/// The outcome of a range read.
#[derive(Clone, Debug, Default)]
pub struct RangeResult {
    /// The key-values read, in key order.
    pub kvs: Vec<KeyValue>,
    /// Number of keys in the span at the revision, regardless of `limit`.
    pub count: usize,
    /// The store's current revision when the read was done.
    pub rev: i64,
}

/// Size of the store on disk, in bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct StoreSize {
    /// Bytes the store occupies (files and memtables).
    pub total: u64,
    /// Bytes of the readable revisions and their index entries (what compaction has not deleted).
    pub in_use: u64,
}

/// State-machine records kept beside the key-values, written in the same batches so that they and
/// the applied index always agree. Their keys and values are the caller's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// Leases.
    Lease,
    /// Users, roles and the auth revision.
    Auth,
}

impl Table {
    pub(crate) fn family(self) -> &'static str {
        match self {
            Table::Lease => CF_LEASE,
            Table::Auth => CF_AUTH,
        }
    }
}

/// The revisioned key-value store.
pub struct Store {
    // Declared first: dropped (its thread joined) before the database closes.
    compactor: Compactor,
    pub(crate) db: Arc<DB>,
    /// Held for reading by readers and the compaction thread, for writing while a snapshot is
    /// installed (readers never see a half-copied store).
    pub(crate) gate: Arc<RwLock<()>>,
    current_rev: AtomicI64,
    pub(crate) compact_rev: AtomicI64,
    applied_index: AtomicU64,
    live_keys: AtomicI64,
    bytes_written: AtomicU64,
}

fn table_options(cache: &Cache, family: &str) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    // Index and filter blocks in the bounded cache too: at tens of millions of keys they would
    // otherwise be the part of memory that grows with the store. Partitioned in blocks of 4 KiB
    // (only a small top level pinned): a whole filter of a large file is megabytes, which the
    // cache's shards (4 MiB each) evict as soon as another arrives, so that each lookup read it
    // again from the file (at 7M keys, 90% of the apply thread's time).
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_partition_filters(true);
    table.set_metadata_block_size(4096);
    table.set_pin_top_level_index_and_filter(true);
    let mut cf = Options::default();
    match family {
        // Values are read by revision, one point lookup each: a bloom filter spares the levels
        // that do not hold it.
        CF_KV => table.set_bloom_filter(10.0, false),
        // The index is sought by key: filters on the key part of its entries.
        CF_INDEX => {
            table.set_bloom_filter(10.0, false);
            table.set_whole_key_filtering(false);
            cf.set_prefix_extractor(index::prefix_extractor());
            cf.set_memtable_prefix_bloom_ratio(0.05);
        }
        _ => {}
    }
    cf.set_block_based_table_factory(&table);
    // Memtables of 16 MiB instead of RocksDB's 64: recent values are served by the block cache
    // just as well.
    cf.set_write_buffer_size(16 << 20);
    cf
}

impl Store {
    /// Opens (or creates) the store under `path`. Nothing is rebuilt: the index is on disk (it is
    /// built once, here, for a store written by a Keel that kept it in memory).
    pub fn open(path: &Path) -> Result<Store> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // The meta family is written with every batch but never fills its memtable, so RocksDB
        // would keep every WAL file since its last flush (up to 4x all memtables) and replay them
        // all at start-up; past 64 MiB of WAL it flushes the families that hold the oldest.
        opts.set_max_total_wal_size(64 << 20);
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES)?;
        let cfs = FAMILIES.map(|n| ColumnFamilyDescriptor::new(n, table_options(&cache, n)));
        let db = Arc::new(DB::open_cf_descriptors(&opts, path, cfs)?);
        let gate = Arc::new(RwLock::new(()));
        let store = Store {
            compactor: Compactor::start(db.clone(), gate.clone()),
            db,
            gate,
            current_rev: AtomicI64::new(0),
            compact_rev: AtomicI64::new(-1),
            applied_index: AtomicU64::new(0),
            live_keys: AtomicI64::new(0),
            bytes_written: AtomicU64::new(0),
        };
        store.resume_install()?;
        store.load()?;
        Ok(store)
    }

    /// Reads the store's counters from disk, building the key index first if it is missing.
    pub(crate) fn load(&self) -> Result<()> {
        if self
            .db
            .get_cf(self.cf(CF_META), META_INDEX_FORMAT)?
            .is_none()
        {
            // The compaction thread reads the index: it waits until the index is whole.
            let _gate = self.gate.write();
            self.build_index()?;
        }
        let last = {
            let mut it = self.db.raw_iterator_cf(self.cf(CF_KV));
            it.seek_to_last();
            let last = it
                .key()
                .and_then(Revision::from_key)
                .map_or(0, |(r, _)| r.main);
            it.status()?;
            last
        };
        // Never compacted reads as -1, as in etcd: compacting at revision 0 is then allowed once.
        let compact = match self.db.get_cf(self.cf(CF_META), META_COMPACT_REV)? {
            Some(_) => self.meta_i64(META_COMPACT_REV)?,
            None => -1,
        };
        // A compaction may have removed the newest change (a tombstone); the meta record is exact.
        // An empty store is at revision 1, as etcd's is: the first write makes revision 2.
        let current = self
            .meta_i64(META_CURRENT_REV)?
            .max(last)
            .max(compact)
            .max(1);
        self.current_rev.store(current, Ordering::Release);
        self.compact_rev.store(compact, Ordering::Release);
        self.applied_index
            .store(self.meta_i64(META_APPLIED_INDEX)? as u64, Ordering::Release);
        self.live_keys
            .store(self.meta_i64(META_LIVE_KEYS)?, Ordering::Release);
        self.bytes_written
            .store(self.meta_i64(META_BYTES_WRITTEN)? as u64, Ordering::Release);
        self.compactor
            .set_freed(self.meta_i64(META_BYTES_FREED)? as u64);
        self.compactor.wake();
        tracing::info!(
            revision = current,
            compacted = compact,
            keys = self.live_keys(),
            "mvcc store restored"
        );
        Ok(())
    }

    /// Builds the key index and the lease attachments from the stored revisions: after an import
    /// (etcd's snapshot or data dir) or when opening a store an older Keel wrote. Two sequential
    /// passes, no memory held per key.
    fn build_index(&self) -> Result<()> {
        let (kv, idx, leases) = (self.cf(CF_KV), self.cf(CF_INDEX), self.cf(CF_LEASE_KEYS));
        let mut ro = ReadOptions::default();
        ro.fill_cache(false);
        let mut it = self.db.raw_iterator_cf_opt(kv, ro);
        it.seek_to_first();
        let mut batch = rocksdb::WriteBatch::default();
        let mut value = Vec::new();
        let mut built = 0u64;
        let mut bytes = 0u64;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let (rev, tombstone) = Revision::from_key(k)
                .ok_or_else(|| MvccError::Corrupt(format!("revision key {k:?}")))?;
            let head: RecordHead = decode_record(v)?;
            let entry = if tombstone {
                Entry::tombstone(v.len())
            } else {
                Entry {
                    created: head.create_revision,
                    version: head.version,
                    lease: head.lease,
                    tombstone: false,
                    size: v.len() as i64,
                }
            };
            bytes += entry.footprint(head.key.len());
            value.clear();
            entry.encode(&mut value);
            batch.put_cf(idx, index::index_key(&head.key, rev), &value);
            built += 1;
            if batch.len() >= BUILD_BATCH {
                self.db.write(std::mem::take(&mut batch))?;
                if built % 1_000_000 < BUILD_BATCH as u64 {
                    tracing::info!(revisions = built, "building the key index");
                }
            }
            it.next();
        }
        it.status()?;
        self.db.write(std::mem::take(&mut batch))?;
        // Each key's first entry is its newest: alive or not, and its lease.
        let mut live = 0i64;
        let mut it = self.db.raw_iterator_cf_opt(idx, index::read_options(false));
        it.seek_to_first();
        let mut previous: Option<Vec<u8>> = None;
        while let Some(k) = it.key() {
            let (encoded, _) = index::split(k)?;
            if previous.as_deref() != Some(encoded) {
                let entry = Cursor::entry(&it)?;
                if !entry.tombstone {
                    live += 1;
                    if entry.lease != 0 {
                        batch.put_cf(leases, lease_key(entry.lease, &decode_key(encoded)?), []);
                    }
                }
                previous = Some(encoded.to_vec());
            }
            it.next();
        }
        it.status()?;
        let meta = self.cf(CF_META);
        batch.put_cf(meta, META_LIVE_KEYS, live.to_be_bytes());
        batch.put_cf(meta, META_BYTES_WRITTEN, (bytes as i64).to_be_bytes());
        batch.put_cf(meta, META_BYTES_FREED, 0i64.to_be_bytes());
        batch.put_cf(meta, META_INDEX_FORMAT, INDEX_FORMAT.to_be_bytes());
        self.db.write(batch)?;
        tracing::info!(revisions = built, keys = live, "key index built");
        Ok(())
    }

    pub(crate) fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        // Every family is created by `open` (create_missing_column_families).
        self.db
            .cf_handle(name)
            .expect("column family opened at start")
    }

    fn meta_i64(&self, key: &[u8]) -> Result<i64> {
        meta_i64(&self.db, key)
    }

    /// The keys whose current value is attached to a lease, with the lease (for the lessor, at
    /// start-up and after a snapshot is installed; it follows puts and deletes from there). Read
    /// from their own family: the cost is the number of attached keys, not of keys.
    pub fn lease_attachments(&self) -> Result<Vec<(Vec<u8>, i64)>> {
        let _gate = self.gate.read();
        self.db
            .iterator_cf(self.cf(CF_LEASE_KEYS), IteratorMode::Start)
            .map(|item| {
                let (k, _) = item?;
                let (lease, key) = k.split_at(8);
                let lease = i64::from_be_bytes(lease.try_into().expect("8 bytes"));
                Ok((key.to_vec(), lease))
            })
            .collect()
    }

    /// The revision of the last committed write transaction.
    pub fn current_revision(&self) -> i64 {
        self.current_rev.load(Ordering::Acquire)
    }

    /// Keys that exist now (not deleted).
    pub fn live_keys(&self) -> usize {
        self.live_keys.load(Ordering::Acquire).max(0) as usize
    }

    /// The revision the store was last compacted at (-1 = never).
    pub fn compacted_revision(&self) -> i64 {
        self.compact_rev.load(Ordering::Acquire)
    }

    /// The raft index of the last entry whose effects are committed to this store.
    pub fn applied_index(&self) -> u64 {
        self.applied_index.load(Ordering::Acquire)
    }

    /// Blocks until every committed compaction is carried out on disk (tests, tools).
    pub fn wait_compacted(&self) {
        self.compactor.wait_idle()
    }

    /// Reads a caller-owned metadata record (cluster identity and the like).
    pub fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(CF_META), key)?)
    }

    /// Writes a caller-owned metadata record durably (synced).
    pub fn put_meta(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(self.cf(CF_META), key, value);
        Ok(self.db.write_opt(batch, &wo)?)
    }

    /// Every committed record of `table`, in key order.
    pub fn records(&self, table: Table) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.db
            .iterator_cf(self.cf(table.family()), IteratorMode::Start)
            .map(|item| {
                let (k, v) = item?;
                Ok((k.into_vec(), v.into_vec()))
            })
            .collect()
    }

    /// Reads the keys of `span` at a committed revision.
    pub fn range(&self, span: KeySpan<'_>, opts: &RangeOptions) -> Result<RangeResult> {
        self.range_pinned(span, opts, self.current_revision())
    }

    fn range_pinned(
        &self,
        span: KeySpan<'_>,
        opts: &RangeOptions,
        current: i64,
    ) -> Result<RangeResult> {
        let _gate = self.gate.read();
        let snapshot = self.db.snapshot();
        // Checked after the snapshot is taken: a compaction publishes its revision before it
        // deletes anything, so a read that passes here finds everything it needs in the snapshot.
        let at = check_revision(opts.rev, current, self.compacted_revision())?;
        let one_key = matches!(span, KeySpan::Single(_));
        let ro = index::read_options(one_key);
        let mut keys = snapshot.raw_iterator_cf_opt(self.cf(CF_INDEX), ro);
        let (hits, count) = collect(&mut keys, span, at, opts)?;
        let mut kvs = Vec::with_capacity(hits.len());
        for rev in hits {
            let v = snapshot
                .get_cf(self.cf(CF_KV), rev.to_key(false))?
                .ok_or_else(|| MvccError::Corrupt(format!("indexed revision {rev:?} missing")))?;
            kvs.push(decode_kv(&v)?);
        }
        Ok(RangeResult {
            kvs,
            count,
            rev: current,
        })
    }

    /// A read view pinned at the current revision: reads at revision 0 all see the same state.
    pub fn view(&self) -> StoreView<'_> {
        StoreView {
            store: self,
            rev: self.current_revision(),
        }
    }

    /// Compacts RocksDB's files, reclaiming the space of deleted and compacted-away data. Readers
    /// and writers go on meanwhile (RocksDB compacts beside them).
    pub fn defragment(&self) {
        for name in FAMILIES {
            self.db
                .compact_range_cf(self.cf(name), None::<&[u8]>, None::<&[u8]>);
        }
    }

    /// Starts a write batch; only one may be open at a time (the apply loop owns it).
    pub fn write_batch(&self) -> WriteBatch<'_> {
        WriteBatch {
            store: self,
            batch: rocksdb::WriteBatch::default(),
            pending: Vec::new(),
            overlay: BTreeMap::new(),
            committed: Default::default(),
            live_delta: 0,
            bytes: 0,
            entry: Vec::new(),
            compacted: false,
            rev: self.current_revision(),
            sub: 0,
            changes: Vec::new(),
            encoded: Vec::new(),
        }
    }

    /// The changes to keys in `span` from revision `from` (inclusive) through `to`, in revision order,
    /// at most about `max` of them (whole revisions only). Deletions carry the key and the revision of
    /// the deletion. Returns the changes and the last revision they cover.
    pub fn changes(
        &self,
        span: KeySpan<'_>,
        from: i64,
        to: i64,
        max: usize,
    ) -> Result<(Vec<Change>, i64)> {
        let compacted = self.compacted_revision();
        if from < compacted {
            return Err(MvccError::Compacted);
        }
        let mut out = Vec::new();
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(Revision::new(to + 1, 0).to_key(false));
        let start = Revision::new(from.max(1), 0).to_key(false);
        let mode = IteratorMode::From(&start, rocksdb::Direction::Forward);
        let mut last = to;
        for item in self.db.iterator_cf_opt(self.cf(CF_KV), ro, mode) {
            let (k, v) = item?;
            let (rev, deleted) = Revision::from_key(&k)
                .ok_or_else(|| MvccError::Corrupt(format!("revision key {k:?}")))?;
            if out.len() >= max && rev.sub == 0 {
                last = rev.main - 1;
                break;
            }
            // A deletion at the compaction point is gone, whether or not the background half
            // has deleted it yet (a put there is its key's newest, and stays).
            if deleted && rev.main <= compacted {
                continue;
            }
            let mut kv = decode_kv(&v)?;
            if !span.contains(&kv.key) {
                continue;
            }
            if deleted {
                kv.mod_revision = rev.main;
            }
            out.push(Change { kv, deleted });
        }
        Ok((out, last))
    }

    /// Makes every committed write durable (before the raft log behind it is dropped).
    pub fn sync(&self) -> Result<()> {
        Ok(self.db.flush_wal(true)?)
    }

    /// Bytes used on disk (for Status) and the live bytes: every readable revision and its index
    /// entry, what compaction has not deleted (for the space quota). The live size drops as soon
    /// as compaction has run: no defragmentation is needed to get out of NOSPACE.
    pub fn size(&self) -> StoreSize {
        let mut size = StoreSize {
            in_use: self
                .bytes_written
                .load(Ordering::Acquire)
                .saturating_sub(self.compactor.freed()),
            ..StoreSize::default()
        };
        for name in FAMILIES {
            let prop = |p: &str| {
                self.db
                    .property_int_value_cf(self.cf(name), p)
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            };
            let mem = prop("rocksdb.cur-size-all-mem-tables");
            size.total += prop("rocksdb.total-sst-files-size") + mem;
        }
        size
    }
}

pub(crate) fn meta_i64(db: &DB, key: &[u8]) -> Result<i64> {
    let meta = db.cf_handle(CF_META).ok_or_else(missing_family)?;
    Ok(match db.get_cf(meta, key)? {
        Some(v) => i64::from_be_bytes(
            v.as_slice()
                .try_into()
                .map_err(|_| MvccError::Corrupt(format!("meta {key:?}")))?,
        ),
        None => 0,
    })
}

fn missing_family() -> MvccError {
    MvccError::Corrupt("store without a meta family".into())
}

/// The `lease_keys` record of `key` attached to `lease`.
fn lease_key(lease: i64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&lease.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// Reads of one state of the store: a committed revision, or a write batch's open transaction.
pub trait ReadView {
    /// Reads the keys of `span`; revision 0 in `opts` means the view's own revision.
    fn range(&self, span: KeySpan<'_>, opts: &RangeOptions) -> Result<RangeResult>;
    /// The revision the view reads at by default.
    fn revision(&self) -> i64;
    /// The revision below which history is gone.
    fn compacted_revision(&self) -> i64;
}

/// A read view of the committed store, pinned at one revision.
pub struct StoreView<'s> {
    store: &'s Store,
    rev: i64,
}

impl ReadView for StoreView<'_> {
    fn range(&self, span: KeySpan<'_>, opts: &RangeOptions) -> Result<RangeResult> {
        self.store.range_pinned(span, opts, self.rev)
    }

    fn revision(&self) -> i64 {
        self.rev
    }

    fn compacted_revision(&self) -> i64 {
        self.store.compacted_revision()
    }
}

/// Validates a read revision against the store's range and resolves 0 to the current revision.
fn check_revision(rev: i64, current: i64, compacted: i64) -> Result<i64> {
    let at = if rev <= 0 { current } else { rev };
    if at > current {
        return Err(MvccError::FutureRevision);
    }
    if at < compacted {
        return Err(MvccError::Compacted);
    }
    Ok(at)
}

/// Walks the index: the revisions to fetch (up to the limit) and the number of keys in the span.
fn collect(
    keys: &mut impl Cursor,
    span: KeySpan<'_>,
    at: i64,
    opts: &RangeOptions,
) -> Result<(Vec<Revision>, usize)> {
    let mut hits = Vec::new();
    let mut count = 0;
    visit(keys, span, at, |_, found| {
        count += 1;
        if !opts.count_only && (opts.limit == 0 || hits.len() < opts.limit) {
            hits.push(found.rev);
        }
        Ok(true)
    })?;
    Ok((hits, count))
}

/// What the index and start-up need of a stored key-value record (etcd's `mvccpb.KeyValue` field
/// numbers): the value, most of the record, is skipped rather than copied.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct RecordHead {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(int64, tag = "2")]
    pub create_revision: i64,
    #[prost(int64, tag = "4")]
    pub version: i64,
    #[prost(int64, tag = "6")]
    pub lease: i64,
}

fn decode_kv(bytes: &[u8]) -> Result<KeyValue> {
    decode_record(bytes)
}

pub(crate) fn decode_record<M: Message + Default>(bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|e| MvccError::Corrupt(format!("key-value record: {e}")))
}

/// One change to one key, as watchers see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The key-value written; for a deletion, the key and the deletion's revision only.
    pub kv: KeyValue,
    /// Whether the key was deleted.
    pub deleted: bool,
}

/// A raw iterator over one of the store's families.
type Iter<'s> = rocksdb::DBRawIteratorWithThreadMode<'s, DB>;

/// A group of write transactions committed to disk together. Inside it, each write transaction
/// (`begin` .. `end`) gets one store revision; reads see the batch's own uncommitted changes.
pub struct WriteBatch<'s> {
    store: &'s Store,
    batch: rocksdb::WriteBatch,
    /// Values written by this batch, not yet readable from RocksDB: their revisions (ascending)
    /// and where in `changes` they are. Not a map of copies: a put is the apply loop's hot path.
    pending: Vec<(Revision, usize)>,
    /// The batch's key index entries, read over the committed index until the batch commits.
    overlay: BTreeMap<Vec<u8>, Entry>,
    /// Iterators over the committed index (for one key's changes, and across keys), made once
    /// per batch: making a RocksDB iterator costs more than a seek, and what is committed does
    /// not change while the batch is open (the apply loop is the only writer of the index but
    /// the compaction thread, which deletes nothing a read can see).
    committed: [RefCell<Option<Iter<'s>>>; 2],
    /// Keys the batch brought alive, less those it deleted.
    live_delta: i64,
    /// Bytes the batch adds to the store (see `Entry::footprint`).
    bytes: u64,
    /// An index entry's encoding on its way into the RocksDB batch, reused.
    entry: Vec<u8>,
    /// Whether the batch records a compaction (the background half starts once it commits).
    compacted: bool,
    /// Every change made by the batch, in order, for watchers.
    changes: Vec<Change>,
    /// A key-value's encoding on its way into the RocksDB batch (which copies it), reused.
    encoded: Vec<u8>,
    /// Revision of the last ended transaction in this batch.
    rev: i64,
    /// Changes made so far by the open transaction.
    sub: i64,
}

impl<'s> WriteBatch<'s> {
    /// Starts a write transaction.
    pub fn begin(&mut self) {
        self.sub = 0;
    }

    /// Ends the open write transaction; returns the store revision after it (bumped only if it
    /// changed anything).
    pub fn end(&mut self) -> i64 {
        if self.sub > 0 {
            self.rev += 1;
        }
        self.sub = 0;
        self.rev
    }

    /// The revision the open transaction reads at: its own changes included.
    pub fn read_revision(&self) -> i64 {
        if self.sub > 0 {
            self.rev + 1
        } else {
            self.rev
        }
    }

    fn next_revision(&mut self) -> Revision {
        let rev = Revision::new(self.rev + 1, self.sub);
        self.sub += 1;
        rev
    }

    /// The index as the open transaction sees it: committed entries under the batch's own.
    fn with_keys<R>(
        &self,
        one_key: bool,
        f: impl FnOnce(&mut Overlaid<'_, &mut Iter<'s>>) -> R,
    ) -> R {
        let mut slot = self.committed[usize::from(one_key)].borrow_mut();
        let committed = slot.get_or_insert_with(|| {
            let ro = index::read_options(one_key);
            self.store
                .db
                .raw_iterator_cf_opt(self.store.cf(CF_INDEX), ro)
        });
        f(&mut Overlaid::new(committed, &self.overlay))
    }

    fn value_at(&self, rev: Revision) -> Result<KeyValue> {
        if let Ok(i) = self.pending.binary_search_by_key(&rev, |(r, _)| *r) {
            return Ok(self.changes[self.pending[i].1].kv.clone());
        }
        let v = self
            .store
            .db
            .get_cf(self.store.cf(CF_KV), rev.to_key(false))?
            .ok_or_else(|| MvccError::Corrupt(format!("indexed revision {rev:?} missing")))?;
        decode_kv(&v)
    }

    /// The key's latest change if it is alive.
    fn live(&self, key: &[u8]) -> Result<Option<Found>> {
        let newest = self.with_keys(true, |keys| newest_at(keys, key, i64::MAX))?;
        Ok(newest.filter(|f| !f.entry.tombstone))
    }

    /// The latest value of `key` as the open transaction sees it.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        self.live(key)?.map(|f| self.value_at(f.rev)).transpose()
    }

    fn index(&mut self, key: &[u8], rev: Revision, entry: Entry) {
        let ikey = index::index_key(key, rev);
        self.entry.clear();
        entry.encode(&mut self.entry);
        self.batch
            .put_cf(self.store.cf(CF_INDEX), &ikey, &self.entry);
        self.bytes += entry.footprint(key.len());
        self.overlay.insert(ikey, entry);
    }

    /// Moves `key`'s lease attachment from `from` to `to` (0: none).
    fn attach(&mut self, key: &[u8], from: i64, to: i64) {
        if from == to {
            return;
        }
        let cf = self.store.cf(CF_LEASE_KEYS);
        if from != 0 {
            self.batch.delete_cf(cf, lease_key(from, key));
        }
        if to != 0 {
            self.batch.put_cf(cf, lease_key(to, key), []);
        }
    }

    /// Puts `key` in the open transaction; returns the new key-value.
    pub fn put(&mut self, key: &[u8], value: Vec<u8>, lease: i64) -> Result<&KeyValue> {
        let rev = self.next_revision();
        let prev = self.live(key)?;
        let mut entry = match prev {
            Some(p) => Entry {
                created: p.entry.created,
                version: p.entry.version + 1,
                lease,
                ..Entry::default()
            },
            None => {
                self.live_delta += 1;
                Entry {
                    created: rev.main,
                    version: 1,
                    lease,
                    ..Entry::default()
                }
            }
        };
        self.attach(key, prev.map_or(0, |p| p.entry.lease), lease);
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: entry.created,
            mod_revision: rev.main,
            version: entry.version,
            value,
            lease,
        };
        self.encoded.clear();
        kv.encode(&mut self.encoded)
            .expect("a Vec grows to fit any message");
        self.batch
            .put_cf(self.store.cf(CF_KV), rev.to_key(false), &self.encoded);
        entry.size = self.encoded.len() as i64;
        self.index(key, rev, entry);
        self.pending.push((rev, self.changes.len()));
        self.changes.push(Change { kv, deleted: false });
        Ok(&self.changes[self.changes.len() - 1].kv)
    }

    /// Deletes the live keys of `span` in the open transaction; returns them as they were.
    pub fn delete(&mut self, span: KeySpan<'_>) -> Result<Vec<KeyValue>> {
        let prev = self.range(span, &RangeOptions::default())?.kvs;
        for kv in &prev {
            let rev = self.next_revision();
            let tomb = KeyValue {
                key: kv.key.clone(),
                ..Default::default()
            };
            let tomb = tomb.encode_to_vec();
            self.batch
                .put_cf(self.store.cf(CF_KV), rev.to_key(true), &tomb);
            self.index(&kv.key, rev, Entry::tombstone(tomb.len()));
            self.attach(&kv.key, kv.lease, 0);
            self.live_delta -= 1;
            self.pending.push((rev, self.changes.len()));
            let tomb = KeyValue {
                key: kv.key.clone(),
                mod_revision: rev.main,
                ..Default::default()
            };
            self.changes.push(Change {
                kv: tomb,
                deleted: true,
            });
        }
        Ok(prev)
    }

    /// Writes a caller-owned metadata record with the batch.
    pub fn put_meta(&mut self, key: &[u8], value: &[u8]) {
        self.batch.put_cf(self.store.cf(CF_META), key, value);
    }

    /// Writes a record of `table` with the batch.
    pub fn put_record(&mut self, table: Table, key: &[u8], value: &[u8]) {
        self.batch.put_cf(self.store.cf(table.family()), key, value);
    }

    /// Deletes a record of `table` with the batch.
    pub fn delete_record(&mut self, table: Table, key: &[u8]) {
        self.batch.delete_cf(self.store.cf(table.family()), key);
    }

    /// Compacts history at `rev`: reads below it fail with `Compacted` from now on, and once the
    /// batch commits, every value no read at or after `rev` can see is deleted in the background.
    pub fn compact(&mut self, rev: i64) -> Result<()> {
        if rev <= self.store.compacted_revision() {
            return Err(MvccError::Compacted);
        }
        if rev > self.rev {
            return Err(MvccError::FutureRevision);
        }
        // Published at once, so concurrent readers below `rev` fail from now on.
        self.store.compact_rev.store(rev, Ordering::Release);
        self.batch
            .put_cf(self.store.cf(CF_META), META_COMPACT_REV, rev.to_be_bytes());
        self.compacted = true;
        Ok(())
    }

    /// Commits the batch together with the raft index it brings the store to, then makes it visible.
    /// Not synced: the raft log is, and replay from the recorded applied index is idempotent.
    pub fn commit(mut self, applied_index: u64) -> Result<Vec<Change>> {
        let meta = self.store.cf(CF_META);
        self.batch.put_cf(
            meta,
            META_APPLIED_INDEX,
            (applied_index as i64).to_be_bytes(),
        );
        self.batch
            .put_cf(meta, META_CURRENT_REV, self.rev.to_be_bytes());
        let live = self.store.live_keys.load(Ordering::Acquire) + self.live_delta;
        if self.live_delta != 0 {
            self.batch.put_cf(meta, META_LIVE_KEYS, live.to_be_bytes());
        }
        let written = self.store.bytes_written.load(Ordering::Acquire) + self.bytes;
        if self.bytes != 0 {
            self.batch
                .put_cf(meta, META_BYTES_WRITTEN, (written as i64).to_be_bytes());
        }
        self.store.db.write(std::mem::take(&mut self.batch))?;
        self.store.live_keys.store(live, Ordering::Release);
        self.store.bytes_written.store(written, Ordering::Release);
        self.store.current_rev.store(self.rev, Ordering::Release);
        self.store
            .applied_index
            .store(applied_index, Ordering::Release);
        if self.compacted {
            self.store.compactor.wake();
        }
        Ok(std::mem::take(&mut self.changes))
    }
}

impl ReadView for WriteBatch<'_> {
    fn range(&self, span: KeySpan<'_>, opts: &RangeOptions) -> Result<RangeResult> {
        let current = self.read_revision();
        let at = check_revision(opts.rev, current, self.store.compacted_revision())?;
        let one_key = matches!(span, KeySpan::Single(_));
        let (hits, count) = self.with_keys(one_key, |keys| collect(keys, span, at, opts))?;
        let kvs = hits
            .into_iter()
            .map(|rev| self.value_at(rev))
            .collect::<Result<_>>()?;
        Ok(RangeResult {
            kvs,
            count,
            rev: current,
        })
    }

    fn revision(&self) -> i64 {
        self.read_revision()
    }

    fn compacted_revision(&self) -> i64 {
        self.store.compacted_revision()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(store: &Store, key: &str, value: &str, applied: u64) -> i64 {
        let mut wb = store.write_batch();
        wb.begin();
        wb.put(key.as_bytes(), value.as_bytes().to_vec(), 0)
            .unwrap();
        let rev = wb.end();
        wb.commit(applied).unwrap();
        rev
    }

    fn get_at(store: &Store, key: &str, rev: i64) -> Result<Option<String>> {
        let res = store.range(
            KeySpan::Single(key.as_bytes()),
            &RangeOptions {
                rev,
                ..Default::default()
            },
        )?;
        Ok(res
            .kvs
            .first()
            .map(|kv| String::from_utf8(kv.value.clone()).unwrap()))
    }

    #[test]
    fn history_compaction_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.current_revision(), 1);
            assert_eq!(put(&store, "a", "1", 1), 2);
            assert_eq!(put(&store, "a", "2", 2), 3);
            let mut wb = store.write_batch();
            wb.begin();
            assert_eq!(wb.delete(KeySpan::Single(b"a")).unwrap().len(), 1);
            // Reads inside the batch see its own uncommitted delete; committed readers do not yet.
            assert!(wb.get(b"a").unwrap().is_none());
            assert_eq!(get_at(&store, "a", 0).unwrap().as_deref(), Some("2"));
            assert_eq!(wb.end(), 4);
            wb.commit(3).unwrap();
            assert_eq!(put(&store, "b", "x", 4), 5);
            assert_eq!(get_at(&store, "a", 2).unwrap().as_deref(), Some("1"));
            assert_eq!(get_at(&store, "a", 4).unwrap(), None);

            let mut wb = store.write_batch();
            wb.compact(3).unwrap();
            assert!(matches!(wb.compact(3), Err(MvccError::Compacted)));
            assert!(matches!(wb.compact(9), Err(MvccError::FutureRevision)));
            wb.commit(5).unwrap();
            assert!(matches!(get_at(&store, "a", 2), Err(MvccError::Compacted)));
            assert!(matches!(
                get_at(&store, "a", 6),
                Err(MvccError::FutureRevision)
            ));
            assert_eq!(get_at(&store, "a", 3).unwrap().as_deref(), Some("2"));
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            (
                store.current_revision(),
                store.compacted_revision(),
                store.applied_index()
            ),
            (5, 3, 5)
        );
        assert_eq!(get_at(&store, "a", 3).unwrap().as_deref(), Some("2"));
        assert_eq!(get_at(&store, "a", 0).unwrap(), None);
        assert!(matches!(get_at(&store, "a", 2), Err(MvccError::Compacted)));
        let kv = store
            .range(KeySpan::Single(b"b"), &RangeOptions::default())
            .unwrap()
            .kvs
            .remove(0);
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    }

    #[test]
    fn the_wal_a_restart_replays_stays_bounded() {
        // The meta family is written with every batch but never fills a memtable: unless the
        // total WAL is capped, it keeps every WAL file alive, and a restart replays them all.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let value = "v".repeat(256 << 10);
        for i in 1..=640 {
            put(&store, &format!("k{}", i % 10), &value, i);
        }
        // 160 MiB written; obsolete WAL files are deleted after their flush, in the background.
        let wal_mib = || -> u64 {
            let files = std::fs::read_dir(dir.path()).unwrap().map(|f| f.unwrap());
            let logs = files.filter(|f| f.file_name().to_string_lossy().ends_with(".log"));
            logs.map(|f| f.metadata().unwrap().len()).sum::<u64>() >> 20
        };
        for _ in 0..100 {
            if wal_mib() <= 100 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(wal_mib() <= 100, "{} MiB of WAL", wal_mib());
    }

    /// A tiny deterministic PRNG (xorshift), so the model test needs no extra crate and replays.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    type Snapshot = std::collections::BTreeMap<Vec<u8>, KeyValue>;

    #[test]
    fn a_batch_reads_its_own_writes_before_they_are_committed() {
        // The apply loop puts many requests in one batch: a put with prev_kv, or a txn comparing
        // a key, must see what an earlier request of the same batch wrote.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        put(&store, "k", "v1", 1);
        let mut wb = store.write_batch();
        let earlier = [("v1", 2), ("v2", 3), ("v3", 5)];
        for (v, (prev_value, prev_rev)) in ["v2", "v3", "v4"].into_iter().zip(earlier) {
            wb.begin();
            let prev = wb.get(b"k").unwrap().unwrap();
            assert_eq!(
                (prev.value.as_slice(), prev.mod_revision),
                (prev_value.as_bytes(), prev_rev)
            );
            wb.put(b"k", v.as_bytes().to_vec(), 0).unwrap();
            wb.end();
            wb.begin();
            wb.put(format!("other{v}").as_bytes(), b"x".to_vec(), 0)
                .unwrap();
            wb.end();
        }
        // Compacting inside the batch drops the batch's own superseded values too (v2, at 3).
        wb.compact(5).unwrap();
        wb.begin();
        let got = wb.get(b"k").unwrap().unwrap();
        assert_eq!((got.value.as_slice(), got.version), (&b"v4"[..], 4));
        wb.end();
        wb.commit(2).unwrap();
        assert_eq!(get_at(&store, "k", 8).unwrap().as_deref(), Some("v4"));
        assert_eq!(get_at(&store, "k", 5).unwrap().as_deref(), Some("v3"));
        assert!(matches!(get_at(&store, "k", 3), Err(MvccError::Compacted)));
        // The values no read can see are deleted in the background, once the batch commits.
        store.wait_compacted();
        let stored = |main| {
            let key = Revision::new(main, 0).to_key(false);
            store.db.get_cf(store.cf(CF_KV), key).unwrap().is_some()
        };
        assert_eq!(
            [stored(2), stored(3), stored(5), stored(7)],
            [false, false, true, true]
        );
    }

    /// The store's counters and lease attachments are on disk (a reopened store reads them, it
    /// rebuilds nothing); a store without the key index, as an older Keel wrote it, gets one
    /// built when opened.
    #[test]
    fn reopening_reads_counts_and_attachments_and_builds_a_missing_index() {
        let dir = tempfile::tempdir().unwrap();
        let check = |store: &Store| {
            assert_eq!(store.live_keys(), 2);
            assert_eq!(store.lease_attachments().unwrap(), vec![(b"a".to_vec(), 7)]);
            let all = KeySpan::from_etcd(b"", b"\0");
            let kvs = store.range(all, &RangeOptions::default()).unwrap().kvs;
            let seen: Vec<_> = kvs.iter().map(|kv| (kv.key.clone(), kv.version)).collect();
            assert_eq!(seen, vec![(b"a".to_vec(), 1), (b"b".to_vec(), 2)]);
        };
        {
            let store = Store::open(dir.path()).unwrap();
            let mut wb = store.write_batch();
            wb.begin();
            for (key, lease) in [(b"a", 7), (b"b", 7), (b"c", 0)] {
                wb.put(key, b"v".to_vec(), lease).unwrap();
            }
            wb.end();
            wb.begin();
            wb.put(b"b", b"w".to_vec(), 0).unwrap();
            wb.delete(KeySpan::Single(b"c")).unwrap();
            wb.end();
            wb.commit(1).unwrap();
            check(&store);
        }
        let store = Store::open(dir.path()).unwrap();
        check(&store);
        let mut wb = rocksdb::WriteBatch::default();
        for family in [CF_INDEX, CF_LEASE_KEYS] {
            for item in store.db.iterator_cf(store.cf(family), IteratorMode::Start) {
                wb.delete_cf(store.cf(family), item.unwrap().0);
            }
        }
        wb.delete_cf(store.cf(CF_META), META_INDEX_FORMAT);
        wb.delete_cf(store.cf(CF_META), META_LIVE_KEYS);
        store.db.write(wb).unwrap();
        drop(store);
        check(&Store::open(dir.path()).unwrap());
    }

    /// Random writes, deletes, multi-key transactions, compactions and reopenings, checked after every
    /// step against a model that keeps the whole map at every revision.
    #[test]
    fn matches_a_model_of_every_revision() {
        for seed in 1..=8u64 {
            let dir = tempfile::tempdir().unwrap();
            let mut store = Store::open(dir.path()).unwrap();
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut history: Vec<Snapshot> = vec![Snapshot::new(), Snapshot::new()]; // revisions 0 and 1
            let mut compacted = -1i64;
            let mut applied = 0u64;
            for step in 0..300 {
                let mut state = history.last().unwrap().clone();
                let rev = history.len() as i64;
                let mut wb = store.write_batch();
                match rng.below(10) {
                    0..=5 => {
                        wb.begin();
                        for _ in 0..=rng.below(3) {
                            let key = format!("k{}", rng.below(12)).into_bytes();
                            let value = format!("v{step}").into_bytes();
                            wb.put(&key, value.clone(), 0).unwrap();
                            let (create_revision, version) = state
                                .get(&key)
                                .map_or((rev, 1), |kv| (kv.create_revision, kv.version + 1));
                            let kv = KeyValue {
                                key: key.clone(),
                                value,
                                create_revision,
                                mod_revision: rev,
                                version,
                                lease: 0,
                            };
                            state.insert(key, kv);
                        }
                        assert_eq!(wb.end(), rev);
                        history.push(state);
                    }
                    6..=7 => {
                        let (a, b) = (rng.below(12), rng.below(12));
                        let (start, end) = (format!("k{}", a.min(b)), format!("k{}", a.max(b)));
                        wb.begin();
                        let deleted = wb
                            .delete(KeySpan::from_etcd(start.as_bytes(), end.as_bytes()))
                            .unwrap();
                        let gone: Vec<_> = state
                            .keys()
                            .filter(|k| {
                                k.as_slice() >= start.as_bytes() && k.as_slice() < end.as_bytes()
                            })
                            .cloned()
                            .collect();
                        assert_eq!(deleted.len(), gone.len(), "seed {seed} step {step}");
                        for k in gone {
                            state.remove(&k);
                        }
                        if wb.end() == rev {
                            history.push(state);
                        }
                    }
                    8 => {
                        let current = history.len() as i64 - 1;
                        let at = compacted.max(0)
                            + rng.below((current - compacted.max(0)) as u64 + 1) as i64;
                        match wb.compact(at) {
                            Ok(()) => compacted = at,
                            Err(MvccError::Compacted) => assert!(at <= compacted),
                            Err(e) => panic!("seed {seed} step {step}: {e}"),
                        }
                    }
                    _ => {
                        drop(wb);
                        drop(store);
                        store = Store::open(dir.path()).unwrap();
                        continue;
                    }
                }
                applied += 1;
                wb.commit(applied).unwrap();
                let current = history.len() as i64 - 1;
                assert_eq!(store.current_revision(), current, "seed {seed} step {step}");
                for at in 1..=current {
                    let res = store.range(
                        KeySpan::from_etcd(b"\0", b"\0"),
                        &RangeOptions {
                            rev: at,
                            ..Default::default()
                        },
                    );
                    if at < compacted {
                        assert!(
                            matches!(res, Err(MvccError::Compacted)),
                            "seed {seed} step {step} rev {at}"
                        );
                        continue;
                    }
                    let got = res.unwrap().kvs;
                    let want: Vec<KeyValue> = history[at as usize].values().cloned().collect();
                    assert_eq!(got, want, "seed {seed} step {step} rev {at}");
                }
            }
        }
    }
}

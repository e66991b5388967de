//! The lessor. Two kinds of state live here:
//! - which leases exist, their TTLs and the keys attached to each: replicated state, changed only by
//!   the apply loop (grant, revoke, and the puts and deletes of attached keys);
//! - when each lease expires: local state of the leader's lessor (the *primary*). Only the primary
//!   keeps deadlines; it renews them on keep-alives and proposes a revoke through raft for each lease
//!   that runs out. Followers keep no deadlines, so a lease cannot expire on a member's own clock.
//!
//! When a member becomes primary (start-up, leader change) every lease gets its full TTL again plus
//! an election timeout, as etcd does: downtime and elections never expire a lease early.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_mvcc::{Store, Table, WriteBatch};
use keel_proto::LeaseRecord;
use parking_lot::Mutex;
use prost::Message;

use crate::StateError;

/// The largest TTL a lease may be granted, in seconds (etcd's MaxLeaseTTL).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// How long after proposing the revoke of an expired lease the primary proposes it again if the
/// lease is still there (etcd's expiredLeaseRetryInterval).
pub const REVOKE_RETRY: Duration = Duration::from_secs(3);

struct Lease {
    ttl: i64,
    /// Seconds left as the leader's last checkpoint recorded them (replicated); a new primary
    /// runs the lease for this long instead of its whole TTL.
    remaining: Option<i64>,
    keys: BTreeSet<Vec<u8>>,
    /// When the lease runs out; `None` unless this lessor is primary.
    expiry: Option<Instant>,
    /// When the primary next looks at it, its key in `deadlines`: its expiry, or once it ran out
    /// and its revoke was proposed, when the revoke is proposed again. The expiry itself stays
    /// passed, so no keep-alive renews a lease whose revoke is under way.
    due: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    leases: HashMap<i64, Lease>,
    /// Which lease each attached key belongs to.
    items: HashMap<Vec<u8>, i64>,
    primary: bool,
    /// (due, lease) for every lease with a deadline, soonest first.
    deadlines: BTreeSet<(Instant, i64)>,
    /// Checkpointed leases renewed since: the checkpoint must be cleared cluster-wide.
    renewed_since_checkpoint: Vec<i64>,
}

impl Inner {
    fn set_expiry(&mut self, id: i64, expiry: Option<Instant>) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.expiry = expiry;
        }
        self.set_due(id, expiry);
    }

    fn set_due(&mut self, id: i64, due: Option<Instant>) {
        let Some(l) = self.leases.get_mut(&id) else {
            return;
        };
        if let Some(old) = l.due.take() {
            self.deadlines.remove(&(old, id));
        }
        if let Some(new) = due {
            self.deadlines.insert((new, id));
        }
        l.due = due;
    }

    fn detach(&mut self, key: &[u8]) {
        if let Some(id) = self.items.remove(key) {
            if let Some(l) = self.leases.get_mut(&id) {
                l.keys.remove(key);
            }
        }
    }
}

/// Why a keep-alive was not served here.
#[derive(Debug, PartialEq, Eq)]
pub enum RenewError {
    /// The lease does not exist.
    NotFound,
    /// The lease ran out; its revoke is on its way through raft.
    Expired,
    /// This member's lessor is not the primary one.
    NotPrimary,
}

/// What LeaseTimeToLive reports.
#[derive(Debug)]
pub struct TimeToLive {
    /// The TTL the lease was granted with, in seconds.
    pub granted: i64,
    /// Seconds left (truncated, as etcd reports it).
    pub remaining: i64,
    /// The attached keys, in key order.
    pub keys: Vec<Vec<u8>>,
}

/// Where a lessor reads the time: the monotonic clock, or a simulated member's (whose clock may
/// run fast or slow, or jump).
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> Instant + Send + Sync>);

impl Clock {
    /// A clock read by calling `now`.
    pub fn new(now: impl Fn() -> Instant + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(now))
    }

    fn now(&self) -> Instant {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new(Instant::now)
    }
}

/// The leases of one member.
#[derive(Default)]
pub struct Lessor {
    inner: Mutex<Inner>,
    /// Whether any key is attached to a lease: a put without a lease then has nothing to detach and
    /// skips the lock (the apply path, contended by keep-alives).
    attached: AtomicBool,
    /// Deadlines are set and checked on this clock.
    clock: Clock,
}

fn record_key(id: i64) -> [u8; 8] {
    id.to_be_bytes()
}

impl Lessor {
    /// Loads the leases from the store and re-attaches the keys that name them (the store keeps
    /// the attachments: call right after opening it or installing a snapshot). No lease has a
    /// deadline until this member becomes primary.
    pub fn restore(store: &Store) -> Result<Lessor, StateError> {
        let mut inner = Inner::default();
        for (_, v) in store.records(Table::Lease)? {
            let r = LeaseRecord::decode(v.as_slice())
                .map_err(|e| StateError::Storage(format!("corrupt lease record: {e}")))?;
            inner.leases.insert(
                r.id,
                Lease {
                    ttl: r.ttl,
                    remaining: (r.remaining_ttl > 0).then_some(r.remaining_ttl),
                    keys: BTreeSet::new(),
                    expiry: None,
                    due: None,
                },
            );
        }
        for (key, lease) in store.lease_attachments()? {
            match inner.leases.get_mut(&lease) {
                Some(l) => {
                    l.keys.insert(key.clone());
                    inner.items.insert(key, lease);
                }
                None => tracing::error!(lease, "key attached to a missing lease"),
            }
        }
        tracing::info!(leases = inner.leases.len(), "leases restored");
        Ok(Lessor {
            attached: AtomicBool::new(!inner.items.is_empty()),
            inner: Mutex::new(inner),
            clock: Clock::default(),
        })
    }

    /// This lessor on `clock` instead of the monotonic clock.
    pub fn with_clock(mut self, clock: Clock) -> Lessor {
        self.clock = clock;
        self
    }

    /// The time on this lessor's clock.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Loads the leases again (a snapshot replaced the state). Deadlines are gone: a member that
    /// receives a snapshot is not the primary.
    pub fn reload(&self, store: &Store) -> Result<(), StateError> {
        let fresh = Lessor::restore(store)?;
        let inner = fresh.inner.into_inner();
        self.attached.store(
            !inner.items.is_empty(),
            std::sync::atomic::Ordering::Release,
        );
        *self.inner.lock() = inner;
        Ok(())
    }

    /// Whether lease `id` exists.
    pub fn contains(&self, id: i64) -> bool {
        self.inner.lock().leases.contains_key(&id)
    }

    /// Applies a grant: records the lease in the batch; the primary starts its clock.
    pub fn grant(&self, wb: &mut WriteBatch<'_>, id: i64, ttl: i64) -> Result<(), StateError> {
        let mut inner = self.inner.lock();
        if inner.leases.contains_key(&id) {
            return Err(StateError::LeaseExists);
        }
        inner.leases.insert(
            id,
            Lease {
                ttl,
                remaining: None,
                keys: BTreeSet::new(),
                expiry: None,
                due: None,
            },
        );
        if inner.primary {
            let expiry = self.clock.now() + secs(ttl);
            inner.set_expiry(id, Some(expiry));
        }
        wb.put_record(
            Table::Lease,
            &record_key(id),
            &LeaseRecord {
                id,
                ttl,
                remaining_ttl: 0,
            }
            .encode_to_vec(),
        );
        Ok(())
    }

    /// The keys attached to lease `id`, in key order (the order every member deletes them in).
    pub fn keys(&self, id: i64) -> Option<Vec<Vec<u8>>> {
        let inner = self.inner.lock();
        let l = inner.leases.get(&id)?;
        Some(l.keys.iter().cloned().collect())
    }

    /// Applies the end of a revoke, once its keys are deleted: forgets the lease.
    pub fn remove(&self, wb: &mut WriteBatch<'_>, id: i64) {
        let mut inner = self.inner.lock();
        inner.set_expiry(id, None);
        if let Some(l) = inner.leases.remove(&id) {
            for k in l.keys {
                inner.items.remove(&k);
            }
        }
        self.attached
            .store(!inner.items.is_empty(), Ordering::Release);
        wb.delete_record(Table::Lease, &record_key(id));
    }

    /// Applies a put of `key` with `lease` (0 = none): moves the key to its new lease.
    pub fn attach(&self, key: &[u8], lease: i64) {
        if lease == 0 && !self.attached.load(Ordering::Acquire) {
            return;
        }
        let mut inner = self.inner.lock();
        let old = inner.items.get(key).copied().unwrap_or(0);
        if old == lease {
            return;
        }
        inner.detach(key);
        if lease != 0 {
            if let Some(l) = inner.leases.get_mut(&lease) {
                l.keys.insert(key.to_vec());
                inner.items.insert(key.to_vec(), lease);
            }
        }
        self.attached
            .store(!inner.items.is_empty(), Ordering::Release);
    }

    /// Applies the deletion of `key`, which named lease `lease`.
    pub fn detach(&self, key: &[u8], lease: i64) {
        if lease != 0 {
            let mut inner = self.inner.lock();
            inner.detach(key);
            self.attached
                .store(!inner.items.is_empty(), Ordering::Release);
        }
    }

    /// Makes this lessor primary: every lease runs for its full TTL plus `extend` from now.
    pub fn promote(&self, extend: Duration) {
        let mut inner = self.inner.lock();
        if inner.primary {
            return;
        }
        inner.primary = true;
        let now = self.clock.now();
        let all: Vec<(i64, i64)> = inner
            .leases
            .iter()
            .map(|(id, l)| (*id, l.remaining.unwrap_or(l.ttl)))
            .collect();
        for (id, ttl) in all {
            inner.set_expiry(id, Some(now + extend + secs(ttl)));
        }
        tracing::info!(leases = inner.leases.len(), "lessor promoted");
    }

    /// Makes this lessor a follower's: no deadlines.
    pub fn demote(&self) {
        let mut inner = self.inner.lock();
        if !inner.primary {
            return;
        }
        inner.primary = false;
        inner.deadlines.clear();
        for l in inner.leases.values_mut() {
            l.expiry = None;
            l.due = None;
        }
        tracing::info!("lessor demoted");
    }

    /// A keep-alive: the lease runs for its full TTL from now. Returns the TTL.
    pub fn renew(&self, id: i64) -> Result<i64, RenewError> {
        let mut inner = self.inner.lock();
        if !inner.primary {
            return Err(RenewError::NotPrimary);
        }
        let (ttl, expiry) = match inner.leases.get(&id) {
            Some(l) => (l.ttl, l.expiry),
            None => return Err(RenewError::NotFound),
        };
        let now = self.clock.now();
        if expiry.is_some_and(|e| e <= now) {
            return Err(RenewError::Expired);
        }
        inner.set_expiry(id, Some(now + secs(ttl)));
        if inner
            .leases
            .get_mut(&id)
            .and_then(|l| l.remaining.take())
            .is_some()
        {
            inner.renewed_since_checkpoint.push(id);
        }
        Ok(ttl)
    }

    /// Applies a checkpoint of remaining TTLs (0: cleared); with `persist`, records them in the
    /// batch so that they survive restarts.
    pub fn checkpoint(&self, wb: &mut WriteBatch<'_>, cp: &keel_proto::LeaseCheckpoint) {
        let mut inner = self.inner.lock();
        for c in &cp.checkpoints {
            let Some(l) = inner.leases.get_mut(&c.id) else {
                continue;
            };
            l.remaining = (c.remaining_ttl > 0).then_some(c.remaining_ttl.min(l.ttl));
            if cp.persist {
                let record = LeaseRecord {
                    id: c.id,
                    ttl: l.ttl,
                    remaining_ttl: l.remaining.unwrap_or(0),
                };
                wb.put_record(Table::Lease, &record_key(c.id), &record.encode_to_vec());
            }
        }
    }

    /// On the primary: the remaining TTL of up to `limit` leases with a TTL above `min_ttl`
    /// seconds (etcd checkpoints only leases that outlive a checkpoint interval).
    pub fn checkpoints(&self, min_ttl: i64, limit: usize) -> Vec<keel_proto::LeaseRemaining> {
        let inner = self.inner.lock();
        if !inner.primary {
            return Vec::new();
        }
        let now = self.clock.now();
        inner
            .leases
            .iter()
            .filter(|(_, l)| l.ttl > min_ttl)
            .filter_map(|(id, l)| {
                let left = l.expiry?.saturating_duration_since(now).as_secs() as i64;
                (left > 0 && left < l.ttl).then_some(keel_proto::LeaseRemaining {
                    id: *id,
                    remaining_ttl: left,
                })
            })
            .take(limit)
            .collect()
    }

    /// Checkpointed leases renewed since their checkpoint: their checkpoints must be cleared on
    /// every member (else a new leader would run them for less than their renewed TTL).
    pub fn renewed_checkpoints(&self) -> Vec<keel_proto::LeaseRemaining> {
        self.inner
            .lock()
            .renewed_since_checkpoint
            .drain(..)
            .map(|id| keel_proto::LeaseRemaining {
                id,
                remaining_ttl: 0,
            })
            .collect()
    }

    /// The granted and remaining TTL of lease `id`, and its keys if asked.
    pub fn time_to_live(&self, id: i64, with_keys: bool) -> Option<TimeToLive> {
        let inner = self.inner.lock();
        let l = inner.leases.get(&id)?;
        let remaining = match l.expiry {
            Some(e) => {
                let now = self.clock.now();
                if e > now {
                    (e - now).as_secs() as i64
                } else {
                    -((now - e).as_secs() as i64)
                }
            }
            None => l.remaining.unwrap_or(l.ttl),
        };
        Some(TimeToLive {
            granted: l.ttl,
            remaining,
            keys: if with_keys {
                l.keys.iter().cloned().collect()
            } else {
                Vec::new()
            },
        })
    }

    /// The ids of every lease.
    pub fn leases(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.inner.lock().leases.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Up to `limit` leases that ran out by `now`, for the primary to revoke. Each is reported
    /// again only `REVOKE_RETRY` later, so a revoke in flight is not re-proposed at every check;
    /// it stays expired meanwhile (a keep-alive gets `Expired`, not a renewal the revoke undoes).
    pub fn expired(&self, now: Instant, limit: usize) -> Vec<i64> {
        let mut inner = self.inner.lock();
        let due: Vec<i64> = inner
            .deadlines
            .iter()
            .take_while(|(t, _)| *t <= now)
            .take(limit)
            .map(|(_, id)| *id)
            .collect();
        for id in &due {
            inner.set_due(*id, Some(now + REVOKE_RETRY));
        }
        due
    }
}

fn secs(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn keys_follow_puts_and_deletes() {
        let (_dir, store) = store();
        let lessor = Lessor::default();
        let mut wb = store.write_batch();
        lessor.grant(&mut wb, 1, 10).unwrap();
        lessor.grant(&mut wb, 2, 10).unwrap();
        assert!(matches!(
            lessor.grant(&mut wb, 1, 5),
            Err(StateError::LeaseExists)
        ));
        lessor.attach(b"b", 1);
        lessor.attach(b"a", 1);
        lessor.attach(b"c", 2);
        assert_eq!(lessor.keys(1).unwrap(), vec![b"a".to_vec(), b"b".to_vec()]);
        // Re-put without a lease, and onto another lease, detach from the first.
        lessor.attach(b"a", 0);
        lessor.attach(b"b", 2);
        assert!(lessor.keys(1).unwrap().is_empty());
        assert_eq!(lessor.keys(2).unwrap(), vec![b"b".to_vec(), b"c".to_vec()]);
        lessor.detach(b"c", 2);
        assert_eq!(lessor.keys(2).unwrap(), vec![b"b".to_vec()]);
        lessor.remove(&mut wb, 2);
        assert!(!lessor.contains(2));
        assert_eq!(lessor.leases(), vec![1]);
    }

    #[test]
    fn only_the_primary_keeps_deadlines() {
        let (_dir, store) = store();
        let lessor = Lessor::default();
        let mut wb = store.write_batch();
        lessor.grant(&mut wb, 7, 1).unwrap();
        assert_eq!(lessor.renew(7), Err(RenewError::NotPrimary));
        let far = Instant::now() + Duration::from_secs(3600);
        assert!(lessor.expired(far, 10).is_empty());

        lessor.promote(Duration::from_secs(1));
        let now = Instant::now();
        assert!(lessor.expired(now, 10).is_empty());
        // TTL 1 s plus the 1 s extension.
        assert_eq!(
            lessor.expired(now + Duration::from_millis(2100), 10),
            vec![7]
        );
        // Reported once, then again only after the retry interval.
        assert!(lessor
            .expired(now + Duration::from_millis(2200), 10)
            .is_empty());
        assert_eq!(lessor.renew(8), Err(RenewError::NotFound));

        lessor.demote();
        assert!(lessor.expired(far, 10).is_empty());
        assert_eq!(lessor.time_to_live(7, false).unwrap().remaining, 1);
    }

    #[test]
    fn a_lease_whose_revoke_is_under_way_is_not_renewed() {
        use std::sync::atomic::AtomicU64;
        let (_dir, store) = store();
        let base = Instant::now();
        let ms = Arc::new(AtomicU64::new(0));
        let clock_ms = ms.clone();
        let clock =
            Clock::new(move || base + Duration::from_millis(clock_ms.load(Ordering::SeqCst)));
        let lessor = Lessor::default().with_clock(clock);
        lessor.promote(Duration::ZERO);
        let mut wb = store.write_batch();
        lessor.grant(&mut wb, 7, 2).unwrap();
        ms.store(2_100, Ordering::SeqCst);
        assert_eq!(lessor.expired(lessor.now(), 10), vec![7]);
        // Its revoke is on its way through raft: a keep-alive now must not be told it lives on.
        ms.store(2_200, Ordering::SeqCst);
        assert_eq!(lessor.renew(7), Err(RenewError::Expired));
        assert_eq!(lessor.time_to_live(7, false).unwrap().remaining, 0);
        // Not applied after the retry interval: reported again, once.
        ms.store(2_100 + REVOKE_RETRY.as_millis() as u64, Ordering::SeqCst);
        assert_eq!(lessor.expired(lessor.now(), 10), vec![7]);
        assert!(lessor.expired(lessor.now(), 10).is_empty());
    }

    /// etcd's lease checkpoints: a new primary runs a checkpointed lease for what was left of it,
    /// not its whole TTL again; a renewal clears the checkpoint (and asks for it to be cleared
    /// everywhere); a persisted checkpoint survives a restart.
    #[test]
    fn a_checkpointed_lease_keeps_its_remaining_ttl_across_leaders_and_restarts() {
        use std::sync::atomic::AtomicU64;
        let (dir, store) = store();
        let base = Instant::now();
        let ms = Arc::new(AtomicU64::new(0));
        let clock_ms = ms.clone();
        let clock =
            Clock::new(move || base + Duration::from_millis(clock_ms.load(Ordering::SeqCst)));
        let leader = Lessor::default().with_clock(clock.clone());
        leader.promote(Duration::ZERO);
        let mut wb = store.write_batch();
        leader.grant(&mut wb, 1, 600).unwrap();
        leader.grant(&mut wb, 2, 30).unwrap();
        ms.store(400_000, Ordering::SeqCst);
        // Only leases that outlive the interval (here 300 s) are checkpointed.
        let cps = leader.checkpoints(300, 1000);
        assert_eq!(cps.len(), 1);
        assert_eq!((cps[0].id, cps[0].remaining_ttl), (1, 200));
        // A follower applies the checkpoint, then becomes primary: 200 s left, not 600.
        let follower = Lessor::default().with_clock(clock.clone());
        follower.grant(&mut wb, 1, 600).unwrap();
        let cp = keel_proto::LeaseCheckpoint {
            checkpoints: cps.clone(),
            persist: true,
        };
        follower.checkpoint(&mut wb, &cp);
        assert_eq!(follower.time_to_live(1, false).unwrap().remaining, 200);
        follower.promote(Duration::ZERO);
        let now = follower.now();
        assert!(follower
            .expired(now + Duration::from_secs(199), 10)
            .is_empty());
        assert_eq!(
            follower.expired(now + Duration::from_secs(201), 10),
            vec![1]
        );
        // Persisted with the batch: a restarted member knows it too.
        wb.commit(1).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let restarted = Lessor::restore(&store).unwrap();
        assert_eq!(restarted.time_to_live(1, false).unwrap().remaining, 200);
        // A renewal clears it here, and asks for it to be cleared everywhere.
        follower.renew(1).unwrap();
        assert_eq!(
            follower.renewed_checkpoints(),
            vec![keel_proto::LeaseRemaining {
                id: 1,
                remaining_ttl: 0
            }]
        );
        assert!(follower.renewed_checkpoints().is_empty());
    }

    #[test]
    fn restore_reattaches_keys_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let lessor = Lessor::default();
            let mut wb = store.write_batch();
            lessor.grant(&mut wb, 5, 30).unwrap();
            wb.begin();
            wb.put(b"held", b"v".to_vec(), 5).unwrap();
            wb.put(b"free", b"v".to_vec(), 0).unwrap();
            wb.end();
            wb.commit(1).unwrap();
        }
        {
            // Keys whose later writes detached them: deleted, or put again without the lease.
            let store = Store::open(dir.path()).unwrap();
            let mut wb = store.write_batch();
            wb.begin();
            wb.put(b"gone", b"v".to_vec(), 5).unwrap();
            wb.put(b"moved", b"v".to_vec(), 5).unwrap();
            wb.end();
            wb.begin();
            wb.delete(keel_mvcc::KeySpan::Single(b"gone")).unwrap();
            wb.put(b"moved", b"v".to_vec(), 0).unwrap();
            wb.end();
            wb.commit(2).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let lessor = Lessor::restore(&store).unwrap();
        assert_eq!(lessor.keys(5).unwrap(), vec![b"held".to_vec()]);
        let ttl = lessor.time_to_live(5, true).unwrap();
        assert_eq!((ttl.granted, ttl.keys.len()), (30, 1));
    }
}

//! The simulated world: members, network, clocks, nemesis, clients and watchers, advanced one
//! millisecond at a time by one thread. Every random choice comes from one seeded generator, in
//! an order fixed by the loop, so a seed replays its run exactly.

use std::collections::BTreeMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use keel_check::{Call, History, Operation, Outcome};
use keel_raft::Role;
use keel_rpc::etcd::PbRangeRequest;
use keel_server::sim::{
    Clock, SimMember, SimWatchEnd, EXPIRY_CHECK, PROMOTE_EXTEND, REVOKE_RETRY, ROLE_CHECK,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::network::{MemberOutbox, Network, Weather};
use crate::oracle::{Oracle, Watcher};
use crate::workload::{self, Pending, Request, Sent};

/// Length of a raft tick on a member whose clock runs true.
const TICK_MS: u64 = 100;
/// A client gives up on a request after this long (its outcome is then unknown).
const REQUEST_TIMEOUT_MS: u64 = 3000;
/// After the faults stop, the cluster gets this long to elect a leader and catch up; then every
/// client must get one write and one linearizable read through before the run ends (progress: a
/// build whose requests all time out fails every seed).
const PROBE_AFTER_MS: u64 = 2000;

/// The shape of one run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Members in the cluster.
    pub members: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Register keys the clients share.
    pub keys: usize,
    /// Watchers on every key.
    pub watchers: usize,
    /// Simulated milliseconds of requests under faults.
    pub active_ms: u64,
    /// Simulated milliseconds after the faults stop, for the cluster to converge.
    pub settle_ms: u64,
    /// Whether the nemesis injects faults and the network loses and duplicates messages (without,
    /// it only delays them).
    pub faults: bool,
}

impl Config {
    /// The suite's shape for `seed`: three members for even seeds, five for odd ones.
    pub fn for_seed(seed: u64) -> Config {
        Config {
            members: if seed.is_multiple_of(2) { 3 } else { 5 },
            clients: 4,
            keys: 5,
            watchers: 2,
            active_ms: 6_000,
            // Long enough for every 2 s lease left alone to expire after the faults stop.
            settle_ms: 6_000,
            faults: true,
        }
    }
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    /// The seed that replays the run.
    pub seed: u64,
    /// Members in the cluster.
    pub members: usize,
    /// Requests outside the register model (leases, compaction, scans) that completed.
    pub other_requests: usize,
    /// The linearizability check of the register requests.
    pub linearizability: keel_check::Report,
    /// Watch events checked.
    pub watch_events: usize,
    /// Revokes of expired leases applied, each checked against the lease's last keep-alive.
    pub lease_expiries: usize,
    /// Raft messages delivered.
    pub messages: u64,
    /// The longest a completed linearizable read took, in simulated milliseconds.
    pub slowest_read_ms: u64,
    /// How long after the progress probes began every client had written and read, in
    /// simulated milliseconds.
    pub progress_ms: u64,
    /// The faults injected, with their times.
    pub faults: Vec<String>,
    /// Everything found wrong besides linearizability.
    pub problems: Vec<String>,
    /// A digest of the whole run: equal for equal seeds.
    pub fingerprint: u64,
}

impl Report {
    /// Whether nothing was found wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.linearizability.ok()
    }
}

/// Runs the world for `seed`.
pub fn run(seed: u64, cfg: &Config) -> Report {
    let mut w = World::new(seed, cfg.clone());
    let end = cfg.active_ms + cfg.settle_ms;
    let mut next_fault = 300;
    while w.now < end && w.problems.is_empty() {
        if cfg.faults && w.now < cfg.active_ms && w.now >= next_fault {
            w.inject_fault();
            next_fault = w.now + w.rng.gen_range(200..1500);
        }
        if w.now == cfg.active_ms {
            w.calm_down();
        }
        w.run_scheduled();
        w.advance_clocks();
        w.deliver();
        if w.now < cfg.active_ms {
            w.start_requests();
        } else if w.now >= cfg.active_ms + PROBE_AFTER_MS {
            w.start_probes();
        }
        w.poll();
        w.turn_members();
        w.poll();
        w.expire_leases();
        w.keep_watching();
        w.maybe_checkpoint();
        w.now += 1;
    }
    w.finish()
}

struct Slot {
    id: u64,
    dir: PathBuf,
    member: Option<SimMember>,
    incarnation: u64,
    /// This member's tick length: clocks run at slightly different rates.
    tick_ms: u64,
    next_tick: u64,
    /// A stalled member (slow disk) does nothing until then.
    stalled_until: u64,
    /// The revision through which the oracle has compared its history.
    seen: i64,
    /// Whether an earlier image of its MVCC store exists (what a power cut may fall back to).
    has_checkpoint: bool,
    /// The member's own clock, in microseconds: runs at the rate of its ticks, may jump forward,
    /// keeps running while the member is down. Its lessor keeps deadlines on it.
    clock_us: Arc<AtomicU64>,
    /// When (on its clock) the member next checks its lessor's role, and its expired leases.
    next_role_check_us: u64,
    next_expiry_check_us: u64,
}

enum Job {
    Checked {
        key: String,
        call: Call,
        fut: Pending,
    },
    Other(Sent),
    /// A lease request whose success the lease tracking needs.
    Lease {
        op: LeaseOp,
        id: i64,
        fut: Sent,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LeaseOp {
    Grant,
    KeepAlive,
    Revoke,
}

/// What the world knows of a lease a client asked for.
struct LeaseTrack {
    ttl_ms: u64,
    /// Every member's clock (us) when the last grant or keep-alive that succeeded was sent: the
    /// primary set the deadline at or after then, so no lessor may find the lease expired before
    /// its own clock is TTL past its reading here.
    clocks_at_renewal: Vec<u64>,
    /// True time (ms) of that grant or keep-alive.
    renewed_ms: u64,
    /// A client revoked it (or tried): its expiry is no longer checked.
    revoked: bool,
    /// Simulated time after which a failed revoke of the expired lease is proposed again.
    retry_ms: u64,
    /// When its grant was answered (None while unanswered, failed, or timed out).
    granted_ms: Option<u64>,
}

/// A revoke a primary lessor proposed for a lease it found expired.
struct ExpiryRevoke {
    member: usize,
    lease: i64,
    /// The member's clock (us) when it found the lease expired.
    found_us: u64,
    revoke: Sent,
}

struct InFlight {
    member: usize,
    invoked: Duration,
    invoked_ms: u64,
    /// Every member's clock when a keep-alive was sent.
    clocks: Option<Vec<u64>>,
    job: Job,
}

struct Client {
    last_seen: Vec<Option<String>>,
    op: Option<InFlight>,
    idle_until: u64,
    issued: u64,
    /// When this client's progress probes (a put, then a read) succeeded, in simulated ms.
    probes: [Option<u64>; 2],
}

type WatchFuture = Pin<Box<dyn Future<Output = SimWatchEnd>>>;

struct WatchSlot {
    watcher: Watcher,
    on: Option<(usize, WatchFuture)>,
    retry_at: u64,
}

/// A fault's end, or a step of it, at a set time.
enum Scheduled {
    Restart(usize),
    Heal,
    ClockTrue(usize),
}

struct World {
    cfg: Config,
    seed: u64,
    rng: StdRng,
    /// Simulated milliseconds since the start.
    now: u64,
    /// Events stamped within the current millisecond (orders invocations and completions).
    stamps: u64,
    base: Instant,
    slots: Vec<Slot>,
    net: Network,
    clients: Vec<Client>,
    watchers: Vec<WatchSlot>,
    oracle: Oracle,
    history: History,
    problems: Vec<String>,
    faults: Vec<String>,
    scheduled: BTreeMap<(u64, u64), Scheduled>,
    scheduled_seq: u64,
    leases: Vec<i64>,
    other_requests: usize,
    /// Leases granted (or asked for), by id.
    lease_tracks: BTreeMap<i64, LeaseTrack>,
    /// Revokes of expired leases under way.
    expiry_revokes: Vec<ExpiryRevoke>,
    lease_expiries: usize,
    /// When the members last saw a leader change (simulated ms).
    last_leader_change_ms: u64,
    last_leader: Option<usize>,
    _dir: tempfile::TempDir,
}

impl World {
    fn new(seed: u64, cfg: Config) -> World {
        let dir = tempfile::Builder::new()
            .prefix("keel-sim")
            .tempdir()
            .expect("a temporary directory");
        let mut rng = StdRng::seed_from_u64(seed);
        let ids: Vec<u64> = (1..=cfg.members as u64).collect();
        let slots = ids
            .iter()
            .map(|&id| Slot {
                id,
                dir: dir.path().join(format!("m{id}")),
                member: None,
                incarnation: 0,
                tick_ms: rng.gen_range(TICK_MS - 10..=TICK_MS + 10),
                next_tick: rng.gen_range(0..TICK_MS),
                stalled_until: 0,
                seen: 0,
                has_checkpoint: false,
                clock_us: Arc::new(AtomicU64::new(0)),
                next_role_check_us: 0,
                next_expiry_check_us: 0,
            })
            .collect();
        let clients = (0..cfg.clients)
            .map(|_| Client {
                last_seen: vec![None; cfg.keys],
                op: None,
                idle_until: 0,
                issued: 0,
                probes: [None; 2],
            })
            .collect();
        let watchers = (0..cfg.watchers)
            .map(|_| WatchSlot {
                watcher: Watcher::new(1),
                on: None,
                retry_at: rng.gen_range(0..2000),
            })
            .collect();
        let mut w = World {
            cfg,
            seed,
            rng,
            now: 0,
            stamps: 0,
            base: Instant::now(),
            slots,
            net: Network::new(),
            clients,
            watchers,
            oracle: Oracle::default(),
            history: History::default(),
            problems: Vec::new(),
            faults: Vec::new(),
            scheduled: BTreeMap::new(),
            scheduled_seq: 0,
            leases: Vec::new(),
            other_requests: 0,
            lease_tracks: BTreeMap::new(),
            expiry_revokes: Vec::new(),
            lease_expiries: 0,
            last_leader_change_ms: 0,
            last_leader: None,
            _dir: dir,
        };
        for i in 0..w.slots.len() {
            w.start_member(i);
        }
        if !w.cfg.faults {
            w.net.weather = Weather::perfect();
        }
        w
    }

    fn start_member(&mut self, i: usize) {
        let voters = (1..=self.slots.len() as u64).collect();
        let outbox = Arc::new(MemberOutbox(self.net.wire.clone()));
        let slot = &mut self.slots[i];
        slot.incarnation += 1;
        let tick = Duration::from_millis(slot.tick_ms);
        let (base, us) = (self.base, slot.clock_us.clone());
        let clock = Clock::new(move || base + Duration::from_micros(us.load(Ordering::Relaxed)));
        match SimMember::open(
            &slot.dir,
            slot.id,
            voters,
            slot.incarnation,
            tick,
            clock,
            outbox,
        ) {
            Ok(m) => {
                // What it has was compared when it was applied (a power cut only goes back).
                slot.seen = slot.seen.min(m.store().current_revision());
                slot.member = Some(m);
                slot.next_tick = self.now + slot.tick_ms;
            }
            Err(e) => self
                .problems
                .push(format!("member {} did not restart: {e}", slot.id)),
        }
    }

    fn note(&mut self, what: String) {
        self.faults.push(format!("{:>6} ms: {what}", self.now));
    }

    fn schedule(&mut self, after: u64, s: Scheduled) {
        self.scheduled_seq += 1;
        self.scheduled
            .insert((self.now + after, self.scheduled_seq), s);
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].member.is_some())
            .collect()
    }

    fn leader(&self) -> Option<usize> {
        (0..self.slots.len()).find(|&i| {
            self.slots[i]
                .member
                .as_ref()
                .is_some_and(|m| m.status().role == Role::Leader)
        })
    }

    /// The members whose raft says they lead (more than one while a deposed leader lags).
    fn believed_leaders(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| {
                self.slots[i]
                    .member
                    .as_ref()
                    .is_some_and(|m| m.status().role == Role::Leader)
            })
            .collect()
    }

    fn ids(&self, idx: &[usize]) -> Vec<u64> {
        idx.iter().map(|&i| self.slots[i].id).collect()
    }

    /// The nemesis: one fault, chosen by the seed.
    fn inject_fault(&mut self) {
        let n = self.slots.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut self.rng);
        let victim = self
            .leader()
            .filter(|_| self.rng.gen_bool(0.5))
            .unwrap_or(order[0]);
        let lasting = self.rng.gen_range(300..3000);
        match self.rng.gen_range(0..10) {
            0 | 1 => {
                // At most a minority down at once, so the cluster can go on.
                if self.alive().len() <= n / 2 + 1 || self.slots[victim].member.is_none() {
                    return;
                }
                let power = self.rng.gen_bool(0.5);
                self.crash(victim, power);
                self.schedule(lasting, Scheduled::Restart(victim));
            }
            2 => {
                let cut = self.rng.gen_range(1..=n / 2);
                let (a, b) = order.split_at(cut);
                let (a, b) = (self.ids(a), self.ids(b));
                self.note(format!("partition {a:?} | {b:?}"));
                self.net.split(&a, &b);
                self.schedule(lasting, Scheduled::Heal);
            }
            3 => {
                let id = self.slots[victim].id;
                let rest: Vec<u64> = self.ids(&order).into_iter().filter(|&x| x != id).collect();
                self.note(format!("isolate {id}"));
                self.net.split(&[id], &rest);
                self.schedule(lasting, Scheduled::Heal);
            }
            4 => {
                // One way only: the victim hears the others but is not heard (or the reverse).
                let id = self.slots[victim].id;
                let inbound = self.rng.gen_bool(0.5);
                self.note(format!(
                    "{id} {} the others one way",
                    if inbound {
                        "cannot hear"
                    } else {
                        "is not heard by"
                    }
                ));
                for other in self.ids(&order).into_iter().filter(|&x| x != id) {
                    if inbound {
                        self.net.cut(other, id);
                    } else {
                        self.net.cut(id, other);
                    }
                }
                self.schedule(lasting, Scheduled::Heal);
            }
            5 => {
                // A bridge: two sides that reach each other only through one member.
                let ids = self.ids(&order);
                let (left, rest) = ids.split_at(n / 2);
                let (bridge, right) = rest.split_first().expect("three members at least");
                self.note(format!("bridge {left:?} - {bridge} - {right:?}"));
                self.net.split(left, right);
                self.schedule(lasting, Scheduled::Heal);
            }
            6 => {
                let stall = self.rng.gen_range(100..1500);
                let id = self.slots[victim].id;
                self.note(format!("{id} stalls {stall} ms (slow disk)"));
                self.slots[victim].stalled_until = self.now + stall;
            }
            7 => {
                let tick_ms = self.rng.gen_range(TICK_MS / 2..=TICK_MS * 2);
                let id = self.slots[victim].id;
                self.note(format!("{id}'s clock runs at {tick_ms} ms per tick"));
                self.slots[victim].tick_ms = tick_ms;
                self.schedule(lasting, Scheduled::ClockTrue(victim));
            }
            8 => {
                // A forward jump (a paused VM, a suspended host): the member's lessor finds
                // deadlines passed all at once.
                let jump_ms = self.rng.gen_range(100..1500);
                let id = self.slots[victim].id;
                self.note(format!("{id}'s clock jumps {jump_ms} ms ahead"));
                self.slots[victim]
                    .clock_us
                    .fetch_add(jump_ms * 1000, Ordering::Relaxed);
            }
            _ => {
                let weather = Weather {
                    drop: self.rng.gen_range(0.05..0.4),
                    duplicate: self.rng.gen_range(0.0..0.1),
                    delay_ms: (1, self.rng.gen_range(10..120)),
                };
                self.note(format!("network storm {weather:?}"));
                self.net.weather = weather;
                self.schedule(lasting, Scheduled::Heal);
            }
        }
    }

    /// Crashes member `i`; with `power`, its MVCC store falls back to its last checkpoint, as if
    /// the writes since (never synced: the raft log is) were lost with the page cache.
    fn crash(&mut self, i: usize, power: bool) {
        let id = self.slots[i].id;
        let power = power && self.slots[i].has_checkpoint;
        self.note(format!(
            "{id} {}",
            if power { "loses power" } else { "crashes" }
        ));
        // Requests and watches on it go with it (and must let go of its store before it reopens).
        for c in 0..self.clients.len() {
            if self.clients[c].op.as_ref().is_some_and(|op| op.member == i) {
                let op = self.clients[c].op.take().expect("checked");
                self.give_up(c, op);
            }
        }
        for w in &mut self.watchers {
            if w.on.as_ref().is_some_and(|(m, _)| *m == i) {
                w.on = None;
            }
        }
        self.expiry_revokes.retain(|r| r.member != i);
        self.slots[i].member = None;
        if power {
            let dir = &self.slots[i].dir;
            let replace = std::fs::remove_dir_all(dir.join("kv"))
                .and_then(|()| std::fs::rename(dir.join("checkpoint"), dir.join("kv")));
            if let Err(e) = replace {
                self.problems.push(format!("power cut of {id}: {e}"));
            }
            self.slots[i].has_checkpoint = false;
        }
    }

    /// Ends every fault: the cluster must converge from here.
    fn calm_down(&mut self) {
        self.note("faults stop".into());
        self.scheduled.clear();
        self.net.heal();
        for i in 0..self.slots.len() {
            self.slots[i].stalled_until = 0;
            self.slots[i].tick_ms = TICK_MS;
            if self.slots[i].member.is_none() {
                self.start_member(i);
            }
        }
    }

    fn run_scheduled(&mut self) {
        while let Some(entry) = self.scheduled.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            match entry.remove() {
                Scheduled::Restart(i) if self.slots[i].member.is_none() => {
                    let id = self.slots[i].id;
                    self.note(format!("{id} restarts"));
                    self.start_member(i);
                }
                Scheduled::Restart(_) => {}
                Scheduled::Heal => {
                    self.note("network heals".into());
                    self.net.heal();
                }
                Scheduled::ClockTrue(i) => self.slots[i].tick_ms = TICK_MS,
            }
        }
    }

    fn deliver(&mut self) {
        for m in self.net.arrivals(self.now) {
            if let Some(member) = self.slots.get((m.to as usize).wrapping_sub(1)) {
                if let Some(member) = &member.member {
                    member.stepper().step(m);
                }
            }
        }
    }

    fn turn_members(&mut self) {
        let now = self.base + Duration::from_millis(self.now);
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            let Some(member) = slot.member.as_mut() else {
                continue;
            };
            if slot.stalled_until > self.now {
                continue;
            }
            // As the real driver: at most one tick per turn, missed ticks are not made up.
            let tick = self.now >= slot.next_tick;
            if tick {
                slot.next_tick = self.now + slot.tick_ms;
            }
            if let Err(e) = member.turn(now, tick) {
                self.problems.push(format!("member {}: {e}", slot.id));
                return;
            }
            let found = self.oracle.observe(slot.id, member.store(), &mut slot.seen);
            self.problems.extend(found);
            self.net.schedule(self.now, &mut self.rng);
        }
    }

    fn stamp(&mut self) -> Duration {
        self.stamps += 1;
        Duration::from_millis(self.now) + Duration::from_nanos(self.stamps % 1_000_000)
    }

    /// Once the faults have stopped: each client's next progress probe, a put of a fresh value to
    /// its own key, then a linearizable read of it, to a random member (retried until it succeeds).
    fn start_probes(&mut self) {
        let alive = self.alive();
        for c in 0..self.clients.len() {
            let client = &self.clients[c];
            if client.op.is_some() || alive.is_empty() {
                continue;
            }
            let call = match client.probes {
                [None, _] => Call::Put(format!("probe-{c}-{}", client.issued)),
                [Some(_), None] => Call::Get,
                [Some(_), Some(_)] => continue,
            };
            let member = alive[self.rng.gen_range(0..alive.len())];
            let key = format!("k/{}", c % self.cfg.keys);
            let m = self.slots[member].member.as_ref().expect("alive");
            let fut = workload::send_checked(m, &key, &call);
            self.issue(c, member, Job::Checked { key, call, fut }, None);
        }
    }

    fn start_requests(&mut self) {
        let alive = self.alive();
        if alive.is_empty() {
            return;
        }
        for c in 0..self.clients.len() {
            let client = &self.clients[c];
            if client.op.is_some() || client.idle_until > self.now {
                continue;
            }
            let member = alive[self.rng.gen_range(0..alive.len())];
            let n = client.issued;
            let req = workload::next_request(
                &mut self.rng,
                c,
                n,
                self.cfg.keys,
                &client.last_seen,
                &mut self.leases,
                self.oracle.last_revision(),
            );
            // Keep-alives go to a member that believes it leads (a follower would forward them
            // there); while a deposed leader has not noticed yet, that may be it.
            let member = match req {
                Request::KeepAlive(_) => {
                    let leaders = self.believed_leaders();
                    if leaders.is_empty() {
                        member
                    } else {
                        leaders[self.rng.gen_range(0..leaders.len())]
                    }
                }
                _ => member,
            };
            let m = self.slots[member].member.as_ref().expect("alive");
            let job = match req {
                Request::Checked { key, call } => {
                    let fut = workload::send_checked(m, &key, &call);
                    Job::Checked { key, call, fut }
                }
                Request::Other(body) => Job::Other(workload::send_other(m, body)),
                Request::Scan => Job::Other(workload::send_scan(m)),
                Request::Grant { id, ttl } => {
                    let track = LeaseTrack {
                        ttl_ms: ttl as u64 * 1000,
                        clocks_at_renewal: self.clock_readings(),
                        renewed_ms: self.now,
                        revoked: false,
                        retry_ms: 0,
                        granted_ms: None,
                    };
                    self.lease_tracks.insert(id, track);
                    let m = self.slots[member].member.as_ref().expect("alive");
                    Job::Lease {
                        op: LeaseOp::Grant,
                        id,
                        fut: workload::send_grant(m, id, ttl),
                    }
                }
                Request::KeepAlive(id) => Job::Lease {
                    op: LeaseOp::KeepAlive,
                    id,
                    fut: workload::send_keep_alive(m, id),
                },
                Request::Revoke(id) => {
                    if let Some(t) = self.lease_tracks.get_mut(&id) {
                        t.revoked = true;
                    }
                    let m = self.slots[member].member.as_ref().expect("alive");
                    Job::Lease {
                        op: LeaseOp::Revoke,
                        id,
                        fut: workload::send_revoke(m, id),
                    }
                }
            };
            let clocks = match &job {
                Job::Lease {
                    op: LeaseOp::KeepAlive,
                    ..
                } => Some(self.clock_readings()),
                _ => None,
            };
            self.issue(c, member, job, clocks);
        }
    }

    fn issue(&mut self, c: usize, member: usize, job: Job, clocks: Option<Vec<u64>>) {
        let invoked = self.stamp();
        let client = &mut self.clients[c];
        client.issued += 1;
        client.op = Some(InFlight {
            member,
            invoked,
            invoked_ms: self.now,
            clocks,
            job,
        });
    }

    fn poll(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        for c in 0..self.clients.len() {
            let Some(op) = self.clients[c].op.as_mut() else {
                continue;
            };
            let (done, succeeded) = match &mut op.job {
                Job::Checked { fut, .. } => match fut.as_mut().poll(&mut cx) {
                    Poll::Ready(recorded) => (Some(recorded), false),
                    Poll::Pending => (None, false),
                },
                Job::Other(fut) | Job::Lease { fut, .. } => match fut.as_mut().poll(&mut cx) {
                    Poll::Ready(ok) => (Some(None), ok),
                    Poll::Pending => (None, false),
                },
            };
            let timed_out = self.now >= op.invoked_ms + REQUEST_TIMEOUT_MS;
            match done {
                Some(recorded) => {
                    let op = self.clients[c].op.take().expect("checked");
                    if succeeded {
                        self.other_requests += 1;
                        self.lease_succeeded(&op);
                    }
                    self.complete(c, op, recorded);
                }
                None if timed_out => {
                    let op = self.clients[c].op.take().expect("checked");
                    self.give_up(c, op);
                }
                None => {}
            }
        }
        for w in &mut self.watchers {
            let Some((_, fut)) = w.on.as_mut() else {
                continue;
            };
            if let Poll::Ready(end) = fut.as_mut().poll(&mut cx) {
                if let SimWatchEnd::Compacted(rev) = end {
                    // Resumed after the compacted revision: a deletion at exactly that revision
                    // is compacted away (as in etcd), so the revision itself is skipped too.
                    let from = w.watcher.resume_from();
                    w.watcher.skipped.push((from, rev));
                }
                w.on = None;
                w.retry_at = self.now + 10;
            }
        }
        let mut done = Vec::new();
        self.expiry_revokes
            .retain_mut(|r| match r.revoke.as_mut().poll(&mut cx) {
                Poll::Ready(revoked) => {
                    done.push((r.member, r.lease, r.found_us, revoked));
                    false
                }
                Poll::Pending => true,
            });
        for (member, lease, found_us, revoked) in done {
            self.expiry_revoked(member, lease, found_us, revoked);
        }
    }

    /// A revoke of an expired lease came back. Only an applied one counts: a deposed leader's
    /// lessor may find a lease expired on deadlines the new leader has moved, but its revoke never
    /// commits. Applied, the lease must have run its TTL on the proposer's clock since the last
    /// grant or keep-alive that succeeded (one that succeeded after it was found expired fails
    /// this too).
    fn expiry_revoked(&mut self, member: usize, lease: i64, found_us: u64, revoked: bool) {
        let Some(t) = self.lease_tracks.get_mut(&lease) else {
            return;
        };
        if !revoked {
            // Proposed again after the lessor's retry interval.
            t.retry_ms = self.now + REVOKE_RETRY.as_millis() as u64;
            return;
        }
        self.lease_expiries += 1;
        let ran_ms = found_us.saturating_sub(t.clocks_at_renewal[member]) / 1000;
        if !t.revoked && ran_ms < t.ttl_ms {
            let id = self.slots[member].id;
            self.problems.push(format!(
                "lease {lease:x} revoked as expired by member {id} {ran_ms} ms (its clock) after a keep-alive that succeeded at {} ms; TTL {} ms",
                t.renewed_ms, t.ttl_ms
            ));
        }
    }

    /// Every member's clock now (us).
    fn clock_readings(&self) -> Vec<u64> {
        self.slots
            .iter()
            .map(|s| s.clock_us.load(Ordering::Relaxed))
            .collect()
    }

    /// Each member's clock runs at the rate of its ticks (a member whose ticks are 50 ms runs
    /// twice as fast as true time); it keeps running while the member is down or stalled.
    fn advance_clocks(&mut self) {
        for s in &self.slots {
            s.clock_us
                .fetch_add(1000 * TICK_MS / s.tick_ms, Ordering::Relaxed);
        }
        let leader = self.leader();
        if leader.is_some() && leader != self.last_leader {
            self.last_leader = leader;
            self.last_leader_change_ms = self.now;
        }
    }

    /// A grant or keep-alive that succeeded moves the lease's checked deadline.
    fn lease_succeeded(&mut self, op: &InFlight) {
        let Job::Lease { op: kind, id, .. } = &op.job else {
            return;
        };
        let Some(t) = self.lease_tracks.get_mut(id) else {
            return;
        };
        match kind {
            LeaseOp::Grant => t.granted_ms = Some(self.now),
            LeaseOp::KeepAlive => {
                if let Some(clocks) = &op.clocks {
                    t.clocks_at_renewal.clone_from(clocks);
                    t.renewed_ms = op.invoked_ms;
                }
            }
            LeaseOp::Revoke => {}
        }
    }

    /// After the faults stop, every short lease nobody keeps alive must expire: the primary
    /// gives it at most its TTL plus PROMOTE_EXTEND from the later of the last leader change,
    /// the end of the faults and its last grant or keep-alive, then finds it within a check and
    /// revokes it (a failed revoke is retried after 3 s).
    fn check_lease_expiry(&mut self) {
        let Some(first) = self.slots.iter().find_map(|s| s.member.as_ref()) else {
            return;
        };
        let live = first.lease_ids();
        let calm = self.cfg.active_ms.max(self.last_leader_change_ms);
        for (id, t) in &self.lease_tracks {
            let Some(granted) = t.granted_ms else {
                continue;
            };
            if t.revoked || t.ttl_ms > workload::SHORT_TTL as u64 * 1000 || !live.contains(id) {
                continue;
            }
            let from = calm.max(granted).max(t.renewed_ms);
            let due = (from + t.ttl_ms + PROMOTE_EXTEND.as_millis() as u64 + 1_000)
                .max(t.retry_ms + 1_000);
            if due <= self.now {
                self.problems.push(format!(
                    "lease {id:x} (TTL {} ms, last kept alive at {} ms) still exists at {} ms",
                    t.ttl_ms, t.renewed_ms, self.now
                ));
            }
        }
    }

    /// The primary lessors' turns (expiry.rs), each on its member's clock: role checks every
    /// 100 ms, expired leases every 500 ms, each revoked through raft (checked when applied, in
    /// `expiry_revoked`).
    fn expire_leases(&mut self) {
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            let Some(member) = &slot.member else { continue };
            let clock = slot.clock_us.load(Ordering::Relaxed);
            if clock < slot.next_role_check_us {
                continue;
            }
            slot.next_role_check_us = clock + ROLE_CHECK.as_micros() as u64;
            if clock < slot.next_expiry_check_us {
                member.sync_lessor();
                continue;
            }
            slot.next_expiry_check_us = clock + EXPIRY_CHECK.as_micros() as u64;
            for lease in member.expired_leases() {
                self.expiry_revokes.push(ExpiryRevoke {
                    member: i,
                    lease,
                    found_us: clock,
                    revoke: workload::send_expiry_revoke(member, lease),
                });
            }
        }
    }

    /// Records a finished request.
    fn complete(&mut self, c: usize, op: InFlight, recorded: Option<Outcome>) {
        let completed = self.stamp();
        self.clients[c].idle_until = self.now + self.rng.gen_range(0..20);
        let Job::Checked { key, call, .. } = op.job else {
            return;
        };
        let Some(outcome) = recorded else {
            return;
        };
        let k: usize = key[2..].parse().expect("k/<n>");
        let seen = &mut self.clients[c].last_seen[k];
        match (&call, &outcome) {
            (_, Outcome::Read(kv)) => *seen = kv.as_ref().map(|(v, _)| v.clone()),
            (Call::Put(v), Outcome::Wrote { .. }) => *seen = Some(v.clone()),
            (Call::Delete, Outcome::Wrote { .. }) => *seen = None,
            (Call::Cas { new, .. }, Outcome::Cas { swapped: true, .. }) => {
                *seen = Some(new.clone())
            }
            _ => {}
        }
        if op.invoked_ms >= self.cfg.active_ms + PROBE_AFTER_MS {
            let probes = &mut self.clients[c].probes;
            match (&call, &outcome) {
                (Call::Put(_), Outcome::Wrote { .. }) => probes[0] = Some(self.now),
                (Call::Get, Outcome::Read(_)) if probes[0].is_some() => probes[1] = Some(self.now),
                _ => {}
            }
        }
        self.record(c, key, call, op.invoked, completed, outcome);
    }

    fn record(
        &mut self,
        client: usize,
        key: String,
        call: Call,
        invoked: Duration,
        completed: Duration,
        outcome: Outcome,
    ) {
        self.history.push(Operation {
            client,
            key,
            call,
            invoked,
            completed,
            outcome,
        });
    }

    /// A request whose answer never came: a write may or may not have happened; a read had no
    /// effect and is left out.
    fn give_up(&mut self, c: usize, op: InFlight) {
        let completed = self.stamp();
        self.clients[c].idle_until = self.now;
        if let Job::Checked { key, call, .. } = op.job {
            if call != Call::Get {
                self.record(c, key, call, op.invoked, completed, Outcome::Unknown);
            }
        }
    }

    /// Watchers without a stream open one on a member, from where they left off.
    fn keep_watching(&mut self) {
        let alive = self.alive();
        for w in 0..self.watchers.len() {
            let slot = &self.watchers[w];
            if slot.on.is_some() || slot.retry_at > self.now || alive.is_empty() {
                continue;
            }
            let member = alive[self.rng.gen_range(0..alive.len())];
            let m = self.slots[member].member.as_ref().expect("alive");
            let received = slot.watcher.received.clone();
            let fut = m.watch(
                b"\0".to_vec(),
                b"\0".to_vec(),
                slot.watcher.resume_from(),
                move |events| {
                    let mut r = received.borrow_mut();
                    for e in events {
                        let Some(kv) = e.kv else { continue };
                        let value = (e.r#type == 0).then_some(kv.value);
                        r.push((kv.mod_revision, (kv.key, value)));
                    }
                },
            );
            self.watchers[w].on = Some((member, Box::pin(fut)));
        }
    }

    /// Now and then a member's MVCC store is imaged: a later power cut falls back to it.
    fn maybe_checkpoint(&mut self) {
        for i in 0..self.slots.len() {
            if !self.rng.gen_bool(0.0007) {
                continue;
            }
            let slot = &mut self.slots[i];
            let Some(m) = &slot.member else { continue };
            let (tmp, dst) = (slot.dir.join("checkpoint.new"), slot.dir.join("checkpoint"));
            let _ = std::fs::remove_dir_all(&tmp);
            let taken = m
                .store()
                .checkpoint(&tmp)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    let _ = std::fs::remove_dir_all(&dst);
                    std::fs::rename(&tmp, &dst).map_err(|e| e.to_string())
                });
            match taken {
                Ok(()) => slot.has_checkpoint = true,
                Err(e) => self
                    .problems
                    .push(format!("checkpoint of member {}: {e}", slot.id)),
            }
        }
    }

    /// The checks at the end: the members converged, the watchers saw everything, the history is
    /// linearizable.
    fn finish(mut self) -> Report {
        for c in 0..self.clients.len() {
            if let Some(op) = self.clients[c].op.take() {
                self.give_up(c, op);
            }
        }
        // A run stops at its first problem, before the probes: progress is judged only when the
        // run got that far.
        let mut progress_ms = 0;
        if self.problems.is_empty() {
            progress_ms = self.check_progress();
        }
        if self.problems.is_empty() {
            self.check_convergence();
        }
        if self.problems.is_empty() {
            self.check_lease_expiry();
        }
        let last = self.oracle.last_revision();
        let mut watch_events = 0;
        if self.problems.is_empty() {
            for w in &self.watchers {
                match w.watcher.check(&self.oracle, last) {
                    Ok(n) => watch_events += n,
                    Err(e) => self.problems.push(e),
                }
            }
        }
        let linearizability = keel_check::check(&self.history);
        let slowest_read_ms = self
            .history
            .operations
            .iter()
            .filter(|op| op.call == Call::Get)
            .map(|op| (op.completed - op.invoked).as_millis() as u64)
            .max()
            .unwrap_or(0);

        let mut h = std::hash::DefaultHasher::new();
        format!("{:?}", self.history.operations).hash(&mut h);
        self.oracle.fingerprint(&mut h);
        self.faults.hash(&mut h);
        self.problems.hash(&mut h);
        Report {
            seed: self.seed,
            members: self.slots.len(),
            other_requests: self.other_requests,
            linearizability,
            watch_events,
            lease_expiries: self.lease_expiries,
            messages: self.net.delivered,
            slowest_read_ms,
            progress_ms,
            faults: self.faults,
            problems: self.problems,
            fingerprint: h.finish(),
        }
    }

    /// Progress: once the faults stopped, every client's probe write and read succeeded before
    /// the end. The longest it took any client.
    fn check_progress(&mut self) -> u64 {
        let start = self.cfg.active_ms + PROBE_AFTER_MS;
        let mut slowest = 0;
        for (c, client) in self.clients.iter().enumerate() {
            match client.probes {
                [Some(_), Some(read)] => slowest = slowest.max(read - start),
                [put, _] => self.problems.push(format!(
                    "no progress: client {c} did not {} within {} ms after the faults stopped",
                    if put.is_none() { "write" } else { "read" },
                    self.cfg.settle_ms
                )),
            }
        }
        slowest
    }

    fn check_convergence(&mut self) {
        let members: Vec<&SimMember> = self
            .slots
            .iter()
            .filter_map(|s| s.member.as_ref())
            .collect();
        if members.len() != self.slots.len() {
            self.problems.push("a member is down at the end".into());
            return;
        }
        let leaders: Vec<u64> = members.iter().map(|m| m.status().leader_id).collect();
        if leaders[0] == 0 || leaders.iter().any(|&l| l != leaders[0]) {
            self.problems.push(format!(
                "no leader all members agree on after the faults stopped: {leaders:?}"
            ));
        }
        let all = PbRangeRequest {
            key: b"\0".to_vec(),
            range_end: b"\0".to_vec(),
            ..Default::default()
        };
        let mut cx = Context::from_waker(Waker::noop());
        let mut states = Vec::new();
        for m in &members {
            let mut read = Box::pin(m.range(all.clone(), false));
            match read.as_mut().poll(&mut cx) {
                Poll::Ready(Ok(r)) => states.push((m.store().applied_index(), r)),
                other => {
                    let ready = matches!(other, Poll::Ready(_));
                    self.problems
                        .push(format!("final read failed (ready: {ready})"));
                    return;
                }
            }
        }
        // What a client can observe of each member's history: every revision's keys from the
        // compacted revision on, and the leases. (Store::hash_kv, which also hashes the entries
        // kept below the compacted revision, differs after a crash in some seeds, e.g. 4: see
        // docs/architecture.md.)
        let mut digests = Vec::new();
        for m in &members {
            let store = m.store();
            let mut h = std::hash::DefaultHasher::new();
            for revision in store.compacted_revision().max(1)..=store.current_revision() {
                let mut read = Box::pin(m.range(
                    PbRangeRequest {
                        revision,
                        ..all.clone()
                    },
                    false,
                ));
                match read.as_mut().poll(&mut cx) {
                    Poll::Ready(Ok(r)) => format!("{:?}", r.kvs).hash(&mut h),
                    _ => revision.hash(&mut h),
                }
            }
            let mut leases = m.lease_ids();
            leases.sort_unstable();
            digests.push((h.finish(), leases));
        }
        for (i, d) in digests.iter().enumerate().skip(1) {
            if d != &digests[0] {
                self.problems.push(format!(
                    "member {} differs from member 1 at the end: history digest and leases {d:?} vs {:?}",
                    i + 1,
                    digests[0]
                ));
            }
        }
        let (first_applied, first) = &states[0];
        for (i, (applied, state)) in states.iter().enumerate().skip(1) {
            if applied != first_applied || state.kvs != first.kvs {
                self.problems.push(format!(
                    "member {} differs from member 1 at the end: applied {applied} vs {first_applied}, {} keys vs {}",
                    i + 1,
                    state.kvs.len(),
                    first.kvs.len()
                ));
            }
        }
    }
}

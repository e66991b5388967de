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
use keel_server::member::{WatchEnd, EXPIRY_CHECK, PROMOTE_EXTEND, ROLE_CHECK};
use keel_state::lease::REVOKE_RETRY;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::member::{sim_member, Setup, SimClock, SimMember};
use crate::network::{MemberOutbox, Network, Weather};
use crate::oracle::{Oracle, Watcher};
use crate::workload::{self, Authenticating, Joining, Pending, Refusal, Request, Sent, Signal};

mod checks;
mod clients;
mod faults;
mod leases;

/// Length of a raft tick on a member whose clock runs true.
const TICK_MS: u64 = 100;
/// A client gives up on a request after this long (its outcome is then unknown).
const REQUEST_TIMEOUT_MS: u64 = 3000;
/// After the faults stop, the cluster gets this long to elect a leader and catch up; then every
/// client must get one write and one linearizable read through before the run ends (progress: a
/// build whose requests all time out fails every seed).
const PROBE_AFTER_MS: u64 = 2000;
/// A probe goes to a cluster without faults, which answers in milliseconds: one that has no
/// answer after this long was lost (a dropped message; the network still loses 1%) and is sent
/// again.
const PROBE_TIMEOUT_MS: u64 = 1000;

/// Whether `SIM_TRACE` asks for the run's trace on stderr: every request, answer and give-up,
/// and every member's raft state each 250 ms.
fn tracing() -> bool {
    static TRACING: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACING.get_or_init(|| std::env::var_os("SIM_TRACE").is_some())
}

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
    /// Whether the admin client sets up auth (a root user, an app user whose role may read and
    /// write the workload's keys) and enables it; every client then authenticates.
    pub auth: bool,
    /// Whether the admin client adds a learner (a member beyond `members`, which bootstraps
    /// from the leader's snapshot) and promotes it once it has caught up.
    pub learner: bool,
}

impl Config {
    /// The suite's shape for `seed`: three members for even seeds, five for odd ones; auth on
    /// every other pair of seeds; a learner added on every third seed.
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
            auth: seed % 4 >= 2,
            learner: seed.is_multiple_of(3),
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
    /// How often the workload's rarer paths ran: refusals over a limit, refusals for NOSPACE,
    /// disarms, authentications, auth set-up steps.
    pub paths: BTreeMap<&'static str, usize>,
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
        if tracing() && w.now.is_multiple_of(250) {
            w.trace_members();
        }
        w.now += 1;
    }
    w.finish()
}

struct Slot {
    id: u64,
    dir: PathBuf,
    /// How it starts (its quota may be one it is over, for a while).
    setup: Setup,
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
    /// A request over a limit, which must be refused.
    OverLimit(Refusal),
    /// A step of setting up auth (the admin's).
    AuthStep(usize, Sent),
    /// Disarming NOSPACE (the admin's).
    Disarm(Sent),
    /// Getting a token.
    Authenticate(Authenticating),
    /// Adding the learner (the admin's).
    AddLearner(Joining),
    /// Promoting the learner (the admin's).
    Promote(Sent),
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
    revoke: Pin<Box<dyn Future<Output = bool>>>,
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
    /// Its auth token, once it has one.
    token: Option<String>,
    /// Whether it must authenticate before its next request.
    needs_token: bool,
    last_seen: Vec<Option<String>>,
    op: Option<InFlight>,
    idle_until: u64,
    issued: u64,
    /// When this client's progress probes (a put, then a read) succeeded, in simulated ms.
    probes: [Option<u64>; 2],
}

type WatchFuture = Pin<Box<dyn Future<Output = WatchEnd>>>;

struct WatchSlot {
    watcher: Watcher,
    on: Option<(usize, WatchFuture)>,
    retry_at: u64,
}

/// Where adding and promoting the learner stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Learner {
    /// To be added at this time.
    Waiting { until: u64 },
    /// Added (its slot has started); to be promoted once it has caught up, tried next at this
    /// time.
    Added { retry_at: u64 },
    /// A voter now.
    Promoted,
}

/// A fault's end, or a step of it, at a set time.
enum Scheduled {
    Restart(usize),
    /// The member restarts with its usual quota.
    QuotaRestored(usize),
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
    /// The next step of setting up auth (on auth seeds), once the previous one succeeded.
    auth_step: usize,
    /// Whether a client was refused for NOSPACE since the admin last disarmed it.
    nospace: bool,
    /// Where adding and promoting the learner stands (on learner seeds).
    learner: Learner,
    other_requests: usize,
    paths: BTreeMap<&'static str, usize>,
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
        // The learner's slot is last; its id is the one MemberAdd gives it (0 until then).
        let ids: Vec<(u64, Setup)> = (1..=cfg.members as u64)
            .map(|id| (id, Setup::INITIAL))
            .chain(cfg.learner.then_some((0, Setup::JOINING)))
            .collect();
        let slots = ids
            .iter()
            .enumerate()
            .map(|(i, &(id, setup))| Slot {
                id,
                dir: dir.path().join(format!("s{i}")),
                setup,
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
                token: None,
                needs_token: false,
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
        let learner_at = rng.gen_range(500..3000);
        // Without faults the network only delays messages, in the faults' time and after alike.
        let fair = if cfg.faults {
            Weather::calm()
        } else {
            Weather::perfect()
        };
        let mut w = World {
            cfg,
            seed,
            rng,
            now: 0,
            stamps: 0,
            base: Instant::now(),
            slots,
            net: Network::new(fair),
            clients,
            watchers,
            oracle: Oracle::default(),
            history: History::default(),
            problems: Vec::new(),
            faults: Vec::new(),
            scheduled: BTreeMap::new(),
            scheduled_seq: 0,
            leases: Vec::new(),
            auth_step: 0,
            nospace: false,
            learner: Learner::Waiting { until: learner_at },
            other_requests: 0,
            paths: BTreeMap::new(),
            lease_tracks: BTreeMap::new(),
            expiry_revokes: Vec::new(),
            lease_expiries: 0,
            last_leader_change_ms: 0,
            last_leader: None,
            _dir: dir,
        };
        for i in 0..w.cfg.members {
            w.start_member(i);
        }
        w
    }

    fn start_member(&mut self, i: usize) {
        let voters: Vec<u64> = (1..=self.cfg.members as u64).collect();
        let snap_dir = self.slots[i].dir.join("snap");
        self.net.receive_snapshots_in(self.slots[i].id, snap_dir);
        let outbox = Arc::new(MemberOutbox(self.net.wire.clone()));
        let slot = &mut self.slots[i];
        slot.incarnation += 1;
        let tick = Duration::from_millis(slot.tick_ms);
        let (base, us) = (self.base, slot.clock_us.clone());
        let clock = SimClock::new(base, us);
        match SimMember::open(
            &slot.dir,
            slot.id,
            &voters,
            slot.setup,
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

    fn trace_members(&self) {
        for s in &self.slots {
            let Some(m) = &s.member else {
                eprintln!("{} ms member {}: down", self.now, s.id);
                continue;
            };
            let st = m.status();
            eprintln!(
                "{} ms member {}: {:?} term {} leader {} commit {} applied {}",
                self.now,
                s.id,
                st.role,
                st.term,
                st.leader_id,
                st.commit_index,
                m.store().applied_index()
            );
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

    /// The slot of member `id`.
    fn slot_of(&self, id: u64) -> Option<usize> {
        (id != 0)
            .then(|| self.slots.iter().position(|s| s.id == id))
            .flatten()
    }

    /// The slots of the members that have started (all but a learner not added yet).
    fn started(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].incarnation > 0)
            .collect()
    }

    fn deliver(&mut self) {
        for m in self.net.arrivals(self.now) {
            let Some(i) = self.slot_of(m.to) else {
                continue;
            };
            let slot = &mut self.slots[i];
            let Some(member) = &slot.member else { continue };
            if m.get_msg_type() == keel_raft::MessageType::MsgSnapshot {
                // Installing a snapshot syncs the store: a power cut cannot take it back to an
                // image from before.
                slot.has_checkpoint = false;
            }
            member.stepper().step(m);
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
            paths: {
                let mut paths = self.paths;
                if self.net.snapshots > 0 {
                    paths.insert("snapshots sent", self.net.snapshots);
                }
                paths
            },
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
}

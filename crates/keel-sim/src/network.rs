//! The simulated network: every message a member sends waits on the wire until the simulation
//! schedules it (delay, loss, duplication: reordering follows from random delays), and links can
//! be cut one way or both.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_raft::{Message, MessageType, Outbox, Stepper};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::Rng;

/// What members sent during their turns, before the network decides each message's fate.
#[derive(Default)]
pub struct Wire {
    sent: Mutex<Vec<Message>>,
    /// Snapshot messages, with where their senders learn how the transfer went.
    snapshots: Mutex<Vec<(Message, Stepper)>>,
}

/// A member's outbox onto the shared wire.
pub struct MemberOutbox(pub Arc<Wire>);

impl Outbox for MemberOutbox {
    fn send(&self, msgs: Vec<Message>) {
        self.0.sent.lock().extend(msgs);
    }

    fn send_snapshot(&self, msg: Message, reporter: Stepper) {
        self.0.snapshots.lock().push((msg, reporter));
    }
}

/// How unreliable the network is at the moment.
#[derive(Clone, Copy, Debug)]
pub struct Weather {
    /// Probability that a message is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Delivery delay range in milliseconds.
    pub delay_ms: (u64, u64),
}

impl Weather {
    /// A LAN with occasional loss.
    pub fn calm() -> Weather {
        Weather {
            drop: 0.01,
            duplicate: 0.01,
            delay_ms: (1, 8),
        }
    }
}

impl Weather {
    /// No loss and no duplication: delays only.
    pub fn perfect() -> Weather {
        Weather {
            drop: 0.0,
            duplicate: 0.0,
            ..Weather::calm()
        }
    }
}

/// Messages in flight and the state of every link.
pub struct Network {
    /// Where members' outboxes write.
    pub wire: Arc<Wire>,
    in_flight: BTreeMap<(u64, u64), Message>,
    seq: u64,
    /// Links (from, to) that lose every message.
    cut: BTreeSet<(u64, u64)>,
    /// Current loss, duplication and delay.
    pub weather: Weather,
    /// The weather between faults, which `heal` brings back.
    fair: Weather,
    /// Messages delivered so far.
    pub delivered: u64,
    /// Snapshots transferred so far.
    pub snapshots: usize,
    /// Where each member receives snapshots (its snap dir), by member id.
    snap_dirs: BTreeMap<u64, PathBuf>,
}

impl Network {
    /// A network with no cut links, whose weather between faults is `fair`.
    pub fn new(fair: Weather) -> Network {
        Network {
            wire: Arc::default(),
            in_flight: BTreeMap::new(),
            seq: 0,
            cut: BTreeSet::new(),
            weather: fair,
            fair,
            delivered: 0,
            snapshots: 0,
            snap_dirs: BTreeMap::new(),
        }
    }

    /// Member `id` receives snapshots in `dir`.
    pub fn receive_snapshots_in(&mut self, id: u64, dir: PathBuf) {
        self.snap_dirs.insert(id, dir);
    }

    /// Decides when (and whether) each message on the wire arrives. A snapshot's image is copied
    /// into its receiver's snap dir at once, as the peer transport streams it, and the message
    /// naming the copy then travels as any other; its sender hears that the transfer finished,
    /// or failed over a cut link.
    pub fn schedule(&mut self, now: u64, rng: &mut StdRng) {
        let snapshots = std::mem::take(&mut *self.wire.snapshots.lock());
        for (mut m, reporter) in snapshots {
            let to = m.to;
            let copied = match self.snap_dirs.get(&to) {
                Some(dir) if !self.cut.contains(&(m.from, to)) => transfer(&mut m, dir),
                _ => Err(format!("no link to {to}")),
            };
            reporter.report_snapshot(to, copied.is_ok());
            if copied.is_ok() {
                self.snapshots += 1;
                self.wire.sent.lock().push(m);
            }
        }
        let sent = std::mem::take(&mut *self.wire.sent.lock());
        for m in sent {
            if rng.gen_bool(self.weather.drop) {
                continue;
            }
            // A proposal a follower forwards is the one raft message that is not idempotent: raft
            // would append it twice, and it would apply twice (as in etcd). Keel's transport
            // never resends a message, so it is never duplicated; every other message may be.
            let twice =
                rng.gen_bool(self.weather.duplicate) && m.get_msg_type() != MessageType::MsgPropose;
            let copies = if twice { 2 } else { 1 };
            for _ in 0..copies {
                let (lo, hi) = self.weather.delay_ms;
                let at = now + rng.gen_range(lo..=hi);
                self.seq += 1;
                self.in_flight.insert((at, self.seq), m.clone());
            }
        }
    }

    /// The messages that arrive at `now` over links that are up.
    pub fn arrivals(&mut self, now: u64) -> Vec<Message> {
        let later = self.in_flight.split_off(&(now + 1, 0));
        let due = std::mem::replace(&mut self.in_flight, later);
        let arrived: Vec<Message> = due
            .into_values()
            .filter(|m| !self.cut.contains(&(m.from, m.to)))
            .collect();
        self.delivered += arrived.len() as u64;
        arrived
    }

    /// Cuts the link from `from` to `to` (one way).
    pub fn cut(&mut self, from: u64, to: u64) {
        self.cut.insert((from, to));
    }

    /// Cuts every link between the two sides, both ways.
    pub fn split(&mut self, a: &[u64], b: &[u64]) {
        for &x in a {
            for &y in b {
                self.cut(x, y);
                self.cut(y, x);
            }
        }
    }

    /// Restores every link and the weather between faults.
    pub fn heal(&mut self) {
        self.cut.clear();
        self.weather = self.fair;
    }
}

/// Copies the image `m` names into `dir` (named as the peer transport names a received image)
/// and has `m` name the copy.
fn transfer(m: &mut Message, dir: &Path) -> Result<(), String> {
    let image = PathBuf::from(String::from_utf8_lossy(&m.get_snapshot().data).into_owned());
    let meta = m.get_snapshot().get_metadata();
    let copy = dir.join(format!("recv-{:016x}-{:016x}", meta.index, meta.term));
    let copied = (|| {
        let _ = std::fs::remove_dir_all(&copy);
        std::fs::create_dir_all(&copy)?;
        for file in std::fs::read_dir(&image)? {
            let file = file?;
            std::fs::copy(file.path(), copy.join(file.file_name()))?;
        }
        Ok::<_, std::io::Error>(())
    })();
    copied.map_err(|e| format!("copying snapshot {}: {e}", image.display()))?;
    m.mut_snapshot().data = copy.to_string_lossy().into_owned().into_bytes().into();
    Ok(())
}

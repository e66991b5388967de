//! The nemesis: faults chosen by the seed, their scheduled ends, and the calm after them.

use super::*;

impl World {
    /// The nemesis: one fault, chosen by the seed.
    pub(super) fn inject_fault(&mut self) {
        let mut order = self.started();
        let n = order.len();
        order.shuffle(&mut self.rng);
        let victim = self
            .leader()
            .filter(|_| self.rng.gen_bool(0.5))
            .unwrap_or(order[0]);
        let lasting = self.rng.gen_range(300..3000);
        match self.rng.gen_range(0..11) {
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
            9 => {
                // An operator's mistake: the member restarts with a backend quota its store is
                // over. Its next growing write raises NOSPACE for the whole cluster, which then
                // refuses growing writes until a client disarms the alarm.
                if self.slots[victim].member.is_none() {
                    return;
                }
                let id = self.slots[victim].id;
                self.note(format!("{id} restarts with a quota it is over"));
                self.crash(victim, false);
                self.slots[victim].setup.quota_bytes = Setup::OVER_QUOTA;
                self.start_member(victim);
                self.schedule(lasting, Scheduled::QuotaRestored(victim));
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
    pub(super) fn crash(&mut self, i: usize, power: bool) {
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
    pub(super) fn calm_down(&mut self) {
        self.note("faults stop".into());
        self.scheduled.clear();
        self.net.heal();
        for i in self.started() {
            self.restore_quota(i);
            self.slots[i].stalled_until = 0;
            self.slots[i].tick_ms = TICK_MS;
            if self.slots[i].member.is_none() {
                self.start_member(i);
            }
        }
    }

    pub(super) fn run_scheduled(&mut self) {
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
                Scheduled::QuotaRestored(i) => self.restore_quota(i),
                Scheduled::Heal => {
                    self.note("network heals".into());
                    self.net.heal();
                }
                Scheduled::ClockTrue(i) => self.slots[i].tick_ms = TICK_MS,
            }
        }
    }

    /// Restarts member `i` with its usual quota, if it runs with another.
    fn restore_quota(&mut self, i: usize) {
        if self.slots[i].setup.quota_bytes == Setup::INITIAL.quota_bytes {
            return;
        }
        self.slots[i].setup.quota_bytes = Setup::INITIAL.quota_bytes;
        if self.slots[i].member.is_some() {
            let id = self.slots[i].id;
            self.note(format!("{id} restarts with its usual quota"));
            self.crash(i, false);
            self.start_member(i);
        }
    }
}

//! The clients: requests under faults, the progress probes after them, and what they recorded.

use super::*;

impl World {
    /// Once the faults have stopped: each client's next progress probe, a put of a fresh value to
    /// its own key, then a linearizable read of it, to a random member (retried until it succeeds).
    pub(super) fn start_probes(&mut self) {
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

    pub(super) fn start_requests(&mut self) {
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

    pub(super) fn issue(&mut self, c: usize, member: usize, job: Job, clocks: Option<Vec<u64>>) {
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

    pub(super) fn poll(&mut self) {
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
                if let WatchEnd::Compacted(rev) = end {
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

    /// Records a finished request.
    pub(super) fn complete(&mut self, c: usize, op: InFlight, recorded: Option<Outcome>) {
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

    pub(super) fn record(
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
    pub(super) fn give_up(&mut self, c: usize, op: InFlight) {
        let completed = self.stamp();
        self.clients[c].idle_until = self.now;
        if let Job::Checked { key, call, .. } = op.job {
            if call != Call::Get {
                self.record(c, key, call, op.invoked, completed, Outcome::Unknown);
            }
        }
    }
}

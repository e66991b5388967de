//! The clients: requests under faults, the progress probes after them, and what they recorded.

use super::*;

impl World {
    /// Once the faults have stopped: each client's next progress probe, a put of a fresh value to
    /// its own key, then a linearizable read of it, to a random member (retried until it succeeds).
    pub(super) fn start_probes(&mut self) {
        if self.now == self.cfg.active_ms + PROBE_AFTER_MS {
            // What a client still waits for from the time of the faults it abandons, as a
            // client that times out does: the probes measure the cluster as it is now.
            for c in 0..self.clients.len() {
                if let Some(op) = self.clients[c].op.take() {
                    self.give_up(c, op);
                }
            }
        }
        let alive = self.alive();
        for c in 0..self.clients.len() {
            let client = &self.clients[c];
            if client.op.is_some() || alive.is_empty() {
                continue;
            }
            let Some(member) = self.own_turn(c, &alive) else {
                continue;
            };
            let client = &self.clients[c];
            let call = match client.probes {
                [None, _] => Call::Put(format!("probe-{c}-{}", client.issued)),
                [Some(_), None] => Call::Get,
                [Some(_), Some(_)] => continue,
            };
            let key = format!("k/{}", c % self.cfg.keys);
            let m = self.slots[member].member.as_ref().expect("alive");
            let fut = workload::send_checked(m, client.token.as_deref(), &key, &call);
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
            let Some(member) = self.own_turn(c, &alive) else {
                continue;
            };
            let client = &self.clients[c];
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
            let token = self.clients[c].token.clone();
            let token = token.as_deref();
            let job = match req {
                Request::Checked { key, call } => {
                    let fut = workload::send_checked(m, token, &key, &call);
                    Job::Checked { key, call, fut }
                }
                Request::Other(body) => Job::Other(workload::send_other(m, token, body)),
                Request::Scan => Job::Other(workload::send_scan(m, token)),
                Request::Limit(limit) => Job::OverLimit(workload::send_over_limit(m, token, limit)),
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
                        fut: workload::send_grant(m, token, id, ttl),
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
                        fut: workload::send_revoke(m, token, id),
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
        if tracing() {
            let what = match &job {
                Job::Checked { call, .. } => format!("{call:?}"),
                Job::Other(_) => "other".into(),
                Job::Lease { id, .. } => format!("lease {id}"),
                Job::OverLimit(_) => "over limit".into(),
                Job::AuthStep(s, _) => format!("auth step {s}"),
                Job::Disarm(_) => "disarm".into(),
                Job::Authenticate(_) => "authenticate".into(),
                Job::AddLearner(_) => "add the learner".into(),
                Job::Promote(_) => "promote the learner".into(),
            };
            eprintln!(
                "{} ms client {c} issues to member {member}: {what}",
                self.now
            );
        }
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

    /// Picks a member for free client `c`: issues the client's chore there if it has one (see
    /// `chore`), else returns the member for the client's own request.
    fn own_turn(&mut self, c: usize, alive: &[usize]) -> Option<usize> {
        let member = alive[self.rng.gen_range(0..alive.len())];
        let (at, job) = match self.chore(c, member) {
            Some(chore) => chore,
            None => return Some(member),
        };
        self.issue(c, at, job, None);
        None
    }

    /// What client `c` must do before its own requests, if anything, and at which member:
    /// authenticate (auth is on and it has no valid token), or, as the admin (client 0), set up
    /// auth (on auth seeds), disarm NOSPACE once a client was refused for it, add the learner and
    /// promote it (on learner seeds; a promotion goes to the leader, as etcd's clients send it).
    fn chore(&mut self, c: usize, member: usize) -> Option<(usize, Job)> {
        let m = self.slots[member].member.as_ref().expect("alive");
        let client = &self.clients[c];
        if client.needs_token {
            let user = if c == 0 {
                workload::ROOT
            } else {
                workload::APP
            };
            return Some((
                member,
                Job::Authenticate(workload::send_authenticate(m, user)),
            ));
        }
        if c != 0 {
            return None;
        }
        let token = client.token.as_deref();
        if self.cfg.auth {
            if let Some(fut) = workload::send_auth_step(m, token, self.auth_step) {
                return Some((member, Job::AuthStep(self.auth_step, fut)));
            }
        }
        if self.nospace {
            return Some((member, Job::Disarm(workload::send_disarm(m, token))));
        }
        match self.learner {
            Learner::Waiting { until } if self.cfg.learner && self.now >= until => {
                let url = sim_member(self.slots.len() as u64).peer_ur_ls.remove(0);
                let fut = workload::send_add_learner(m, token, url);
                Some((member, Job::AddLearner(fut)))
            }
            Learner::Added { retry_at } if self.now >= retry_at => {
                let leader = *self.believed_leaders().first()?;
                let m = self.slots[leader].member.as_ref().expect("alive");
                let learner = self.slots.last().expect("the learner's slot").id;
                let fut = workload::send_promote(m, token, learner);
                Some((leader, Job::Promote(fut)))
            }
            _ => None,
        }
    }

    /// MemberAdd answered: the learner, member `id`, starts (empty: it joins, and bootstraps
    /// from the leader's snapshot).
    fn learner_added(&mut self, id: u64) {
        if !matches!(self.learner, Learner::Waiting { .. }) {
            return;
        }
        self.count("learner added");
        let i = self.slots.len() - 1;
        self.slots[i].id = id;
        self.note(format!("learner {id} added"));
        self.start_member(i);
        self.learner = Learner::Added {
            retry_at: self.now + 500,
        };
    }

    fn count(&mut self, path: &'static str) {
        *self.paths.entry(path).or_default() += 1;
    }

    /// Acts on what an answer asked of client `c`.
    fn heed(&mut self, c: usize, signal: Signal) {
        match signal {
            Signal::Nothing => {}
            Signal::NoSpace => {
                self.count("refused for NOSPACE");
                self.nospace = true;
            }
            Signal::NeedToken => {
                let client = &mut self.clients[c];
                client.token = None;
                client.needs_token = true;
            }
        }
    }

    pub(super) fn poll(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        for c in 0..self.clients.len() {
            let Some(op) = self.clients[c].op.as_mut() else {
                continue;
            };
            let probing = op.invoked_ms >= self.cfg.active_ms + PROBE_AFTER_MS;
            let timeout = if probing {
                PROBE_TIMEOUT_MS
            } else {
                REQUEST_TIMEOUT_MS
            };
            let timed_out = self.now >= op.invoked_ms + timeout;
            let Some(answer) = poll_job(&mut op.job, &mut cx) else {
                if timed_out {
                    let op = self.clients[c].op.take().expect("checked");
                    self.give_up(c, op);
                }
                continue;
            };
            let op = self.clients[c].op.take().expect("checked");
            if tracing() {
                let what = match &answer {
                    Answer::Recorded(r, s) => format!("{r:?} {s:?}"),
                    Answer::Sent(ok, s) => format!("sent {ok} {s:?}"),
                    Answer::Refused(p, s) => format!("refused {p:?} {s:?}"),
                    Answer::Token(t) => format!("token {t:?}"),
                    Answer::Joined(j) => format!("joined {j:?}"),
                };
                eprintln!("{} ms client {c} at member {}: {what}", self.now, op.member);
            }
            match answer {
                Answer::Recorded(recorded, signal) => {
                    self.heed(c, signal);
                    self.complete(c, op, recorded);
                }
                Answer::Sent(ok, signal) => {
                    self.heed(c, signal);
                    if let (false, Job::Promote(_)) = (ok, &op.job) {
                        // Not caught up yet (or no leader): asked again a little later.
                        self.learner = Learner::Added {
                            retry_at: self.now + 200,
                        };
                    }
                    if ok {
                        self.other_requests += 1;
                        self.lease_succeeded(&op);
                        match op.job {
                            Job::AuthStep(step, _) => {
                                self.count("auth set-up steps");
                                self.auth_step = self.auth_step.max(step + 1);
                            }
                            Job::Disarm(_) => {
                                self.count("NOSPACE disarmed");
                                self.nospace = false;
                            }
                            Job::Promote(_) => {
                                self.count("learner promoted");
                                self.learner = Learner::Promoted;
                            }
                            _ => {}
                        }
                    }
                    self.complete(c, op, None);
                }
                Answer::Refused(problem, signal) => {
                    self.heed(c, signal);
                    self.count("refused over a limit");
                    self.problems.extend(problem);
                    self.complete(c, op, None);
                }
                Answer::Joined(joined) => {
                    match joined {
                        Ok(id) => self.learner_added(id),
                        Err(signal) => self.heed(c, signal),
                    }
                    self.complete(c, op, None);
                }
                Answer::Token(token) => {
                    let client = &mut self.clients[c];
                    match token {
                        Ok(token) => {
                            client.needs_token = false;
                            client.token = token;
                            self.count("authentications");
                        }
                        Err(signal) => {
                            // Not authenticated yet (the user or its role may not exist yet).
                            self.heed(c, signal);
                        }
                    }
                    self.complete(c, op, None);
                }
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
        if tracing() {
            eprintln!(
                "{} ms client {c} gives up on member {}",
                self.now, op.member
            );
        }
        let completed = self.stamp();
        self.clients[c].idle_until = self.now;
        if let Job::Checked { key, call, .. } = op.job {
            if call != Call::Get {
                self.record(c, key, call, op.invoked, completed, Outcome::Unknown);
            }
        }
    }
}

/// A finished job's answer.
enum Answer {
    Recorded(Option<Outcome>, Signal),
    Sent(bool, Signal),
    Refused(Option<String>, Signal),
    Token(Result<Option<String>, Signal>),
    Joined(Result<u64, Signal>),
}

/// Polls a job once; its answer if it has one.
fn poll_job(job: &mut Job, cx: &mut Context<'_>) -> Option<Answer> {
    let answer = match job {
        Job::Checked { fut, .. } => match fut.as_mut().poll(cx) {
            Poll::Ready((recorded, signal)) => Answer::Recorded(recorded, signal),
            Poll::Pending => return None,
        },
        Job::Other(fut)
        | Job::Lease { fut, .. }
        | Job::AuthStep(_, fut)
        | Job::Disarm(fut)
        | Job::Promote(fut) => match fut.as_mut().poll(cx) {
            Poll::Ready((ok, signal)) => Answer::Sent(ok, signal),
            Poll::Pending => return None,
        },
        Job::OverLimit(fut) => match fut.as_mut().poll(cx) {
            Poll::Ready((problem, signal)) => Answer::Refused(problem, signal),
            Poll::Pending => return None,
        },
        Job::Authenticate(fut) => match fut.as_mut().poll(cx) {
            Poll::Ready(token) => Answer::Token(token),
            Poll::Pending => return None,
        },
        Job::AddLearner(fut) => match fut.as_mut().poll(cx) {
            Poll::Ready(joined) => Answer::Joined(joined),
            Poll::Pending => return None,
        },
    };
    Some(answer)
}

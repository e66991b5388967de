//! Raft's Ready: messages out, snapshots installed, entries handed to the apply loop, conf changes applied.

use super::*;

impl Driver {
    /// Handles one `Ready` in the order raft requires.
    pub(super) fn on_ready(&mut self) -> Result<()> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        // Messages a leader may send before its own append is durable (raft thesis 10.2.1).
        self.send(ready.take_messages());
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot())?;
        }
        // Committed entries go to the state machine; they are durable already.
        self.hand_off(ready.take_committed_entries())?;
        self.finish_reads(ready.take_read_states());
        // The durability point: new entries and HardState in one synced write.
        self.raw.mut_store().append(ready.entries(), ready.hs())?;
        // Messages that promise what was just persisted (votes, append responses).
        self.send(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit);
        }
        self.send(light.take_messages());
        self.hand_off(light.take_committed_entries())?;
        self.raw.advance_apply();
        Ok(())
    }

    pub(super) fn send(&mut self, mut msgs: Vec<Message>) {
        // Snapshots travel on their own stream: a large image must not hold up heartbeats.
        msgs.retain(|m| {
            if m.get_msg_type() != MessageType::MsgSnapshot {
                return true;
            }
            self.outbox.send_snapshot(m.clone(), self.reporter.clone());
            false
        });
        self.outbox.send(msgs);
    }

    /// Has the state machine install the received image, then moves the log past it. In that
    /// order: a crash in between leaves a state machine ahead of the log, which start-up repairs;
    /// the reverse would leave a log that no longer holds what the state machine lacks.
    pub(super) fn install_snapshot(&mut self, snap: &Snapshot) -> Result<()> {
        let meta = snap.get_metadata();
        tracing::info!(
            index = meta.index,
            term = meta.term,
            "installing a snapshot"
        );
        let (done, installed) = mpsc::channel();
        let install = InstallSnapshot {
            index: meta.index,
            term: meta.term,
            dir: PathBuf::from(String::from_utf8_lossy(&snap.data).into_owned()),
            done,
        };
        match &mut self.installer {
            Some(install_now) => install_now(install),
            None => self
                .committed
                .send(Committed::Snapshot(install))
                .map_err(|_| RaftError::Stopped)?,
        }
        match installed.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(RaftError::Corrupt(format!("installing a snapshot: {e}"))),
            Err(_) => return Err(RaftError::Stopped),
        }
        self.raw.mut_store().apply_snapshot(meta)?;
        tracing::info!(index = meta.index, "snapshot installed");
        Ok(())
    }

    pub(super) fn hand_off(&mut self, entries: Vec<Entry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        for e in &entries {
            // raft refusing a change is the same on every member (same log, same refusal); the
            // change is dropped rather than stopping the member. A failed write is fatal.
            match self.apply_conf_change(e) {
                Err(RaftError::Raft(err)) => {
                    tracing::error!(index = e.index, error = %err, "membership change refused by raft")
                }
                other => other?,
            }
        }
        self.committed
            .send(Committed::Entries(entries))
            .map_err(|_| RaftError::Stopped)
    }

    pub(super) fn apply_conf_change(&mut self, e: &Entry) -> Result<()> {
        let cs = match e.get_entry_type() {
            EntryType::EntryConfChange if !e.data.is_empty() => self
                .raw
                .apply_conf_change(&ConfChange::parse_from_bytes(&e.data)?)?,
            EntryType::EntryConfChangeV2 if !e.data.is_empty() => self
                .raw
                .apply_conf_change(&ConfChangeV2::parse_from_bytes(&e.data)?)?,
            _ => return Ok(()),
        };
        tracing::info!(voters = ?cs.voters, learners = ?cs.learners, "membership changed");
        self.raw.mut_store().set_conf_state(cs)
    }
}

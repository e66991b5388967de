//! Where proposers wait for their entry to be applied: a map from proposal id to a one-shot sender,
//! completed by the apply loop with the result the state machine produced.

use std::collections::HashMap;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::Applied;

/// Waiting proposers by proposal id.
#[derive(Default)]
pub struct Registry {
    waiting: Mutex<HashMap<u64, oneshot::Sender<Applied>>>,
}

impl Registry {
    /// Registers `id`; the receiver resolves when the entry is applied (or is dropped with the registry).
    pub fn register(&self, id: u64) -> oneshot::Receiver<Applied> {
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().insert(id, tx);
        rx
    }

    /// Gives up waiting for `id` (the proposal failed or timed out).
    pub fn cancel(&self, id: u64) {
        self.waiting.lock().remove(&id);
    }

    /// Completes `id` with `err` (its proposal was refused before it entered the log).
    pub fn fail(&self, id: u64, err: crate::ServerError) {
        if let Some(tx) = self.waiting.lock().remove(&id) {
            let _ = tx.send(Err(err));
        }
    }

    /// How many proposers wait.
    pub fn pending(&self) -> usize {
        self.waiting.lock().len()
    }

    /// Completes the proposers of a batch of applied entries.
    pub fn complete(&self, results: Vec<(u64, Applied)>) {
        let mut waiting = self.waiting.lock();
        for (id, res) in results {
            if let Some(tx) = waiting.remove(&id) {
                let _ = tx.send(res);
            }
        }
    }
}

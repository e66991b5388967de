//! A slow state machine, injected for tests (as keel-raft's fault.rs injects partitions).
//!
//! When the environment variable `KEEL_FAULT_APPLY_DELAY_FILE` names a file, the apply loop waits
//! the number of milliseconds the file holds before applying each batch (re-read at most every
//! 100 ms; missing or empty: no wait). Without the variable nothing is read, ever.

use std::path::PathBuf;
use std::time::{Duration, Instant};

const ENV: &str = "KEEL_FAULT_APPLY_DELAY_FILE";
const POLL: Duration = Duration::from_millis(100);

/// How long the apply loop waits before each batch.
pub struct ApplyDelay {
    file: Option<PathBuf>,
    read_at: Option<Instant>,
    delay: Duration,
}

impl ApplyDelay {
    /// A delay following the file named by `KEEL_FAULT_APPLY_DELAY_FILE`, if set.
    pub fn from_env() -> Self {
        let file = std::env::var_os(ENV).map(PathBuf::from);
        if let Some(f) = &file {
            tracing::warn!(file = %f.display(), "apply delay injection enabled");
        }
        ApplyDelay {
            file,
            read_at: None,
            delay: Duration::ZERO,
        }
    }

    /// Waits the current delay (the apply thread's own time: nothing else waits on it).
    pub fn wait(&mut self) {
        let Some(file) = &self.file else {
            return;
        };
        if self.read_at.is_none_or(|at| at.elapsed() >= POLL) {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            self.delay = Duration::from_millis(text.trim().parse().unwrap_or(0));
            self.read_at = Some(Instant::now());
        }
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
    }
}

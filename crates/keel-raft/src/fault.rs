//! Network faults injected into the transport, for tests that partition a running cluster.
//!
//! When the environment variable `KEEL_FAULT_PARTITION_FILE` names a file, the member reads it
//! every 100 ms: each line is a member id (hex) this member neither sends raft messages to nor
//! accepts them from. Writing the file on both sides of a cut builds a partition; emptying it
//! heals it. Without the variable nothing is ever blocked (one relaxed atomic load per check).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

const ENV: &str = "KEEL_FAULT_PARTITION_FILE";
const POLL: Duration = Duration::from_millis(100);

/// The members this one is cut off from.
#[derive(Default)]
pub struct Partition {
    active: AtomicBool,
    blocked: RwLock<HashSet<u64>>,
}

impl Partition {
    /// A partition following the file named by `KEEL_FAULT_PARTITION_FILE`, if set.
    pub fn from_env(runtime: &tokio::runtime::Handle) -> Arc<Partition> {
        let p = Arc::new(Partition::default());
        if let Some(file) = std::env::var_os(ENV).map(PathBuf::from) {
            tracing::warn!(file = %file.display(), "network fault injection enabled");
            let follow = p.clone();
            runtime.spawn(async move {
                loop {
                    follow.load(&std::fs::read_to_string(&file).unwrap_or_default());
                    tokio::time::sleep(POLL).await;
                }
            });
        }
        p
    }

    fn load(&self, text: &str) {
        let ids: HashSet<u64> = text
            .lines()
            .filter_map(|l| u64::from_str_radix(l.trim(), 16).ok())
            .collect();
        if *self.blocked.read() != ids {
            tracing::warn!(blocked = ?ids.iter().map(|id| format!("{id:x}")).collect::<Vec<_>>(), "partition changed");
            self.active.store(!ids.is_empty(), Ordering::Release);
            *self.blocked.write() = ids;
        }
    }

    /// Whether traffic with member `id` is cut.
    pub fn blocks(&self, id: u64) -> bool {
        self.active.load(Ordering::Relaxed) && self.blocked.read().contains(&id)
    }
}

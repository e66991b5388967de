//! Deterministic simulation of whole Keel clusters.
//!
//! Three or five members — each the production `keel_server::Member` over RocksDB, assembled as
//! start-up assembles it, its engine turned by the simulation (`member.rs`) and its requests sent
//! through etcd's services — run in one thread on simulated clocks, talking over a
//! simulated network that delays, loses, duplicates and reorders messages and that a nemesis
//! partitions (both ways, one way, around the leader, through a bridge). The nemesis also crashes
//! members (in-process: everything written survives) or cuts their power (the MVCC store falls
//! back to an earlier state, as unsynced writes would be lost; the raft log is synced, so it keeps
//! every entry), stalls them as a slow disk would, and skews or jumps their clocks.
//!
//! Clients put, get, delete, compare-and-swap, grant, keep alive and revoke leases, read ranges
//! and compact, against random members (keep-alives against a member that believes it leads, a
//! deposed one included); the history they record is checked for linearizability
//! (`keel_check`). Every revision every member applies is compared with what the first member to
//! apply it produced, watchers must see every revision's events once, in order, without gaps (or
//! be canceled as compacted), and after the faults stop the members must converge.
//!
//! Each member's lessor keeps its deadlines on that member's clock (which runs at its tick rate
//! and may jump forward). An expired lease's revoke that is applied must have been found expired
//! after the TTL passed on its proposer's clock since the last keep-alive or grant that succeeded;
//! a short lease nobody renews must be revoked within its TTL and the promotion extension of the
//! last leader change.
//!
//! One seed decides everything: the same seed replays the same run, message for message.

mod member;
mod network;
mod oracle;
mod workload;
mod world;

pub use world::{run, Config, Report};

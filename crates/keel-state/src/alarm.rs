//! Alarms (etcd's NOSPACE and CORRUPT): replicated state, raised and cleared through raft. While
//! NOSPACE is raised, every member refuses what would grow the store (puts, txns with puts, lease
//! grants) and still serves reads, deletes and compaction, so an operator can make room.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use keel_mvcc::{Store, WriteBatch};
use keel_proto::etcd::{
    PbAlarmMember as AlarmMember, PbAlarmRequest as AlarmRequest, PbAlarmResponse,
};
use parking_lot::RwLock;
use prost::Message;

use crate::StateError;

/// etcdserverpb.AlarmType.NOSPACE.
pub const NOSPACE: i32 = 1;
/// etcdserverpb.AlarmType.CORRUPT.
pub const CORRUPT: i32 = 2;
/// etcdserverpb.AlarmType names, for messages.
const NAMES: [&str; 3] = ["NONE", "NOSPACE", "CORRUPT"];
/// etcdserverpb.AlarmRequest.AlarmAction.
const ACTIVATE: i32 = 1;
const DEACTIVATE: i32 = 2;
pub const META_ALARMS: &[u8] = b"alarms";

/// The raised alarms: (member id, alarm type).
#[derive(Default)]
pub struct Alarms {
    raised: RwLock<BTreeSet<(u64, i32)>>,
    /// Whether NOSPACE is raised by any member (checked on every write).
    nospace: AtomicBool,
}

impl Alarms {
    /// The alarms recorded in the store.
    pub fn load(store: &Store) -> Result<Alarms, StateError> {
        let a = Alarms::default();
        a.reload(store)?;
        Ok(a)
    }

    /// Reads the alarms again (after a snapshot replaced the state).
    pub fn reload(&self, store: &Store) -> Result<(), StateError> {
        let list = match store.get_meta(META_ALARMS)? {
            Some(b) => {
                PbAlarmResponse::decode(b.as_slice())
                    .map_err(|e| StateError::Storage(format!("corrupt alarms: {e}")))?
                    .alarms
            }
            None => Vec::new(),
        };
        self.set(list.iter().map(|a| (a.member_id, a.alarm)).collect());
        Ok(())
    }

    fn set(&self, raised: BTreeSet<(u64, i32)>) {
        self.nospace
            .store(raised.iter().any(|(_, a)| *a == NOSPACE), Ordering::Release);
        *self.raised.write() = raised;
    }

    /// Clears every alarm (a restored snapshot starts a new cluster).
    pub fn clear(wb: &mut WriteBatch<'_>) {
        wb.put_meta(META_ALARMS, &PbAlarmResponse::default().encode_to_vec());
    }

    /// Whether NOSPACE is raised.
    pub fn nospace(&self) -> bool {
        self.nospace.load(Ordering::Acquire)
    }

    /// Every raised alarm.
    pub fn list(&self) -> Vec<AlarmMember> {
        self.raised
            .read()
            .iter()
            .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
            .collect()
    }

    /// Applies an ACTIVATE or DEACTIVATE; returns the alarm it changed (none if nothing changed).
    pub fn apply(&self, wb: &mut WriteBatch<'_>, r: &AlarmRequest) -> Vec<AlarmMember> {
        let key = (r.member_id, r.alarm);
        let mut raised = self.raised.read().clone();
        let changed = match r.action {
            ACTIVATE if r.alarm != 0 => raised.insert(key),
            DEACTIVATE => raised.remove(&key),
            _ => false,
        };
        if !changed {
            return Vec::new();
        }
        if r.action == ACTIVATE {
            tracing::warn!(
                member = format!("{:x}", r.member_id),
                alarm = name(r.alarm),
                "alarm raised"
            );
        } else {
            tracing::info!(
                member = format!("{:x}", r.member_id),
                alarm = name(r.alarm),
                "alarm cleared"
            );
        }
        let record = PbAlarmResponse {
            alarms: raised
                .iter()
                .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
                .collect(),
            ..Default::default()
        };
        wb.put_meta(META_ALARMS, &record.encode_to_vec());
        self.set(raised);
        vec![AlarmMember {
            member_id: r.member_id,
            alarm: r.alarm,
        }]
    }
}

/// An alarm type's name, as etcd prints it.
pub fn name(alarm: i32) -> &'static str {
    NAMES.get(alarm as usize).copied().unwrap_or("UNKNOWN")
}

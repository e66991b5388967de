//! Cluster identity (member and cluster ids derived from peer URLs and the cluster token exactly as
//! etcd derives them) and the membership: who the members are, replicated through raft.

use std::collections::{BTreeMap, BTreeSet};

use keel_mvcc::{Store, WriteBatch};
use keel_proto::etcd::{PbMember as Member, PbMemberListResponse};
use keel_proto::MemberAttributes;
use parking_lot::RwLock;
use prost::Message;
use sha1::{Digest, Sha1};

use crate::StateError;

/// Local records: who this member is (never replaced by a snapshot).
const META_CLUSTER_ID: &[u8] = b"local/cluster_id";
const META_MEMBER_ID: &[u8] = b"local/member_id";
const META_TOKEN: &[u8] = b"local/cluster_token";
/// Replicated records: the members (an encoded `MemberListResponse`) and the removed ids.
pub const META_MEMBERS_KEY: &[u8] = b"members";
pub const META_REMOVED: &[u8] = b"removed_members";

/// A member's id: the first 8 bytes (big-endian) of sha1(sorted peer URLs ++ cluster token).
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = Sha1::new();
    for u in &urls {
        h.update(u.as_bytes());
    }
    h.update(token.as_bytes());
    first_u64(&h.finalize())
}

/// The cluster id: the first 8 bytes of sha1 over the sorted member ids (8 bytes big-endian each).
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    first_u64(&h.finalize())
}

fn first_u64(digest: &[u8]) -> u64 {
    u64::from_be_bytes(digest[..8].try_into().expect("sha1 digest has 20 bytes"))
}

/// Who this member is and which cluster it belongs to (local, fixed at bootstrap or join).
#[derive(Clone, Debug)]
pub struct Identity {
    /// The cluster id.
    pub cluster_id: u64,
    /// This member's id.
    pub member_id: u64,
    /// The --initial-cluster-token the cluster was bootstrapped with ("" when joined).
    pub token: String,
}

fn decode_id(b: Vec<u8>) -> Result<u64, StateError> {
    Ok(u64::from_be_bytes(b.try_into().map_err(|_| {
        StateError::Storage("corrupt member identity".into())
    })?))
}

impl Identity {
    /// The identity recorded in the store, if it was bootstrapped or joined before.
    pub fn load(store: &Store) -> Result<Option<Identity>, StateError> {
        let (Some(c), Some(m)) = (
            store.get_meta(META_CLUSTER_ID)?,
            store.get_meta(META_MEMBER_ID)?,
        ) else {
            return Ok(None);
        };
        let token = store.get_meta(META_TOKEN)?.unwrap_or_default();
        Ok(Some(Identity {
            cluster_id: decode_id(c)?,
            member_id: decode_id(m)?,
            token: String::from_utf8_lossy(&token).into_owned(),
        }))
    }

    /// Records the identity durably (the member id last: its presence marks a complete record).
    pub fn save(&self, store: &Store) -> Result<(), StateError> {
        let mut wb = store.write_batch();
        self.record(&mut wb);
        wb.commit(store.applied_index())?;
        store.sync()?;
        Ok(())
    }

    /// Writes the identity with a write batch.
    pub fn record(&self, wb: &mut WriteBatch<'_>) {
        wb.put_meta(META_TOKEN, self.token.as_bytes());
        wb.put_meta(META_CLUSTER_ID, &self.cluster_id.to_be_bytes());
        wb.put_meta(META_MEMBER_ID, &self.member_id.to_be_bytes());
    }
}

/// The cluster's members as the state machine knows them: replicated state, changed only by
/// applied entries (conf changes, attribute publications, peer URL updates), so every member lists
/// the same members for the same applied index.
pub struct Membership {
    members: RwLock<BTreeMap<u64, Member>>,
    removed: RwLock<BTreeSet<u64>>,
    /// Called on every change, for whoever follows the membership (the transport).
    observers: RwLock<Vec<Box<dyn Fn() + Send + Sync>>>,
}

/// A change to the members that raft's configuration makes (a conf change entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChangeKind {
    /// A voting member joins, or a learner is promoted.
    AddVoter,
    /// A learner joins.
    AddLearner,
    /// A member leaves.
    Remove,
}

/// Decodes the member list record.
pub fn decode_members(bytes: &[u8]) -> Result<Vec<Member>, StateError> {
    Ok(PbMemberListResponse::decode(bytes)
        .map_err(|e| StateError::Storage(format!("corrupt member list: {e}")))?
        .members)
}

fn encode_members(members: &BTreeMap<u64, Member>) -> Vec<u8> {
    PbMemberListResponse {
        members: members.values().cloned().collect(),
        ..Default::default()
    }
    .encode_to_vec()
}

impl Membership {
    /// The membership recorded in the store (empty for a member that has joined but not yet
    /// received the cluster's state).
    pub fn load(store: &Store) -> Result<Membership, StateError> {
        let m = Membership {
            members: RwLock::default(),
            removed: RwLock::default(),
            observers: RwLock::default(),
        };
        m.reload(store)?;
        Ok(m)
    }

    /// Reads the membership again (after a snapshot replaced the state).
    pub fn reload(&self, store: &Store) -> Result<(), StateError> {
        let members = match store.get_meta(META_MEMBERS_KEY)? {
            Some(b) => decode_members(&b)?,
            None => Vec::new(),
        };
        let removed = store.get_meta(META_REMOVED)?.unwrap_or_default();
        *self.members.write() = members.into_iter().map(|m| (m.id, m)).collect();
        *self.removed.write() = removed
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
            .collect();
        self.notify();
        Ok(())
    }

    /// Writes the initial members of a new cluster (before raft starts) with a write batch.
    pub fn bootstrap(wb: &mut WriteBatch<'_>, members: &[Member]) {
        let members: BTreeMap<u64, Member> = members.iter().map(|m| (m.id, m.clone())).collect();
        wb.put_meta(META_MEMBERS_KEY, &encode_members(&members));
    }

    /// Writes the ids of the removed members with a write batch (none for a restored snapshot:
    /// it starts a new cluster; an imported etcd data dir's own).
    pub fn bootstrap_removed(wb: &mut WriteBatch<'_>, ids: &[u64]) {
        let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
        wb.put_meta(META_REMOVED, &bytes);
    }

    /// Every member, by id.
    pub fn list(&self) -> Vec<Member> {
        self.members.read().values().cloned().collect()
    }

    /// Member `id`, if it is one.
    pub fn get(&self, id: u64) -> Option<Member> {
        self.members.read().get(&id).cloned()
    }

    /// Whether member `id` is a learner (asked on every write: no copy of the member is made).
    pub fn is_learner(&self, id: u64) -> bool {
        self.members.read().get(&id).is_some_and(|m| m.is_learner)
    }

    /// Whether `id` was removed from the cluster.
    pub fn is_removed(&self, id: u64) -> bool {
        self.removed.read().contains(&id)
    }

    /// Calls `f` after every change from now on.
    pub fn on_change(&self, f: impl Fn() + Send + Sync + 'static) {
        self.observers.write().push(Box::new(f));
    }

    fn notify(&self) {
        for f in self.observers.read().iter() {
            f();
        }
    }

    fn save(&self, wb: &mut WriteBatch<'_>, members: &BTreeMap<u64, Member>) {
        wb.put_meta(META_MEMBERS_KEY, &encode_members(members));
        self.notify();
    }

    /// Applies a conf change about `member`; returns the members after it.
    pub fn apply_conf_change(
        &self,
        wb: &mut WriteBatch<'_>,
        change: MemberChangeKind,
        member: Member,
    ) -> Result<Vec<Member>, StateError> {
        let mut members = self.members.write();
        match change {
            MemberChangeKind::AddVoter | MemberChangeKind::AddLearner => {
                let learner = change == MemberChangeKind::AddLearner;
                match members.get_mut(&member.id) {
                    // Promotion: AddNode of a learner.
                    Some(m) => m.is_learner = learner,
                    None => {
                        let mut m = member;
                        m.is_learner = learner;
                        members.insert(m.id, m);
                    }
                }
            }
            MemberChangeKind::Remove => {
                if members.remove(&member.id).is_none() {
                    return Err(StateError::MemberNotFound);
                }
                let mut removed = self.removed.write();
                removed.insert(member.id);
                let bytes: Vec<u8> = removed.iter().flat_map(|id| id.to_be_bytes()).collect();
                wb.put_meta(META_REMOVED, &bytes);
            }
        }
        self.save(wb, &members);
        Ok(members.values().cloned().collect())
    }

    /// Applies MemberUpdate: new peer URLs for a member.
    pub fn update_peer_urls(
        &self,
        wb: &mut WriteBatch<'_>,
        id: u64,
        urls: &[String],
    ) -> Result<Vec<Member>, StateError> {
        let mut members = self.members.write();
        let m = members.get_mut(&id).ok_or(StateError::MemberNotFound)?;
        m.peer_ur_ls = urls.to_vec();
        self.save(wb, &members);
        Ok(members.values().cloned().collect())
    }

    /// Applies a member's published name and client URLs.
    pub fn publish(&self, wb: &mut WriteBatch<'_>, a: &MemberAttributes) {
        let mut members = self.members.write();
        if let Some(m) = members.get_mut(&a.member_id) {
            m.name = a.name.clone();
            m.client_ur_ls = a.client_urls.clone();
            self.save(wb, &members);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_etcd_for_its_default_single_member() {
        // `etcd` with no flags: peer URL http://localhost:2380, token "etcd-cluster". etcd 3.4 reports
        // member 8e9e05c52164694d in cluster cdf818194e3a8c32 for that configuration.
        let m = member_id(&["http://localhost:2380".to_string()], "etcd-cluster");
        assert_eq!(format!("{m:x}"), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", cluster_id(&[m])), "cdf818194e3a8c32");
    }
}

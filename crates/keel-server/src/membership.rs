//! Cluster identity: member and cluster ids derived from peer URLs and the cluster token exactly as
//! etcd derives them, and the member list recorded at bootstrap.

use std::collections::HashMap;

use keel_mvcc::{Store, WriteBatch};
use keel_proto::etcd::{PbMember as Member, PbMemberListResponse};
use keel_proto::MemberAttributes;
use parking_lot::RwLock;
use prost::Message;
use sha1::{Digest, Sha1};

use crate::ServerError;

const META_CLUSTER_ID: &[u8] = b"cluster_id";
const META_MEMBER_ID: &[u8] = b"member_id";
const META_MEMBERS: &[u8] = b"members";
/// Followed by the member id (8 bytes, big-endian): its published attributes.
const META_ATTRIBUTES: &[u8] = b"attributes/";

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

/// Who this member is and which cluster it belongs to.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The cluster id.
    pub cluster_id: u64,
    /// This member's id.
    pub member_id: u64,
    /// Every member, as recorded at bootstrap.
    pub members: Vec<Member>,
}

impl Identity {
    /// The identity recorded in the store, if it was bootstrapped before.
    pub fn load(store: &Store) -> Result<Option<Identity>, ServerError> {
        let (Some(c), Some(m), Some(list)) = (
            store.get_meta(META_CLUSTER_ID)?,
            store.get_meta(META_MEMBER_ID)?,
            store.get_meta(META_MEMBERS)?,
        ) else {
            return Ok(None);
        };
        let id = |b: Vec<u8>| -> Result<u64, ServerError> {
            Ok(u64::from_be_bytes(b.try_into().map_err(|_| {
                ServerError::Internal("corrupt member identity".into())
            })?))
        };
        let members = PbMemberListResponse::decode(list.as_slice())
            .map_err(|e| ServerError::Internal(format!("corrupt member list: {e}")))?
            .members;
        Ok(Some(Identity {
            cluster_id: id(c)?,
            member_id: id(m)?,
            members,
        }))
    }

    /// Records the identity durably.
    pub fn save(&self, store: &Store) -> Result<(), ServerError> {
        let list = PbMemberListResponse {
            members: self.members.clone(),
            ..Default::default()
        };
        store.put_meta(META_MEMBERS, &list.encode_to_vec())?;
        store.put_meta(META_MEMBER_ID, &self.member_id.to_be_bytes())?;
        store.put_meta(META_CLUSTER_ID, &self.cluster_id.to_be_bytes())?;
        Ok(())
    }
}

/// The attributes each member published through raft (replicated state, changed by apply).
#[derive(Default)]
pub struct Directory {
    published: RwLock<HashMap<u64, MemberAttributes>>,
}

fn attributes_key(id: u64) -> Vec<u8> {
    [META_ATTRIBUTES, &id.to_be_bytes()].concat()
}

impl Directory {
    /// The attributes recorded in the store for `members`.
    pub fn load(store: &Store, members: &[Member]) -> Result<Directory, ServerError> {
        let mut published = HashMap::new();
        for m in members {
            if let Some(v) = store.get_meta(&attributes_key(m.id))? {
                let a = MemberAttributes::decode(v.as_slice()).map_err(|e| {
                    ServerError::Internal(format!("corrupt member attributes: {e}"))
                })?;
                published.insert(m.id, a);
            }
        }
        Ok(Directory {
            published: RwLock::new(published),
        })
    }

    /// Applies a member's published attributes.
    pub fn record(&self, wb: &mut WriteBatch<'_>, a: &MemberAttributes) {
        wb.put_meta(&attributes_key(a.member_id), &a.encode_to_vec());
        self.published.write().insert(a.member_id, a.clone());
    }

    /// What member `id` published, if anything.
    pub fn get(&self, id: u64) -> Option<MemberAttributes> {
        self.published.read().get(&id).cloned()
    }

    /// `members` with the client URLs they published.
    pub fn fill(&self, mut members: Vec<Member>) -> Vec<Member> {
        let published = self.published.read();
        for m in &mut members {
            if let Some(a) = published.get(&m.id) {
                m.client_ur_ls = a.client_urls.clone();
            }
        }
        members
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

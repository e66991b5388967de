//! Keel's state in etcd 3.4's backend layout, and back: the buckets etcd keeps in its bbolt file
//! (`key`, `meta`, `lease`, `auth`, `authUsers`, `authRoles`, `members`, `members_removed`,
//! `cluster`, `alarm`), each record in etcd's encoding.
//!
//! Most of Keel's records already are etcd's: revisions are etcd's revision keys and
//! `mvccpb.KeyValue`s, leases `leasepb.Lease`s, roles `authpb.Role`s. Users differ in one field
//! (etcd nests `no_password` in options), and the bookkeeping (consistent index, compaction,
//! members, alarms) is rewritten in etcd's keys.

use std::fs::File;
use std::path::Path;

use keel_bbolt::{Reader, Writer};
use keel_mvcc::{CheckpointReader, Part, Revision, Store, Table};
use keel_rpc::etcd::{PbAlarmMember, PbAlarmResponse};
use keel_rpc::UserRecord;
use prost::Message;

use super::BackupError;
use crate::membership::{decode_members, META_MEMBERS_KEY, META_REMOVED};
use keel_state::auth::{KEY_ENABLED, KEY_REVISION, ROLE_PREFIX, USER_PREFIX};

const META_CONSISTENT_INDEX: &[u8] = b"consistent_index";
const META_FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
const META_SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
const AUTH_ENABLED: &[u8] = b"authEnabled";
const AUTH_REVISION: &[u8] = b"authRevision";

/// etcd's `authpb.User`.
#[derive(Clone, PartialEq, prost::Message)]
struct EtcdUser {
    #[prost(bytes = "vec", tag = "1")]
    name: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    password: Vec<u8>,
    #[prost(string, repeated, tag = "3")]
    roles: Vec<String>,
    #[prost(message, optional, tag = "4")]
    options: Option<EtcdUserOptions>,
}

/// etcd's `authpb.UserAddOptions`.
#[derive(Clone, PartialEq, prost::Message)]
struct EtcdUserOptions {
    #[prost(bool, tag = "1")]
    no_password: bool,
}

/// What `etcdctl snapshot status` reports of a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotStatus {
    /// CRC-32C of every bucket's name, then each of its keys and values, in order.
    pub hash: u32,
    /// The store revision: the last revision in the `key` bucket.
    pub revision: i64,
    /// Records in every bucket.
    pub total_key: u64,
    /// Bytes of the database's pages.
    pub total_size: u64,
}

/// Writes the state in the store checkpoint `checkpoint` as etcd's database at `out`; its size.
pub fn export(checkpoint: &Path, out: &Path) -> Result<u64, BackupError> {
    let src = CheckpointReader::open(checkpoint)?;
    let mut w = Writer::new(File::create(out)?)?;
    export_alarms(&src, &mut w)?;
    export_auth(&src, &mut w)?;
    let mut cluster = w.bucket(b"cluster")?;
    cluster.put(b"clusterVersion", crate::version::CLUSTER.as_bytes())?;
    cluster.finish()?;
    copy(&src, Part::Revisions, b"", &mut w, b"key", |_, v| {
        Ok(v.to_vec())
    })?;
    copy(
        &src,
        Part::Table(Table::Lease),
        b"",
        &mut w,
        b"lease",
        |_, v| Ok(v.to_vec()),
    )?;
    export_members(&src, &mut w)?;
    let mut meta = w.bucket(b"meta")?;
    meta.put(META_CONSISTENT_INDEX, &src.applied_index()?.to_be_bytes())?;
    let compacted = src.compacted_revision()?;
    if compacted > 0 {
        let rev = Revision::new(compacted, 0).to_key(false);
        meta.put(META_FINISHED_COMPACT, &rev)?;
        meta.put(META_SCHEDULED_COMPACT, &rev)?;
    }
    meta.finish()?;
    let file = w.finish()?;
    file.sync_all()?;
    Ok(file.metadata()?.len())
}

/// Copies the records of `part` under `prefix` into `bucket`, without the prefix, each value
/// through `convert`.
fn copy(
    src: &CheckpointReader,
    part: Part,
    prefix: &[u8],
    w: &mut Writer<File>,
    bucket: &[u8],
    convert: impl Fn(&[u8], &[u8]) -> Result<Vec<u8>, BackupError>,
) -> Result<(), BackupError> {
    let mut b = w.bucket(bucket)?;
    let mut failed = None;
    src.for_each(part, |k, v| {
        let Some(key) = k.strip_prefix(prefix) else {
            return Ok(());
        };
        let put = convert(key, v).and_then(|v| Ok(b.put(key, &v)?));
        if let Err(e) = put {
            failed = Some(e);
            return Err(keel_mvcc::MvccError::Corrupt("export stopped".into()));
        }
        Ok(())
    })
    .map_err(|e| failed.take().unwrap_or_else(|| e.into()))?;
    b.finish()?;
    Ok(())
}

fn export_auth(src: &CheckpointReader, w: &mut Writer<File>) -> Result<(), BackupError> {
    let auth = |key: &[u8]| -> Result<Option<Vec<u8>>, BackupError> {
        let mut found = None;
        src.for_each(Part::Table(Table::Auth), |k, v| {
            if k == key {
                found = Some(v.to_vec());
            }
            Ok(())
        })?;
        Ok(found)
    };
    let mut b = w.bucket(b"auth")?;
    if let Some(enabled) = auth(KEY_ENABLED)? {
        b.put(AUTH_ENABLED, &enabled)?;
    }
    // etcd starts its auth revision at 1.
    let revision = auth(KEY_REVISION)?.unwrap_or_else(|| 1u64.to_be_bytes().to_vec());
    b.put(AUTH_REVISION, &revision)?;
    b.finish()?;
    let to_etcd_user = |_: &[u8], v: &[u8]| {
        let u = UserRecord::decode(v).map_err(|e| BackupError::Invalid(format!("user: {e}")))?;
        Ok(EtcdUser {
            name: u.name.into_bytes(),
            password: u.password_hash.into_bytes(),
            roles: u.roles,
            options: Some(EtcdUserOptions {
                no_password: u.no_password,
            }),
        }
        .encode_to_vec())
    };
    copy(
        src,
        Part::Table(Table::Auth),
        ROLE_PREFIX.as_bytes(),
        w,
        b"authRoles",
        |_, v| Ok(v.to_vec()),
    )?;
    copy(
        src,
        Part::Table(Table::Auth),
        USER_PREFIX.as_bytes(),
        w,
        b"authUsers",
        to_etcd_user,
    )
}

fn export_alarms(src: &CheckpointReader, w: &mut Writer<File>) -> Result<(), BackupError> {
    let alarms = match src.get_meta(crate::alarm::META_ALARMS)? {
        Some(b) => {
            PbAlarmResponse::decode(b.as_slice())
                .map_err(|e| BackupError::Invalid(format!("alarms: {e}")))?
                .alarms
        }
        None => Vec::new(),
    };
    let mut keys: Vec<Vec<u8>> = alarms
        .iter()
        .map(|a| {
            PbAlarmMember {
                member_id: a.member_id,
                alarm: a.alarm,
            }
            .encode_to_vec()
        })
        .collect();
    keys.sort();
    let mut b = w.bucket(b"alarm")?;
    for k in keys {
        b.put(&k, b"")?;
    }
    b.finish()?;
    Ok(())
}

/// The members as etcd 3.4 mirrors them in its backend (it reads them from its WAL; `etcdctl
/// snapshot restore` replaces them): hex id to the member's JSON.
fn export_members(src: &CheckpointReader, w: &mut Writer<File>) -> Result<(), BackupError> {
    let members = match src.get_meta(META_MEMBERS_KEY)? {
        Some(b) => decode_members(&b).map_err(|e| BackupError::Invalid(e.to_string()))?,
        None => Vec::new(),
    };
    let mut rows: Vec<(String, Vec<u8>)> = members
        .iter()
        .map(|m| {
            let mut json = serde_json::json!({"id": m.id, "peerURLs": m.peer_ur_ls});
            if !m.name.is_empty() {
                json["name"] = m.name.clone().into();
            }
            if !m.client_ur_ls.is_empty() {
                json["clientURLs"] = m.client_ur_ls.clone().into();
            }
            if m.is_learner {
                json["isLearner"] = true.into();
            }
            (format!("{:x}", m.id), json.to_string().into_bytes())
        })
        .collect();
    rows.sort();
    let mut b = w.bucket(b"members")?;
    for (k, v) in rows {
        b.put(k.as_bytes(), &v)?;
    }
    b.finish()?;
    let removed = src.get_meta(META_REMOVED)?.unwrap_or_default();
    let mut ids: Vec<String> = removed
        .chunks_exact(8)
        .map(|c| format!("{:x}", u64::from_be_bytes(c.try_into().expect("8 bytes"))))
        .collect();
    ids.sort();
    let mut b = w.bucket(b"members_removed")?;
    for id in ids {
        b.put(id.as_bytes(), b"removed")?;
    }
    b.finish()?;
    Ok(())
}

/// Fills the empty `store` from etcd's database at `db`: revisions, leases, auth, the compaction,
/// and the meta record `note`; the store's applied index is `applied`, else the database's
/// consistent index. Members and alarms are left out: a restore starts a new cluster, with the
/// members its flags name, and an imported data dir takes its members from etcd's raft state.
pub fn import(
    db: &Path,
    store: &Store,
    note: (&[u8], &[u8]),
    applied_at: Option<u64>,
) -> Result<(), BackupError> {
    let r = Reader::open(db)?;
    let mut imp = store.import();
    imp.record(Part::Meta, note.0, note.1)?;
    let (mut compacted, mut applied) = (0i64, 0u64);
    let mut failed: Option<BackupError> = None;
    for (name, bucket) in r.buckets()? {
        let mut each = |k: &[u8], v: &[u8]| -> Result<(), BackupError> {
            match name.as_slice() {
                b"key" => imp.revision(k, v)?,
                b"lease" => imp.record(Part::Table(Table::Lease), k, v)?,
                b"authRoles" => {
                    let key = [ROLE_PREFIX.as_bytes(), k].concat();
                    imp.record(Part::Table(Table::Auth), &key, v)?
                }
                b"authUsers" => {
                    let key = [USER_PREFIX.as_bytes(), k].concat();
                    imp.record(Part::Table(Table::Auth), &key, &to_keel_user(v)?)?
                }
                b"auth" if k == AUTH_ENABLED => {
                    imp.record(Part::Table(Table::Auth), KEY_ENABLED, v)?
                }
                b"auth" if k == AUTH_REVISION => {
                    imp.record(Part::Table(Table::Auth), KEY_REVISION, v)?
                }
                b"meta" if k == META_CONSISTENT_INDEX => applied = be_u64(k, v)?,
                b"meta" if k == META_FINISHED_COMPACT => {
                    compacted = Revision::from_key(v)
                        .map(|(rev, _)| rev.main)
                        .ok_or_else(|| BackupError::Invalid(format!("meta {k:?}: {v:?}")))?
                }
                _ => {}
            }
            Ok(())
        };
        r.for_each(&bucket, |k, v| {
            each(k, v).map_err(|e| {
                failed = Some(e);
                keel_bbolt::BoltError::Invalid("import stopped".into())
            })
        })
        .map_err(|e| failed.take().unwrap_or_else(|| e.into()))?;
    }
    imp.finish(compacted, applied_at.unwrap_or(applied))?;
    Ok(())
}

/// The consistent index etcd's database at `db` records: the last raft entry it applied.
pub fn consistent_index(db: &Path) -> Result<u64, BackupError> {
    let r = Reader::open(db)?;
    let mut index = 0;
    if let Some(meta) = r.bucket(b"meta")? {
        r.for_each(&meta, |k, v| {
            if k == META_CONSISTENT_INDEX {
                index = be_u64(k, v).map_err(|e| keel_bbolt::BoltError::Invalid(e.to_string()))?;
            }
            Ok(())
        })?;
    }
    Ok(index)
}

fn be_u64(k: &[u8], v: &[u8]) -> Result<u64, BackupError> {
    <[u8; 8]>::try_from(v)
        .map(u64::from_be_bytes)
        .map_err(|_| BackupError::Invalid(format!("{}: {v:?}", String::from_utf8_lossy(k))))
}

fn to_keel_user(v: &[u8]) -> Result<Vec<u8>, BackupError> {
    let u = EtcdUser::decode(v).map_err(|e| BackupError::Invalid(format!("user: {e}")))?;
    let mut roles = u.roles;
    roles.sort();
    Ok(UserRecord {
        name: String::from_utf8_lossy(&u.name).into_owned(),
        password_hash: String::from_utf8_lossy(&u.password).into_owned(),
        roles,
        no_password: u.options.is_some_and(|o| o.no_password),
    }
    .encode_to_vec())
}

/// `etcdctl snapshot status`'s figures for etcd's database at `db`.
pub fn status(db: &Path) -> Result<SnapshotStatus, BackupError> {
    let r = Reader::open(db)?;
    let mut hash = 0u32;
    let (mut revision, mut total_key) = (0i64, 0u64);
    for (name, bucket) in r.buckets()? {
        hash = crc32c::crc32c_append(hash, &name);
        let is_key = name == b"key";
        r.for_each(&bucket, |k, v| {
            if is_key {
                if let Some((rev, _)) = Revision::from_key(k) {
                    revision = rev.main;
                }
            }
            hash = crc32c::crc32c_append(hash, k);
            hash = crc32c::crc32c_append(hash, v);
            total_key += 1;
            Ok(())
        })?;
    }
    Ok(SnapshotStatus {
        hash,
        revision,
        total_key,
        total_size: r.size(),
    })
}

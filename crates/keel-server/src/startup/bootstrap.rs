//! Where a member's identity and storage come from before it is assembled: an etcd data dir
//! imported, a snapshot restored (`keel snapshot restore`), the identity bootstrapped from
//! --initial-cluster or learned by joining a running cluster, an interrupted snapshot
//! installation finished, --force-new-cluster, defragmentation at start.

use keel_mvcc::Store;
use keel_raft::{LogStore, NodeConfig};
use keel_rpc::etcd::PbMember;
use keel_rpc::MemberChange;
use keel_state::membership::{cluster_id, member_id, Identity, Membership};
use prost::Message;

use crate::config::{ClusterState, ServerConfig};
use crate::error::{ServerError, StartError};
use crate::member::{
    bootstrap_store, conf_state, decode_position, encode_position, META_INSTALLED,
};
/// Creates a new member's data dir from a snapshot file (`keel snapshot restore`): every key,
/// revision and lease of the snapshot, and the membership of the new cluster `cfg` describes (as
/// etcd's restore, each member of the new cluster is restored from the same file).
pub fn restore(file: &std::path::Path, cfg: &ServerConfig) -> Result<(), StartError> {
    let member_dir = cfg.data_dir.join("member");
    if member_dir.exists() {
        return Err(StartError::Config(format!(
            "data-dir {} exists; restore into a new one",
            cfg.data_dir.display()
        )));
    }
    let new_data_dir = !cfg.data_dir.exists();
    let restored = restore_into(file, cfg, &member_dir);
    if restored.is_err() {
        // Nothing half-made is left behind: the same restore can be run again.
        let _ = std::fs::remove_dir_all(if new_data_dir {
            &cfg.data_dir
        } else {
            &member_dir
        });
    }
    restored
}

fn restore_into(
    file: &std::path::Path,
    cfg: &ServerConfig,
    member_dir: &std::path::Path,
) -> Result<(), StartError> {
    let io = |e: &dyn std::fmt::Display| StartError::Storage(e.to_string());
    let (identity, members) = bootstrap_identity(cfg)?;
    let store = Store::open(&member_dir.join("kv")).map_err(|e| io(&e))?;
    // The restored state is where the new cluster's raft log starts (index 1, term 1): the first
    // start moves the empty log there, as after any snapshot installation.
    let position = encode_position(keel_raft::BOOTSTRAP_INDEX, 1);
    let scratch = member_dir.join("snap").join("restore");
    crate::backup::restore(file, &store, &scratch, (META_INSTALLED, &position))
        .map_err(|e| io(&e))?;
    let mut wb = store.write_batch();
    identity.record(&mut wb);
    Membership::bootstrap(&mut wb, &members);
    Membership::bootstrap_removed(&mut wb, &[]);
    keel_state::alarm::Alarms::clear(&mut wb);
    wb.commit(keel_raft::BOOTSTRAP_INDEX)
        .and_then(|_| store.sync())
        .map_err(|e| io(&e))?;
    drop(store);
    tracing::info!(
        data_dir = %cfg.data_dir.display(),
        member_id = format!("{:x}", identity.member_id),
        cluster_id = format!("{:x}", identity.cluster_id),
        "restored a snapshot"
    );
    Ok(())
}

/// A data dir etcd wrote becomes Keel's before anything opens it (see `backup::data_dir`).
pub(super) fn import_etcd_member(cfg: &ServerConfig) -> Result<(), StartError> {
    let imported = crate::backup::data_dir::import_if_etcd(
        &cfg.data_dir,
        cfg.wal_dir.as_deref(),
        cfg.bcrypt_cost,
    )
    .map_err(|e| {
        StartError::Storage(format!(
            "importing etcd's data dir {}: {e}",
            cfg.data_dir.display()
        ))
    })?;
    if let Some(i) = imported {
        tracing::info!(
            data_dir = %cfg.data_dir.display(),
            member_id = format!("{:x}", i.member_id),
            cluster_id = format!("{:x}", i.cluster_id),
            applied_index = i.applied,
            revision = i.revision,
            entries_to_replay = i.entries,
            members = i.members,
            etcd_files_kept_at = %i.kept_at.display(),
            "imported an etcd data dir"
        );
    }
    Ok(())
}

/// Who this member is: as recorded in the data dir, else bootstrapped from the initial cluster
/// (`new`), else learned from the running cluster (`existing`). Also returns the members to talk
/// to before the state machine knows any (a joining member's seeds).
pub(super) async fn establish_identity(
    cfg: &ServerConfig,
    store: &Store,
    dialer: &keel_raft::Dialer,
) -> Result<(Identity, Vec<PbMember>), StartError> {
    let storage = |e: ServerError| StartError::Storage(e.to_string());
    if let Some(identity) = Identity::load(store).map_err(|e| storage(e.into()))? {
        check_token(cfg, &identity)?;
        return Ok((identity, Vec::new()));
    }
    if store.applied_index() > 0 {
        return Err(StartError::Storage(format!(
            "{} holds data but no member identity (written by an older Keel?); refusing to bootstrap over it",
            cfg.data_dir.display()
        )));
    }
    let (identity, members) = match cfg.initial_cluster_state {
        ClusterState::New => bootstrap_identity(cfg)?,
        ClusterState::Existing => join_identity(cfg, dialer).await?,
    };
    if cfg.initial_cluster_state == ClusterState::New {
        bootstrap_store(store, &identity, &members)?;
    } else {
        identity.save(store).map_err(|e| storage(e.into()))?;
    }
    Ok((identity, members))
}

/// A data dir bootstrapped with one cluster token refuses to start with another: the flags
/// describe a different cluster than the one the data belongs to.
fn check_token(cfg: &ServerConfig, identity: &Identity) -> Result<(), StartError> {
    if cfg.initial_cluster_state == ClusterState::New
        && !identity.token.is_empty()
        && identity.token != cfg.initial_cluster_token
    {
        return Err(StartError::Config(format!(
            "member {:x} in {} belongs to cluster {:x} bootstrapped with --initial-cluster-token={:?}, \
             not {:?}: refusing to start with another cluster's configuration",
            identity.member_id,
            cfg.data_dir.display(),
            identity.cluster_id,
            identity.token,
            cfg.initial_cluster_token
        )));
    }
    Ok(())
}

fn bootstrap_identity(cfg: &ServerConfig) -> Result<(Identity, Vec<PbMember>), StartError> {
    let members: Vec<PbMember> = cfg
        .initial_cluster
        .iter()
        .map(|(name, urls)| PbMember {
            id: member_id(urls, &cfg.initial_cluster_token),
            name: name.clone(),
            peer_ur_ls: urls.clone(),
            ..Default::default()
        })
        .collect();
    let me = find_self(cfg)?;
    let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    let identity = Identity {
        cluster_id: cluster_id(&ids),
        member_id: member_id(&me, &cfg.initial_cluster_token),
        token: cfg.initial_cluster_token.clone(),
    };
    Ok((identity, members))
}

/// Whether two lists of URLs are the same, as etcd's URLStringsEqual decides: equal as strings,
/// or naming the same schemes and addresses once their host names are resolved (SRV discovery
/// names members by host name; they advertise IPs). Resolves with the system's resolver, once
/// at start-up.
fn same_urls(a: &[String], b: &[String]) -> bool {
    use std::net::ToSocketAddrs;
    let resolved = |urls: &[String]| -> Option<Vec<(bool, String)>> {
        let mut out = urls
            .iter()
            .map(|u| {
                let t = keel_raft::Target::parse(u).ok()?;
                let at = match &t.address {
                    keel_raft::dial::Address::Tcp(hp) => {
                        hp.to_socket_addrs().ok()?.next()?.to_string()
                    }
                    keel_raft::dial::Address::Unix(path) => path.display().to_string(),
                };
                Some((t.secure, at))
            })
            .collect::<Option<Vec<_>>>()?;
        out.sort();
        Some(out)
    };
    let (mut x, mut y) = (a.to_vec(), b.to_vec());
    x.sort();
    y.sort();
    x == y || matches!((resolved(a), resolved(b)), (Some(p), Some(q)) if p == q)
}

/// This member's peer URLs in --initial-cluster, checked against --initial-advertise-peer-urls.
fn find_self(cfg: &ServerConfig) -> Result<Vec<String>, StartError> {
    let (_, urls) = cfg
        .initial_cluster
        .iter()
        .find(|(name, _)| *name == cfg.name)
        .ok_or_else(|| {
            StartError::Config(format!(
                "couldn't find local name {:?} in the initial cluster configuration (--initial-cluster)",
                cfg.name
            ))
        })?;
    let mut mine = urls.clone();
    mine.sort();
    if !same_urls(urls, &cfg.initial_advertise_peer_urls) {
        let mut advertised = cfg.initial_advertise_peer_urls.clone();
        advertised.sort();
        return Err(StartError::Config(format!(
            "--initial-cluster has {}={} but --initial-advertise-peer-urls is {}",
            cfg.name,
            mine.join(","),
            advertised.join(",")
        )));
    }
    Ok(mine)
}

/// Joins a running cluster: asks the other members of --initial-cluster for the member list and
/// finds this member in it by its peer URLs (it was added with MemberAdd first).
async fn join_identity(
    cfg: &ServerConfig,
    dialer: &keel_raft::Dialer,
) -> Result<(Identity, Vec<PbMember>), StartError> {
    let mine = find_self(cfg)?;
    let others: Vec<&String> = cfg
        .initial_cluster
        .iter()
        .filter(|(name, _)| *name != cfg.name)
        .flat_map(|(_, urls)| urls)
        .collect();
    let mut last_error = String::from("--initial-cluster names no other member");
    for url in others {
        match crate::api::fetch_members(url, dialer).await {
            Ok((cluster_id, members)) => {
                let me = members.iter().find(|m| {
                    let mut urls = m.peer_ur_ls.clone();
                    urls.sort();
                    urls == mine
                });
                let Some(me) = me else {
                    return Err(StartError::Config(format!(
                        "no member of cluster {cluster_id:x} has peer URLs {}: add this member with `etcdctl member add` first",
                        mine.join(",")
                    )));
                };
                tracing::info!(
                    via = %url,
                    member_id = format!("{:x}", me.id),
                    cluster_id = format!("{cluster_id:x}"),
                    "joining a running cluster"
                );
                let identity = Identity {
                    cluster_id,
                    member_id: me.id,
                    token: String::new(),
                };
                return Ok((identity, members));
            }
            Err(e) => last_error = format!("{url}: {e}"),
        }
    }
    Err(StartError::Config(format!(
        "--initial-cluster-state=existing: could not get the member list from the cluster ({last_error})"
    )))
}

/// etcd's --experimental-bootstrap-defrag-threshold-megabytes: defragment before serving when
/// that frees at least `threshold` bytes.
pub(super) fn defragment_at_start(store: &Store, threshold: u64) {
    if threshold == 0 {
        return;
    }
    let size = store.size();
    let free = size.total.saturating_sub(size.in_use);
    if free < threshold {
        tracing::info!(
            free_bytes = free,
            threshold_bytes = threshold,
            "skipping defragmentation at start-up"
        );
        return;
    }
    tracing::info!(
        free_bytes = free,
        threshold_bytes = threshold,
        "defragmenting at start-up"
    );
    store.defragment();
}

/// etcd's --force-new-cluster: this member restarts as a one-member cluster with its data (the
/// way back from a cluster that lost its quorum for good). Every other member is removed through
/// entries appended to this member's log and committed at once; what was not committed goes.
pub(super) fn force_new_cluster(
    store: &Store,
    membership: &Membership,
    log: &mut LogStore,
    me: u64,
) -> Result<(), StartError> {
    let storage = |e: &dyn std::fmt::Display| StartError::Storage(e.to_string());
    // What the state machine applied is committed even when the log's record of it lags.
    if store.applied_index() > log.hard_state().commit {
        log.raise_commit(store.applied_index())
            .map_err(|e| storage(&e))?;
    }
    let cs = log.conf_state();
    let mut others: Vec<u64> = cs
        .voters
        .iter()
        .chain(cs.learners.iter())
        .copied()
        .chain(membership.list().iter().map(|m| m.id))
        .filter(|id| *id != me)
        .collect();
    others.sort_unstable();
    others.dedup();
    let removals: Vec<(u64, Vec<u8>)> = others
        .iter()
        .map(|&id| {
            let change = MemberChange {
                id: 0,
                member: Some(PbMember {
                    id,
                    ..Default::default()
                }),
            };
            (id, change.encode_to_vec())
        })
        .collect();
    tracing::warn!(
        local_member_id = format!("{me:x}"),
        removed = ?others.iter().map(|id| format!("{id:x}")).collect::<Vec<_>>(),
        "forcing restart as a one-member cluster (--force-new-cluster); discarding uncommitted entries"
    );
    log.force_new_cluster(me, &removals)
        .map_err(|e| storage(&e))
}

/// A crash between installing a snapshot in the state machine and moving the raft log past it
/// leaves the state machine ahead of the log: move the log now.
pub(super) fn repair_interrupted_install(
    store: &Store,
    membership: &Membership,
    log: &mut LogStore,
) -> Result<(), StartError> {
    let applied = store.applied_index();
    if applied <= log.last_index() {
        return Ok(());
    }
    let position = store
        .get_meta(META_INSTALLED)
        .map_err(|e| StartError::Storage(e.to_string()))?
        .as_deref()
        .and_then(decode_position);
    let Some((index, term)) = position.filter(|(index, _)| *index == applied) else {
        if log.is_empty() {
            // A new cluster's state machine, about to be bootstrapped with the log.
            return Ok(());
        }
        return Err(StartError::Storage(format!(
            "the state machine applied index {applied} is beyond the raft log (last index {})",
            log.last_index()
        )));
    };
    tracing::warn!(
        index,
        term,
        "finishing a snapshot installation interrupted by a restart"
    );
    let meta = keel_raft::SnapshotMetadata {
        index,
        term,
        conf_state: Some(conf_state(&membership.list())).into(),
        ..Default::default()
    };
    log.apply_snapshot(&meta)
        .map_err(|e| StartError::Storage(e.to_string()))
}

/// The raft settings etcd's flags describe: a tick per heartbeat interval, an election after
/// --election-timeout worth of ticks.
pub(super) fn raft_config(
    cfg: &ServerConfig,
    id: u64,
    voters: Vec<u64>,
    applied: u64,
) -> NodeConfig {
    let mut raft = NodeConfig::new(id, voters, applied);
    raft.tick_interval = cfg.heartbeat_interval;
    let ticks = cfg.election_timeout.as_millis() / cfg.heartbeat_interval.as_millis().max(1);
    raft.election_ticks = (ticks as usize).max(2);
    raft.pre_vote = cfg.pre_vote;
    raft.initial_election_tick_advance = cfg.initial_election_tick_advance;
    raft
}

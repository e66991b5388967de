//! Locks and elections: `etcdctl lock` across processes (etcdctl 3.4 runs the mutex recipe itself
//! over KV, leases and watches), and etcd's Lock and Election services through the etcd-client
//! crate: holders served in order, a holder losing the lock with its lease, campaign, leader,
//! proclaim, observe, resign.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{status, Member};
use etcd_client::{LockOptions, ProclaimOptions, ResignOptions};

#[tokio::test]
async fn etcdctl_lock_excludes_a_second_holder_until_the_first_lets_go() {
    let m = Member::start().await;
    let etcdctl = |args: &[&str]| {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", m.endpoint()))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut first = etcdctl(&["lock", "door"]);
    let mut line = String::new();
    BufReader::new(first.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("door/"), "first holder printed {line:?}");
    let second = etcdctl(&["lock", "door", "echo", "second got it"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut c = m.client().await;
    let holders = c
        .get("door/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(
        holders.kvs().len(),
        2,
        "both wait in line under the lock's prefix"
    );
    // The first lets go (SIGINT: etcdctl revokes its session); the second runs its command.
    Command::new("kill")
        .args(["-INT", &first.id().to_string()])
        .status()
        .unwrap();
    first.wait().unwrap();
    let out = tokio::task::spawn_blocking(move || second.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "second got it\n");
}

#[tokio::test]
async fn a_lock_holder_whose_lease_expires_loses_the_lock() {
    let m = Member::start().await;
    let mut c = m.client().await;
    let short = c.lease_grant(2, None).await.unwrap().id();
    let long = c.lease_grant(60, None).await.unwrap().id();
    let held = c
        .lock("vault", Some(LockOptions::new().with_lease(short)))
        .await
        .unwrap();
    assert!(held.key().starts_with(b"vault/"));
    // The next holder waits, and gets it once the first lease expires (nobody keeps it alive).
    let mut c2 = m.client().await;
    let started = std::time::Instant::now();
    let next = c2
        .lock("vault", Some(LockOptions::new().with_lease(long)))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "it did not wait"
    );
    assert_ne!(next.key(), held.key());
    c2.unlock(next.key()).await.unwrap();
    let left = c
        .get("vault/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(left.kvs().is_empty());
}

#[tokio::test]
async fn election_campaign_leader_proclaim_observe_resign() {
    let m = Member::start().await;
    let mut c = m.client().await;
    let a = c.lease_grant(60, None).await.unwrap().id();
    let b = c.lease_grant(60, None).await.unwrap().id();
    let err = c.leader("chair").await.unwrap_err();
    assert_eq!(status(err).1, "election: no leader");

    let won = c.campaign("chair", "alice", a).await.unwrap();
    let alice = won.leader().unwrap().clone();
    let leader = c.leader("chair").await.unwrap();
    assert_eq!(leader.kv().unwrap().value(), b"alice");
    let mut observed = c.observe("chair").await.unwrap();
    let first = observed.message().await.unwrap().unwrap();
    assert_eq!(first.kv().unwrap().value(), b"alice");

    // Bob campaigns and waits behind Alice.
    let mut cb = m.client().await;
    let bob = tokio::spawn(async move { cb.campaign("chair", "bob", b).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!bob.is_finished(), "bob must wait while alice leads");

    c.proclaim(
        "alice v2",
        Some(ProclaimOptions::new().with_leader(alice.clone())),
    )
    .await
    .unwrap();
    let next = observed.message().await.unwrap().unwrap();
    assert_eq!(next.kv().unwrap().value(), b"alice v2");

    c.resign(Some(ResignOptions::new().with_leader(alice.clone())))
        .await
        .unwrap();
    let bob = bob.await.unwrap().unwrap();
    assert_eq!(bob.leader().unwrap().lease(), b);
    let next = observed.message().await.unwrap().unwrap();
    assert_eq!(next.kv().unwrap().value(), b"bob");
    // Alice no longer leads: her proclamations are refused.
    let err = c
        .proclaim("stale", Some(ProclaimOptions::new().with_leader(alice)))
        .await
        .unwrap_err();
    assert_eq!(status(err).1, "election: not leader");
}

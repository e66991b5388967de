//! Multi-member clusters of real `keel` processes on loopback: replication, reads from any member,
//! leader failover, a minority that never acknowledges, and restarted members catching up.

mod common;

use std::time::{Duration, Instant};

use common::{etcdctl_at, stdout, Cluster};
use etcd_client::GetOptions;

/// Puts through `endpoint` until one is acknowledged (an election may be under way).
async fn put_eventually(endpoint: &str, key: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = async {
            let mut c = etcd_client::Client::connect([endpoint], None).await.ok()?;
            c.put(key, value, None).await.ok()
        };
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(3), attempt).await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no write acknowledged through {endpoint}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A serializable (local) read of `key` on one member.
async fn local_value(endpoint: &str, key: &str) -> Option<Vec<u8>> {
    let mut c = etcd_client::Client::connect([endpoint], None).await.ok()?;
    let r = c
        .get(key, Some(GetOptions::new().with_serializable()))
        .await
        .ok()?;
    r.kvs().first().map(|kv| kv.value().to_vec())
}

/// Waits until `endpoint` has applied `key` = `value` locally.
async fn wait_local(endpoint: &str, key: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while local_value(endpoint, key).await.as_deref() != Some(value.as_bytes()) {
        assert!(Instant::now() < deadline, "{endpoint} never applied {key}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn three_members_replicate_and_serve_linearizable_reads_anywhere() {
    let cluster = Cluster::start(3).await;
    // A write through each member (followers forward to the leader) ...
    for (i, m) in cluster.members.iter().enumerate() {
        let mut c = m.client().await;
        c.put(format!("k{i}"), format!("v{i}"), None).await.unwrap();
    }
    // ... is visible to a linearizable read on every member at once.
    for m in &cluster.members {
        let mut c = m.client().await;
        let r = c
            .get("k", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        assert_eq!(r.kvs().len(), 3, "on {}", m.endpoint());
        assert_eq!(r.header().unwrap().revision(), 4);
    }
    // etcdctl against all endpoints: one leader, the same raft index everywhere after a write.
    let all = cluster.endpoints().join(",");
    let out = etcdctl_at(&all, &["endpoint", "status", "-w", "table"], None);
    let table = stdout(&out);
    assert_eq!(table.matches(" true |").count(), 1, "{table}");
    // Every member lists every member with the client URL it published.
    for m in &cluster.members {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let list = stdout(&etcdctl_at(&m.endpoint(), &["member", "list"], None));
            let published = cluster
                .members
                .iter()
                .all(|o| list.contains(&format!("{}, http://{}", o.peer_url(), o.endpoint())));
            if list.lines().count() == 3 && published {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "member list on {}:\n{list}",
                m.endpoint()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test]
async fn leader_failover_keeps_every_acknowledged_write() {
    let mut cluster = Cluster::start(3).await;
    let mut c = cluster.client().await;
    for i in 0..50 {
        c.put(format!("before/{i}"), "v", None).await.unwrap();
    }
    let leader = cluster.leader().await;
    cluster.members[leader].kill9();
    let survivor = (leader + 1) % 3;
    let started = Instant::now();
    put_eventually(&cluster.members[survivor].endpoint(), "after", "1").await;
    let failover = started.elapsed();
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    let mut c = cluster.members[survivor].client().await;
    let r = c
        .get(
            "before/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(r.count(), 50);
    // The old leader comes back as a follower and catches up from the log.
    cluster.members[leader].restart().await;
    wait_local(&cluster.members[leader].endpoint(), "after", "1").await;
    assert_eq!(cluster.leader().await, new_leader);
    wait_identical(&cluster).await;
}

#[tokio::test]
async fn a_minority_never_acknowledges_a_write() {
    let mut cluster = Cluster::start(3).await;
    let mut c = cluster.client().await;
    c.put("k", "majority", None).await.unwrap();
    let leader = cluster.leader().await;
    // Cut the leader off from both followers by stopping them.
    for i in 0..3 {
        if i != leader {
            cluster.members[i].kill9();
        }
    }
    let lone = cluster.members[leader].endpoint();
    let mut c = cluster.members[leader].client().await;
    let write = tokio::time::timeout(Duration::from_secs(15), c.put("k", "minority", None)).await;
    assert!(
        !matches!(write, Ok(Ok(_))),
        "a lone member acknowledged a write: {write:?}"
    );
    // Within an election timeout the cut-off leader steps down (check-quorum).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = etcd_client::Client::connect([lone.as_str()], None)
            .await
            .unwrap();
        let s = c.status().await.unwrap();
        if s.leader() == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "isolated leader kept leading");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Without a leader raft refuses the proposal: the write fails at once, not after a timeout.
    let started = Instant::now();
    let refused = c.put("k", "leaderless", None).await.unwrap_err();
    assert_eq!(
        common::status(refused),
        (tonic::Code::Unavailable, "etcdserver: no leader".into())
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let (code, body) = common::http_get(&lone, "/health").await;
    assert_eq!((code, body.as_str()), (503, "{\"health\":\"false\"}\n"));
    let (code, body) = common::http_get(&lone, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("[-]linearizable_read failed"), "{body}");
    // The majority returns: writes are acknowledged again.
    for i in 0..3 {
        if i != leader {
            cluster.members[i].restart().await;
        }
    }
    put_eventually(&lone, "k", "again").await;
    let (code, body) = common::http_get(&lone, "/health").await;
    assert_eq!((code, body.as_str()), (200, r#"{"health":"true"}"#));
    let (code, body) = common::http_get(&lone, "/readyz").await;
    assert_eq!((code, body.lines().last()), (200, Some("ok")), "{body}");
}

#[tokio::test]
async fn five_members_survive_losing_two_including_the_leader() {
    let mut cluster = Cluster::start(5).await;
    let leader = cluster.leader().await;
    cluster.members[leader].kill9();
    cluster.members[(leader + 1) % 5].kill9();
    let survivor = cluster.members[(leader + 2) % 5].endpoint();
    put_eventually(&survivor, "k", "v").await;
    for i in 2..5 {
        wait_local(&cluster.members[(leader + i) % 5].endpoint(), "k", "v").await;
    }
}

#[tokio::test]
async fn a_member_of_another_cluster_is_refused() {
    // m2 was bootstrapped with another token: its ids, and its cluster id, differ.
    let cluster = Cluster::spawn_with(3, |i| {
        if i == 2 {
            vec!["--initial-cluster-token=other".to_string()]
        } else {
            Vec::new()
        }
    });
    cluster.members[0].wait_ready().await;
    cluster.members[1].wait_ready().await;
    put_eventually(&cluster.members[0].endpoint(), "k", "v").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.members[2].log().contains("another cluster") {
        assert!(
            Instant::now() < deadline,
            "m2 log:\n{}",
            cluster.members[2].log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(local_value(&cluster.members[2].endpoint(), "k").await, None);
}

/// A keep-alive right after a grant answered by another member finds the lease even when the
/// leader has not applied the grant yet (found by `keel bench lease-keepalive` on 3 members, where
/// the busy leader answered "lease not found"); etcd's leader also waits for its apply first.
#[tokio::test]
async fn a_keep_alive_right_after_a_grant_through_a_follower_finds_the_lease() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = |i: usize| cluster.members[(leader + i) % 3].endpoint();
    let mut granter = etcd_client::Client::connect([follower(1)], None)
        .await
        .unwrap();
    let mut renewer = etcd_client::Client::connect([follower(2)], None)
        .await
        .unwrap();
    // The leader applies everything 300 ms late; the followers answer grants as soon as they
    // have applied them, and forward keep-alives to the leader.
    cluster.members[leader].slow_apply(Duration::from_millis(300));
    tokio::time::sleep(Duration::from_millis(200)).await;
    for round in 0..3 {
        let lease = granter.lease_grant(60, None).await.unwrap().id();
        let renewed = renewer.lease_keep_alive(lease).await;
        assert!(renewed.is_ok(), "round {round}: {:?}", renewed.err());
    }
    cluster.members[leader].slow_apply(Duration::ZERO);
}

#[tokio::test]
async fn leases_work_through_followers_and_survive_leader_failover() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = cluster.members[(leader + 1) % 3].endpoint();
    let mut c = etcd_client::Client::connect([follower.as_str()], None)
        .await
        .unwrap();
    let lease = c.lease_grant(3, None).await.unwrap().id();
    c.put(
        "held",
        "v",
        Some(etcd_client::PutOptions::new().with_lease(lease)),
    )
    .await
    .unwrap();
    // Keep-alives sent to a follower reach the leader's lessor: the key outlives its TTL.
    let (mut keeper, _responses) = c.lease_keep_alive(lease).await.unwrap();
    for _ in 0..10 {
        keeper.keep_alive().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ttl = c
        .lease_time_to_live(
            lease,
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await
        .unwrap();
    assert_eq!((ttl.granted_ttl(), ttl.keys().len()), (3, 1));
    assert!(ttl.ttl() >= 1, "remaining {}", ttl.ttl());
    drop(keeper);
    // The leader dies; the new leader's lessor takes over with a full TTL, then expires the lease,
    // and every surviving member deletes the key.
    cluster.members[leader].kill9();
    let survivors: Vec<String> = (1..3)
        .map(|i| cluster.members[(leader + i) % 3].endpoint())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    for s in &survivors {
        while local_value(s, "held").await.is_some() {
            assert!(Instant::now() < deadline, "lease never expired on {s}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Every key-value (with its revisions) a member holds, read locally, and its store revision.
async fn local_state(endpoint: &str) -> (i64, Vec<common::FullKv>) {
    let mut c = etcd_client::Client::connect([endpoint], None)
        .await
        .unwrap();
    let opts = GetOptions::new().with_all_keys().with_serializable();
    let r = c.get("", Some(opts)).await.unwrap();
    (r.header().unwrap().revision(), common::full_kvs(&r))
}

/// Waits until every running member holds the same keys at the same revisions.
async fn wait_identical(cluster: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut states = Vec::new();
        for e in cluster.endpoints() {
            states.push(local_state(&e).await);
        }
        if states.windows(2).all(|w| w[0] == w[1]) {
            // HashKV at that revision agrees too (etcd's way of checking members agree).
            let rev = states[0].0;
            let mut hashes = Vec::new();
            for e in cluster.endpoints() {
                let mut c = etcd_client::Client::connect([e], None).await.unwrap();
                hashes.push(c.hash_kv(rev).await.unwrap().hash());
            }
            assert!(
                hashes.windows(2).all(|w| w[0] == w[1]),
                "hashkv differ: {hashes:?}"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "members disagree: revisions {:?}",
            states.iter().map(|s| s.0).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_member_down_through_log_compactions_catches_up_by_snapshot() {
    let mut cluster = Cluster::spawn_with(3, |_| vec!["--snapshot-count=500".to_string()]);
    for m in &cluster.members {
        m.wait_ready().await;
    }
    let leader = cluster.leader().await;
    let down = (leader + 1) % 3;
    cluster.members[down].kill9();
    // Far more entries than the log keeps behind the applied index (5,000), with several
    // compaction rounds on the members that stay up.
    let c = cluster.client().await;
    let mut writers = Vec::new();
    for w in 0..40 {
        let mut c = c.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..250 {
                c.put(format!("bulk/{w}/{i}"), "v", None).await.unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    cluster.members[down].restart().await;
    wait_local(&cluster.members[down].endpoint(), "bulk/39/249", "v").await;
    // The log it missed was compacted: it must have caught up by snapshot.
    cluster.members[down]
        .wait_log("snapshot installed", Duration::from_secs(5))
        .await;
    let mut c = etcd_client::Client::connect([cluster.members[down].endpoint()], None)
        .await
        .unwrap();
    let r = c
        .get(
            "bulk/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_count_only()
                    .with_serializable(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(r.count(), 10_000);
    wait_identical(&cluster).await;
}

/// Cuts a 3-member cluster's leader off from both followers, in both directions. Returns its index
/// and every member's id.
async fn isolate_leader(cluster: &Cluster) -> (usize, Vec<u64>) {
    let leader = cluster.leader().await;
    let mut ids = Vec::new();
    for m in &cluster.members {
        ids.push(m.id().await);
    }
    let others: Vec<u64> = (0..3).filter(|&i| i != leader).map(|i| ids[i]).collect();
    cluster.members[leader].cut_off_from(&others);
    for i in (0..3).filter(|&i| i != leader) {
        cluster.members[i].cut_off_from(&[ids[leader]]);
    }
    // Members read the fault file every 100 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    (leader, ids)
}

#[tokio::test]
async fn a_partitioned_leader_steps_down_and_its_writes_are_never_acknowledged() {
    let cluster = Cluster::start(3).await;
    let mut c = cluster.client().await;
    c.put("k", "before", None).await.unwrap();
    let (leader, ids) = isolate_leader(&cluster).await;
    let isolated = cluster.members[leader].endpoint();
    let mut lone = cluster.members[leader].client().await;
    let write =
        tokio::time::timeout(Duration::from_secs(10), lone.put("k", "minority", None)).await;
    assert!(
        !matches!(write, Ok(Ok(_))),
        "a partitioned leader acknowledged a write: {write:?}"
    );
    // It stepped down (check-quorum), while the majority elected a leader and goes on.
    let s = lone.status().await.unwrap();
    assert_ne!(s.leader(), ids[leader], "the isolated member still leads");
    let majority = (0..3).find(|&i| i != leader).unwrap();
    put_eventually(&cluster.members[majority].endpoint(), "k", "majority").await;
    // Healed: the old leader follows and has the majority's history, not its own write.
    for m in &cluster.members {
        m.cut_off_from(&[]);
    }
    wait_local(&isolated, "k", "majority").await;
    wait_identical(&cluster).await;
}

#[tokio::test]
async fn a_partitioned_leader_renews_no_lease() {
    let cluster = Cluster::start(3).await;
    let mut c = cluster.client().await;
    let lease = c.lease_grant(60, None).await.unwrap().id();
    let (leader, _) = isolate_leader(&cluster).await;
    // The isolated member still believes it leads for up to two election timeouts; the majority
    // elects a leader whose lessor keeps its own deadlines. A renewal the deposed leader
    // acknowledged would not hold there: it must confirm its leadership with a quorum first.
    let mut lone = cluster.members[leader].client().await;
    let renewal = tokio::time::timeout(Duration::from_secs(15), lone.lease_keep_alive(lease)).await;
    assert!(
        !matches!(renewal, Ok(Ok(_))),
        "a partitioned leader renewed a lease"
    );
    // The majority's leader renews it.
    let majority = (0..3).find(|&i| i != leader).unwrap();
    put_eventually(&cluster.members[majority].endpoint(), "k", "v").await;
    let mut m = etcd_client::Client::connect([cluster.members[majority].endpoint()], None)
        .await
        .unwrap();
    let renewed = m.lease_keep_alive(lease).await;
    assert!(renewed.is_ok(), "{:?}", renewed.err());
}

#[tokio::test]
async fn a_data_dir_refuses_another_clusters_token() {
    let mut m = common::Member::start().await;
    m.stop();
    m.set_flags(&["--initial-cluster-token=another-cluster"]);
    m.start_process();
    let exit = m.wait_exit(Duration::from_secs(10));
    assert!(
        exit.is_some_and(|s| !s.success()),
        "it must refuse to start"
    );
    assert!(m.log().contains("refusing to start"), "{}", m.log());
    // With its own token it starts again.
    m.set_flags(&[]);
    m.restart().await;
}

#[tokio::test]
async fn a_cleanly_restarted_member_rejoins() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    assert!(cluster.members[follower].stop().success());
    put_eventually(&cluster.members[leader].endpoint(), "while-down", "1").await;
    cluster.members[follower].restart().await;
    wait_local(&cluster.members[follower].endpoint(), "while-down", "1").await;
    // And the leader's stream to it keeps flowing after the restart.
    put_eventually(&cluster.members[leader].endpoint(), "after-restart", "2").await;
    wait_local(&cluster.members[follower].endpoint(), "after-restart", "2").await;
}

#[tokio::test]
async fn move_leader_hands_leadership_to_the_chosen_member() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let target = (leader + 1) % 3;
    let target_id = {
        let mut c = cluster.members[target].client().await;
        c.status().await.unwrap().header().unwrap().member_id()
    };
    // etcdctl finds the leader among the endpoints and asks it.
    let all = cluster.endpoints().join(",");
    let out = etcdctl_at(&all, &["move-leader", &format!("{target_id:x}")], None);
    assert!(stdout(&out).contains("Leadership transferred"), "{out:?}");
    assert_eq!(cluster.leader().await, target);
    // Only the leader may move leadership, and only to a member.
    let other = (target + 1) % 3;
    let mut c = cluster.members[other].client().await;
    let err = c.move_leader(target_id).await.unwrap_err();
    assert_eq!(
        common::status(err),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: not leader".into()
        )
    );
    let mut c = cluster.members[target].client().await;
    let err = c.move_leader(12345).await.unwrap_err();
    assert_eq!(
        common::status(err),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: bad leader transferee".into()
        )
    );
    // Writes keep working under the new leader.
    put_eventually(&cluster.members[other].endpoint(), "after-move", "1").await;
}

#[tokio::test]
async fn a_linearizable_read_in_flight_when_the_leader_dies_is_answered_by_the_next() {
    let mut cluster = Cluster::start(3).await;
    let mut c = cluster.client().await;
    c.put("k", "v", None).await.unwrap();
    let leader = cluster.leader().await;
    let follower = cluster.members[(leader + 1) % 3].endpoint();
    let mut reader = etcd_client::Client::connect([follower.as_str()], None)
        .await
        .unwrap();
    cluster.members[leader].kill9();
    // The follower still believes in the dead leader: its ReadIndex request is lost and must be
    // sent again to whoever leads next.
    let started = Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(6), reader.get("k", None))
        .await
        .expect("read answered before the request timeout")
        .unwrap();
    assert_eq!(read.kvs()[0].value(), b"v");
    assert!(started.elapsed() < Duration::from_secs(6));
}

/// `keel members -w json` against `endpoint`.
fn members_json(endpoint: &str) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["members", "-w", "json", &format!("--endpoints={endpoint}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Under a steady write load, healthy followers are a few entries behind at any moment: their lag
/// as a time is the age of the oldest entry they lack (well under a second), not the time since
/// they last had every entry, and they read active in every sample.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_followers_under_load_show_a_small_lag_and_stay_active() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let mut c = cluster.members[leader].client().await;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.put(format!("load/{w}/{i}"), "v", None).await.unwrap();
                i += 1;
            }
            i
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let endpoint = cluster.members[leader].endpoint();
    for _ in 0..15 {
        let v = members_json(&endpoint);
        for m in v["members"].as_array().unwrap() {
            if m["role"] == "leader" {
                continue;
            }
            assert_eq!(m["active"], true, "{v}");
            let lag = m["lag_ms"].as_u64().unwrap();
            assert!(lag < 1000, "a healthy follower shows {lag} ms of lag: {v}");
            assert_eq!(m["state"], "ready", "{v}");
            assert!(m["applied_index"].as_u64().unwrap() > 0, "{v}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut written = 0;
    for w in writers {
        written += w.await.unwrap();
    }
    assert!(written > 100, "only {written} writes: no load");
}

/// The leader's view of member `id` through the admin API (fast enough to sample a bootstrap).
async fn replica(endpoint: &str, id: u64) -> keel_rpc::admin::MemberReplication {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let r = keel_rpc::admin::admin_client::AdminClient::new(ch)
        .members(keel_rpc::admin::MembersRequest {})
        .await
        .unwrap()
        .into_inner();
    r.members.into_iter().find(|m| m.id == id).unwrap()
}

/// Samples member `id` until `done` holds for a sample (at most `within`); every sample.
async fn sample_until(
    endpoint: &str,
    id: u64,
    within: Duration,
    done: impl Fn(&keel_rpc::admin::MemberReplication) -> bool,
) -> Vec<keel_rpc::admin::MemberReplication> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let m = replica(endpoint, id).await;
        let finished = done(&m);
        seen.push(m);
        if finished {
            return seen;
        }
        let last = seen.last().unwrap();
        assert!(
            Instant::now() < deadline,
            "still {} ({}) after {within:?}: {last:?}",
            last.state,
            last.reason
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A learner bootstrapping a 256 MiB snapshot, seen from the leader: connecting until it
/// answers, in error with the reason while it cannot store the snapshot, bootstrapping with a
/// progress that rises through the transfer (first half) and the installation (second half),
/// ready with its applied index once it keeps up, in error while an alarm is raised for it, and
/// disconnected once it is killed. `keel members` and `/metrics` show the same states.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_bootstrapping_a_large_snapshot_shows_each_state_and_its_progress() {
    use rand::RngCore;
    const VALUES: usize = 256;
    let cluster = Cluster::start(1).await;
    let leader = &cluster.members[0];
    let endpoint = leader.endpoint();
    // Incompressible values, so the image is as large on disk as in the store.
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut c = leader.client().await;
        writers.push(tokio::spawn(async move {
            let mut value = vec![0u8; 1024 * 1024];
            for i in (w..VALUES).step_by(4) {
                rand::thread_rng().fill_bytes(&mut value);
                c.put(format!("big/{i:04}"), value.clone(), None)
                    .await
                    .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }

    let mut learner = cluster.joiner("m1", &[]);
    let mut c = leader.client().await;
    let id = common::add_learner(&mut c, &learner.peer_url()).await;
    let leader_id = leader.id().await;
    let m = replica(&endpoint, id).await;
    assert_eq!(
        (m.role.as_str(), m.state.as_str()),
        ("learner", "connecting"),
        "{m:?}"
    );

    // Started cut off from the leader, it is still connecting; meanwhile its snapshot directory
    // becomes a file, as a broken disk would leave it.
    learner.cut_off_from(&[leader_id]);
    learner.start_process();
    learner.wait_serving().await;
    assert_eq!(replica(&endpoint, id).await.state, "connecting");
    let snap = learner.data_dir().join("member").join("snap");
    std::fs::remove_dir_all(&snap).unwrap();
    std::fs::write(&snap, b"").unwrap();
    learner.cut_off_from(&[]);
    let seen = sample_until(&endpoint, id, Duration::from_secs(20), |m| {
        m.state == "error"
    })
    .await;
    let failed = seen.last().unwrap();
    assert!(failed.reason.contains("Not a directory"), "{failed:?}");
    let v = members_json(&endpoint);
    let shown = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "learner")
        .unwrap();
    if shown["state"] == "error" {
        assert!(
            shown["reason"].as_str().unwrap().contains("snapshot"),
            "{v}"
        );
    }

    // Repaired, it bootstraps; sampled until it is ready.
    std::fs::remove_file(&snap).unwrap();
    std::fs::create_dir(&snap).unwrap();
    let seen = sample_until(&endpoint, id, Duration::from_secs(120), |m| {
        m.state == "ready"
    })
    .await;
    let boot: Vec<_> = seen.iter().filter(|m| m.state == "bootstrapping").collect();
    let progress: Vec<f64> = boot.iter().map(|m| m.bootstrap_progress).collect();
    let mut distinct = progress.clone();
    distinct.dedup();
    eprintln!(
        "bootstrap progress, {} samples: {distinct:.3?}",
        progress.len()
    );
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress went back: {progress:?}"
    );
    let rising =
        |range: std::ops::Range<f64>| distinct.iter().filter(|p| range.contains(p)).count();
    assert!(
        rising(0.000001..0.5) >= 3,
        "transfer progress not seen rising: {distinct:?}"
    );
    assert!(
        rising(0.500001..1.0) >= 2,
        "install progress not seen rising: {distinct:?}"
    );
    let sent = boot.iter().map(|m| m.snapshot_bytes_total).max().unwrap();
    assert!(sent >= (VALUES as u64) << 20, "a {sent}-byte snapshot");
    assert!(
        boot.iter()
            .any(|m| m.snapshot_records_total >= VALUES as u64),
        "no install record count: {boot:?}"
    );
    let ready = seen.last().unwrap();
    assert!(ready.active && ready.lag_entries < 10, "{ready:?}");
    // It reports the index it applied: everything the leader had when it was added.
    let ready = sample_until(&endpoint, id, Duration::from_secs(5), |m| {
        m.applied_index >= m.matched_index && m.matched_index > 0
    })
    .await;
    assert!(ready.last().unwrap().applied_index > VALUES as u64);
    let (code, metrics) = common::http_get(&endpoint, "/metrics").await;
    assert_eq!(code, 200);
    let state_line =
        format!("keel_raft_member_state{{member=\"{id:x}\",name=\"m1\",state=\"ready\"}} 1");
    assert!(metrics.contains(&state_line), "{metrics}");
    assert!(
        metrics.contains("keel_raft_member_applied_index{"),
        "{metrics}"
    );

    // An alarm raised for it is an error with the alarm as the reason, until disarmed.
    use etcd_client::{AlarmAction, AlarmOptions, AlarmType};
    let alarm = |action| {
        let mut c = c.clone();
        async move {
            let mut options = AlarmOptions::new();
            options.with_member(id);
            c.alarm(action, AlarmType::Nospace, Some(options))
                .await
                .unwrap();
        }
    };
    alarm(AlarmAction::Activate).await;
    let m = replica(&endpoint, id).await;
    assert_eq!(
        (m.state.as_str(), m.reason.as_str()),
        ("error", "alarm NOSPACE raised")
    );
    alarm(AlarmAction::Deactivate).await;
    sample_until(&endpoint, id, Duration::from_secs(5), |m| {
        m.state == "ready"
    })
    .await;

    learner.kill9();
    let seen = sample_until(&endpoint, id, Duration::from_secs(10), |m| {
        m.state == "disconnected"
    })
    .await;
    assert!(!seen.last().unwrap().active);
    let table = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["members", &format!("--endpoints={endpoint}")])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("disconnected: no answer within the election timeout"),
        "{table}"
    );
}

#[tokio::test]
async fn keel_members_shows_roles_progress_and_lag() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let down = (leader + 1) % 3;
    let asked = (leader + 2) % 3;
    let down_id = format!("{:x}", cluster.members[down].id().await);
    cluster.members[down].kill9();
    let mut c = cluster.members[asked].client().await;
    for i in 0..100 {
        c.put(format!("k{i}"), "v", None).await.unwrap();
    }
    // A follower answers with the leader's view.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = members_json(&cluster.members[asked].endpoint());
        let members = v["members"].as_array().unwrap();
        assert_eq!(members.len(), 3);
        let roles: Vec<&str> = members
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles.iter().filter(|r| **r == "leader").count(), 1);
        let lagging = members.iter().find(|m| m["id"] == down_id).unwrap();
        // The status is a snapshot of a running cluster: the live follower is caught up in most
        // samples, not necessarily in each (the leader's own entries, e.g. lease syncs, pass by).
        let up = members
            .iter()
            .find(|m| m["role"] == "follower" && m["id"] != down_id)
            .unwrap();
        if lagging["lag_entries"].as_u64().unwrap() >= 100
            && !lagging["active"].as_bool().unwrap()
            && lagging["progress"] == "probing"
            && up["lag_entries"] == 0
            && lagging["lag_ms"].as_u64().unwrap() > 0
            && lagging["state"] == "disconnected"
            && up["state"] == "ready"
        {
            // The leader's /metrics says the same.
            let (code, metrics) =
                common::http_get(&cluster.members[leader].endpoint(), "/metrics").await;
            assert_eq!(code, 200);
            let line = metrics
                .lines()
                .find(|l| {
                    l.starts_with("keel_raft_member_lag_entries")
                        && l.contains(&format!("member=\"{down_id}\""))
                })
                .unwrap_or_else(|| panic!("no lag metric for {down_id}:\n{metrics}"));
            let lag: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            assert!(lag >= 100, "{line}");
            assert!(metrics.contains("etcd_server_is_leader 1"), "{metrics}");
            assert_eq!(up["progress"], "replicating");
            assert_eq!(up["active"], true);
            break;
        }
        assert!(Instant::now() < deadline, "lag never showed: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Back up, it catches up and the lag goes.
    cluster.members[down].restart().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = members_json(&cluster.members[leader].endpoint());
        let m = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == down_id)
            .cloned()
            .unwrap();
        if m["lag_entries"] == 0 && m["lag_ms"] == 0 && m["active"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "lag never cleared: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let table = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "members",
            &format!("--endpoints={}", cluster.members[down].endpoint()),
        ])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("ID"), "{table}");
    for m in &cluster.members {
        assert!(table.contains(&m.name), "{table}");
    }
}

#[tokio::test]
async fn leader_kill_under_concurrent_writes_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3).await;
    let endpoints = cluster.endpoints();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let endpoints = endpoints.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Each writer talks to one member at a time and moves on when it fails.
                let endpoint = &endpoints[(w + i) % endpoints.len()];
                let key = format!("w{w}/{i}");
                let put = async {
                    let mut c = etcd_client::Client::connect([endpoint.as_str()], None)
                        .await
                        .ok()?;
                    c.put(key.as_str(), "v", None).await.ok()
                };
                if let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(2), put).await {
                    acked.push(key);
                }
                i += 1;
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leader = cluster.leader().await;
    cluster.members[leader].kill9();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(
        acked.len() > 100,
        "too few writes acknowledged: {}",
        acked.len()
    );
    cluster.members[leader].restart().await;
    wait_identical(&cluster).await;
    let (_, state) = local_state(&cluster.members[leader].endpoint()).await;
    let keys: std::collections::HashSet<Vec<u8>> = state.into_iter().map(|kv| kv.0).collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|k| !keys.contains(k.as_bytes()))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}

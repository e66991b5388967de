//! Membership changes on a running cluster of real `keel` processes, driven by `etcdctl member` and
//! the `etcd-client` crate: a learner joins with --initial-cluster-state=existing, catches up,
//! serves only serializable reads, is promoted; a member is removed and stops; bad requests get
//! etcd's errors.

mod common;

use std::time::{Duration, Instant};

use common::{status, stderr, stdout, Cluster};
use etcd_client::{GetOptions, MemberAddOptions};

/// Waits until `endpoint` has applied `key` = `value` locally.
async fn wait_local(endpoint: &str, key: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let read = async {
            let mut c = etcd_client::Client::connect([endpoint], None).await.ok()?;
            let opts = GetOptions::new().with_serializable();
            let r = c.get(key, Some(opts)).await.ok()?;
            r.kvs().first().map(|kv| kv.value().to_vec())
        };
        if read.await.as_deref() == Some(value.as_bytes()) {
            return;
        }
        assert!(Instant::now() < deadline, "{endpoint} never applied {key}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The id of the member with `peer_url`, from a member list.
async fn id_of(c: &mut etcd_client::Client, peer_url: &str) -> etcd_client::Member {
    let list = c.member_list().await.unwrap();
    list.members()
        .iter()
        .find(|m| m.peer_urls().iter().any(|u| u == peer_url))
        .cloned()
        .unwrap_or_else(|| panic!("no member at {peer_url}"))
}

#[tokio::test]
async fn a_learner_joins_catches_up_by_snapshot_is_promoted_and_a_member_is_removed() {
    let mut cluster = Cluster::start(3).await;
    let mut c = cluster.client().await;
    for i in 0..300 {
        c.put(format!("k{i}"), format!("v{i}"), None).await.unwrap();
    }

    let mut learner = cluster.joiner("m3", &[]);
    let peer_url = learner.peer_url();
    let out = cluster.members[0].etcdctl(&[
        "member",
        "add",
        "m3",
        "--learner",
        &format!("--peer-urls={peer_url}"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{}",
        stdout(&out)
    );
    // etcd allows one learner at a time.
    let second = cluster.joiner("m4", &[]);
    let err = c
        .member_add(
            [second.peer_url()],
            Some(MemberAddOptions::new().with_is_learner()),
        )
        .await
        .unwrap_err();
    assert_eq!(
        status(err),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: too many learner members in cluster".into()
        )
    );

    learner.start_process();
    learner.wait_serving().await;
    wait_local(&learner.endpoint(), "k299", "v299").await;
    // A joining member starts from a snapshot.
    learner
        .wait_log("snapshot installed", Duration::from_secs(5))
        .await;

    // A learner serves serializable reads only.
    let mut lc = learner.client().await;
    let err = lc.get("k1", None).await.unwrap_err();
    assert_eq!(
        status(err),
        (
            tonic::Code::Unavailable,
            "etcdserver: rpc not supported for learner".into()
        )
    );
    let err = lc.put("k1", "x", None).await.unwrap_err();
    assert_eq!(
        status(err),
        (
            tonic::Code::Unavailable,
            "etcdserver: rpc not supported for learner".into()
        )
    );
    let m = id_of(&mut c, &peer_url).await;
    assert!(m.is_learner());
    // Once it serves, it publishes its name and client URLs.
    let deadline = Instant::now() + Duration::from_secs(10);
    while id_of(&mut c, &peer_url).await.name() != "m3" {
        assert!(
            Instant::now() < deadline,
            "the learner never published its name"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Promote it (through any member: a follower forwards to the leader). Until its log has 90%
    // of the leader's, etcd refuses, and so does Keel: a user asks again.
    let id = format!("{:x}", m.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = cluster.members[1].etcdctl(&["member", "promote", &id]);
        if out.status.success() {
            break;
        }
        assert!(
            stderr(&out).contains("can only promote a learner member which is in sync with leader")
                && Instant::now() < deadline,
            "{}",
            stderr(&out)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The member `c` reads from lists it as a voter once it has applied the promotion (etcd 3.4
    // serves the member list from the member's own state too).
    let deadline = Instant::now() + Duration::from_secs(5);
    while id_of(&mut c, &peer_url).await.is_learner() {
        assert!(Instant::now() < deadline, "the promotion never showed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = cluster.members[1].etcdctl(&["member", "promote", &id]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("etcdserver: can only promote a learner member"),
        "{}",
        stderr(&out)
    );
    // Now a voter: it serves writes and linearizable reads.
    let mut lc = learner.client().await;
    lc.put("promoted", "yes", None).await.unwrap();
    let r = lc.get("promoted", None).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"yes");

    // Remove an original member, the leader if one of them leads, asking another member: the
    // removed member stops, the other three go on at once (the leader hands over first).
    let mut ids = Vec::new();
    for m in &cluster.members {
        ids.push(m.id().await);
    }
    let leader = cluster.members[0]
        .client()
        .await
        .status()
        .await
        .unwrap()
        .leader();
    let gone_at = ids.iter().position(|id| *id == leader).unwrap_or(2);
    let gone = ids[gone_at];
    let asked = (gone_at + 1) % 3;
    let out = cluster.members[asked].etcdctl(&["member", "remove", &format!("{gone:x}")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let exit = cluster.members[gone_at].wait_exit(Duration::from_secs(15));
    assert!(
        exit.is_some_and(|s| !s.success()),
        "a removed member stops with an error"
    );
    cluster.members[gone_at]
        .wait_log(
            "permanently removed from the cluster",
            Duration::from_secs(1),
        )
        .await;
    if gone == leader {
        // It handed leadership over before leaving.
        cluster.members[gone_at]
            .wait_log("leadership transfer starting", Duration::from_secs(1))
            .await;
    }
    let stay = (gone_at + 1) % 3;
    let mut c =
        etcd_client::Client::connect([cluster.members[stay].endpoint(), learner.endpoint()], None)
            .await
            .unwrap();
    let list = c.member_list().await.unwrap();
    assert_eq!(list.members().len(), 3);
    assert!(list.members().iter().all(|m| m.id() != gone));
    c.put("after-remove", "ok", None).await.unwrap();
    wait_local(&learner.endpoint(), "after-remove", "ok").await;
}

#[tokio::test]
async fn bad_membership_requests_get_etcds_errors() {
    let cluster = Cluster::start(3).await;
    let mut c = cluster.client().await;
    // Joining without `member add` first is refused with a pointer to what to do.
    let mut stranger = cluster.joiner("stranger", &[]);
    stranger.start_process();
    let exit = stranger.wait_exit(Duration::from_secs(10));
    assert!(
        exit.is_some_and(|s| !s.success()),
        "an unknown member joined"
    );
    assert!(
        stranger
            .log()
            .contains("add this member with `etcdctl member add` first"),
        "{}",
        stranger.log()
    );
    let taken = cluster.members[1].peer_url();
    let err = c.member_add([taken], None).await.unwrap_err();
    assert_eq!(
        status(err),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: Peer URLs already exists".into()
        )
    );
    let err = c.member_add(["not a url"], None).await.unwrap_err();
    assert_eq!(
        status(err),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: given member URLs are invalid".into()
        )
    );
    let err = c.member_remove(0x1234).await.unwrap_err();
    assert_eq!(
        status(err),
        (tonic::Code::NotFound, "etcdserver: member not found".into())
    );
    let voter = cluster.members[0].id().await;
    let err = c.member_promote(voter).await.unwrap_err();
    assert_eq!(
        status(err),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: can only promote a learner member".into()
        )
    );
    // Voters that never start: two fit (3 started of 5 is a quorum), a third would not.
    let ghosts: Vec<u64> = {
        let mut ids = Vec::new();
        for port in [1, 2] {
            let r = c
                .member_add([format!("http://127.0.0.2:{port}")], None)
                .await
                .unwrap();
            ids.push(r.member().unwrap().id());
        }
        ids
    };
    let err = c
        .member_add(["http://127.0.0.2:3"], None)
        .await
        .unwrap_err();
    assert_eq!(
        status(err),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: re-configuration failed due to not enough started members".into()
        )
    );
    for id in ghosts {
        c.member_remove(id).await.unwrap();
    }
    // MemberList is served from what the answering member applied (as etcd 3.4's); a linearizable
    // one waits until it has applied both removals.
    for m in &cluster.members {
        let (code, text) = common::http_post(
            &m.endpoint(),
            "/v3/cluster/member/list",
            r#"{"linearizable":true}"#,
        )
        .await;
        assert_eq!(code, 200, "{text}");
        let list: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(list["members"].as_array().unwrap().len(), 3, "{list}");
    }

    // MemberUpdate changes the peer URLs every member lists (the member's own URL stays first, so
    // its peers still reach it).
    let url = "http://127.0.0.1:1".to_string();
    let id = cluster.members[0].id().await;
    let old = cluster.members[0].peer_url();
    c.member_update(id, [old.clone(), url.clone()])
        .await
        .unwrap();
    for m in &cluster.members {
        let mut mc = m.client().await;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let list = mc.member_list().await.unwrap();
            let listed = list
                .members()
                .iter()
                .any(|m| m.id() == id && m.peer_urls().contains(&url));
            if listed {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never listed the update",
                m.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    c.member_update(id, [old]).await.unwrap();
    c.put("still", "works", None).await.unwrap();
}

/// Every member added catches up, however soon after another: the leader does not reuse a
/// snapshot made before the new member was added (raft refuses a snapshot whose membership does
/// not name its receiver, so that member would wait forever).
#[tokio::test]
async fn members_added_one_after_another_each_catch_up() {
    let mut cluster = Cluster::start(1).await;
    let mut c = cluster.client().await;
    c.put("k", "v", None).await.unwrap();
    for name in ["m1", "m2"] {
        let mut joiner = cluster.joiner(name, &[]);
        // Until the previous joiner has published its name it does not count as started.
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Err(e) = c.member_add([joiner.peer_url()], None).await {
            assert!(Instant::now() < deadline, "{e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        joiner.start_process();
        wait_local(&joiner.endpoint(), "k", "v").await;
        cluster.members.push(joiner);
    }
    // Each wrote through and read back: a quorum of three.
    c.put("after", "both", None).await.unwrap();
    wait_local(&cluster.members[2].endpoint(), "after", "both").await;
}

//! The real `etcdctl` (Debian's etcd-client package) against a real `keel` process.

mod common;

use common::{stderr, stdout, Member};

#[tokio::test]
async fn etcdctl_put_get_del_txn_compact() {
    let m = Member::start().await;
    assert_eq!(stdout(&m.etcdctl(&["put", "foo", "bar"])).trim(), "OK");
    assert_eq!(stdout(&m.etcdctl(&["put", "foo", "baz"])).trim(), "OK");
    assert_eq!(stdout(&m.etcdctl(&["put", "fob", "1"])).trim(), "OK");
    assert_eq!(stdout(&m.etcdctl(&["get", "foo"])), "foo\nbaz\n");
    assert_eq!(stdout(&m.etcdctl(&["get", "foo", "--rev=2"])), "foo\nbar\n");
    assert_eq!(
        stdout(&m.etcdctl(&["get", "fo", "--prefix", "--keys-only"])),
        "fob\n\nfoo\n\n"
    );
    assert_eq!(
        stdout(&m.etcdctl(&[
            "get",
            "fo",
            "--prefix",
            "--limit=1",
            "--sort-by=MODIFY",
            "--order=DESCEND"
        ])),
        "fob\n1\n"
    );
    let json = stdout(&m.etcdctl(&["get", "foo", "-w", "json"]));
    assert!(
        json.contains("\"revision\":4") && json.contains("\"version\":2"),
        "{json}"
    );

    let txn = m.etcdctl_stdin(
        &["txn"],
        "value(\"foo\") = \"baz\"\n\nput result yes\n\nput result no\n\n",
    );
    assert_eq!(stdout(&txn), "SUCCESS\n\nOK\n");
    assert_eq!(
        stdout(&m.etcdctl(&["get", "result", "--print-value-only"])),
        "yes\n"
    );

    assert_eq!(stdout(&m.etcdctl(&["del", "fo", "--prefix"])).trim(), "2");
    assert_eq!(stdout(&m.etcdctl(&["get", "fo", "--prefix"])), "");
    assert_eq!(
        stdout(&m.etcdctl(&["compact", "3"])).trim(),
        "compacted revision 3"
    );
    let old = m.etcdctl(&["get", "foo", "--rev=2"]);
    assert!(!old.status.success());
    assert!(
        stderr(&old).contains("etcdserver: mvcc: required revision has been compacted"),
        "{}",
        stderr(&old)
    );
    let empty = m.etcdctl(&["put", "", "x"]);
    assert!(stderr(&empty).contains("etcdserver: key is not provided"));
}

#[tokio::test]
async fn etcdctl_endpoint_status_health_and_member_list() {
    let m = Member::start().await;
    m.etcdctl(&["put", "a", "1"]);
    let health = m.etcdctl(&["endpoint", "health"]);
    assert!(health.status.success());
    assert!(stderr(&health).contains("is healthy") || stdout(&health).contains("is healthy"));

    let status = stdout(&m.etcdctl(&["endpoint", "status", "-w", "json"]));
    // One member: it leads, and the raft index has the leader's empty entry plus the put.
    let id = {
        let list = stdout(&m.etcdctl(&["member", "list"]));
        let fields: Vec<&str> = list.trim().split(", ").collect();
        assert_eq!(fields[1], "started");
        assert_eq!(fields[2], "m1");
        assert_eq!(fields[3], format!("http://127.0.0.1:{}", m.peer_port));
        assert_eq!(fields[4], format!("http://127.0.0.1:{}", m.port));
        assert_eq!(fields[5], "false");
        u64::from_str_radix(fields[0], 16).unwrap()
    };
    assert!(status.contains(&format!("\"leader\":{id}")), "{status}");
    // The election's empty entry, the member's published attributes, the put: all applied.
    let field = |name: &str| -> u64 {
        let at = status.find(&format!("\"{name}\":")).unwrap() + name.len() + 3;
        status[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(field("raftIndex") >= 2, "{status}");
    assert_eq!(field("raftIndex"), field("raftAppliedIndex"), "{status}");
    assert!(status.contains("\"revision\":2"), "{status}");
}

#[tokio::test]
async fn etcdctl_maintenance_defrag_alarms_and_refused_requests() {
    let m = Member::start().await;
    for i in 0..50 {
        m.etcdctl(&["put", &format!("k{i}"), "v"]);
    }
    let defrag = m.etcdctl(&["defrag"]);
    assert!(defrag.status.success(), "{}", stderr(&defrag));
    assert!(
        stdout(&defrag).contains("Finished defragmenting"),
        "{}",
        stdout(&defrag)
    );
    let fields = stdout(&m.etcdctl(&["get", "k", "--prefix", "--keys-only", "-w", "fields"]));
    assert_eq!(
        fields.lines().find(|l| l.starts_with("\"Count\"")),
        Some("\"Count\" : 50"),
        "{fields}"
    );
    let alarms = m.etcdctl(&["alarm", "list"]);
    assert!(alarms.status.success());
    assert_eq!(stdout(&alarms), "");
    // A transfer to a member that does not exist is refused; the member keeps serving.
    let moved = m.etcdctl(&["move-leader", "1"]);
    assert!(!moved.status.success());
    assert_eq!(
        stdout(&m.etcdctl(&["get", "k1", "--print-value-only"])),
        "v\n"
    );
}

#[tokio::test]
async fn etcdctl_endpoint_hashkv_follows_history() {
    let m = Member::start().await;
    m.etcdctl(&["put", "a", "1"]);
    m.etcdctl(&["put", "b", "2"]);
    let hash_at = |rev: &str| {
        let out = m.etcdctl(&[
            "endpoint",
            "hashkv",
            &format!("--rev={rev}"),
            "-w",
            "fields",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
            .lines()
            .find_map(|l| l.strip_prefix("\"Hash\" : "))
            .unwrap_or_else(|| panic!("{}", stdout(&out)))
            .to_string()
    };
    let before = hash_at("3");
    let whole = |m: &Member| {
        let out = m.etcdctl(&["endpoint", "hash", "-w", "fields"]);
        assert!(out.status.success(), "{}", stderr(&out));
        // Only the hash: the header's revision changes with every write anyway.
        stdout(&out)
            .lines()
            .find_map(|l| l.strip_prefix("\"Hash\" : ").map(str::to_string))
            .unwrap_or_else(|| panic!("{}", stdout(&out)))
    };
    let whole_before = whole(&m);
    m.etcdctl(&["put", "c", "3"]);
    // The hash of all replicated state follows every write.
    assert_ne!(whole(&m), whole_before);
    // History through revision 3 is unchanged by a later write; the current hash is not.
    assert_eq!(hash_at("3"), before);
    assert_ne!(hash_at("0"), before);
    assert_eq!(
        stdout(&m.etcdctl(&["compact", "3"])).trim(),
        "compacted revision 3"
    );
    let out = m.etcdctl(&["endpoint", "hashkv", "--rev=2"]);
    assert!(
        stderr(&out).contains("required revision has been compacted"),
        "{}",
        stderr(&out)
    );
}

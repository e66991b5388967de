//! Auth (etcd's RBAC) driven by the real `etcdctl` and the HTTP gateway: users, roles and key-range
//! permissions, denied cases with etcd's errors, root-only calls, token expiry, tokens accepted by
//! every member, JWT tokens, and the auth state surviving a kill -9.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{http_post, http_post_as, stderr, stdout, Cluster, Member};

/// Cheap password hashes: the tests hash many.
const FAST_HASH: &str = "--bcrypt-cost=4";

#[track_caller]
fn ok(o: &Output) -> String {
    assert!(o.status.success(), "etcdctl failed: {}", stderr(o));
    stdout(o)
}

#[track_caller]
fn denied(o: &Output, message: &str) {
    assert!(
        !o.status.success(),
        "expected {message:?}, got {}",
        stdout(o)
    );
    assert!(
        stderr(o).contains(message),
        "expected {message:?} in {}",
        stderr(o)
    );
}

/// root (with the root role), alice (readwrite on [a, b), read on z) and bob (no roles); auth on.
fn set_up_users(m: &Member) {
    ok(&m.etcdctl(&["user", "add", "root:rootpw"]));
    ok(&m.etcdctl(&["user", "add", "alice:alicepw"]));
    ok(&m.etcdctl(&["user", "add", "bob:bobpw"]));
    ok(&m.etcdctl(&["role", "add", "app"]));
    ok(&m.etcdctl(&["role", "grant-permission", "app", "readwrite", "a", "b"]));
    ok(&m.etcdctl(&["role", "grant-permission", "app", "read", "z"]));
    ok(&m.etcdctl(&["user", "grant-role", "alice", "app"]));
    // etcdctl adds the root role and grants it to root when enabling finds it missing.
    assert!(ok(&m.etcdctl(&["auth", "enable"])).contains("Authentication Enabled"));
}

#[tokio::test]
async fn etcdctl_permission_matrix() {
    let m = Member::start_with(&[FAST_HASH]).await;
    denied(
        &m.etcdctl(&["auth", "enable"]),
        "etcdserver: root user does not exist",
    );
    ok(&m.etcdctl(&["put", "z", "before"]));
    set_up_users(&m);
    let alice = |args: &[&str]| m.etcdctl(&[&["--user", "alice:alicepw"], args].concat());
    let bob = |args: &[&str]| m.etcdctl(&[&["--user", "bob:bobpw"], args].concat());
    let root = |args: &[&str]| m.etcdctl(&[&["--user", "root:rootpw"], args].concat());

    // No user, a wrong password, a user without roles.
    denied(
        &m.etcdctl(&["put", "a1", "x"]),
        "etcdserver: user name is empty",
    );
    denied(&m.etcdctl(&["get", "z"]), "etcdserver: user name is empty");
    denied(
        &m.etcdctl(&["--user", "alice:nope", "get", "a1"]),
        "etcdserver: authentication failed, invalid user ID or password",
    );
    denied(&bob(&["get", "z"]), "etcdserver: permission denied");

    // alice: read-write inside [a, b), read-only on z, nothing else.
    assert_eq!(ok(&alice(&["put", "a1", "x"])).trim(), "OK");
    assert_eq!(ok(&alice(&["get", "a1", "--print-value-only"])), "x\n");
    assert_eq!(
        ok(&alice(&["get", "a", "--prefix", "--keys-only"])),
        "a1\n\n"
    );
    assert_eq!(ok(&alice(&["get", "z", "--print-value-only"])), "before\n");
    denied(&alice(&["put", "z", "y"]), "etcdserver: permission denied");
    denied(&alice(&["put", "b", "y"]), "etcdserver: permission denied");
    denied(
        &alice(&["get", "", "--prefix"]),
        "etcdserver: permission denied",
    );
    denied(&alice(&["del", "a", "z"]), "etcdserver: permission denied");
    assert_eq!(ok(&alice(&["del", "a1"])).trim(), "1");
    // A txn needs read on its compares and each op's own permission.
    let txn = |who: &[&str], ops: &str| m.etcdctl_stdin(&[who, &["txn"]].concat(), ops);
    let allowed = txn(
        &["--user", "alice:alicepw"],
        "value(\"z\") = \"before\"\n\nput a2 yes\n\n\n",
    );
    assert_eq!(ok(&allowed), "SUCCESS\n\nOK\n");
    denied(
        &txn(
            &["--user", "alice:alicepw"],
            "value(\"z\") = \"before\"\n\nput z no\n\n\n",
        ),
        "etcdserver: permission denied",
    );
    denied(
        &txn(
            &["--user", "alice:alicepw"],
            "value(\"q\") = \"1\"\n\nput a3 no\n\n\n",
        ),
        "etcdserver: permission denied",
    );
    // Watching keys she may not read is refused by canceling the watch, as etcd does.
    let w = alice(&["watch", "q"]);
    assert!(
        stdout(&w)
            .contains("rpc error: code = PermissionDenied desc = etcdserver: permission denied")
            || stderr(&w).contains("permission denied"),
        "{} {}",
        stdout(&w),
        stderr(&w)
    );

    // Auth management, maintenance and membership are for root only; a user may read its own
    // user and its roles.
    denied(&alice(&["user", "list"]), "etcdserver: permission denied");
    denied(
        &alice(&["role", "add", "x"]),
        "etcdserver: permission denied",
    );
    denied(&alice(&["defrag"]), "etcdserver: permission denied");
    denied(
        &alice(&["snapshot", "save", "/dev/null"]),
        "etcdserver: permission denied",
    );
    denied(
        &alice(&["member", "add", "x", "--peer-urls=http://127.0.0.1:1"]),
        "etcdserver: permission denied",
    );
    denied(
        &alice(&["auth", "disable"]),
        "etcdserver: permission denied",
    );
    assert!(ok(&alice(&["user", "get", "alice"])).contains("Roles: app"));
    assert!(ok(&alice(&["role", "get", "app"])).contains("[a, b)"));
    denied(
        &alice(&["user", "get", "bob"]),
        "etcdserver: permission denied",
    );
    assert_eq!(ok(&root(&["user", "list"])), "alice\nbob\nroot\n");
    assert_eq!(ok(&root(&["role", "list"])), "app\nroot\n");
    assert!(ok(&root(&["defrag"])).contains("Finished defragmenting"));
    assert_eq!(ok(&root(&["get", "z", "--print-value-only"])), "before\n");

    // etcd's refusals of auth management.
    denied(
        &root(&["user", "add", "alice:x"]),
        "etcdserver: user name already exists",
    );
    denied(
        &root(&["role", "add", "app"]),
        "etcdserver: role name already exists",
    );
    denied(
        &root(&["user", "delete", "root"]),
        "etcdserver: invalid auth management",
    );
    denied(
        &root(&["user", "revoke-role", "root", "root"]),
        "etcdserver: invalid auth management",
    );
    denied(
        &root(&["user", "grant-role", "bob", "nope"]),
        "etcdserver: role name not found",
    );
    denied(
        &root(&["user", "revoke-role", "bob", "app"]),
        "etcdserver: role is not granted to the user",
    );
    denied(
        &root(&["role", "revoke-permission", "app", "q"]),
        "etcdserver: permission is not granted to the role",
    );
    denied(
        &root(&["user", "get", "carol"]),
        "etcdserver: user name not found",
    );

    denied(
        &root(&["role", "grant-permission", "app", "read", "b", "a"]),
        "etcdserver: invalid auth management",
    );

    // A lease's key names are shown only to who may read them all.
    let granted = ok(&alice(&["lease", "grant", "600"]));
    let lease = granted.split_whitespace().nth(1).unwrap().to_string();
    ok(&alice(&["put", "a9", "x", &format!("--lease={lease}")]));
    assert!(ok(&alice(&["lease", "timetolive", &lease, "--keys"])).contains("a9"));
    ok(&root(&["put", "q", "x", &format!("--lease={lease}")]));
    denied(
        &alice(&["lease", "timetolive", &lease, "--keys"]),
        "etcdserver: permission denied",
    );
    assert!(ok(&alice(&["lease", "timetolive", &lease])).contains("granted with TTL(600s)"));
    // Revoking it would delete q, which alice may not write.
    denied(
        &alice(&["lease", "revoke", &lease]),
        "etcdserver: permission denied",
    );

    // Changes take effect at once: a revoked permission, a deleted role, a new password.
    ok(&root(&["role", "revoke-permission", "app", "z"]));
    denied(&alice(&["get", "z"]), "etcdserver: permission denied");
    ok(&root(&["user", "grant-role", "bob", "app"]));
    assert_eq!(ok(&bob(&["get", "a2", "--print-value-only"])), "yes\n");
    ok(&root(&["role", "delete", "app"]));
    denied(&bob(&["get", "a2"]), "etcdserver: permission denied");
    ok(&m.etcdctl_stdin(
        &[
            "--user",
            "root:rootpw",
            "user",
            "passwd",
            "bob",
            "--interactive=false",
        ],
        "newpw\n",
    ));
    denied(
        &bob(&["get", "a2"]),
        "etcdserver: authentication failed, invalid user ID or password",
    );

    // Disabling: anyone may write again.
    ok(&root(&["auth", "disable"]));
    assert_eq!(ok(&m.etcdctl(&["put", "z", "after"])).trim(), "OK");
}

/// A token from the gateway's authenticate, and the HTTP status of its use.
async fn authenticate(endpoint: &str, user: &str, password: &str) -> String {
    let body = format!(r#"{{"name":"{user}","password":"{password}"}}"#);
    let (code, resp) = http_post(endpoint, "/v3/auth/authenticate", &body).await;
    assert_eq!(code, 200, "{resp}");
    let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
    v["token"].as_str().unwrap().to_string()
}

async fn range_with(endpoint: &str, token: &str, key_b64: &str) -> (u16, String) {
    let body = format!(r#"{{"key":"{key_b64}"}}"#);
    http_post_as(endpoint, token, "/v3/kv/range", &body).await
}

#[tokio::test]
async fn simple_tokens_work_on_every_member_expire_and_die_with_password_changes() {
    let c = Cluster::spawn_with(3, |_| vec![FAST_HASH.into(), "--auth-token-ttl=2".into()]);
    for m in &c.members {
        m.wait_ready().await;
    }
    let (m0, m1) = (&c.members[0], &c.members[1]);
    set_up_users(m0);
    // Issued by one member (through raft), accepted by another.
    let token = authenticate(&m0.endpoint(), "alice", "alicepw").await;
    let (code, body) = range_with(&m1.endpoint(), &token, "YTE=").await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = range_with(&m1.endpoint(), &token, "eg==").await;
    assert_eq!(code, 200, "z is readable: {body}");
    let (code, body) = range_with(&m1.endpoint(), &token, "cQ==").await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("etcdserver: permission denied"), "{body}");
    // Unused for longer than --auth-token-ttl: gone, on every member.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    for m in [m0, m1] {
        let (code, body) = range_with(&m.endpoint(), &token, "YTE=").await;
        assert_eq!(code, 401, "{body}");
        assert!(body.contains("etcdserver: invalid auth token"), "{body}");
    }
    // A password change ends the user's tokens at once.
    let token = authenticate(&m1.endpoint(), "alice", "alicepw").await;
    assert_eq!(range_with(&m0.endpoint(), &token, "YTE=").await.0, 200);
    let root = authenticate(&m0.endpoint(), "root", "rootpw").await;
    let (code, body) = http_post_as(
        &m0.endpoint(),
        &root,
        "/v3/auth/user/changepw",
        r#"{"name":"alice","password":"other"}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = range_with(&m0.endpoint(), &token, "YTE=").await;
    assert_eq!(code, 401, "{body}");
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl must be installed");
    assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
}

#[tokio::test]
async fn jwt_tokens_are_verified_by_signature_and_go_stale_with_auth_changes() {
    let keys = tempfile::tempdir().unwrap();
    openssl(keys.path(), &["genrsa", "-out", "priv.pem", "2048"]);
    openssl(
        keys.path(),
        &["rsa", "-in", "priv.pem", "-pubout", "-out", "pub.pem"],
    );
    let spec = format!(
        "--auth-token=jwt,pub-key={},priv-key={},sign-method=RS256,ttl=10m",
        keys.path().join("pub.pem").display(),
        keys.path().join("priv.pem").display()
    );
    let mut m = Member::start_with(&[FAST_HASH, &spec]).await;
    set_up_users(&m);
    assert_eq!(
        ok(&m.etcdctl(&["--user", "alice:alicepw", "put", "a1", "jwt"])).trim(),
        "OK"
    );
    let token = authenticate(&m.endpoint(), "alice", "alicepw").await;
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    assert_eq!(range_with(&m.endpoint(), &token, "YTE=").await.0, 200);
    // Tampering breaks the signature.
    let mut forged = token.clone();
    forged.insert(forged.len() - 2, 'x');
    assert_eq!(range_with(&m.endpoint(), &forged, "YTE=").await.0, 401);
    // Nothing is stored: the token outlives a restart, until the auth state changes.
    m.kill9();
    m.restart().await;
    assert_eq!(range_with(&m.endpoint(), &token, "YTE=").await.0, 200);
    ok(&m.etcdctl(&["--user", "root:rootpw", "role", "add", "other"]));
    let (code, body) = range_with(&m.endpoint(), &token, "YTE=").await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("etcdserver: revision of auth store is old"),
        "{body}"
    );
}

#[tokio::test]
async fn auth_state_survives_kill_9() {
    let mut m = Member::start_with(&[FAST_HASH]).await;
    set_up_users(&m);
    m.kill9();
    m.restart().await;
    denied(
        &m.etcdctl(&["put", "a1", "x"]),
        "etcdserver: user name is empty",
    );
    assert_eq!(
        ok(&m.etcdctl(&["--user", "alice:alicepw", "put", "a1", "x"])).trim(),
        "OK"
    );
    denied(
        &m.etcdctl(&["--user", "alice:alicepw", "put", "z", "x"]),
        "etcdserver: permission denied",
    );
    let (code, body) = http_post(&m.endpoint(), "/v3/auth/status", "{}").await;
    assert_eq!(code, 200);
    // Raising an alarm stops every write: root only.
    let raise = r#"{"action":"ACTIVATE","memberID":"1","alarm":"NOSPACE"}"#;
    let (code, resp) = http_post(&m.endpoint(), "/v3/maintenance/alarm", raise).await;
    assert_eq!(code, 400, "{resp}");
    assert!(resp.contains("etcdserver: user name is empty"), "{resp}");
    assert!(body.contains("\"enabled\":true"), "{body}");
    // A snapshot is for root only; `keel snapshot save --user` authenticates.
    let file = m.data_dir().with_file_name("backup.db");
    let save = |user: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["snapshot", "save"])
            .arg(&file)
            .arg(format!("--endpoints={}", m.endpoint()))
            .args(user)
            .output()
            .unwrap()
    };
    let anonymous = save(&[]);
    assert!(!anonymous.status.success());
    assert!(
        stderr(&anonymous).contains("user name is empty"),
        "{}",
        stderr(&anonymous)
    );
    let root = save(&["--user=root:rootpw"]);
    assert!(root.status.success(), "{}", stderr(&root));
    assert!(std::fs::metadata(&file).unwrap().len() > 0);
}

#[tokio::test]
async fn locks_and_elections_need_permission_on_their_keys() {
    let m = Member::start_with(&[FAST_HASH]).await;
    set_up_users(&m);
    // alice may use names under [a, b), bob nothing.
    let lock = m.etcdctl(&["--user", "alice:alicepw", "lock", "alock", "echo", "held"]);
    assert_eq!(ok(&lock).lines().last(), Some("held"));
    denied(
        &m.etcdctl(&["--user", "bob:bobpw", "lock", "alock", "echo", "held"]),
        "etcdserver: permission denied",
    );
    denied(
        &m.etcdctl(&["--user", "bob:bobpw", "elect", "-l", "aelection"]),
        "etcdserver: permission denied",
    );
}

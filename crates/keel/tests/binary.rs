//! The `keel` binary's command line: etcd's flags, defaults, and refusals.

use std::process::Command;

#[test]
fn unimplemented_etcd_flags_are_refused_by_name() {
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("--heartbeat-interval=100")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--heartbeat-interval"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("--no-such-flag")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
}

#[test]
fn bootstrap_mistakes_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .current_dir(dir.path())
        .args([
            "--name=a",
            "--initial-advertise-peer-urls=http://127.0.0.1:1",
            "--listen-client-urls=http://127.0.0.1:0",
            "--initial-cluster-state=existing",
        ])
        .arg("--initial-cluster=a=http://127.0.0.1:1,b=http://127.0.0.1:2")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("could not get the member list from the cluster"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .current_dir(dir.path())
        .args([
            "--name=nobody",
            "--initial-cluster=a=http://127.0.0.1:1",
            "--listen-client-urls=http://127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("couldn't find local name"));
}

#[test]
fn default_data_dir_is_name_dot_keel_in_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .current_dir(dir.path())
        .env("ETCD_LISTEN_CLIENT_URLS", "http://127.0.0.1:0")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !dir.path().join("default.keel/member/raft").exists()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(dir.path().join("default.keel/member/kv").exists());
    assert!(dir.path().join("default.keel/member/raft").exists());
}

//! The `keel` binary's command line: etcd's flags, defaults, and refusals.

mod common;

use std::process::Command;

/// Runs `keel` with `args` until it exits; its exit status and stderr.
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn flags_keel_does_not_serve_are_refused_with_etcds_words_or_a_reason() {
    let (code, err) = refused(&["--heartbeat-interval=300", "--election-timeout=1000"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(
            "--election-timeout[1000ms] should be at least as 5 times as --heartbeat-interval[300ms]"
        ),
        "{err}"
    );
    let (code, err) = refused(&["--enable-v2"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("does not serve the v2 API"), "{err}");
    let (code, err) = refused(&["--proxy=readonly"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("keel grpc-proxy start"), "{err}");
    let (code, err) = refused(&["--listen-client-urls=http://127.0.0.1:0"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(
            "--advertise-client-urls is required when --listen-client-urls is set explicitly"
        ),
        "{err}"
    );
    let (code, err) = refused(&["--listen-peer-urls=http://example.com:2380"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("expected IP in URL for binding"), "{err}");
    let (code, err) = refused(&["--experimental-enable-lease-checkpoint-persist"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("experimental-enable-lease-checkpoint-persist requires experimental-enable-lease-checkpoint"),
        "{err}"
    );
    let (code, err) = refused(&[
        "--experimental-enable-distributed-tracing",
        "--experimental-distributed-tracing-sampling-rate=1000001",
    ]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("tracing sampling rate must be less than 1000000"),
        "{err}"
    );
    let (code, err) = refused(&["--no-such-flag"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--no-such-flag"), "{err}");
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
            "--advertise-client-urls=http://127.0.0.1:0",
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
            "--advertise-client-urls=http://127.0.0.1:0",
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
        .env("ETCD_ADVERTISE_CLIENT_URLS", "http://127.0.0.1:0")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&dir.path().join("default.keel/member/raft"));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(dir.path().join("default.keel/member/kv").exists());
    assert!(dir.path().join("default.keel/member/raft").exists());
}

/// Threads named `tokio-rt-worker` in a `keel` member started with `worker_env` (None: unset), once
/// it has created its data dir.
fn member_workers(worker_env: Option<&str>) -> usize {
    let mut member = common::Member::new("default", &[]);
    member.set_env("TOKIO_WORKER_THREADS", worker_env);
    member.start_process();
    wait_for(&member.data_dir().join("member/raft"));
    let pid = member.pid().unwrap();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "tokio-rt-worker")
        .count()
}

/// The raft driver and apply loop have threads of their own, so a member serves requests on a
/// worker per core but one; TOKIO_WORKER_THREADS overrides it as GOMAXPROCS does for etcd.
#[test]
fn a_member_has_a_worker_per_core_but_one_unless_told() {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    assert_eq!(member_workers(None), cores.saturating_sub(1).max(1));
    assert_eq!(member_workers(Some("3")), 3);
}

/// Waits up to 10 s for `path` to exist (a starting member creates its data dir first).
fn wait_for(path: &std::path::Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !path.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

//! A `keel` process started with flags of the test's own (not the harness's member flags), for
//! tests of how etcd's flags, variables and config file start a member.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `keel` process, killed when dropped; its stderr goes to `keel.log` in its directory.
pub struct Proc {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Proc {
    /// Starts `keel args` in a new directory (its working directory) with `env` set.
    pub fn start(args: &[String], env: &[(&str, &str)]) -> Proc {
        Self::start_in(tempfile::tempdir().unwrap(), args, env)
    }

    /// As `start`, in `dir`.
    pub fn start_in(dir: tempfile::TempDir, args: &[String], env: &[(&str, &str)]) -> Proc {
        Self::start_under(&[], dir, args, env)
    }

    /// As `start_in`, with `keel args` run by `wrapper` (`wrapper... keel args...`), which must
    /// exec it (so the child is keel itself).
    pub fn start_under(
        wrapper: &[String],
        dir: tempfile::TempDir,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Proc {
        let log = std::fs::File::create(dir.path().join("keel.log")).unwrap();
        let keel = env!("CARGO_BIN_EXE_keel");
        let mut cmd = match wrapper.split_first() {
            None => Command::new(keel),
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(keel);
                cmd
            }
        };
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .current_dir(dir.path())
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc {
            child: Some(child),
            dir,
        }
    }

    /// A path in the process's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("keel.log")).unwrap_or_default()
    }

    /// Waits for etcd's readiness lines, as etcd's e2e suite and operators do.
    pub fn wait_ready(&mut self) {
        self.wait_log("published local member to cluster through raft");
        assert!(self.log().contains("enabled capabilities for version"));
    }

    /// Waits until the log holds `text` (panics if the process exits first).
    pub fn wait_log(&mut self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.log();
            if log.contains(text) {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("keel exited with {status} before logging {text:?}; log:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "keel never logged {text:?}; log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit by itself; its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGTERM, and wait for it to stop.
    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status()
                .unwrap();
            let _ = c.wait_with_output();
        }
    }
}

/// The flags of a one-member cluster at fresh ports: (flags, client endpoint host:port).
pub fn member_flags(name: &str) -> (Vec<String>, String) {
    let (client, peer) = (super::free_port(), super::free_port());
    let endpoint = format!("127.0.0.1:{client}");
    let flags = vec![
        format!("--name={name}"),
        format!("--listen-client-urls=http://{endpoint}"),
        format!("--advertise-client-urls=http://{endpoint}"),
        format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-cluster={name}=http://127.0.0.1:{peer}"),
    ];
    (flags, endpoint)
}

/// Whether `dir` holds a RocksDB database.
pub fn is_rocksdb(dir: &Path) -> bool {
    dir.join("CURRENT").exists()
}

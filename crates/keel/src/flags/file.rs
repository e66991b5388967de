//! etcd's YAML configuration file (`--config-file`, keys as in etcd's `etcd.conf.yml.sample`),
//! read into the same flags the command line sets: each key becomes `--key=value`, the
//! `client-transport-security` and `peer-transport-security` sections their flags, lists
//! comma-joined, durations written as nanoseconds (as etcd's file has them) kept as such. The
//! file replaces the command line and the ETCD_* variables, as in etcd.

use std::path::Path;

use serde_yaml::Value;

/// `client-transport-security` / `peer-transport-security` keys and the flags they set.
const CLIENT_SECURITY: &[(&str, &str)] = &[
    ("cert-file", "cert-file"),
    ("key-file", "key-file"),
    ("client-cert-auth", "client-cert-auth"),
    ("trusted-ca-file", "trusted-ca-file"),
    ("auto-tls", "auto-tls"),
    ("crl-file", "client-crl-file"),
    ("allowed-hostname", "client-cert-allowed-hostname"),
];
const PEER_SECURITY: &[(&str, &str)] = &[
    ("cert-file", "peer-cert-file"),
    ("key-file", "peer-key-file"),
    ("client-cert-auth", "peer-client-cert-auth"),
    ("trusted-ca-file", "peer-trusted-ca-file"),
    ("auto-tls", "peer-auto-tls"),
    ("crl-file", "peer-crl-file"),
    ("allowed-cn", "peer-cert-allowed-cn"),
    ("allowed-hostname", "peer-cert-allowed-hostname"),
    (
        "skip-client-san-verification",
        "experimental-peer-skip-client-san-verification",
    ),
];
/// Keys whose values are Go durations, written in the file as nanoseconds.
const DURATIONS: &[&str] = &[
    "backend-batch-interval",
    "grpc-keepalive-min-time",
    "grpc-keepalive-interval",
    "grpc-keepalive-timeout",
    "experimental-corrupt-check-time",
    "experimental-compact-hash-check-time",
    "experimental-watch-progress-notify-interval",
    "experimental-warning-apply-duration",
    "experimental-warning-unary-request-duration",
    "experimental-compaction-sleep-interval",
    "experimental-downgrade-check-time",
    "experimental-wait-cluster-ready-timeout",
];

/// The flags the file at `path` sets (each `--key=value`), and the keys it has that are no
/// flag of etcd's (ignored, as etcd ignores them; the caller logs them).
pub fn args_from_config_file(path: &Path) -> Result<(Vec<String>, Vec<String>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let doc: Value =
        serde_yaml::from_str(&text).map_err(|e| format!("error converting YAML to JSON: {e}"))?;
    let mut args = Vec::new();
    let mut unknown = Vec::new();
    let Value::Mapping(map) = doc else {
        if doc.is_null() {
            return Ok((args, unknown));
        }
        return Err(format!(
            "{}: expected a mapping of etcd's keys",
            path.display()
        ));
    };
    for (key, value) in map {
        let Some(key) = key.as_str() else { continue };
        match key {
            "client-transport-security" => {
                section(&value, CLIENT_SECURITY, &mut args, &mut unknown)?
            }
            "peer-transport-security" => section(&value, PEER_SECURITY, &mut args, &mut unknown)?,
            "config-file" => unknown.push(key.to_string()),
            _ => push(&mut args, key, &value)?,
        }
    }
    Ok((args, unknown))
}

fn section(
    value: &Value,
    keys: &[(&str, &str)],
    args: &mut Vec<String>,
    unknown: &mut Vec<String>,
) -> Result<(), String> {
    let Value::Mapping(map) = value else {
        return Ok(());
    };
    for (key, value) in map {
        let Some(key) = key.as_str() else { continue };
        match keys.iter().find(|(k, _)| *k == key) {
            Some((_, flag)) => push(args, flag, value)?,
            None => unknown.push(key.to_string()),
        }
    }
    Ok(())
}

fn push(args: &mut Vec<String>, flag: &str, value: &Value) -> Result<(), String> {
    let text = match value {
        Value::Null => return Ok(()),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) if DURATIONS.contains(&flag) => format!("{n}ns"),
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.is_empty() => return Ok(()),
        Value::String(s) => s.clone(),
        Value::Sequence(items) => items
            .iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(","),
        Value::Mapping(_) | Value::Tagged(_) => {
            return Err(format!("config file key {flag:?}: expected a value"))
        }
    };
    args.push(format!("--{flag}={text}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcds_sample_keys_become_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etcd.conf.yml");
        std::fs::write(
            &path,
            r#"
name: 'e1'
data-dir: /var/lib/etcd
heartbeat-interval: 100
listen-peer-urls: http://localhost:2380
initial-cluster-state: 'new'
wal-dir:
cors:
enable-v2: false
grpc-keepalive-min-time: 5000000000
cipher-suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384]
client-transport-security:
  cert-file: /c.pem
  client-cert-auth: true
  auto-tls: false
peer-transport-security:
  allowed-cn: m1
  future-key: 1
"#,
        )
        .unwrap();
        let (args, unknown) = args_from_config_file(&path).unwrap();
        assert_eq!(
            args,
            vec![
                "--name=e1",
                "--data-dir=/var/lib/etcd",
                "--heartbeat-interval=100",
                "--listen-peer-urls=http://localhost:2380",
                "--initial-cluster-state=new",
                "--enable-v2=false",
                "--grpc-keepalive-min-time=5000000000ns",
                "--cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                "--cert-file=/c.pem",
                "--client-cert-auth=true",
                "--auto-tls=false",
                "--peer-cert-allowed-cn=m1",
            ]
        );
        assert_eq!(unknown, vec!["future-key"]);
    }
}

//! `keel members`: every member's replication state (role, state, indexes, lag, bootstrap
//! progress), from the leader, as a table or JSON.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use keel_rpc::admin::admin_client::AdminClient;
use keel_rpc::admin::{MemberReplication, MembersRequest, MembersResponse};

/// Output format.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    /// An aligned table.
    Table,
    /// One JSON document.
    Json,
}

/// Options of `keel members`.
#[derive(Args, Debug)]
pub struct MembersArgs {
    /// Client endpoints to ask (the first that answers is used).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    endpoints: Vec<String>,
    /// Output format.
    #[arg(short = 'w', long = "write-out", value_enum, default_value = "table")]
    write_out: Format,
}

/// Runs `keel members`.
pub async fn run(args: MembersArgs) -> anyhow::Result<()> {
    let r = fetch(&args.endpoints).await?;
    let out = match args.write_out {
        Format::Table => table(&r),
        Format::Json => json(&r).to_string(),
    };
    println!("{out}");
    Ok(())
}

async fn fetch(endpoints: &[String]) -> anyhow::Result<MembersResponse> {
    let mut last = None;
    for e in endpoints {
        let url = if e.contains("://") {
            e.clone()
        } else {
            format!("http://{e}")
        };
        let attempt = async {
            let ch = tonic::transport::Endpoint::from_shared(url.clone())?
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(5))
                .connect()
                .await?;
            let r = AdminClient::new(ch).members(MembersRequest {}).await?;
            anyhow::Ok(r.into_inner())
        };
        match attempt.await {
            Ok(r) => return Ok(r),
            Err(e) => last = Some(e.context(url)),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no endpoint given")))
        .context("asking for the members' replication state")
}

fn lag_time(m: &MemberReplication) -> String {
    humantime::format_duration(Duration::from_millis(m.lag_ms)).to_string()
}

fn last_contact(m: &MemberReplication) -> String {
    match m.last_contact_ms {
        ms if ms < 0 => "-".into(),
        ms => format!("{}ms ago", ms),
    }
}

/// The state, with the bootstrap's progress or the reason where there is one.
fn state(m: &MemberReplication) -> String {
    match m.state.as_str() {
        "bootstrapping" => format!("bootstrapping {:.0}%", m.bootstrap_progress * 100.0),
        "error" | "disconnected" if !m.reason.is_empty() => format!("{}: {}", m.state, m.reason),
        _ => m.state.clone(),
    }
}

fn snapshot(m: &MemberReplication) -> String {
    if m.state != "bootstrapping" || m.snapshot_index == 0 {
        return "-".into();
    }
    let mut out = format!(
        "index {}, {}/{} bytes",
        m.snapshot_index, m.snapshot_bytes_sent, m.snapshot_bytes_total
    );
    if m.snapshot_records_total > 0 {
        out += &format!(
            ", {}/{} records",
            m.snapshot_records_installed, m.snapshot_records_total
        );
    }
    out
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.into()
    }
}

fn table(r: &MembersResponse) -> String {
    let header = [
        "ID",
        "NAME",
        "ROLE",
        "STATE",
        "RAFT",
        "MATCHED",
        "APPLIED",
        "LAG",
        "LAG TIME",
        "LAST CONTACT",
        "SNAPSHOT",
    ];
    let rows: Vec<Vec<String>> = r
        .members
        .iter()
        .map(|m| {
            vec![
                format!("{:x}", m.id),
                m.name.clone(),
                m.role.clone(),
                state(m),
                or_dash(&m.progress),
                m.matched_index.to_string(),
                m.applied_index.to_string(),
                m.lag_entries.to_string(),
                lag_time(m),
                last_contact(m),
                snapshot(m),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(header.to_vec())];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out.push(format!(
        "leader {:x}, term {}, last index {}, commit index {}",
        r.leader_id, r.term, r.last_index, r.commit_index
    ));
    out.join("\n")
}

fn json(r: &MembersResponse) -> serde_json::Value {
    let members: Vec<serde_json::Value> = r
        .members
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": format!("{:x}", m.id),
                "name": m.name,
                "peer_urls": m.peer_urls,
                "client_urls": m.client_urls,
                "role": m.role,
                "state": m.state,
                "reason": m.reason,
                "bootstrap_progress": m.bootstrap_progress,
                "progress": m.progress,
                "matched_index": m.matched_index,
                "applied_index": m.applied_index,
                "lag_entries": m.lag_entries,
                "lag_ms": m.lag_ms,
                "last_contact_ms": m.last_contact_ms,
                "active": m.active,
                "snapshot_index": m.snapshot_index,
                "snapshot_bytes_sent": m.snapshot_bytes_sent,
                "snapshot_bytes_total": m.snapshot_bytes_total,
                "snapshot_records_installed": m.snapshot_records_installed,
                "snapshot_records_total": m.snapshot_records_total,
            })
        })
        .collect();
    serde_json::json!({
        "cluster_id": format!("{:x}", r.cluster_id),
        "leader_id": format!("{:x}", r.leader_id),
        "term": r.term,
        "last_index": r.last_index,
        "commit_index": r.commit_index,
        "members": members,
    })
}

//! A Jepsen-style test: concurrent clients read, write, delete and compare-and-swap a few keys on
//! a 3-member cluster of real `keel` processes while a nemesis kills -9 and restarts members and
//! cuts members off (both directions, through the transport's fault hook). Afterwards the history
//! must be linearizable (keel-check), and every acknowledged write must be in every member's
//! history at the revision it was acknowledged with.
//!
//! Replay a run with `SEED=<seed> cargo test --test jepsen`; `JEPSEN_SECS` sets its length.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Cluster;
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use keel_check::{Call, History, Operation, Outcome};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;

const KEYS: [&str; 8] = ["jk0", "jk1", "jk2", "jk3", "jk4", "jk5", "jk6", "jk7"];
const CLIENTS: usize = 4;
const OP_TIMEOUT: Duration = Duration::from_secs(2);

fn seed() -> u64 {
    std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

/// Errors that say the request never entered the raft log (so it had no effect); any other
/// failure of a write leaves its outcome unknown.
fn never_proposed(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            s.message() == "etcdserver: no leader" || s.message().contains("tcp connect error")
        }
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// One client: random operations on random keys through random members until `until`.
async fn client(
    id: usize,
    endpoints: Vec<String>,
    seed: u64,
    start: Instant,
    until: Instant,
    history: Arc<Mutex<History>>,
) -> usize {
    let mut rng = StdRng::seed_from_u64(seed ^ (id as u64).wrapping_mul(0x9e37_79b9));
    let mut last_seen: [Option<String>; KEYS.len()] = Default::default();
    let mut issued = 0;
    while Instant::now() < until {
        let member = &endpoints[rng.gen_range(0..endpoints.len())];
        let k = rng.gen_range(0..KEYS.len());
        let key = KEYS[k];
        let Ok(Ok(mut c)) = tokio::time::timeout(
            Duration::from_millis(500),
            etcd_client::Client::connect([member.as_str()], None),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        issued += 1;
        let value = format!("c{id}-{issued}");
        let roll = rng.gen_range(0..100);
        let call = match roll {
            0..=39 => Call::Get,
            40..=69 => Call::Put(value.clone()),
            70..=79 => Call::Delete,
            _ => Call::Cas {
                expected: last_seen[k].clone(),
                new: value.clone(),
            },
        };
        let invoked = start.elapsed();
        let outcome = match &call {
            Call::Get => tokio::time::timeout(OP_TIMEOUT, c.get(key, None))
                .await
                .ok()
                .and_then(Result::ok)
                .map(|r| {
                    let kv = r.kvs().first().map(|kv| {
                        (
                            String::from_utf8_lossy(kv.value()).into_owned(),
                            kv.mod_revision(),
                        )
                    });
                    last_seen[k] = kv.as_ref().map(|(v, _)| v.clone());
                    Outcome::Read(kv)
                }),
            Call::Put(v) => Some(
                match tokio::time::timeout(OP_TIMEOUT, c.put(key, v.as_str(), None)).await {
                    Ok(Ok(r)) => Outcome::Wrote {
                        revision: r.header().unwrap().revision(),
                        deleted: false,
                    },
                    Ok(Err(e)) if never_proposed(&e) => continue,
                    _ => Outcome::Unknown,
                },
            ),
            Call::Delete => Some(
                match tokio::time::timeout(OP_TIMEOUT, c.delete(key, None)).await {
                    Ok(Ok(r)) => Outcome::Wrote {
                        revision: r.header().unwrap().revision(),
                        deleted: r.deleted() > 0,
                    },
                    Ok(Err(e)) if never_proposed(&e) => continue,
                    _ => Outcome::Unknown,
                },
            ),
            Call::Cas { expected, new } => {
                let check = match expected {
                    Some(v) => Compare::value(key, CompareOp::Equal, v.as_str()),
                    None => Compare::create_revision(key, CompareOp::Equal, 0),
                };
                let txn = Txn::new()
                    .when([check])
                    .and_then([TxnOp::put(key, new.as_str(), None)]);
                Some(match tokio::time::timeout(OP_TIMEOUT, c.txn(txn)).await {
                    Ok(Ok(r)) => Outcome::Cas {
                        swapped: r.succeeded(),
                        revision: r.header().unwrap().revision(),
                    },
                    Ok(Err(e)) if never_proposed(&e) => continue,
                    _ => Outcome::Unknown,
                })
            }
        };
        // A failed read had no effect: it is left out of the history.
        if let Some(outcome) = outcome {
            history.lock().await.push(Operation {
                client: id,
                key: key.to_string(),
                call,
                invoked,
                completed: start.elapsed(),
                outcome,
            });
        }
    }
    issued
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_under_kills_and_partitions_are_linearizable() {
    let seed = seed();
    let secs: u64 = std::env::var("JEPSEN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    eprintln!("jepsen: SEED={seed} JEPSEN_SECS={secs}");
    let mut cluster = Cluster::start(3).await;
    let mut ids = Vec::new();
    for m in &cluster.members {
        ids.push(m.id().await);
    }
    let endpoints = cluster.endpoints();
    let history = Arc::new(Mutex::new(History::default()));
    let start = Instant::now();
    let until = start + Duration::from_secs(secs);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(client(
                i,
                endpoints.clone(),
                seed,
                start,
                until,
                history.clone(),
            ))
        })
        .collect();

    // The nemesis: one fault at a time, so a majority can always make progress.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults = Vec::new();
    while Instant::now() + Duration::from_secs(3) < until {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1000))).await;
        let victim = rng.gen_range(0..cluster.members.len());
        if rng.gen_bool(0.5) {
            faults.push(format!("kill -9 m{victim}"));
            cluster.members[victim].kill9();
            tokio::time::sleep(Duration::from_millis(rng.gen_range(200..1500))).await;
            cluster.members[victim].restart().await;
        } else {
            faults.push(format!("isolate m{victim}"));
            let others: Vec<u64> = ids.iter().copied().filter(|&i| i != ids[victim]).collect();
            cluster.members[victim].cut_off_from(&others);
            for (i, m) in cluster.members.iter().enumerate() {
                if i != victim {
                    m.cut_off_from(&[ids[victim]]);
                }
            }
            tokio::time::sleep(Duration::from_millis(rng.gen_range(500..2000))).await;
            for m in &cluster.members {
                m.cut_off_from(&[]);
            }
        }
    }
    let mut issued = 0;
    for c in clients {
        issued += c.await.unwrap();
    }
    let history = history.lock().await.clone();
    let report = keel_check::check(&history);
    eprintln!(
        "jepsen: seed {seed}: {issued} operations issued, {} recorded on {} keys, faults: {faults:?}",
        report.operations, report.keys
    );
    if !report.ok() {
        // The offending keys' histories, one operation a line, for reading.
        let path = std::env::temp_dir().join(format!("jepsen-{seed}.txt"));
        let mut text = format!("inconclusive: {:?}\n", report.inconclusive);
        for v in &report.violations {
            text.push_str(&format!("key {}\n", v.key));
            for o in &v.operations {
                text.push_str(&format!(
                    "{:>8.3} {:>8.3} c{} {:?} -> {:?}\n",
                    o.invoked.as_secs_f64(),
                    o.completed.as_secs_f64(),
                    o.client,
                    o.call,
                    o.outcome
                ));
            }
        }
        std::fs::write(&path, text).unwrap();
        panic!(
            "not linearizable: keys {:?}, inconclusive {:?}; histories in {} (SEED={seed})",
            report.violations.iter().map(|v| &v.key).collect::<Vec<_>>(),
            report.inconclusive,
            path.display()
        );
    }
    assert!(
        report.operations > 50,
        "too few operations to mean anything"
    );

    // Every acknowledged write is in every member's history, at its revision.
    let acked: Vec<(&str, String, i64)> = history
        .operations
        .iter()
        .filter_map(|o| match (&o.call, &o.outcome) {
            (Call::Put(v), Outcome::Wrote { revision, .. }) => {
                Some((o.key.as_str(), v.clone(), *revision))
            }
            (
                Call::Cas { new, .. },
                Outcome::Cas {
                    swapped: true,
                    revision,
                },
            ) => Some((o.key.as_str(), new.clone(), *revision)),
            _ => None,
        })
        .collect();
    let last = acked.iter().map(|(_, _, r)| *r).max().unwrap_or(0);
    for m in &cluster.members {
        let mut c = m.client().await;
        // Caught up to the last acknowledged write before reading its history.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let opts = GetOptions::new().with_serializable();
            let rev = c
                .get("any", Some(opts))
                .await
                .map(|r| r.header().unwrap().revision());
            if rev.is_ok_and(|r| r >= last) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never caught up",
                m.endpoint()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for (key, value, revision) in &acked {
            let opts = GetOptions::new()
                .with_serializable()
                .with_revision(*revision);
            let r = c.get(*key, Some(opts)).await.unwrap();
            let got = r.kvs().first().map(|kv| kv.value().to_vec());
            assert_eq!(
                got.as_deref(),
                Some(value.as_bytes()),
                "{} lacks acknowledged {key}={value} at revision {revision} (SEED={seed})",
                m.endpoint()
            );
        }
    }
}

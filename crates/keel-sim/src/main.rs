//! Runs many seeds of the deterministic simulation and reports the counts:
//! `cargo run --release -p keel-sim -- --seeds 10000`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use clap::Parser;
use keel_sim::{run, Config};

/// Runs seeds `first..first + seeds` on `jobs` threads.
#[derive(Parser)]
struct Args {
    /// How many seeds.
    #[arg(long, default_value_t = 10_000)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Threads (each runs whole seeds).
    #[arg(long, default_value_t = 2)]
    jobs: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let next = AtomicU64::new(args.first);
    let end = args.first + args.seeds;
    let (runs, ops, events, expiries, messages) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicU64::new(0),
    );
    let failed = Mutex::new(Vec::new());
    let paths = Mutex::new(std::collections::BTreeMap::new());
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..args.jobs.max(1) {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    break;
                }
                let report = run(seed, &Config::for_seed(seed));
                runs.fetch_add(1, Ordering::Relaxed);
                ops.fetch_add(report.linearizability.operations, Ordering::Relaxed);
                events.fetch_add(report.watch_events, Ordering::Relaxed);
                expiries.fetch_add(report.lease_expiries, Ordering::Relaxed);
                messages.fetch_add(report.messages, Ordering::Relaxed);
                {
                    let mut paths = paths.lock().expect("not poisoned");
                    for (path, n) in &report.paths {
                        *paths.entry(*path).or_insert(0) += n;
                    }
                }
                if !report.ok() {
                    let keys: Vec<&str> = report
                        .linearizability
                        .violations
                        .iter()
                        .map(|v| v.key.as_str())
                        .collect();
                    eprintln!(
                        "seed {seed} FAILED: problems {:?}; not linearizable on keys {keys:?}; inconclusive on {:?}\n  replay: SEED={seed} cargo test -p keel-sim --test sim -- --nocapture",
                        report.problems, report.linearizability.inconclusive
                    );
                    failed.lock().expect("not poisoned").push(seed);
                }
                let done = runs.load(Ordering::Relaxed);
                if done.is_multiple_of(100) {
                    eprintln!("{done} runs, {:.0} s", started.elapsed().as_secs_f64());
                }
            });
        }
    });
    let failed = failed.into_inner().expect("not poisoned");
    println!(
        "{} runs (seeds {}..{end}), {} operations checked for linearizability, {} watch events checked, {} lease expiries checked, {} raft messages delivered, paths {:?}, {} violations {:?}, {:.0} s",
        runs.into_inner(),
        args.first,
        ops.into_inner(),
        events.into_inner(),
        expiries.into_inner(),
        messages.into_inner(),
        paths.into_inner().expect("not poisoned"),
        failed.len(),
        failed,
        started.elapsed().as_secs_f64()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} seeds failed", failed.len())
    }
}

//! The deterministic simulation in the normal suite: 200 seeds (3 members for even seeds, 5 for
//! odd), or the one in `SEED`. Ten thousand: `cargo run --release -p keel-sim -- --seeds 10000`.

use keel_sim::{run, Config, Report};

fn describe(r: &Report) -> String {
    format!(
        "seed {}: {} members, {} register operations on {} keys, {} other requests, {} watch events, {} lease expiries, {} messages, every client wrote and read {} ms after the faults settled, {:?}",
        r.seed,
        r.members,
        r.linearizability.operations,
        r.linearizability.keys,
        r.other_requests,
        r.watch_events,
        r.lease_expiries,
        r.messages,
        r.progress_ms,
        r.paths
    )
}

fn assert_ok(r: &Report) {
    assert!(
        r.ok(),
        "{}\nproblems: {:#?}\nnot linearizable: {:#?}\ninconclusive: {:?}\nfaults:\n{}\nreplay: SEED={} cargo test -p keel-sim --test sim -- --nocapture",
        describe(r),
        r.problems,
        r.linearizability.violations,
        r.linearizability.inconclusive,
        r.faults.join("\n"),
        r.seed
    );
}

#[test]
fn seeded_runs_are_linearizable_and_converge() {
    let seeds: Vec<u64> = match std::env::var("SEED") {
        Ok(s) => vec![s.parse().expect("SEED is a number")],
        Err(_) => (0..200).collect(),
    };
    let (mut ops, mut events) = (0, 0);
    for &seed in &seeds {
        let r = run(seed, &Config::for_seed(seed));
        eprintln!("{}", describe(&r));
        if seeds.len() == 1 {
            eprintln!("faults:\n{}", r.faults.join("\n"));
        }
        assert_ok(&r);
        ops += r.linearizability.operations;
        events += r.watch_events;
    }
    eprintln!(
        "{} runs, {ops} operations checked, {events} watch events checked, 0 violations",
        seeds.len()
    );
}

#[test]
fn a_seed_replays_exactly() {
    let cfg = Config {
        active_ms: 3_000,
        ..Config::for_seed(7)
    };
    let (a, b) = (run(7, &cfg), run(7, &cfg));
    assert_ok(&a);
    assert_eq!(a.faults, b.faults);
    assert_eq!(a.linearizability.operations, b.linearizability.operations);
    assert_eq!(a.fingerprint, b.fingerprint, "same seed, different run");
    assert_ne!(
        a.fingerprint,
        run(8, &Config { members: 5, ..cfg }).fingerprint
    );
}

/// Members number their ReadIndex rounds; raft ignores a round whose context is already pending
/// at the leader, so two members' rounds with the same number collided and one waited an election
/// timeout (1 s) for its retry. With no faults no read may wait that long.
#[test]
fn reads_through_every_member_never_wait_for_a_retry() {
    for seed in [1, 2] {
        let cfg = Config {
            faults: false,
            clients: 8,
            ..Config::for_seed(seed)
        };
        let r = run(seed, &cfg);
        assert_ok(&r);
        assert!(
            r.slowest_read_ms < 500,
            "{}: a read took {} ms",
            describe(&r),
            r.slowest_read_ms
        );
    }
}

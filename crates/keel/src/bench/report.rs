//! What a workload measured, and how it is printed (text for people, `--json` for scripts).

use std::collections::BTreeMap;
use std::time::Duration;

/// What a workload measured.
#[derive(Default)]
pub struct Outcome {
    /// Latency of each successful request, in microseconds.
    pub latencies_us: Vec<u64>,
    /// Failed requests by kind (gRPC code and message).
    pub errors: BTreeMap<String, u64>,
    /// Wall time of the measured part.
    pub elapsed: Duration,
    /// CPU time this process used during it (user + system).
    pub cpu: Duration,
    /// A workload's own rate besides requests/s (watch: events/s).
    pub extra: Option<(&'static str, f64)>,
}

impl Outcome {
    /// Counts a failure under its kind.
    pub fn error(&mut self, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
    }
}

/// The kind a failed request is counted under.
pub fn error_kind(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => other.to_string(),
    }
}

/// This process's CPU time so far (user + system).
pub fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Prints the report of workload `name` run by `clients` clients over `conns` connections.
pub fn print(name: &str, clients: usize, conns: usize, json: bool, mut out: Outcome) {
    out.latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        if out.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((out.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        out.latencies_us[i] as f64 / 1000.0
    };
    let ok = out.latencies_us.len();
    let secs = out.elapsed.as_secs_f64().max(1e-9);
    let rps = ok as f64 / secs;
    let cores = out.cpu.as_secs_f64() / secs;
    let failed: u64 = out.errors.values().sum();
    if json {
        let mut v = serde_json::json!({
            "workload": name,
            "clients": clients,
            "conns": conns,
            "ok": ok,
            "errors": failed,
            "errors_by_kind": out.errors,
            "seconds": secs,
            "requests_per_sec": rps,
            "client_cpu_cores": cores,
            "latency_ms": {
                "min": pct(0.0), "p50": pct(0.5), "p90": pct(0.9),
                "p99": pct(0.99), "p999": pct(0.999), "max": pct(1.0),
            },
        });
        if let Some((k, rate)) = out.extra {
            v[k] = serde_json::json!(rate);
        }
        println!("{v}");
        return;
    }
    println!("{name}: {ok} requests ({failed} errors) in {secs:.2}s by {clients} clients over {conns} connections");
    println!("  requests/sec: {rps:.1}");
    if let Some((k, rate)) = out.extra {
        println!("  {}: {rate:.1}", k.replace('_', " "));
    }
    println!(
        "  latency ms: min {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        pct(0.0),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(0.999),
        pct(1.0)
    );
    let of = std::thread::available_parallelism().map_or(1, usize::from);
    let warning = if cores > 0.8 * of as f64 {
        " (nearly all of them: the tool itself limits this run)"
    } else {
        ""
    };
    println!("  client CPU: {cores:.2} of {of} cores{warning}");
    for (kind, n) in &out.errors {
        println!("  error x{n}: {kind}");
    }
}

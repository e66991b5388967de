#!/usr/bin/env python3
"""Turns a compare.sh run's results.jsonl into results.md (a table of Keel/etcd ratios per client:
keel bench's rows, then etcd's Go client's) and throughput.png (gnuplot).
Usage: bench/report.py <results dir>"""
import json
import os
import subprocess
import sys
from collections import OrderedDict

out = sys.argv[1]
rows = [json.loads(line) for line in open(os.path.join(out, "results.jsonl"))]
CLIENTS = OrderedDict([("keel", "keel bench"), ("go", "etcd's Go client (clientv3)")])
runs = OrderedDict((c, OrderedDict()) for c in CLIENTS)  # client -> (members, label) -> system -> runs
extra = []
for r in rows:
    if r["system"] == "disk" or "rss_kib" in r:
        extra.append(r)
        continue
    # Lines from before compare.sh named the client are keel bench's.
    runs.setdefault(r.get("client", "keel"), OrderedDict()).setdefault(
        (r["members"], r["label"]), {}).setdefault(r["system"], []).append(r)


def rate_key(r):
    return "events_per_sec" if "events_per_sec" in r else "requests_per_sec"


def median_run(rs):
    """The run with the median throughput (the lower middle one of an even count)."""
    rs = sorted(rs, key=lambda r: r[rate_key(r)])
    return rs[(len(rs) - 1) // 2]


def round_ratios(by):
    """Keel / etcd throughput of each round both ran."""
    etcd = {r.get("round", 1): r for r in by.get("etcd", [])}
    return [k[rate_key(k)] / max(etcd[k.get("round", 1)][rate_key(k)], 1e-9)
            for k in by.get("keel", []) if k.get("round", 1) in etcd]


rounds = max((len(rs) for cr in runs.values() for by in cr.values() for rs in by.values()), default=1)


def fmt(x):
    return f"{x:,.0f}"


lines = [
    "# Keel vs etcd, side by side",
    "",
    "Same machine, same run, same client (`keel bench`); ratios are Keel / etcd (throughput: higher",
    "is better for Keel; p99: lower is better for Keel). Produced by `bench/compare.sh`.",
    "",
    f"Machine: {os.cpu_count()} cores; etcd: "
    + subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout.splitlines()[0],
    "",
]
if rounds > 1:
    lines += [f"Each workload ran {rounds} times per system, the two taking turns to go first; the table",
              "shows each system's median run and, last, the Keel / etcd ratio of every round.", ""]
chart = []


def table(client, always=False):
    """The table of one client's runs (Keel against etcd, each system's median run); its rows
    also go to the chart, the Go client's marked so."""
    pairs = OrderedDict((key, {s: median_run(rs) for s, rs in by.items()})
                        for key, by in runs.get(client, {}).items())
    out = [
        "| members | workload | Keel req/s | etcd req/s | ratio | Keel p50 / p99 ms | etcd p50 / p99 ms | p99 ratio | client CPU (cores) |"
        + (" rounds |" if rounds > 1 else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if rounds > 1 else ""),
    ]
    for (members, label), by in pairs.items():
        k, e = by.get("keel"), by.get("etcd")
        if not k or not e:
            continue
        key = rate_key(k)
        ratio = k[key] / max(e[key], 1e-9)
        p99 = k["latency_ms"]["p99"] / max(e["latency_ms"]["p99"], 1e-9)
        unit = " events/s" if key == "events_per_sec" else ""
        out.append(
            f"| {members} | {label} | {fmt(k[key])}{unit} | {fmt(e[key])}{unit} | **{ratio:.2f}x** | "
            f"{k['latency_ms']['p50']:.2f} / {k['latency_ms']['p99']:.2f} | "
            f"{e['latency_ms']['p50']:.2f} / {e['latency_ms']['p99']:.2f} | {p99:.2f} | "
            f"{k['client_cpu_cores']:.2f} / {e['client_cpu_cores']:.2f} |"
            + (" " + ", ".join(f"{x:.2f}" for x in round_ratios(runs[client][(members, label)])) + " |" if rounds > 1 else "")
        )
        chart.append((f"{label} ({members}{', Go client' if client == 'go' else ''})", ratio))
    return out if always or len(out) > 2 else []


lines += table("keel", always=True)
for client in runs:
    if client == "keel":
        continue
    rows_of = table(client)
    if not rows_of:
        continue
    lines += ["", f"## Through {CLIENTS.get(client, client)}", "",
              "The same put and range workloads, the same keys, values and concurrency, driven by",
              "bench/gobench.sh: etcd 3.4's clientv3, as Kubernetes' apiserver and most etcd users",
              "talk to etcd (a `clientv3.Client`, one gRPC connection, per `--conns`)."
              if client == "go" else f"The same workloads through the `{client}` client.", ""]
    lines += rows_of
for r in extra:
    if r["system"] == "disk":
        lines += ["", f"Disk fsync floor (append 512 B + fdatasync): p50 {r['latency_ms']['p50']:.3f} ms, "
                  f"p99 {r['latency_ms']['p99']:.3f} ms."]
mem = {r["system"]: r for r in extra if "rss_kib" in r}
if "keel" in mem and "etcd" in mem:
    k, e = mem["keel"], mem["etcd"]
    lines += [
        "",
        "| 1,000,000 keys of 256 B, one member | Keel | etcd | ratio |",
        "|---|---:|---:|---:|",
        f"| RSS after loading | {k['rss_kib'] / 1024:,.0f} MiB | {e['rss_kib'] / 1024:,.0f} MiB | **{k['rss_kib'] / e['rss_kib']:.2f}x** |",
        f"| restart to serving a read | {k['restart_ms'] / 1000:.2f} s | {e['restart_ms'] / 1000:.2f} s | **{k['restart_ms'] / e['restart_ms']:.2f}x** |",
    ]
lines += ["", "![throughput ratios](throughput.png)", ""]
open(os.path.join(out, "results.md"), "w").write("\n".join(lines))

with open(os.path.join(out, "chart.dat"), "w") as f:
    for label, ratio in chart:
        f.write(f'"{label}" {ratio:.3f}\n')
plot = f"""
set terminal pngcairo size 1200,{200 + 40 * len(chart)} font ",11"
set output '{os.path.join(out, "throughput.png")}'
set title 'Keel / etcd throughput (same machine, same client; 1 = parity)'
set style fill solid 0.8
set boxwidth 0.6
set yrange [-0.5:{len(chart) - 0.5}]
set xrange [0:*]
set grid x
set arrow from 1, graph 0 to 1, graph 1 nohead dt 2 lw 2
set key off
plot '{os.path.join(out, "chart.dat")}' using ($2*0.5):0:($2*0.5):(0.3):yticlabels(1) with boxxyerror lc rgb '#2a7ab0', \\
     '' using 2:0:(sprintf(' %.2fx', $2)) with labels left
"""
subprocess.run(["gnuplot"], input=plot, text=True, check=True)

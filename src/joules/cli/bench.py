"""``joules bench``: load generation in MLPerf Inference scenarios, in process or against a V2 server."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from joules.cli.output import info, print_json, print_table


def add_parsers(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("bench", help="benchmark a model in MLPerf scenarios (single-stream, server, offline)")
    p.add_argument("ref", metavar="NAME[:VERSION]")
    p.add_argument("--scenario", choices=["single-stream", "server", "offline"], required=True)
    p.add_argument(
        "--url", help="an Open Inference Protocol V2 server serving NAME (default: the Predictor in process)"
    )
    load = p.add_mutually_exclusive_group()
    load.add_argument("--qps", type=float, help="server: Poisson arrivals at this rate")
    load.add_argument("--find-max-qps", action="store_true", help="server: the highest rate with p99 <= --p99-ms")
    p.add_argument("--p99-ms", type=float, default=50.0, help="latency bound of --find-max-qps (default 50)")
    p.add_argument(
        "--min-qps",
        type=float,
        help="lowest rate --find-max-qps tries; failing there reports no rate (default: BenchConfig.min_qps, 0.5)",
    )
    p.add_argument("--concurrency", type=int, help="closed-loop clients (server), or queries in flight (offline)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of measured load per run (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load first (default 2)")
    p.add_argument("--queries", type=int, help="offline: samples to send (default: every loaded sample)")
    p.add_argument("--data", type=Path, help="texts to send (.jsonl, .csv or lines; default: the model's test split)")
    p.add_argument("--seed", type=int, default=0, help="seed of the arrival times and the sample order")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before an unanswered query is an error")
    p.add_argument("--input-name", default="text", help="the V2 input carrying the text (default: text)")
    p.add_argument("--server-pid", type=int, help="with --url: measure this server process tree's CPU time")
    p.add_argument("--threads", type=int, default=0, help="in process: ONNX Runtime intra-op threads (0: per core)")
    p.add_argument("--max-batch", type=int, default=64, help="in process: rows per model call at most (default 64)")
    p.add_argument(
        "--out", type=Path, help="directory for result.json and the plots (default: $JOULES_HOME/reports/bench/...)"
    )
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout (logs on stderr)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from joules.bench import BenchConfig, run_bench

    config = BenchConfig(
        model=args.ref,
        scenario=args.scenario,
        url=args.url,
        qps=args.qps,
        find_max_qps=args.find_max_qps,
        p99_ms=args.p99_ms,
        concurrency=args.concurrency,
        duration_s=args.duration,
        warmup_s=args.warmup,
        seed=args.seed,
        timeout_s=args.timeout,
        queries=args.queries,
        input_name=args.input_name,
        server_pid=args.server_pid,
        **({"min_qps": args.min_qps} if args.min_qps is not None else {}),
    )
    report = run_bench(
        config,
        data=args.data,
        threads=args.threads,
        max_batch=args.max_batch,
        out_dir=args.out,
        plots=not args.no_plots,
    )
    d = report.to_dict()
    if args.json:
        print_json(d)
        return 0
    lat = d.get("latency_ms", {})
    rows = [
        ["scenario", d["scenario"]],
        ["target", d.get("target", "")],
        ["qps target", d.get("qps_target") or "-"],
        ["qps achieved", d.get("qps_achieved")],
        ["queries ok / errors", f"{d.get('samples', 0):,} / {d.get('errors', 0):,}"],
        *[[f"latency {k} (ms)", f"{lat[k]:.2f}"] for k in ("p50", "p90", "p99", "mean", "max") if k in lat],
    ]
    if "max_qps" in d:
        rows.insert(2, [f"max qps at p99 <= {d['p99_bound_ms']:g} ms", d["max_qps"] or "none"])
    lg = d.get("loadgen", {})
    rows.append(["load generator CPU", f"{lg.get('cpu_s')} s ({lg.get('cores_busy')} cores busy)"])
    system = d.get("system", {})
    if system.get("cpu_ms_per_query") is not None:
        rows.append(["system CPU ms/query", f"{system['cpu_ms_per_query']:.3f}"])
    for key in ("energy_j_per_1000", "modelled_energy_j_per_1000"):
        if key in system:
            rows.append([key.replace("_", " "), f"{system[key]:.2f}"])
    print_table(rows, ["", ""])
    for e in d.get("first_errors", []):
        info(f"error: {e}")
    info(f"report: {d.get('report_dir')}")
    return 0

"""Online serving benchmark: the in-process Predictor beside `joules serve`, on SMS messages.

    JOULES_HOME=/tmp/jh .venv/bin/python benchmarks/online/load.py [--seconds 10] [--out FILE]

1. In process (no server): the Predictor with the server's runtime options, at batch 1
   (latency per message) and on windows of 64 messages sorted by length (the best
   grouping a server could hope for).
2. `joules serve` in a subprocess on a free port, driven by joules.bench, the load
   generator behind `joules bench` (its own process, its keep-alive HTTP client, its
   loops, and MLPerf LoadGen's percentile rule, ``joules.bench.stats``):
   - closed loop at concurrency 1, 8 and 64 for ``--seconds`` each: each client sends its
     next request when the previous answer arrives; concurrency 1 alternates with the
     in-process batch-1 run in blocks, so both sides see the same machine;
   - open loop, Poisson arrivals at fixed rates (the server scenario): latency counts from
     the scheduled send time, so queueing in the client is not hidden.
   Rows per model call come from the server's /metrics, read by joules.bench around each run.

Each request is one message through the Open Inference Protocol V2 (POST
/v2/models/spam/infer, what `joules bench --url` sends); the response cache is off unless
--cache-size is given. Latency percentiles are LoadGen's (``values[floor(n * p)]``, a
latency some request really had); each summary also gives numpy's interpolated p99
(``p99_ms_interpolated``) to show what the definition moves. Run nothing else heavy at
the same time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from joules.bench import Bench, BenchConfig, RunResult
from joules.bench.stats import latency_summary_ms

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "sms_spam_collection" / "SMSSpamCollection.tsv"


def messages(n: int, seed: int = 0) -> list[str]:
    rows = [line.rstrip("\n").split("\t", 1)[1] for line in DATA.open(encoding="utf-8")]
    random.Random(seed).shuffle(rows)
    return (rows * (n // len(rows) + 1))[:n]


def summary(lat_s: list[float] | np.ndarray, seconds: float, errors: int, rows: int) -> dict[str, Any]:
    """Throughput and latency percentiles by joules.bench's (LoadGen's) rule, plus numpy's p99 beside it."""
    ms = latency_summary_ms(lat_s)
    return {
        "requests": len(lat_s) + errors,
        "errors": errors,
        "throughput_rps": round(rows / seconds, 1) if seconds > 0 else 0.0,
        "p50_ms": round(ms.get("p50", float("nan")), 2),
        "p90_ms": round(ms.get("p90", float("nan")), 2),
        "p99_ms": round(ms.get("p99", float("nan")), 2),
        "p99_ms_interpolated": round(float(np.percentile(lat_s, 99)) * 1000, 2) if len(lat_s) else float("nan"),
    }


def from_bench(r: RunResult) -> dict[str, Any]:
    """A joules.bench run in the same shape as the in-process summaries."""
    out = summary(r.latencies_s, r.duration_s, r.errors, r.samples)
    out["throughput_rps"] = round(r.qps_achieved, 1)
    out["mean_batch"] = r.system.get("rows_per_call")
    out["server_cpu_ms_per_request"] = r.system.get("cpu_ms_per_query")
    out["loadgen_cpu_ms_per_request"] = r.loadgen.get("cpu_ms_per_query")
    if r.qps_target is not None:
        out["offered_rps"] = r.qps_target
    return out


def server_run(
    port: int, pid: int, texts: list[str], *, seconds: float, concurrency: int | None = None, qps: float | None = None
) -> dict[str, Any]:
    return from_bench(server_result(port, pid, texts, seconds=seconds, concurrency=concurrency, qps=qps))


def server_result(
    port: int, pid: int, texts: list[str], *, seconds: float, concurrency: int | None = None, qps: float | None = None
) -> RunResult:
    """One joules.bench run against the server: closed loop at ``concurrency``, or Poisson arrivals at ``qps``."""
    single = concurrency == 1 and qps is None
    config = BenchConfig(
        model="spam",
        scenario="single-stream" if single else "server",
        url=f"http://127.0.0.1:{port}",
        concurrency=None if single else concurrency,
        qps=qps,
        duration_s=seconds,
        warmup_s=0.0,
        timeout_s=60.0,
        server_pid=pid,
    )
    return Bench(config, texts=texts).run(qps)


# -- in process -------------------------------------------------------------------------------


def in_process_predictor(server_args: list[str]) -> Any:
    """The Predictor as `joules serve` with ``server_args`` builds it: the same runtime options."""
    from joules.cli.main import build_parser
    from joules.cli.serve import config_from_args
    from joules.runtime import load_predictor

    config = config_from_args(build_parser().parse_args(["serve", "spam", *server_args]))
    return load_predictor("spam", options=config.runtime_options())


def in_process_batch1(p: Any, texts: list[str]) -> dict[str, Any]:
    lat, seconds = _batch1(p, texts)
    return summary(lat, seconds, 0, len(texts))


def _batch1(p: Any, texts: list[str]) -> tuple[list[float], float]:
    lat = []
    t0 = time.perf_counter()
    for t in texts:
        s = time.perf_counter()
        p.predict_texts([t])
        lat.append(time.perf_counter() - s)
    return lat, time.perf_counter() - t0


def latency_pair(p: Any, port: int, pid: int, texts: list[str], block_s: float, blocks: int) -> dict[str, Any]:
    """In-process batch 1 and the server at concurrency 1, alternating ``blocks`` times in blocks of
    about ``block_s`` seconds each, so that a slow spell of a shared machine hits both sides."""
    in_lat: list[float] = []
    in_s = 0.0
    runs: list[RunResult] = []
    i = 0
    for _ in range(blocks):
        end = time.perf_counter() + block_s
        while time.perf_counter() < end:
            lat, seconds = _batch1(p, texts[i % len(texts) : i % len(texts) + 20])
            in_lat += lat
            in_s += seconds
            i += 20
        runs.append(server_result(port, pid, texts, seconds=block_s, concurrency=1))
    # The server's blocks pooled: every latency into one set of percentiles.
    lat_s = np.concatenate([r.latencies_s for r in runs])
    served = summary(lat_s, sum(r.duration_s for r in runs), sum(r.errors for r in runs), len(lat_s))
    served["server_cpu_ms_per_request"] = statistics.median(r.system.get("cpu_ms_per_query") or 0.0 for r in runs)
    return {"inproc_b1": summary(in_lat, in_s, 0, len(in_lat)), "server_c1": served}


def in_process_windows(p: Any, texts: list[str], *, planned: bool) -> dict[str, Any]:
    """Windows of 64 messages sorted by length: cut by the Predictor (max_batch_size rows per
    call) or, ``planned``, by the server's planner (plan_runs: padding vs call overhead)."""
    from joules.runtime.batching import plan_runs

    t0 = time.perf_counter()
    for i in range(0, len(texts), 64):
        window = sorted(texts[i : i + 64], key=len)
        if planned:
            lengths = [len(e.ids) for e in p.text.encode(window)]
            for run in plan_runs(lengths, p.options.max_batch_size, max_tokens=1024):
                p.predict_texts([window[j] for j in run])
        else:
            p.predict_texts(window)
    seconds = time.perf_counter() - t0
    return {"rows": len(texts), "throughput_rps": round(len(texts) / seconds, 1)}


# -- the server -------------------------------------------------------------------------------


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def start_server(port: int, extra: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    import httpx

    proc = subprocess.Popen(
        [sys.executable, "-m", "joules.cli.main", "serve", "spam", "--port", str(port), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=None if env is None else os.environ | env,
    )
    end = time.monotonic() + 300
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server not ready in 300 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1280, help="messages sent through the in-process windows")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each closed-loop server run")
    ap.add_argument("--pair-blocks", type=int, default=5, help="alternating blocks of in-process b1 and server c=1")
    ap.add_argument("--pair-block-s", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3, help="in-process and server runs alternate this many times")
    ap.add_argument("--rates", default="20,40,80", help="open-loop arrival rates, requests/s")
    ap.add_argument("--open-seconds", type=float, default=20.0)
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--server-args", default="", help="extra `joules serve` flags, e.g. '--cache-size 10000'")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    texts = messages(args.requests)
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_before": os.getloadavg()},
        "command": " ".join(sys.argv),
        "server_args": args.server_args,
        "cache": "--cache-size" in args.server_args,
        "load_generator": "joules.bench (LoadGen percentile rule)",
    }
    port = free_port()
    extra = ["--max-batch-size", str(args.max_batch_size), "--timeout-ms", "60000", *args.server_args.split()]
    proc = start_server(port, extra)
    predictor = in_process_predictor(extra)
    rounds: list[dict[str, Any]] = []
    try:
        server_run(port, proc.pid, texts, seconds=2.0, concurrency=8)  # warm the server
        in_process_batch1(predictor, texts[:50])  # and the in-process predictor
        # The machine is shared and noisy: alternate in-process and server runs, compare per round.
        for r in range(args.rounds):
            row: dict[str, Any] = {}
            pair = latency_pair(predictor, port, proc.pid, texts, args.pair_block_s, args.pair_blocks)
            row["inproc_b1"] = pair["inproc_b1"]
            row["server_c1"] = pair["server_c1"]
            row["inproc_windows64"] = in_process_windows(predictor, texts, planned=False)
            row["inproc_windows64_planned"] = in_process_windows(predictor, texts, planned=True)
            row["server_c64"] = server_run(port, proc.pid, texts, seconds=args.seconds, concurrency=64)
            row["ratio_c64_over_windows64"] = (
                row["server_c64"]["throughput_rps"] / row["inproc_windows64"]["throughput_rps"]
            )
            row["ratio_c64_over_planned"] = (
                row["server_c64"]["throughput_rps"] / row["inproc_windows64_planned"]["throughput_rps"]
            )
            row["c1_p99_minus_b1_p99_ms"] = row["server_c1"]["p99_ms"] - row["inproc_b1"]["p99_ms"]
            row["c1_p50_minus_b1_p50_ms"] = row["server_c1"]["p50_ms"] - row["inproc_b1"]["p50_ms"]
            rounds.append(row)
            print(f"round {r + 1}: {json.dumps(row)}", flush=True)
        c8 = server_run(port, proc.pid, texts, seconds=args.seconds, concurrency=8)
        print(f"closed c=8: {json.dumps(c8)}", flush=True)
        report["open"] = {}
        for rate in (float(x) for x in args.rates.split(",")):
            res = server_run(port, proc.pid, texts, seconds=args.open_seconds, qps=rate)
            report["open"][f"{rate:g}rps"] = res
            print(f"open {rate:g}/s: {json.dumps(res)}", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    report["rounds"] = rounds
    report["closed_c8"] = c8
    med = lambda side, key: statistics.median(r[side][key] for r in rounds)  # noqa: E731
    report["median"] = {
        "inproc_b1_p50_ms": med("inproc_b1", "p50_ms"),
        "inproc_b1_p99_ms": med("inproc_b1", "p99_ms"),
        "inproc_b1_rps": med("inproc_b1", "throughput_rps"),
        "server_c1_p50_ms": med("server_c1", "p50_ms"),
        "server_c1_p99_ms": med("server_c1", "p99_ms"),
        "server_c1_p99_ms_interpolated": med("server_c1", "p99_ms_interpolated"),
        "server_c1_rps": med("server_c1", "throughput_rps"),
        "inproc_windows64_rps": med("inproc_windows64", "throughput_rps"),
        "inproc_windows64_planned_rps": med("inproc_windows64_planned", "throughput_rps"),
        "server_c64_rps": med("server_c64", "throughput_rps"),
        "server_c64_p50_ms": med("server_c64", "p50_ms"),
        "server_c64_p99_ms": med("server_c64", "p99_ms"),
        "server_c64_p99_ms_interpolated": med("server_c64", "p99_ms_interpolated"),
        "server_c64_mean_batch": med("server_c64", "mean_batch"),
        "ratio_c64_over_windows64": round(statistics.median(r["ratio_c64_over_windows64"] for r in rounds), 3),
        "ratio_c64_over_planned": round(statistics.median(r["ratio_c64_over_planned"] for r in rounds), 3),
        "c1_p99_minus_b1_p99_ms": round(statistics.median(r["c1_p99_minus_b1_p99_ms"] for r in rounds), 2),
        "c1_p50_minus_b1_p50_ms": round(statistics.median(r["c1_p50_minus_b1_p50_ms"] for r in rounds), 2),
    }
    report["machine"]["load_after"] = os.getloadavg()
    print(json.dumps(report["median"], indent=2), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""joules.bench's generator against MLPerf's own LoadGen, on the server scenario, side by side.

    JOULES_HOME=/tmp/jh .venv/bin/python benchmarks/online/mlperf_check.py [--qps 20] [--seconds 20] [--rounds 3]

Starts `joules serve spam`, then, alternating in rounds so both see the same machine:

- `joules bench spam --url ... --scenario server --qps Q --duration S` (joules.bench: its own
  process, Poisson arrivals, latency from the scheduled time, LoadGen's percentile rule);
- MLPerf Inference LoadGen (the `mlcommons-loadgen` wheel, `mlperf_loadgen`) in the server
  scenario at the same target QPS and minimum duration, performance mode. Its system under
  test sends each sample as the same V2 request through joules.bench's keep-alive HTTP
  client, on an asyncio loop in a thread of this process, and completes the sample when the
  answer arrives. LoadGen's summary (mlperf_log_summary.txt) gives its percentiles and its
  completed samples per second.

Both send the model's test split (the same texts). Reported per round and as medians:
p50, p90, p99 latency and achieved QPS from each, and joules - LoadGen. Differences come
from the arrival schedules (different random draws), from where the client runs (joules.bench
in its own process, LoadGen's SUT in this one) and from LoadGen's own overhead; the
percentile rule is the same (``values[floor(n * p)]``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import load

from joules.bench.http import ConnectionPool, build_request
from joules.bench.samples import load_texts


def v2_request(port: int, text: str) -> bytes:
    body = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}).encode()
    return build_request("POST", "127.0.0.1", port, "/v2/models/spam/infer", body, "application/json")


def run_mlperf(port: int, texts: list[str], qps: float, seconds: float, seed: int) -> dict[str, Any]:
    """One LoadGen server-scenario run against the server; its summary's figures."""
    import mlperf_loadgen as lg

    requests = [v2_request(port, t) for t in texts]
    loop = asyncio.new_event_loop()
    pool: ConnectionPool | None = None
    errors = 0

    def serve_loop() -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    thread = threading.Thread(target=serve_loop, name="mlperf-sut-client", daemon=True)
    thread.start()

    async def make_pool() -> ConnectionPool:
        return ConnectionPool("127.0.0.1", port, 512)

    pool = asyncio.run_coroutine_threadsafe(make_pool(), loop).result()

    async def one(sample_id: int, index: int) -> None:
        nonlocal errors
        assert pool is not None
        try:
            resp = await pool.request(requests[index], 60.0)
            ok = resp.status == 200
        except Exception:  # counted and the sample completed anyway, or LoadGen waits forever
            ok = False
        if not ok:
            errors += 1
        lg.QuerySamplesComplete([lg.QuerySampleResponse(sample_id, 0, 0)])

    def issue_queries(samples: list[Any]) -> None:
        for s in samples:
            asyncio.run_coroutine_threadsafe(one(s.id, s.index), loop)

    def flush_queries() -> None:
        return None

    settings = lg.TestSettings()
    settings.scenario = lg.TestScenario.Server
    settings.mode = lg.TestMode.PerformanceOnly
    settings.server_target_qps = qps
    settings.server_target_latency_ns = 50_000_000  # validity bound only; the figures are what we compare
    settings.min_duration_ms = int(seconds * 1000)
    settings.max_duration_ms = int(seconds * 1000 * 3)
    settings.min_query_count = 1
    settings.qsl_rng_seed = seed
    settings.sample_index_rng_seed = seed + 1
    settings.schedule_rng_seed = seed + 2
    sut = lg.ConstructSUT(issue_queries, flush_queries)
    qsl = lg.ConstructQSL(len(texts), len(texts), lambda _: None, lambda _: None)
    with tempfile.TemporaryDirectory(prefix="mlperf-") as out:
        log = lg.LogOutputSettings()
        log.outdir = out
        log.copy_summary_to_stdout = False
        log_settings = lg.LogSettings()
        log_settings.log_output = log
        lg.StartTestWithLogSettings(sut, qsl, settings, log_settings)
        summary = (Path(out) / "mlperf_log_summary.txt").read_text()
    lg.DestroyQSL(qsl)
    lg.DestroySUT(sut)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    return {**parse_summary(summary), "errors": errors}


def parse_summary(text: str) -> dict[str, Any]:
    def ns(label: str) -> float:
        m = re.search(rf"^{re.escape(label)}\s*:\s*([0-9.]+)", text, re.M)
        return float(m.group(1)) / 1e6 if m else float("nan")

    qps = re.search(r"^Completed samples per second\s*:\s*([0-9.]+)", text, re.M)
    return {
        "qps_achieved": float(qps.group(1)) if qps else float("nan"),
        "p50_ms": ns("50.00 percentile latency (ns)"),
        "p90_ms": ns("90.00 percentile latency (ns)"),
        "p99_ms": ns("99.00 percentile latency (ns)"),
        "mean_ms": ns("Mean latency (ns)"),
    }


def run_joules_bench(port: int, qps: float, seconds: float, seed: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "joules.cli.main", "bench", "spam", "--url", f"http://127.0.0.1:{port}"]
    cmd += ["--scenario", "server", "--qps", str(qps), "--duration", str(seconds), "--warmup", "0"]
    cmd += ["--seed", str(seed), "--no-plots", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600)
    d = json.loads(out.stdout)
    lat = d["latency_ms"]
    return {
        "qps_achieved": d["qps_achieved"],
        "p50_ms": lat["p50"],
        "p90_ms": lat["p90"],
        "p99_ms": lat["p99"],
        "mean_ms": lat["mean"],
        "errors": d["errors"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qps", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    texts = load_texts(None, "spam")
    port = load.free_port()
    proc = load.start_server(port, ["--timeout-ms", "60000"])
    rounds: list[dict[str, Any]] = []
    try:
        run_joules_bench(port, args.qps, 2.0, 99)  # warm the server
        for r in range(args.rounds):
            pair = {}
            order = ("joules", "mlperf") if r % 2 == 0 else ("mlperf", "joules")
            for who in order:
                if who == "joules":
                    pair[who] = run_joules_bench(port, args.qps, args.seconds, r)
                else:
                    pair[who] = run_mlperf(port, texts, args.qps, args.seconds, r)
            pair["joules_minus_mlperf"] = {
                k: round(pair["joules"][k] - pair["mlperf"][k], 3)
                for k in ("qps_achieved", "p50_ms", "p90_ms", "p99_ms")
            }
            rounds.append(pair)
            print(f"round {r + 1}: {json.dumps(pair)}", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    keys = ("qps_achieved", "p50_ms", "p90_ms", "p99_ms")
    median = {
        who: {k: round(statistics.median(p[who][k] for p in rounds), 3) for k in keys}
        for who in ("joules", "mlperf", "joules_minus_mlperf")
    }
    report = {"command": " ".join(sys.argv), "qps": args.qps, "seconds": args.seconds, "rounds": rounds}
    report["median"] = median
    report["load_average"] = os.getloadavg()
    print(json.dumps(median, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

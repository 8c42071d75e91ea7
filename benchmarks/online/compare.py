"""Server variants side by side: several `joules serve` processes, closed loops interleaved.

    JOULES_HOME=/tmp/jh .venv/bin/python benchmarks/online/compare.py \\
        --variant "default=" --variant "spin100=--spin-us 100" [--rounds 3] [--out FILE]

Each variant is ``NAME=FLAGS``: extra `joules serve` flags, and ``VAR=VALUE`` words set
environment variables of that server only. All servers run at once and idle while
another is measured; each round takes concurrency 1, 8 and 64 in turn and drives every
server at it for a few seconds with joules.bench (the load generator of `joules bench`:
the same messages, one per V2 request, response cache off unless a variant turns it on),
so a slow spell of a shared machine hits every variant alike. Reported per variant and
concurrency: the median over rounds of throughput, p50 and p99 latency (LoadGen's rule),
rows per model call (from /metrics) and the server's CPU time per request (from /proc,
so spinning threads show up as CPU they burn).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import load  # the benchmark client beside this file

LOADS = ((1, 6.0), (8, 6.0), (64, 8.0))  # (concurrency, seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", required=True, help="NAME=FLAGS (repeat)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loads", default=",".join(f"{c}:{t:g}" for c, t in LOADS), help="CONCURRENCY:SECONDS,...")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    loads = [(int(c), float(t)) for c, t in (part.split(":") for part in args.loads.split(","))]
    texts = load.messages(1280)
    servers: dict[str, tuple[int, Any]] = {}
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    try:
        for spec in args.variant:
            name, _, flags = spec.partition("=")
            words = flags.split()
            env = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
            argv = [w for w in words if "=" not in w or w.startswith("-")]
            port = load.free_port()
            servers[name] = (port, load.start_server(port, ["--timeout-ms", "60000", *argv], env))
        for port, proc in servers.values():
            load.server_run(port, proc.pid, texts, seconds=2.0, concurrency=8)  # warm up
        for r in range(args.rounds):
            for c, seconds in loads:
                for name, (port, proc) in servers.items():
                    out = load.server_run(port, proc.pid, texts, seconds=seconds, concurrency=c)
                    results.setdefault((name, c), []).append(out)
                    print(f"round {r + 1} {name} c={c}: {json.dumps(out)}", flush=True)
    finally:
        for _, proc in servers.values():
            proc.terminate()
            proc.wait(60)
    keys = ("throughput_rps", "p50_ms", "p99_ms", "mean_batch", "server_cpu_ms_per_request")
    median = {
        f"{name} c={c}": {k: round(statistics.median(x[k] for x in rows), 2) for k in keys}
        for (name, c), rows in results.items()
    }
    print("| variant | concurrency | req/s | p50 ms | p99 ms | rows per call | server CPU ms/request |")
    print("|---|---|---|---|---|---|---|")
    for (name, c), _ in results.items():
        m = median[f"{name} c={c}"]
        print(f"| {name} | {c} | " + " | ".join(str(m[k]) for k in keys) + " |")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "command": " ".join(sys.argv),
                    "rounds": {f"{n} c={c}": v for (n, c), v in results.items()},
                    "median": median,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()

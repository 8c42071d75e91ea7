"""Server variants side by side: several `joules serve` processes, closed loops interleaved.

    JOULES_HOME=/tmp/jh .venv/bin/python benchmarks/online/compare.py \\
        --variant "default=" --variant "spin100=--spin-us 100" [--rounds 3] [--out FILE]

Each variant is ``NAME=FLAGS``: extra `joules serve` flags, and ``VAR=VALUE`` words set
environment variables of that server only. All servers run at once and idle while
another is measured; each round takes concurrency 1, 8 and 64 in turn and drives every
server at it (the same messages, one per request, response cache off unless a variant
turns it on), so a slow spell of a shared machine hits every variant alike. Reported
per variant and concurrency: the median over rounds of throughput, p50 and p99 latency,
rows per model call (from /metrics) and the server's CPU time per request (from
/proc, so spinning threads show up as CPU they burn).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import load  # the benchmark client beside this file

LOADS = ((1, 600), (8, 800), (64, 1280))  # (concurrency, requests)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", required=True, help="NAME=FLAGS (repeat)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loads", default=",".join(f"{c}:{n}" for c, n in LOADS), help="CONCURRENCY:REQUESTS,...")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    load.use_uvloop()
    loads = [tuple(int(x) for x in part.split(":")) for part in args.loads.split(",")]
    texts = load.messages(max(n for _, n in loads))
    bodies = [load.raw_request(t) for t in texts]
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
        for port, _ in servers.values():
            asyncio.run(load.closed_loop(port, bodies[:256], 8))  # warm up
        for r in range(args.rounds):
            for c, n in loads:
                for name, (port, proc) in servers.items():
                    before = load.batch_stats(port)
                    cpu0 = cpu_seconds(proc.pid)
                    out = asyncio.run(load.closed_loop(port, bodies[:n], c))
                    out["server_cpu_ms_per_request"] = round(1000 * (cpu_seconds(proc.pid) - cpu0) / n, 2)
                    out = load.with_batches(port, before, out)
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

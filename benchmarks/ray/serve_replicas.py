"""Ray Serve with 1 and 2 replicas, measured with `joules bench --url` (closed loop, 64 clients).

For each replica count: start `joules serve MODEL --engine ray --replicas N` on a free port (a local
Ray, started and stopped by the command), wait for /v2/health/ready, run the load, SIGTERM the server.
Prints one JSON object: per replica count, the achieved QPS, latency percentiles and QPS per replica
(the figure benchmarks/ray/capacity.py projects from).

    JOULES_HOME=... PYTHONPATH=src .venv/bin/python benchmarks/ray/serve_replicas.py --duration 20
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

JOULES = [sys.executable, "-m", "joules.cli.main"]


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode} before ready")
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)  # polling readiness, bounded by the deadline
    raise SystemExit(f"server not ready in {timeout} s")


def measure(model: str, replicas: int, args: argparse.Namespace) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            *JOULES,
            "serve",
            model,
            "--engine",
            "ray",
            "--replicas",
            str(replicas),
            "--port",
            str(port),
            *args.serve_flag,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(url, server)
        bench = [*JOULES, "bench", model, "--scenario", "server", "--url", url, "--concurrency", str(args.concurrency)]
        bench += ["--duration", str(args.duration), "--warmup", "3", "--no-plots", "--json"]
        out = subprocess.run(bench, capture_output=True, text=True, check=True).stdout
        d = json.loads(out)
    finally:
        server.send_signal(signal.SIGTERM)
        rc = server.wait(120)
    lat = d.get("latency_ms", {})
    qps = d.get("qps_achieved") or 0.0
    return {
        "replicas": replicas,
        "qps": qps,
        "qps_per_replica": round(qps / replicas, 1),
        "p50_ms": lat.get("p50"),
        "p99_ms": lat.get("p99"),
        "errors": d.get("errors"),
        "first_errors": d.get("first_errors", [])[:3],
        "exit_after_sigterm": rc,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="spam")
    p.add_argument("--replicas", default="1,2", help="replica counts to measure (default 1,2)")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--duration", type=float, default=20)
    p.add_argument(
        "--serve-flag",
        action="append",
        default=[],
        help="extra `joules serve` argument, repeat per word (e.g. --serve-flag=--timeout-ms --serve-flag=10000)",
    )
    args = p.parse_args()
    runs = [measure(args.model, int(n), args) for n in args.replicas.split(",")]
    print(
        json.dumps(
            {
                "concurrency": args.concurrency,
                "duration_s": args.duration,
                "serve_flags": args.serve_flag,
                "runs": runs,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

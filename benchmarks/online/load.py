"""Online serving benchmark: the in-process Predictor beside `joules serve`, on SMS messages.

    JOULES_HOME=/tmp/jh .venv/bin/python benchmarks/online/load.py [--requests 2000] [--out FILE]

1. In process (no server): the Predictor with the server's runtime options, at batch 1
   (latency per message) and on windows of 64 messages sorted by length (the best
   grouping a server could hope for).
2. `joules serve` in a subprocess on a free port, driven by a small asyncio HTTP/1.1
   client with keep-alive connections (cheap, so the client steals little CPU from
   the server on a 2-core machine):
   - closed loop at concurrency 1, 8 and 64: each connection sends its next request
     when the previous answer arrives; concurrency 1 alternates with the in-process
     batch-1 run in blocks of 100 messages, so both sides see the same machine;
   - open loop, Poisson arrivals at fixed rates: latency counts from the scheduled
     send time, so queueing in the client is not hidden (no coordinated omission).
   Mean batch size comes from the server's /metrics (joules_batch_size).

Each request is one message through POST /v1/models/spam:predict; the response cache
is off unless --cache-size is given. The client runs on uvloop. Run nothing else heavy
at the same time.
"""

from __future__ import annotations

import argparse
import asyncio
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

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "sms_spam_collection" / "SMSSpamCollection.tsv"


def messages(n: int, seed: int = 0) -> list[str]:
    rows = [line.rstrip("\n").split("\t", 1)[1] for line in DATA.open(encoding="utf-8")]
    random.Random(seed).shuffle(rows)
    return (rows * (n // len(rows) + 1))[:n]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000.0 if values else float("nan")


def summary(lat: list[float], seconds: float, errors: int, rows: int) -> dict[str, Any]:
    return {
        "requests": len(lat) + errors,
        "errors": errors,
        "throughput_rps": round(rows / seconds, 1),
        "p50_ms": round(pct(lat, 50), 2),
        "p90_ms": round(pct(lat, 90), 2),
        "p99_ms": round(pct(lat, 99), 2),
    }


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


def latency_pair(p: Any, port: int, texts: list[str], bodies: list[bytes], block: int = 100) -> dict[str, Any]:
    """In-process batch 1 and the server at concurrency 1 on the same messages, alternating in
    blocks of ``block`` messages, so that a slow spell of a shared machine hits both sides."""
    in_lat: list[float] = []
    sv_lat: list[float] = []
    in_s = sv_s = 0.0
    errors = 0
    for i in range(0, len(texts), block):
        lat, seconds = _batch1(p, texts[i : i + block])
        in_lat += lat
        in_s += seconds
        lat, seconds, failed = asyncio.run(_closed_loop(port, bodies[i : i + block], 1))
        sv_lat += lat
        sv_s += seconds
        errors += failed
    return {
        "inproc_b1": summary(in_lat, in_s, 0, len(in_lat)),
        "server_c1": summary(sv_lat, sv_s, errors, len(sv_lat)),
    }


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


# -- the client -------------------------------------------------------------------------------


def use_uvloop() -> None:
    """Run the client on uvloop where it is installed (a dependency of joules off Windows): the
    client shares the 2 cores with the server, so its own CPU per request should be small."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        return cls(r, w)

    async def request(self, raw: bytes) -> int:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


def raw_request(text: str) -> bytes:
    body = json.dumps({"instances": [{"text": text}]}).encode()
    return (
        b"POST /v1/models/spam:predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


async def closed_loop(port: int, bodies: list[bytes], concurrency: int) -> dict[str, Any]:
    lat, seconds, errors = await _closed_loop(port, bodies, concurrency)
    return summary(lat, seconds, errors, len(lat))


async def _closed_loop(port: int, bodies: list[bytes], concurrency: int) -> tuple[list[float], float, int]:
    conns = [await Connection.open(port) for _ in range(concurrency)]
    lat: list[float] = []
    errors = 0
    next_i = 0

    async def worker(c: Connection) -> None:
        nonlocal next_i, errors
        while next_i < len(bodies):
            body = bodies[next_i]
            next_i += 1
            s = time.perf_counter()
            status = await c.request(body)
            if status == 200:
                lat.append(time.perf_counter() - s)
            else:
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    seconds = time.perf_counter() - t0
    for c in conns:
        c.close()
    return lat, seconds, errors


async def open_loop(port: int, bodies: list[bytes], rate: float, seconds: float, seed: int = 1) -> dict[str, Any]:
    rng = random.Random(seed)
    idle: list[Connection] = []
    lat: list[float] = []
    errors = 0
    tasks = []

    async def send(at: float, body: bytes) -> None:
        nonlocal errors
        c = idle.pop() if idle else await Connection.open(port)
        try:
            status = await c.request(body)
        except (asyncio.IncompleteReadError, ConnectionError):  # the server closed an idle keep-alive
            c.close()
            c = await Connection.open(port)
            status = await c.request(body)
        if status == 200:
            lat.append(time.perf_counter() - at)  # from the scheduled time: queueing counts
        else:
            errors += 1
        idle.append(c)

    t0 = time.perf_counter()
    at = t0
    i = 0
    while at - t0 < seconds:
        at += rng.expovariate(rate)
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(send(at, bodies[i % len(bodies)])))
        i += 1
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    for c in idle:
        c.close()
    out = summary(lat, elapsed, errors, len(lat))
    out["offered_rps"] = rate
    return out


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


def batch_stats(port: int) -> tuple[float, float]:
    import httpx

    total = {"sum": 0.0, "count": 0.0}
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines():
        name = line.split("{")[0].split(" ")[0]
        if name in ("joules_batch_size_sum", "joules_batch_size_count"):
            total[name.rsplit("_", 1)[1]] += float(line.rsplit(" ", 1)[1])
    return total["sum"], total["count"]


def with_batches(port: int, before: tuple[float, float], result: dict[str, Any]) -> dict[str, Any]:
    after = batch_stats(port)
    calls = after[1] - before[1]
    result["mean_batch"] = round((after[0] - before[0]) / calls, 2) if calls else None
    return result


def median_of(rounds: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(r[key] for r in rounds), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1280, help="messages per throughput run (windows, c=64)")
    ap.add_argument("--latency-requests", type=int, default=300, help="messages per latency run (batch 1, c=1)")
    ap.add_argument("--rounds", type=int, default=3, help="in-process and server runs alternate this many times")
    ap.add_argument("--rates", default="20,40,80", help="open-loop arrival rates, requests/s")
    ap.add_argument("--open-seconds", type=float, default=20.0)
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--server-args", default="", help="extra `joules serve` flags, e.g. '--cache-size 10000'")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    use_uvloop()
    texts = messages(args.requests)
    short = texts[: args.latency_requests]
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_before": os.getloadavg()},
        "command": " ".join(sys.argv),
        "server_args": args.server_args,
        "cache": "--cache-size" in args.server_args,
    }
    port = free_port()
    extra = ["--max-batch-size", str(args.max_batch_size), "--timeout-ms", "60000", *args.server_args.split()]
    proc = start_server(port, extra)
    predictor = in_process_predictor(extra)
    rounds: list[dict[str, Any]] = []
    try:
        bodies = [raw_request(t) for t in texts]
        asyncio.run(closed_loop(port, bodies[:64], 8))  # warm the server
        in_process_batch1(predictor, short[:50])  # and the in-process predictor
        # The machine is shared and noisy: alternate in-process and server runs, compare per round.
        for r in range(args.rounds):
            row: dict[str, Any] = {}
            before = batch_stats(port)
            pair = latency_pair(predictor, port, short, bodies[: len(short)])
            row["inproc_b1"] = pair["inproc_b1"]
            row["server_c1"] = with_batches(port, before, pair["server_c1"])
            row["inproc_windows64"] = in_process_windows(predictor, texts, planned=False)
            row["inproc_windows64_planned"] = in_process_windows(predictor, texts, planned=True)
            before = batch_stats(port)
            row["server_c64"] = with_batches(port, before, asyncio.run(closed_loop(port, bodies, 64)))
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
        before = batch_stats(port)
        c8 = with_batches(port, before, asyncio.run(closed_loop(port, bodies[:800], 8)))
        print(f"closed c=8: {json.dumps(c8)}", flush=True)
        report["open"] = {}
        for rate in (float(x) for x in args.rates.split(",")):
            before = batch_stats(port)
            res = with_batches(port, before, asyncio.run(open_loop(port, bodies, rate, args.open_seconds)))
            report["open"][f"{rate:g}rps"] = res
            print(f"open {rate:g}/s: {json.dumps(res)}", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    report["rounds"] = rounds
    report["closed_c8"] = c8
    report["median"] = {
        "inproc_b1_p50_ms": statistics.median(r["inproc_b1"]["p50_ms"] for r in rounds),
        "inproc_b1_p99_ms": statistics.median(r["inproc_b1"]["p99_ms"] for r in rounds),
        "inproc_b1_rps": statistics.median(r["inproc_b1"]["throughput_rps"] for r in rounds),
        "server_c1_p50_ms": statistics.median(r["server_c1"]["p50_ms"] for r in rounds),
        "server_c1_p99_ms": statistics.median(r["server_c1"]["p99_ms"] for r in rounds),
        "server_c1_rps": statistics.median(r["server_c1"]["throughput_rps"] for r in rounds),
        "inproc_windows64_rps": statistics.median(r["inproc_windows64"]["throughput_rps"] for r in rounds),
        "inproc_windows64_planned_rps": statistics.median(
            r["inproc_windows64_planned"]["throughput_rps"] for r in rounds
        ),
        "server_c64_rps": statistics.median(r["server_c64"]["throughput_rps"] for r in rounds),
        "server_c64_p50_ms": statistics.median(r["server_c64"]["p50_ms"] for r in rounds),
        "server_c64_p99_ms": statistics.median(r["server_c64"]["p99_ms"] for r in rounds),
        "server_c64_mean_batch": statistics.median(r["server_c64"]["mean_batch"] for r in rounds),
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

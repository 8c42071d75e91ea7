"""Benchmark of ``joules stream`` on Redis Streams: sustained throughput and end-to-end latency.

Starts a private redis-server, then for each setting:

- throughput: a backlog of ``--backlog`` messages is already in the stream when one
  consumer starts; throughput is messages over the time between the first and the last
  verdict (both times from the verdict entry ids, the Redis server's clock), so model
  loading is not counted;
- latency: one consumer waits on an empty stream while ``joules publish --rate R`` sends
  ``--messages`` messages at a fixed rate; latency is produce to verdict per message: the
  time in the verdict's entry id minus the time in the source entry's id (both from
  the Redis server's clock).

Every run goes through the CLI as a user would run it. Figures are medians over
``--repeats`` runs. The model home is copied first; nothing is written into it.

    .venv/bin/python benchmarks/stream/bench_stream.py --home /work/ref-home
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import redis

from joules.bench.stats import percentile

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "sms_spam_collection" / "SMSSpamCollection.tsv"
JOULES = [sys.executable, "-m", "joules.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = redis.Redis(port=self.port)

        def ready() -> bool:
            try:
                return bool(self.client.ping())
            except redis.exceptions.ConnectionError:
                return False

        wait_until(ready, 20, "redis-server")

    def url(self, stream: str) -> str:
        return f"redis://127.0.0.1:{self.port}/{stream}"

    def stop(self) -> None:
        self.client.shutdown(nosave=True)
        self.proc.wait(timeout=10)


def messages(n: int, seed: int) -> list[dict[str, str]]:
    rows = [line.rstrip("\n").split("\t", 1)[1] for line in DATA.open(encoding="utf-8")]
    rng = random.Random(seed)
    return [{"id": f"m{i}", "text": rng.choice(rows)} for i in range(n)]


def id_ms(entry_id: bytes) -> int:
    return int(entry_id.split(b"-")[0])


def start_consumer(server: RedisServer, env: dict[str, str], extra: list[str], log: Path) -> subprocess.Popen[bytes]:
    server.client.delete("verdicts", "mail:dead")
    args = [
        *JOULES,
        "stream",
        "spam",
        "--source",
        server.url("mail"),
        "--sink",
        server.url("verdicts"),
        "--group",
        "bench",
        "--consumer",
        "c1",
        "--report-every-s",
        "0",
        "--json",
        *extra,
    ]
    with log.open("wb") as f:
        proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"consumer exited: {log.read_text()[-2000:]}")
        try:
            return any(c["name"] == b"c1" for c in server.client.xinfo_consumers("mail", "bench"))
        except redis.exceptions.ResponseError:
            return False

    wait_until(ready, 300, "the consumer to start reading")
    return proc


def stop_consumer(proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    proc.terminate()
    proc.wait(timeout=120)
    text = log.read_text()
    return dict(json.loads(text[text.rindex("\n{\n") + 1 :]))


def fresh_stream(server: RedisServer) -> None:
    server.client.delete("mail", "verdicts", "mail:dead")
    for key in server.client.scan_iter("mail:done:*", count=5000):
        server.client.delete(key)


def run_throughput(
    server: RedisServer, env: dict[str, str], n: int, extra: list[str], log: Path, seed: int
) -> dict[str, Any]:
    fresh_stream(server)
    pipe = server.client.pipeline(transaction=False)
    for m in messages(n, seed):
        pipe.xadd("mail", m)
    pipe.execute()
    proc = start_consumer(server, env, extra, log)
    wait_until(lambda: server.client.xlen("verdicts") >= n, 3600, "the backlog to drain")
    summary = stop_consumer(proc, log)
    v = server.client.xrange("verdicts")
    span_s = (id_ms(v[-1][0]) - id_ms(v[0][0])) / 1000
    return {"messages": n, "msg_per_s": (n - 1) / span_s, "energy_j_per_1000": summary["energy_j_per_1000"]}


def run_latency(
    server: RedisServer, env: dict[str, str], n: int, rate: float, extra: list[str], workdir: Path, log: Path, seed: int
) -> dict[str, Any]:
    fresh_stream(server)
    server.client.xgroup_create("mail", "bench", id="$", mkstream=True)
    proc = start_consumer(server, env, extra, log)
    inp = workdir / "rate.jsonl"
    inp.write_text("".join(json.dumps(m) + "\n" for m in messages(n, seed)))
    t0 = time.monotonic()
    subprocess.run(
        [*JOULES, "publish", str(inp), "--to", server.url("mail"), "--rate", str(rate), "--no-progress"],
        check=True,
        env=env,
        capture_output=True,
    )
    produce_s = time.monotonic() - t0
    wait_until(lambda: server.client.xlen("verdicts") >= n, 600, "every verdict")
    summary = stop_consumer(proc, log)
    source = {eid.decode(): id_ms(eid) for eid, _ in server.client.xrange("mail")}
    verdicts = server.client.xrange("verdicts")
    lat = np.array([id_ms(eid) - source[f[b"source_id"].decode()] for eid, f in verdicts], dtype=np.float64)
    span_s = (id_ms(verdicts[-1][0]) - id_ms(verdicts[0][0])) / 1000
    return {
        "rate": rate,
        "messages": n,
        "achieved_produce_rate": n / produce_s,
        "verdicts_per_s": (n - 1) / span_s,
        # joules.bench's percentile rule (MLPerf LoadGen's: a latency some message really had).
        "p50_ms": percentile(np.sort(lat), 0.5),
        "p99_ms": percentile(np.sort(lat), 0.99),
        "max_ms": float(lat.max()),
        "energy_j_per_1000": summary["energy_j_per_1000"],
    }


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--home",
        type=Path,
        default=Path(os.environ.get("JOULES_HOME", ".joules")),
        help="a JOULES_HOME with the spam model (copied; never written)",
    )
    p.add_argument("--backlog", type=int, default=3000, help="messages for the throughput runs")
    p.add_argument("--messages", type=int, default=1500, help="messages per latency run")
    p.add_argument("--rates", default="20,50", help="comma-separated produce rates (messages/s) for latency")
    p.add_argument("--call-rows", default="8,64", help="comma-separated --call-rows settings to compare")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-wait-ms", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json-out", type=Path, help="also write the raw runs here")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="joules-bench-stream-"))
    home = work / "home"
    shutil.copytree(args.home, home)
    env = {**os.environ, "JOULES_HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    server = RedisServer(work)
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu": _cpu_model(),
            "load_avg_at_start": os.getloadavg(),
        },
        "settings": vars(args) | {"home": str(args.home), "json_out": str(args.json_out)},
        "throughput": {},
        "latency": {},
    }
    try:
        for call_rows in [int(x) for x in args.call_rows.split(",")]:
            extra = [
                "--call-rows",
                str(call_rows),
                "--batch-size",
                str(args.batch_size),
                "--max-wait-ms",
                str(args.max_wait_ms),
            ]
            runs = [
                run_throughput(server, env, args.backlog, extra, work / "c.log", seed=r) for r in range(args.repeats)
            ]
            results["throughput"][call_rows] = runs
            print(
                f"call-rows {call_rows}: throughput {median_of(runs, 'msg_per_s'):.1f} msg/s "
                f"(runs {[round(r['msg_per_s'], 1) for r in runs]})",
                file=sys.stderr,
                flush=True,
            )
            for rate in [float(x) for x in args.rates.split(",")]:
                lruns = [
                    run_latency(server, env, args.messages, rate, extra, work, work / "c.log", seed=100 + r)
                    for r in range(args.repeats)
                ]
                results["latency"][f"{call_rows}@{rate:g}"] = lruns
                print(
                    f"call-rows {call_rows} at {rate:g} msg/s: p50 {median_of(lruns, 'p50_ms'):.0f} ms, "
                    f"p99 {median_of(lruns, 'p99_ms'):.0f} ms, {median_of(lruns, 'verdicts_per_s'):.1f} verdicts/s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        server.stop()
        results["machine"]["load_avg_at_end"] = os.getloadavg()
        if args.json_out:
            args.json_out.write_text(json.dumps(results, indent=2))
        shutil.rmtree(work, ignore_errors=True)
    print(table(results))
    return 0


def table(results: dict[str, Any]) -> str:
    lines = [
        "| --call-rows | backlog drain (msg/s) | rate (msg/s) | e2e p50 (ms) | e2e p99 (ms) | J per 1,000 |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for call_rows, runs in results["throughput"].items():
        drain = median_of(runs, "msg_per_s")
        for key, lruns in results["latency"].items():
            if key.split("@")[0] != str(call_rows):
                continue
            lines.append(
                f"| {call_rows} | {drain:.1f} | {median_of(lruns, 'rate'):g} | {median_of(lruns, 'p50_ms'):.0f} | "
                f"{median_of(lruns, 'p99_ms'):.0f} | {median_of(lruns, 'energy_j_per_1000'):.1f} |"
            )
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())

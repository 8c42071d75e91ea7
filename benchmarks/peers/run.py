"""Side by side: joules and its peers serving the same ONNX spam model, driven by the same `joules bench`.

Each peer runs from its own virtual environment (see install.sh) with its documented server-side batching
switched on: at most PEER_MAX_BATCH (32) requests per batch and PEER_WAIT_MS (5 ms) longest wait, the
same as joules' defaults where a peer has both knobs. Every system gets the same model files, tokenizer,
ONNX Runtime session options and threads (servers/spam_model.py). Systems are interleaved round by
round (the order rotates), and each round starts each server afresh.

Stability: max QPS at p99 <= 50 ms moved 2x between rounds of 10 s runs, so by default every run
(each rate of the search) lasts 30 s after 5 s of warm-up, there are 5 rounds, and the spread is
reported: per system the median, min and max over rounds, and joules' margin as the median, min
and max of per-round ratios (joules / peer, both measured in the same round). The load generator's
own CPU is reported per query (`joules bench` measures it), and `--pin-client CPUS` /
`--pin-server CPUS` run the load generator and the servers on disjoint cores with taskset.

    benchmarks/peers/rerun.sh                      # everything, for a quiet machine (about 2 hours)
    .venv/bin/python benchmarks/peers/run.py --venvs /tmp/peers --rounds 5 --systems joules,litserve,mlserver
    .venv/bin/python benchmarks/peers/run.py table benchmarks/results/peers.jsonl

This is a benchmark, not a test: it takes minutes per system and round.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SERVERS = HERE / "servers"
BODY = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["WINNER!! claim your prize"]}]}


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def command(system: str, port: int, venvs: Path, work: Path) -> tuple[list[str], Path]:
    if system == "joules":
        spin = ["--spin-us", os.environ["SPAM_SPIN_US"]]
        return [str(ROOT / ".venv/bin/joules"), "serve", "spam", "--port", str(port), *spin], ROOT
    if system == "litserve":
        return [str(venvs / "litserve/bin/python"), str(SERVERS / "litserve_app.py"), str(port)], SERVERS
    if system == "ray":
        return [str(venvs / "ray/bin/python"), str(SERVERS / "ray_app.py"), str(port)], SERVERS
    if system == "bentoml":
        cmd = [str(venvs / "bentoml/bin/bentoml"), "serve", "bentoml_service:Spam", "--port", str(port)]
        return [*cmd, "--host", "127.0.0.1"], SERVERS
    if system == "mlserver":
        d = work / "mlserver"
        (d / "spam").mkdir(parents=True, exist_ok=True)
        (d / "settings.json").write_text(
            json.dumps(
                {
                    "host": "127.0.0.1",
                    "http_port": port,
                    "grpc_port": free_port(),
                    "metrics_port": free_port(),
                    "parallel_workers": 0,
                }
            )
        )
        batching = {
            "max_batch_size": int(os.environ["PEER_MAX_BATCH"]),
            "max_batch_time": float(os.environ["PEER_WAIT_MS"]) / 1000,
        }
        (d / "spam" / "model-settings.json").write_text(
            json.dumps({"name": "spam", "implementation": "runtime.SpamRuntime", **batching})
        )
        (d / "spam" / "runtime.py").write_text((SERVERS / "mlserver_model" / "runtime.py").read_text())
        (d / "spam" / "spam_model.py").write_text((SERVERS / "spam_model.py").read_text())
        return [str(venvs / "mlserver/bin/mlserver"), "start", str(d)], d / "spam"
    raise SystemExit(f"unknown system {system!r}")


def descendants(pid: int) -> list[int]:
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            parents[int(name)] = int(stat[stat.rfind(")") + 2 :].split()[1])
    tree, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, par in parents.items() if par == p]
        tree.extend(kids)
        frontier.extend(kids)
    return tree


def stop(proc: subprocess.Popen[bytes]) -> None:
    pids = [proc.pid, *descendants(proc.pid)]
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(30)
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    proc.wait()


def ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.post(f"{url}/v2/models/spam/infer", json=BODY, timeout=5).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def pinned(cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus] if cpus else []


def bench(url: str, pid: int, args: list[str], duration: float, warmup: float, pin: str | None) -> dict:
    cmd = [
        *pinned(pin),
        str(ROOT / ".venv/bin/joules"),
        "bench",
        "spam",
        "--url",
        url,
        "--scenario",
        "server",
        "--server-pid",
        str(pid),
    ]
    cmd += [*args, "--duration", str(duration), "--warmup", str(warmup), "--no-plots", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--venvs", type=Path, default=Path("/tmp/peers"))
    p.add_argument("--systems", default="joules,litserve,mlserver,bentoml,ray")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rates", default="10,30")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of measured load per run (default 30)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of unmeasured load before each run")
    p.add_argument("--pin-client", help="taskset CPU list for the load generator (e.g. 0)")
    p.add_argument("--pin-server", help="taskset CPU list for the servers (e.g. 1)")
    p.add_argument("--p99-ms", type=float, default=50.0)
    p.add_argument(
        "--min-qps",
        type=float,
        default=5.0,
        help="lowest rate the max-QPS search tries (default 5): a search run lasts long enough for 300 "
        "queries, 60 s at 5 QPS but 600 s at joules bench's own floor of 0.5; a system failing at 5 is "
        "reported as below 5",
    )
    p.add_argument(
        "--spin-us",
        type=int,
        default=100,
        help="ONNX Runtime's spin before sleeping, for every system (joules serve's default: 100; 0: never)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/peers.jsonl")
    args = p.parse_args()
    os.environ.setdefault("PEER_MAX_BATCH", "32")
    os.environ.setdefault("PEER_WAIT_MS", "5")
    os.environ["SPAM_SPIN_US"] = str(args.spin_us)
    home = Path(os.environ.get("JOULES_HOME", ROOT / ".joules"))
    mv = json.loads(
        subprocess.run(
            [str(ROOT / ".venv/bin/joules"), "models", "show", "spam", "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    os.environ["SPAM_BUNDLE"] = mv["path"]
    os.environ["JOULES_HOME"] = str(home)
    systems = args.systems.split(",")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    work = args.out.parent / "peers-work"
    for r in range(args.rounds):
        order = systems[r % len(systems) :] + systems[: r % len(systems)]  # rotate who goes first
        for system in order:
            port = free_port()
            cmd, cwd = command(system, port, args.venvs, work)
            row: dict = {"system": system, "round": r}
            with open(args.out.parent / f"peers-{system}.log", "ab") as log:
                cmd = [*pinned(args.pin_server), *cmd]
                proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                url = f"http://127.0.0.1:{port}"
                try:
                    if not ready(url, proc, 300):
                        row["error"] = f"not ready (exit {proc.poll()}); see {log.name}"
                    else:
                        rates = args.rates.split(",")
                        opts = (args.duration, args.warmup, args.pin_client)
                        row["fixed"] = {q: bench(url, proc.pid, ["--qps", q], *opts) for q in rates}
                        find_max = ["--find-max-qps", "--p99-ms", str(args.p99_ms), "--min-qps", str(args.min_qps)]
                        row["max"] = bench(url, proc.pid, find_max, *opts)
                        row["pins"] = {"client": args.pin_client, "server": args.pin_server}
                finally:
                    stop(proc)
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(summary_row(row)), flush=True)
    print(table(args.out), flush=True)


def summary_row(row: dict) -> dict:
    out = {"system": row["system"], "round": row["round"]}
    if "error" in row:
        out["error"] = row["error"]
        return out
    m = row["max"]
    out["max_qps"] = m.get("max_qps")
    for q, d in row["fixed"].items():
        lat = d.get("latency_ms", {})
        sysd = d.get("system", {})
        out[f"{q}qps"] = {
            "p50": lat.get("p50"),
            "p99": lat.get("p99"),
            "cpu_ms": sysd.get("cpu_ms_per_query"),
            "client_cpu_ms": d.get("loadgen", {}).get("cpu_ms_per_query"),
            "J_per_1000": sysd.get("modelled_energy_j_per_1000"),
            "error": d.get("error"),
        }
    return out


def spread(xs: list[float]) -> str:
    """median [min, max] (IQR q1-q3 with five values or more): how far one round can be from another."""
    if not xs:
        return "-"
    xs = sorted(xs)
    text = f"{statistics.median(xs):.1f} [{xs[0]:.1f}, {xs[-1]:.1f}]"
    if len(xs) >= 5:
        q1, _, q3 = statistics.quantiles(xs, n=4)
        text += f" IQR {q1:.1f}-{q3:.1f}"
    return text


def table(path: Path) -> str:
    """Per system: max QPS at the p99 bound over rounds, fixed-rate latency and CPU, and joules' margin.

    The margin is taken round by round (joules / peer in the same round, after the same neighbours),
    then summarised, so a round that was slow for everyone does not move it.
    """
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["system"], []).append(r)
    # None: no rate at or above the search's floor kept the p99 bound ("below FLOOR").
    maxq = {s: {r["round"]: r["max"].get("max_qps") for r in rs if "error" not in r} for s, rs in by.items()}
    floors = {r["max"].get("config", {}).get("min_qps") for r in rows if "error" not in r} - {None}
    floor = min(floors) if floors else None
    med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    lines = [
        "| system | max QPS at p99 bound: median [min, max] | "
        + " | ".join(f"{q} qps p50 / p99 ms | server CPU ms/q | client CPU ms/q" for q in _rates(rows))
        + " | joules / system per round: median [min, max] | rounds ok |",
        "|---|---|" + "---|---|---|" * len(_rates(rows)) + "---|---|",
    ]
    for system, rs in by.items():
        ok = [r for r in rs if "error" not in r]
        passed = [v for v in maxq[system].values() if v is not None]
        below = len(maxq[system]) - len(passed)
        cell = spread(passed) if passed else "none"
        if below:
            cell += f"; {below} round(s) below {floor:g}" if floor else f"; {below} round(s) with none"
        cells = [system, cell]
        for q in _rates(rows):
            f = [r["fixed"][q] for r in ok if "latency_ms" in r["fixed"].get(q, {})]
            cells.append(
                f"{med([x['latency_ms']['p50'] for x in f]):.1f} / {med([x['latency_ms']['p99'] for x in f]):.1f}"
            )
            cells.append(f"{med([x['system'].get('cpu_ms_per_query') or 0 for x in f]):.2f}")
            cells.append(f"{med([x.get('loadgen', {}).get('cpu_ms_per_query') or 0 for x in f]):.3f}")
        ours = maxq.get("joules", {})
        mine = {k: v for k, v in maxq[system].items() if system != "joules" and ours.get(k) is not None}
        ratios = [ours[k] / v for k, v in mine.items() if v]  # type: ignore[operator]
        text = spread(ratios) if ratios else "-"
        lower = [ours[k] / floor for k, v in mine.items() if v is None and floor]  # type: ignore[operator]
        if lower:
            text += f"; > {min(lower):.1f} in {len(lower)} round(s) where it was below {floor:g}"
        cells.append(text)
        lines.append("| " + " | ".join(cells) + f" | {len(ok)}/{len(rs)} |")
    return "\n".join(lines)


def _rates(rows: list[dict]) -> list[str]:
    ok = [r for r in rows if "error" not in r]
    return list(ok[0]["fixed"]) if ok else []


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "table":
        print(table(Path(sys.argv[2])))
    else:
        main()

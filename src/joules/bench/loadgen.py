"""The load generator: a process of its own that issues queries and times them.

It runs apart from the system under test so that its CPU time is counted
(``time.process_time`` of this process over the measured phase) and reported
beside the results: on a 2-core machine a load generator that goes unnoticed
takes a core from the server it measures. It reaches the system under test
over HTTP (any Open Inference Protocol V2 server) or over a pipe to a
Predictor in the parent process.

Every query records its scheduled, issued and done times (seconds from the
start of the measured phase); latency is done - scheduled, as in MLPerf
LoadGen, so a query that waited in a queue, the server's or ours, counts it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from joules.bench.http import ConnectionPool, build_request
from joules.errors import HttpError, QueryError


@dataclass(frozen=True, kw_only=True)
class LoadSpec:
    kind: str  # open | closed | burst
    concurrency: int
    offsets: tuple[float, ...] = ()  # open and burst: scheduled times of the queries
    samples: tuple[int, ...] = ()  # the sample each query carries (closed: cycled)
    duration_s: float = 10.0  # closed: how long the clients run
    warmup_s: float = 0.0
    timeout_s: float = 30.0
    max_connections: int = 512


@dataclass(frozen=True, kw_only=True)
class HttpTarget:
    host: str
    port: int
    requests: tuple[bytes, ...]  # a ready V2 infer request per loaded sample
    metrics_path: str = "/metrics"
    server_pid: int | None = None


@dataclass(frozen=True, kw_only=True)
class PipeTarget:
    conn: Connection


@dataclass
class Records:
    scheduled: list[float] = field(default_factory=list)
    issued: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)
    ok: list[bool] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, sched: float, issued: float, done: float, error: str | None) -> None:
        self.scheduled.append(sched)
        self.issued.append(issued)
        self.done.append(done)
        self.ok.append(error is None)
        if error is not None and len(self.errors) < 5:
            self.errors.append(error)


Issue = Callable[[int], Awaitable[None]]


# -- transports --------------------------------------------------------------------------------


class HttpIssuer:
    def __init__(self, target: HttpTarget, spec: LoadSpec) -> None:
        self.target = target
        self.timeout_s = spec.timeout_s
        self.pool = ConnectionPool(target.host, target.port, spec.max_connections)

    async def __call__(self, sample: int) -> None:
        try:
            resp = await self.pool.request(self.target.requests[sample], self.timeout_s)
        except HttpError as e:
            raise QueryError(str(e)) from None
        if resp.status != 200:
            raise QueryError(f"HTTP {resp.status}: {resp.body[:200].decode('utf-8', 'replace')}")

    async def scrape(self) -> dict[str, float]:
        """Cost counters from the server's /metrics, if it has them."""
        raw = build_request("GET", self.target.host, self.target.port, self.target.metrics_path)
        try:
            resp = await self.pool.request(raw, 10.0)
        except HttpError:
            return {}
        return parse_counters(resp.body.decode("utf-8", "replace"), SERVER_COUNTERS) if resp.status == 200 else {}

    def close(self) -> None:
        self.pool.close()


COST_COUNTERS = ("joules_energy_joules_total", "joules_cost_usd_total", "joules_co2_grams_total")
# Read around a run as well when the server has them (`joules serve` does): rows per model call.
SERVER_COUNTERS = (*COST_COUNTERS, "joules_batch_size_sum", "joules_batch_size_count")


def parse_counters(text: str, names: Sequence[str] = COST_COUNTERS) -> dict[str, float]:
    """Sums of the named counters over all their label sets, from Prometheus text."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in names:
            try:
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
    return out


class PipeIssuer:
    """Queries to a Predictor in the parent process: ("q", id, sample) out, [(id, error), ...] back."""

    def __init__(self, target: PipeTarget) -> None:
        self.conn = target.conn
        self.futures: dict[int, asyncio.Future[str | None]] = {}
        self.next_id = 0
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.conn.fileno(), self._readable)

    def _readable(self) -> None:
        while self.conn.poll():
            for qid, err in self.conn.recv():
                fut = self.futures.pop(qid, None)
                if fut is not None and not fut.done():
                    fut.set_result(err)

    async def __call__(self, sample: int) -> None:
        qid = self.next_id
        self.next_id += 1
        fut = self.loop.create_future()
        self.futures[qid] = fut
        self.conn.send(("q", qid, sample))
        err = await fut
        if err is not None:
            raise QueryError(err)

    def mark(self, what: str) -> None:
        self.conn.send((what,))

    def close(self) -> None:
        self.loop.remove_reader(self.conn.fileno())


# -- issuing -----------------------------------------------------------------------------------


async def _timed(issue: Issue, sample: int, timeout_s: float) -> str | None:
    try:
        await asyncio.wait_for(issue(sample), timeout_s)
    except QueryError as e:
        return str(e)
    except TimeoutError:
        return f"no answer within {timeout_s:g} s"
    return None


async def run_closed(issue: Issue, spec: LoadSpec, clients: int, duration_s: float, rec: Records | None) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    end = t0 + duration_s
    samples = spec.samples

    async def client(k: int) -> None:
        j = k
        while loop.time() < end:
            s = samples[j % len(samples)]
            j += clients
            start = loop.time()
            err = await _timed(issue, s, spec.timeout_s)
            if rec is not None:
                rec.add(start - t0, start - t0, loop.time() - t0, err)

    await asyncio.gather(*(client(k) for k in range(clients)))


async def run_scheduled(issue: Issue, spec: LoadSpec, rec: Records) -> None:
    """Open loop: each query at its scheduled time, whatever is outstanding (burst: all at t=0, capped)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    cap = asyncio.Semaphore(spec.concurrency) if spec.kind == "burst" else None

    async def one(offset: float, sample: int) -> None:
        if cap is not None:
            await cap.acquire()
        issued = loop.time()
        try:
            err = await _timed(issue, sample, spec.timeout_s)
        finally:
            if cap is not None:
                cap.release()
        rec.add(offset, issued - t0, loop.time() - t0, err)

    tasks = []
    for offset, sample in zip(spec.offsets, spec.samples, strict=True):
        delay = t0 + offset - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(offset, sample)))
    await asyncio.gather(*tasks)


# -- the process -------------------------------------------------------------------------------


def process_tree_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) of ``pid`` and its live descendants, from /proc."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        parents[int(name)] = int(fields[1])
        cpu[int(name)] = (int(fields[11]) + int(fields[12])) / tick
    if pid not in cpu:
        return None
    tree, frontier = {pid}, [pid]
    while frontier:
        p = frontier.pop()
        for child, parent in parents.items():
            if parent == p and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(cpu[p] for p in tree)


async def generate(spec: LoadSpec, target: HttpTarget | PipeTarget) -> dict[str, Any]:
    issue: HttpIssuer | PipeIssuer = HttpIssuer(target, spec) if isinstance(target, HttpTarget) else PipeIssuer(target)
    out: dict[str, Any] = {}
    try:
        if spec.warmup_s > 0:
            await run_closed(issue, spec, max(1, min(spec.concurrency or 1, 8)), spec.warmup_s, None)
        if isinstance(issue, PipeIssuer):
            issue.mark("measure")
        else:
            out["metrics_before"] = await issue.scrape()
        pid = target.server_pid if isinstance(target, HttpTarget) else None
        server0 = process_tree_cpu_s(pid) if pid else None
        rec = Records()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if spec.kind == "closed":
            await run_closed(issue, spec, spec.concurrency, spec.duration_s, rec)
        else:
            await run_scheduled(issue, spec, rec)
        out["loadgen_cpu_s"] = time.process_time() - cpu0
        out["loadgen_wall_s"] = time.perf_counter() - wall0
        if pid and server0 is not None:
            server1 = process_tree_cpu_s(pid)
            out["server_cpu_s"] = None if server1 is None else server1 - server0
        if isinstance(issue, PipeIssuer):
            issue.mark("end")
        else:
            out["metrics_after"] = await issue.scrape()
        out.update(rec.__dict__)
        return out
    finally:
        issue.close()


def main(spec: LoadSpec, target: HttpTarget | PipeTarget, results: Connection) -> None:
    """Entry point of the load generator process: runs the load and sends the records back."""
    try:
        results.send(("ok", asyncio.run(generate(spec, target))))
    except Exception as e:  # the parent reports it; a traceback in a child would be lost
        results.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        results.close()

"""Runs a benchmark: loads the samples, starts the load generator process, summarises what it saw."""

from __future__ import annotations

import json
import math
import multiprocessing
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from joules.bench import loadgen
from joules.bench.config import BenchConfig, load_plan
from joules.bench.http import build_request, parse_url
from joules.bench.search import SearchResult, Verdict, find_max_qps, judge, search_duration
from joules.bench.stats import latency_summary_ms, poisson_schedule, sample_order
from joules.errors import BenchError
from joules.meter import CostModel, modelled
from joules.registry.names import parse_ref
from joules.settings import Settings, load_settings

CLOSED_LOOP_SAMPLES = 1 << 16  # seeded sample sequence cycled by closed-loop clients
PROBE_S = 2.0  # the single-stream probe that seeds --find-max-qps


@dataclass
class RunResult:
    """One run at one load."""

    scenario: str
    target: str
    qps_target: float | None
    qps_achieved: float
    qps_scheduled: float | None  # open loop: the rate of the schedule actually drawn
    samples: int
    errors: int
    latency_ms: dict[str, float]
    duration_s: float
    concurrency: int | None
    loadgen: dict[str, Any]
    system: dict[str, Any]
    first_errors: list[str] = field(default_factory=list)
    latencies_s: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "target": self.target,
            "qps_target": self.qps_target,
            "qps_achieved": round(self.qps_achieved, 3),
            "qps_scheduled": None if self.qps_scheduled is None else round(self.qps_scheduled, 3),
            "throughput_msg_s": round(self.qps_achieved, 3),
            "samples": self.samples,
            "errors": self.errors,
            "latency_ms": {k: round(v, 3) for k, v in self.latency_ms.items()},
            "duration_s": round(self.duration_s, 3),
            "concurrency": self.concurrency,
            "loadgen": self.loadgen,
            "system": self.system,
            **({"first_errors": self.first_errors} if self.first_errors else {}),
        }


@dataclass
class BenchReport:
    config: BenchConfig
    result: RunResult | None  # the reported run (with --find-max-qps: the best passing rate)
    search: SearchResult[RunResult] | None = None
    plots: list[str] = field(default_factory=list)
    directory: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        c = self.config
        out: dict[str, Any] = {"model": c.model}
        if self.result is not None:
            out.update(self.result.to_dict())
        else:
            out.update(scenario=str(c.scenario), qps_target=None, qps_achieved=0.0, samples=0, latency_ms={})
        if self.search is not None:
            out["max_qps"] = self.search.max_qps
            out["p99_bound_ms"] = c.p99_ms
            out["search"] = [
                {
                    "qps": round(p.qps, 3),
                    "passed": p.verdict.passed,
                    # No query of the step succeeded: no p99 (null, never a non-strict Infinity).
                    "p99_ms": round(p.verdict.p99_ms, 3) if math.isfinite(p.verdict.p99_ms) else None,
                    "qps_achieved": round(p.verdict.achieved_qps, 3),
                    "errors": p.verdict.errors,
                    **({"first_errors": p.result.first_errors} if p.result.first_errors else {}),
                }
                for p in self.search.points
            ]
        out["config"] = {
            "duration_s": c.duration_s,
            "warmup_s": c.warmup_s,
            "seed": c.seed,
            "timeout_s": c.timeout_s,
            "url": c.url,
        }
        if self.search is not None:
            out["config"] |= {"p99_ms": c.p99_ms, "min_qps": c.min_qps}
        out["plots"] = self.plots
        if self.directory is not None:
            out["report_dir"] = str(self.directory)
        return out


class Bench:
    """The system under test and its samples, ready for runs at several loads."""

    def __init__(
        self, config: BenchConfig, *, settings: Settings | None = None, texts: list[str], predictor: Any = None
    ) -> None:
        self.config = config
        self.plan = load_plan(config)
        self.settings = settings or load_settings()
        self.prices = CostModel.from_settings(self.settings)
        self.texts = texts
        self.predictor = predictor
        if config.url is None and predictor is None:
            raise BenchError("an in-process benchmark needs a Predictor")
        self.ctx = multiprocessing.get_context("spawn")
        self.requests: tuple[bytes, ...] = ()
        if config.url is not None:
            host, port, base = parse_url(config.url)
            ref = parse_ref(config.model)
            path = f"{base}/v2/models/{ref.name}" + (f"/versions/{ref.version}" if ref.version else "") + "/infer"
            self.host, self.port = host, port
            self.requests = tuple(
                build_request("POST", host, port, path, _v2_body(config.input_name, t), "application/json")
                for t in texts
            )
            self.metrics_path = f"{base}/metrics"

    @property
    def target(self) -> str:
        return self.config.url or "in-process"

    # -- one run ---------------------------------------------------------------------------------

    def spec(
        self,
        qps: float | None,
        *,
        kind: str | None = None,
        duration_s: float | None = None,
        warmup_s: float | None = None,
    ) -> loadgen.LoadSpec:
        c = self.config
        kind = kind or self.plan.kind
        duration = c.duration_s if duration_s is None else duration_s
        warmup = c.warmup_s if warmup_s is None else warmup_s
        n = len(self.texts)
        if kind == "open":
            assert qps is not None
            offsets = tuple(float(x) for x in poisson_schedule(qps, duration, c.seed))
            samples = tuple(int(x) for x in sample_order(len(offsets), n, c.seed))
            return loadgen.LoadSpec(
                kind="open",
                concurrency=1,
                offsets=offsets,
                samples=samples,
                duration_s=duration,
                warmup_s=warmup,
                timeout_s=c.timeout_s,
                max_connections=c.max_connections,
            )
        if kind == "burst":
            count = c.queries or n
            order = tuple(int(x) for x in np.random.default_rng(c.seed).permutation(np.arange(count) % n))
            return loadgen.LoadSpec(
                kind="burst",
                concurrency=self.plan.concurrency,
                offsets=(0.0,) * count,
                samples=order,
                duration_s=duration,
                warmup_s=warmup,
                timeout_s=c.timeout_s,
                max_connections=c.max_connections,
            )
        clients = self.plan.concurrency if self.plan.kind == "closed" else 1
        samples = tuple(int(x) for x in sample_order(CLOSED_LOOP_SAMPLES, n, c.seed))
        return loadgen.LoadSpec(
            kind="closed",
            concurrency=clients,
            samples=samples,
            duration_s=duration,
            warmup_s=warmup,
            timeout_s=c.timeout_s,
            max_connections=max(clients, 1),
        )

    def run(self, qps: float | None, **kw: Any) -> RunResult:
        spec = self.spec(qps, **kw)
        raw, system = self._generate(spec)
        return self._summarize(spec, qps, raw, system)

    def _generate(self, spec: loadgen.LoadSpec) -> tuple[dict[str, Any], dict[str, Any]]:
        results_recv, results_send = self.ctx.Pipe(duplex=False)
        sut = None
        if self.config.url is not None:
            target: loadgen.HttpTarget | loadgen.PipeTarget = loadgen.HttpTarget(
                host=self.host,
                port=self.port,
                requests=self.requests,
                metrics_path=self.metrics_path,
                server_pid=self.config.server_pid,
            )
        else:
            from joules.bench.sut import PredictorSUT

            ours, theirs = self.ctx.Pipe()
            target = loadgen.PipeTarget(conn=theirs)
            sut = PredictorSUT(self.predictor, self.texts, ours, max_batch=self.predictor.options.max_batch_size)
            sut.start()
        proc = self.ctx.Process(
            target=loadgen.main, args=(spec, target, results_send), name="joules-loadgen", daemon=True
        )
        proc.start()
        results_send.close()
        if isinstance(target, loadgen.PipeTarget):
            target.conn.close()
        try:
            status, payload = results_recv.recv()
        except EOFError:
            proc.join(5)
            raise BenchError(f"the load generator process exited with code {proc.exitcode} before reporting") from None
        finally:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
        if status != "ok":
            raise BenchError(f"the load generator failed: {payload}")
        system: dict[str, Any] = {}
        if sut is not None:
            sut.join(10)
            m = sut.measurement
            cost = self.prices.price(m)
            per = 1000.0 / sut.rows if sut.rows else 0.0
            system = {
                "kind": "in-process Predictor",
                "rows": sut.rows,
                "calls": sut.calls,
                "mean_batch": round(sut.rows / sut.calls, 2) if sut.calls else 0.0,
                "cpu_ms_per_query": 1000.0 * m.cpu_s / sut.rows if sut.rows else None,
                "energy_j_per_1000": cost.energy_j * per,
                "usd_per_1000": cost.usd * per,
                "co2_g_per_1000": cost.co2_g * per,
                "method": m.method,
                "how": m.how,
            }
            if sut.error:
                system["first_error"] = sut.error
        return payload, system

    def _summarize(
        self, spec: loadgen.LoadSpec, qps: float | None, raw: dict[str, Any], system: dict[str, Any]
    ) -> RunResult:
        ok = np.asarray(raw["ok"], dtype=bool)
        sched = np.asarray(raw["scheduled"], dtype=np.float64)
        issued = np.asarray(raw["issued"], dtype=np.float64)
        done = np.asarray(raw["done"], dtype=np.float64)
        lat = (done - sched)[ok]
        n = int(ok.sum())
        errors = int((~ok).sum())
        if spec.kind == "closed":
            elapsed = float(raw["loadgen_wall_s"])
            achieved = n / elapsed if elapsed > 0 else 0.0
        elif spec.kind == "open":
            # MLPerf's "completed samples per second": (n - 1) / time the last sample was done.
            last = float(done[ok].max()) if n else 0.0
            achieved = (n - 1) / last if n > 1 and last > 0 else 0.0
            elapsed = last
        else:
            elapsed = float(done.max()) if len(done) else 0.0
            achieved = n / elapsed if elapsed > 0 else 0.0
        queries = len(ok)
        scheduled = None
        if spec.kind == "open" and queries > 1 and sched.max() > 0:
            scheduled = (queries - 1) / float(sched.max())
        lg_cpu = float(raw["loadgen_cpu_s"])
        wall = float(raw["loadgen_wall_s"])
        delay = (issued - sched) * 1000.0
        loadgen_info: dict[str, Any] = {
            "cpu_s": round(lg_cpu, 3),
            "cpu_ms_per_query": round(1000.0 * lg_cpu / queries, 4) if queries else None,
            "cores_busy": round(lg_cpu / wall, 3) if wall > 0 else None,
        }
        if spec.kind == "open" and queries:
            loadgen_info["issue_delay_ms_p99"] = round(float(np.sort(delay)[int(queries * 0.99)]), 3)
        if self.config.url is not None:
            system = self._server_figures(raw, n, wall)
        return RunResult(
            scenario=str(self.config.scenario),
            target=self.target,
            qps_target=qps if spec.kind == "open" else None,
            qps_achieved=achieved,
            qps_scheduled=scheduled,
            samples=n,
            errors=errors,
            latency_ms=latency_summary_ms(lat),
            duration_s=elapsed,
            concurrency=spec.concurrency if spec.kind != "open" else None,
            loadgen=loadgen_info,
            system=system,
            first_errors=list(raw.get("errors", [])),
            latencies_s=lat,
        )

    def _server_figures(self, raw: dict[str, Any], n: int, wall: float) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "HTTP server", "url": self.config.url}
        cpu = raw.get("server_cpu_s")
        if cpu is not None and n:
            s = self.settings
            how = f"server process tree CPU-s x {s.watts_per_core:g} W + {s.static_watts:g} W static x run wall time"
            # The meter's energy model and the one pricing function, over the whole server process.
            cost = self.prices.price(
                modelled(cpu, wall, watts_per_core=s.watts_per_core, static_watts=s.static_watts, how=how)
            )
            out.update(
                server_pid=self.config.server_pid,
                cpu_s=round(cpu, 3),
                cpu_ms_per_query=round(1000.0 * cpu / n, 4),
                modelled_energy_j_per_1000=round(1000.0 * cost.energy_j / n, 4),
                modelled_usd_per_1000=1000.0 * cost.usd / n,
                modelled_co2_g_per_1000=1000.0 * cost.co2_g / n,
                modelled_energy_how=how,
            )
        before, after = raw.get("metrics_before") or {}, raw.get("metrics_after") or {}
        calls = after.get("joules_batch_size_count", 0.0) - before.get("joules_batch_size_count", 0.0)
        if calls > 0:  # the server's dynamic batching, seen from its /metrics
            rows = after.get("joules_batch_size_sum", 0.0) - before.get("joules_batch_size_sum", 0.0)
            out["model_calls"] = int(calls)
            out["rows_per_call"] = round(rows / calls, 2)
        if n and "joules_energy_joules_total" in after:
            delta = {k: after[k] - before.get(k, 0.0) for k in after}
            out["reported_per_1000"] = {
                "energy_j": 1000.0 * delta.get("joules_energy_joules_total", 0.0) / n,
                "usd": 1000.0 * delta.get("joules_cost_usd_total", 0.0) / n,
                "co2_g": 1000.0 * delta.get("joules_co2_grams_total", 0.0) / n,
            }
        return out

    # -- the scenario ----------------------------------------------------------------------------

    def verdict(self, qps: float, r: RunResult) -> Verdict:
        return judge(
            target_qps=r.qps_scheduled or qps,
            p99_ms=r.latency_ms.get("p99"),
            achieved_qps=r.qps_achieved,
            errors=r.errors,
            bound_ms=self.config.p99_ms,
        )

    def execute(self, *, progress: bool = True) -> BenchReport:
        c = self.config
        if not self.plan.search:
            return BenchReport(config=c, result=self.run(c.qps))
        probe = self.run(None, kind="closed", duration_s=PROBE_S)
        start = max(1.0, probe.qps_achieved)
        _say(progress, f"single-stream probe: {probe.qps_achieved:.1f} qps; searching from {start:.1f} qps")

        def measure(q: float) -> RunResult:
            r = self.run(q, duration_s=search_duration(q, c.duration_s))
            p99 = r.latency_ms.get("p99", float("nan"))
            _say(
                progress,
                f"  {q:8.1f} qps: p99 {p99:.1f} ms over {r.samples} queries, achieved {r.qps_achieved:.1f}, "
                f"errors {r.errors}",
            )
            return r

        search = find_max_qps(measure, self.verdict, start_qps=start, min_qps=c.min_qps)
        return BenchReport(config=c, result=search.best, search=search)


def _v2_body(input_name: str, text: str) -> bytes:
    return json.dumps(
        {"inputs": [{"name": input_name, "shape": [1], "datatype": "BYTES", "data": [text]}]}, separators=(",", ":")
    ).encode()


def _say(on: bool, message: str) -> None:
    if on:
        print(message, file=sys.stderr, flush=True)


def run_bench(
    config: BenchConfig,
    *,
    data: Path | None = None,
    threads: int = 0,
    max_batch: int = 64,
    out_dir: Path | None = None,
    plots: bool = True,
    progress: bool = True,
) -> BenchReport:
    """``joules bench``: samples loaded, the system under test ready, the scenario run, plots and JSON written."""
    from joules.bench.samples import load_texts

    settings = load_settings()
    texts = load_texts(data, config.model)
    predictor = None
    if config.url is None:
        from joules.runtime import RuntimeOptions, load_predictor

        predictor = load_predictor(
            config.model, options=RuntimeOptions(intra_op_threads=threads, max_batch_size=max_batch)
        )
    bench = Bench(config, settings=settings, texts=texts, predictor=predictor)
    _say(progress, f"{len(texts):,} samples loaded; {config.scenario} scenario against {bench.target}")
    report = bench.execute(progress=progress)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = parse_ref(config.model).name
    directory = out_dir or settings.reports_dir / "bench" / f"{name}-{config.scenario}-{stamp}"
    directory.mkdir(parents=True, exist_ok=True)
    report.directory = directory
    if plots:
        from joules.bench.plots import write_plots

        report.plots = [str(p) for p in write_plots(report, directory)]
    (directory / "result.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return report

"""What a stream consumer reports: counts, throughput, end-to-end latency, lag, energy and cost.

End-to-end latency is produce to verdict: the time in the source entry's id
(when XADD stored it) to the time in the verdict entry's id (when the verdict
was stored). Both come from the Redis server's clock, so the consumer's clock
does not enter the figure; with stdin, it is from reading the line to writing
its verdict. The same numbers go to a log line every ``--report-every-s``, to
the summary at exit and, with ``--metrics-port``, to Prometheus. The cost is
the sum of the rows' shares the Predictor priced (the one pricing function of
every mode); the summary's ``cost`` object has the shape batch's has.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from joules.meter import Cost, job_cost
from joules.serve.stream.base import Backlog
from joules.serve.stream.messages import Outcome, Written

LATENCY_WINDOW = 100_000  # the summary's percentiles are over the last this many verdicts
# Seconds; from a fast micro-batch to a backlog drained over minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


def percentiles(values: Sequence[float] | deque[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None}
    p50, p99 = np.percentile(np.fromiter(values, dtype=np.float64, count=len(values)), [50, 99])
    return {"p50": round(float(p50), 1), "p99": round(float(p99), 1)}


@dataclass
class _Window:
    started: float
    handled: int = 0
    latencies_ms: list[float] = field(default_factory=list)


class StreamMetrics:
    def __init__(self, *, model: str, report_every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.model = model
        self.report_every_s = report_every_s
        self.clock = clock
        self.started = clock()
        self.verdicts = 0
        self.dead = 0
        self.duplicates = 0  # outcomes already written by an earlier delivery: not written again
        self.retries = 0
        self.batches = 0
        self.broker_errors = 0
        self.labels: dict[str, int] = {}
        self.actions: dict[str, int] = {}
        self.cost = Cost()  # what the model calls cost, all rows
        self.backlog: Backlog | None = None
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._window = _Window(self.started)
        self._prom: dict[str, Any] | None = None

    # -- recording -------------------------------------------------------------------------------

    def record(self, outcomes: Sequence[Outcome], written: Sequence[Written], cost: Cost) -> None:
        self.batches += 1
        self.cost = self.cost + cost
        for o, w in zip(outcomes, written, strict=True):
            if not w.new:
                self.duplicates += 1
                continue
            if not o.dead:
                self.verdicts += 1
                label, action = o.result.label or "", o.result.action
                self.labels[label] = self.labels.get(label, 0) + 1
                if action is not None:
                    self.actions[action] = self.actions.get(action, 0) + 1
                if w.at_ms is not None and o.message.produced_ms is not None:
                    ms = max(0.0, w.at_ms - o.message.produced_ms)
                    self._latencies.append(ms)
                    self._window.latencies_ms.append(ms)
                    if self._prom:
                        self._prom["latency"].observe(ms / 1000)
            else:
                self.dead += 1
            self._window.handled += 1
        if self._prom:
            p = self._prom
            new_verdicts = sum(1 for o, w in zip(outcomes, written, strict=True) if w.new and not o.dead)
            p["messages"].labels("verdict").inc(new_verdicts)
            p["messages"].labels("dead_letter").inc(sum(1 for w in written if w.new) - new_verdicts)
            p["messages"].labels("duplicate").inc(sum(1 for w in written if not w.new))
            p["batches"].inc()
            p["energy"].inc(cost.energy_j)
            p["cpu"].inc(cost.cpu_s)

    def record_retries(self, n: int) -> None:
        self.retries += n
        if self._prom:
            self._prom["messages"].labels("retry").inc(n)

    def record_broker_error(self) -> None:
        self.broker_errors += 1
        if self._prom:
            self._prom["broker_errors"].inc()

    def record_backlog(self, backlog: Backlog | None) -> None:
        self.backlog = backlog
        if self._prom and backlog is not None:
            if backlog.lag is not None:
                self._prom["lag"].set(backlog.lag)
            self._prom["pending"].set(backlog.pending)

    # -- reporting -------------------------------------------------------------------------------

    def report_due(self) -> bool:
        return self.report_every_s > 0 and self.clock() - self._window.started >= self.report_every_s

    def report_line(self) -> str:
        """A progress line for the interval since the last one; starts the next interval."""
        now = self.clock()
        w, self._window = self._window, _Window(now)
        rate = w.handled / max(now - w.started, 1e-9)
        lat = percentiles(w.latencies_ms)
        parts = [
            f"{self.verdicts:,} verdicts, {self.dead:,} dead letters, {self.duplicates:,} duplicates skipped",
            f"{rate:,.1f} msg/s",
        ]
        if lat["p50"] is not None:
            parts.append(f"e2e p50 {lat['p50']:,.0f} ms p99 {lat['p99']:,.0f} ms")
        if self.backlog is not None:
            lag = "?" if self.backlog.lag is None else f"{self.backlog.lag:,}"
            parts.append(f"lag {lag}, pending {self.backlog.pending:,} ({self.backlog.consumers} consumers)")
        if self.retries:
            parts.append(f"{self.retries:,} retries")
        if self.broker_errors:
            parts.append(f"{self.broker_errors:,} broker errors")
        return "; ".join(parts)

    def summary(self) -> dict[str, Any]:
        seconds = self.clock() - self.started
        handled = self.verdicts + self.dead
        lat = percentiles(self._latencies)
        m = self.cost
        return {
            "model": self.model,
            "verdicts": self.verdicts,
            "dead_letters": self.dead,
            "duplicates_skipped": self.duplicates,
            "retries": self.retries,
            "batches": self.batches,
            "seconds": round(seconds, 2),
            "messages_per_s": round(handled / seconds, 1) if seconds > 0 else 0.0,
            "e2e_latency_ms": lat,
            "labels": dict(sorted(self.labels.items())),
            "actions": dict(sorted(self.actions.items())),
            "energy_j": round(m.energy_j, 3),
            "energy_j_per_1000": round(1000 * m.energy_j / self.verdicts, 3) if self.verdicts else 0.0,
            "cpu_s": round(m.cpu_s, 3),
            "cost": job_cost(m, self.verdicts),
            "broker_errors": self.broker_errors,
            "lag": None if self.backlog is None else self.backlog.lag,
            "pending": None if self.backlog is None else self.backlog.pending,
        }

    # -- Prometheus ------------------------------------------------------------------------------

    def serve_prometheus(self, port: int, host: str = "127.0.0.1") -> Any:
        """Prometheus text at ``http://HOST:PORT/metrics`` from a daemon thread; returns the server."""
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

        reg = CollectorRegistry()
        self._prom = {
            "messages": Counter("joules_stream_messages", "Messages handled, by outcome", ["outcome"], registry=reg),
            "batches": Counter("joules_stream_batches", "Micro-batches judged", registry=reg),
            "latency": Histogram(
                "joules_stream_e2e_latency_seconds",
                "Produce-to-verdict latency",
                buckets=LATENCY_BUCKETS,
                registry=reg,
            ),
            "lag": Gauge("joules_stream_lag", "Entries not yet delivered to the group", registry=reg),
            "pending": Gauge("joules_stream_pending", "Entries delivered and not acked, whole group", registry=reg),
            "energy": Counter("joules_stream_energy_joules", "Energy of model calls", registry=reg),
            "cpu": Counter("joules_stream_cpu_seconds", "CPU seconds of model calls", registry=reg),
            "broker_errors": Counter("joules_stream_broker_errors", "Lost broker connections", registry=reg),
        }
        server, _thread = start_http_server(port, addr=host, registry=reg)
        return server

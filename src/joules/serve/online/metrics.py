"""Prometheus metrics of the online server, in a registry of its own.

Labels are only ever names of served models and their versions (requests for
unknown models are counted under ``model=""``), so a client cannot grow the
number of series.

The cost counters (``joules_energy_joules_total``, ``joules_cost_usd_total``,
``joules_co2_grams_total``) are ``joules.meter.prometheus.CostCounters``: every
model call is counted whole, so they equal the sum of the per-response cost
headers, plus the shares of callers that gave up before their answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from joules.meter import CostModel, Measurement
from joules.meter.prometheus import CostCounters

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds, from a fast cached answer to a request that waited out a long deadline.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


# Time to first token (a prompt's prefill, queueing included) and between tokens (one decode step).
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 30)
ITL_BUCKETS = (0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5)


def batch_buckets(max_batch_size: int) -> tuple[float, ...]:
    """1, 2, 4, ... up to ``max_batch_size`` (itself included when not a power of two)."""
    out = []
    b = 1
    while b < max_batch_size:
        out.append(float(b))
        b *= 2
    out.append(float(max_batch_size))
    return tuple(out)


@dataclass(frozen=True)
class ModelState:
    """What the gauges read from a served model at scrape time."""

    model: str
    version: str
    queue_depth: int
    running: int
    cache_entries: int | None


@dataclass(frozen=True)
class LlmState:
    """What the generation gauges and token counters read from a served engine at scrape time."""

    model: str
    version: str
    running: int
    waiting: int
    kv_cache_usage: float
    prompt_tokens: int
    completion_tokens: int
    preemptions: int


class _LlmCollector(Collector):
    def __init__(self, states: Callable[[], Iterable[LlmState]]) -> None:
        self._states = states

    def collect(self) -> Iterator[Metric]:
        mv = ["model", "version"]
        running = GaugeMetricFamily("joules_llm_running_sequences", "Sequences in the running batch", labels=mv)
        waiting = GaugeMetricFamily("joules_llm_waiting_sequences", "Sequences waiting for a slot", labels=mv)
        kv = GaugeMetricFamily(
            "joules_llm_kv_cache_usage_ratio", "KV cache tokens held / the KV cache budget", labels=mv
        )
        tokens = CounterMetricFamily("joules_llm_tokens", "Tokens put through the model, by kind", labels=[*mv, "kind"])
        preempt = CounterMetricFamily(
            "joules_llm_preemptions", "Sequences preempted (recomputed later) when the KV cache filled", labels=mv
        )
        for s in self._states():
            running.add_metric([s.model, s.version], s.running)
            waiting.add_metric([s.model, s.version], s.waiting)
            kv.add_metric([s.model, s.version], s.kv_cache_usage)
            tokens.add_metric([s.model, s.version, "prompt"], s.prompt_tokens)
            tokens.add_metric([s.model, s.version, "completion"], s.completion_tokens)
            preempt.add_metric([s.model, s.version], s.preemptions)
        yield from (running, waiting, kv, tokens, preempt)

    def describe(self) -> Iterator[Metric]:
        return iter(())


class _StateCollector(Collector):
    def __init__(self, states: Callable[[], Iterable[ModelState]]) -> None:
        self._states = states

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "joules_queue_depth", "Requests waiting for a model call", labels=["model", "version"]
        )
        running = GaugeMetricFamily("joules_running_calls", "Model calls in progress", labels=["model", "version"])
        ready = GaugeMetricFamily("joules_model_ready", "1 for each loaded model version", labels=["model", "version"])
        entries = GaugeMetricFamily(
            "joules_cache_entries", "Rows held in the response cache", labels=["model", "version"]
        )
        for s in self._states():
            depth.add_metric([s.model, s.version], s.queue_depth)
            running.add_metric([s.model, s.version], s.running)
            ready.add_metric([s.model, s.version], 1)
            if s.cache_entries is not None:
                entries.add_metric([s.model, s.version], s.cache_entries)
        yield from (depth, running, ready, entries)

    def describe(self) -> Iterator[Metric]:
        return iter(())


class ServerMetrics:
    def __init__(
        self,
        *,
        max_batch_size: int,
        states: Callable[[], Iterable[ModelState]],
        llm_states: Callable[[], Iterable[LlmState]] = lambda: (),
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        mv = ["model", "version"]
        self.requests = Counter(
            "joules_requests", "Inference requests answered, by HTTP status", [*mv, "status"], registry=r
        )
        self.request_duration = Histogram(
            "joules_request_duration_seconds",
            "Time from a request's arrival to its answer",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            "joules_queue_duration_seconds",
            "Time a request waited in the queue before its model call started",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_duration = Histogram(
            "joules_compute_duration_seconds", "Wall time of one model call", mv, buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "joules_batch_size", "Rows per model call", mv, buckets=batch_buckets(max_batch_size), registry=r
        )
        self.costs = CostCounters(r)
        self.cache_hits = Counter("joules_cache_hits", "Rows answered from the response cache", mv, registry=r)
        self.cache_misses = Counter("joules_cache_misses", "Rows not found in the response cache", mv, registry=r)
        self.inflight = Gauge(
            "joules_inflight_requests", "Inference requests received and not yet answered", registry=r
        )
        self.model_loads = Counter(
            "joules_model_loads", "Model versions loaded, by outcome", ["model", "outcome"], registry=r
        )
        self.registry_polls = Counter(
            "joules_registry_polls", "Times the registry was asked for new production versions", registry=r
        )
        self.registry_poll_errors = Counter(
            "joules_registry_poll_errors", "Registry polls that failed (logged; the next poll tries again)", registry=r
        )
        self.ttft = Histogram(
            "joules_llm_time_to_first_token_seconds",
            "Time from a completion's arrival to its first token",
            mv,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "joules_llm_inter_token_latency_seconds",
            "Time between two tokens of one completion",
            mv,
            buckets=ITL_BUCKETS,
            registry=r,
        )
        r.register(_StateCollector(states))
        r.register(_LlmCollector(llm_states))

    def llm_observer(self, model: str, version: str) -> LlmObserver:
        """An ``EngineObserver`` feeding this model's latency histograms."""
        return LlmObserver(self.ttft.labels(model, version), self.itl.labels(model, version))

    # -- observers handed to the batcher and the runner -------------------------------------------

    def queue_observer(self, model: str, version: str) -> Callable[[Sequence[float]], None]:
        child = self.queue_duration.labels(model, version)

        def observe(waits: Sequence[float]) -> None:
            for w in waits:
                child.observe(w)

        return observe

    def call_observer(self, model: str, version: str, prices: CostModel) -> Callable[[int, Measurement], None]:
        size = self.batch_size.labels(model, version)
        compute = self.compute_duration.labels(model, version)
        cost = self.costs.call_observer(model, version, prices)

        def observe(rows: int, m: Measurement) -> None:
            size.observe(rows)
            compute.observe(m.wall_s)
            cost(rows, m)

        return observe

    def render(self) -> bytes:
        return generate_latest(self.registry)


class LlmObserver:
    """Receives the engine's latencies (from its thread: prometheus_client's histograms are thread-safe)."""

    def __init__(self, ttft: Histogram, itl: Histogram) -> None:
        self._ttft = ttft
        self._itl = itl

    def first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def inter_token(self, seconds: float) -> None:
        self._itl.observe(seconds)

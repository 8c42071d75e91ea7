"""What ``joules bench`` was asked to do, and the load it turns into (MLPerf Inference scenarios).

- single-stream: one query at a time, the next when the previous answers; latency percentiles.
- server: open-loop Poisson arrivals at ``qps``, latency from each query's
  scheduled time (so queueing counts); or ``concurrency`` closed-loop clients;
  or ``find_max_qps``: the highest rate whose p99 stays within ``p99_ms``.
- offline: every sample at once (at most ``concurrency`` in flight over HTTP); throughput.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from joules.bench.search import DEFAULT_MIN_QPS
from joules.errors import ConfigError


class Scenario(StrEnum):
    SINGLE_STREAM = "single-stream"
    SERVER = "server"
    OFFLINE = "offline"


DEFAULT_OFFLINE_CONCURRENCY = 64


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    model: str  # NAME[:VERSION]
    scenario: Scenario
    url: str | None = None  # None: the Predictor in process
    qps: float | None = None
    find_max_qps: bool = False
    p99_ms: float = 50.0  # the latency bound of --find-max-qps
    min_qps: float = DEFAULT_MIN_QPS  # --find-max-qps tries no lower rate; failing there reports none
    concurrency: int | None = None
    duration_s: float = 10.0
    warmup_s: float = 2.0
    seed: int = 0
    timeout_s: float = 30.0  # a query unanswered after this counts as an error
    queries: int | None = None  # offline: samples to send (default: every loaded sample)
    input_name: str = "text"  # the V2 input carrying the text (BYTES)
    max_connections: int = 512  # open loop: connections the load generator may open
    server_pid: int | None = None  # --url: read this process's CPU time (and its children's) around the run

    def __post_init__(self) -> None:
        object.__setattr__(self, "scenario", Scenario(self.scenario))
        load_plan(self)  # rejects combinations no scenario can run
        if not 0 < self.duration_s <= 24 * 3600:
            raise ConfigError(f"--duration must be in (0, 86400] seconds, got {self.duration_s}")
        if not 0 <= self.warmup_s <= 3600:
            raise ConfigError(f"--warmup must be in [0, 3600] seconds, got {self.warmup_s}")
        if not 0 < self.p99_ms <= 600_000:
            raise ConfigError(f"--p99-ms must be in (0, 600000], got {self.p99_ms}")
        if not 0 < self.min_qps <= 1_000_000:
            raise ConfigError(f"--min-qps must be in (0, 1000000], got {self.min_qps}")
        if not 0 < self.timeout_s <= 3600:
            raise ConfigError(f"timeout must be in (0, 3600] seconds, got {self.timeout_s}")
        if self.queries is not None and self.queries < 1:
            raise ConfigError(f"--queries must be >= 1, got {self.queries}")
        if self.max_connections < 1:
            raise ConfigError(f"max_connections must be >= 1, got {self.max_connections}")


@dataclass(frozen=True, kw_only=True)
class LoadPlan:
    """How queries are issued: ``open`` at scheduled times, ``closed`` by N clients, ``burst`` all at t=0."""

    kind: Literal["open", "closed", "burst"]
    concurrency: int  # closed: clients; burst: in flight at most; open: unused
    search: bool = False


def load_plan(c: BenchConfig) -> LoadPlan:
    """The one place that maps a scenario and its options to a load, rejecting what cannot be run."""
    if c.qps is not None and not 0 < c.qps <= 1_000_000:
        raise ConfigError(f"--qps must be in (0, 1000000], got {c.qps}")
    if c.concurrency is not None and not 1 <= c.concurrency <= 100_000:
        raise ConfigError(f"--concurrency must be >= 1, got {c.concurrency}")
    if c.scenario is Scenario.SINGLE_STREAM:
        if c.qps is not None or c.find_max_qps or c.concurrency not in (None, 1):
            raise ConfigError(
                "single-stream sends one query at a time: --qps, --find-max-qps and --concurrency > 1 do not apply; "
                "use --scenario server for those"
            )
        return LoadPlan(kind="closed", concurrency=1)
    if c.scenario is Scenario.OFFLINE:
        if c.qps is not None or c.find_max_qps:
            raise ConfigError("offline sends every sample at once: --qps and --find-max-qps do not apply")
        return LoadPlan(kind="burst", concurrency=c.concurrency or DEFAULT_OFFLINE_CONCURRENCY)
    given = [name for name, on in (("--qps", c.qps is not None), ("--find-max-qps", c.find_max_qps)) if on]
    if c.concurrency is not None:
        given.append("--concurrency")
    if len(given) != 1:
        raise ConfigError(
            "the server scenario needs exactly one of --qps Q (Poisson arrivals), --find-max-qps (with --p99-ms) "
            f"or --concurrency C (closed-loop clients); got {given or 'none'}"
        )
    if c.concurrency is not None:
        return LoadPlan(kind="closed", concurrency=c.concurrency)
    return LoadPlan(kind="open", concurrency=0, search=c.find_max_qps)

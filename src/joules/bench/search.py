"""The highest arrival rate whose p99 latency stays within a bound.

Like MLPerf's server scenario, a rate is valid when the p99 latency (from
scheduled times) is within the bound; we also require no errors and a
completed rate of at least 90 % of the scheduled one (the rate of the arrival
times actually drawn, which on a short run differs from the target by a few
per cent), so a server that drops or stalls queries does not pass. The search doubles the rate until a run fails,
then bisects between the last pass and the first failure until they are
within ``tolerance`` of each other or the run budget is spent.

The search assumes latency rises with the rate, which holds for a p99 only
when each run has enough queries for its p99 to be more than its worst one or
two: a 10 s run at 5 QPS has 50, and its "p99" swings with one slow query,
so a low rate could fail where a higher one passed. Each run of the search
therefore lasts long enough for ``MIN_SEARCH_QUERIES`` queries (MLPerf's
LoadGen likewise sets a minimum query count per run), at least the configured
duration. That makes runs at very low rates long (600 s at 0.5 QPS), so the
search stops halving at ``min_qps``: a system that fails there is reported as
"below ``min_qps``" (``max_qps`` None), and a comparison of several systems can
raise the floor to bound its time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

MIN_ACHIEVED = 0.9
# Queries per search run: its p99 is then about the 3rd-worst latency, not the worst.
MIN_SEARCH_QUERIES = 300
# The lowest rate the search tries (joules bench --min-qps).
DEFAULT_MIN_QPS = 0.5


def search_duration(qps: float, duration_s: float) -> float:
    """How long a search run at ``qps`` lasts: ``duration_s``, or longer for ``MIN_SEARCH_QUERIES`` queries."""
    return max(duration_s, MIN_SEARCH_QUERIES / qps)


@dataclass(frozen=True, kw_only=True)
class Verdict:
    passed: bool
    p99_ms: float
    achieved_qps: float
    errors: int


def judge(*, target_qps: float, p99_ms: float | None, achieved_qps: float, errors: int, bound_ms: float) -> Verdict:
    ok = p99_ms is not None and errors == 0 and p99_ms <= bound_ms and achieved_qps >= MIN_ACHIEVED * target_qps
    return Verdict(
        passed=ok, p99_ms=p99_ms if p99_ms is not None else float("inf"), achieved_qps=achieved_qps, errors=errors
    )


@dataclass(frozen=True, kw_only=True)
class Point(Generic[T]):
    qps: float
    verdict: Verdict
    result: T


@dataclass(frozen=True, kw_only=True)
class SearchResult(Generic[T]):
    max_qps: float | None  # None: even the lowest rate tried failed
    best: T | None
    points: list[Point[T]]


def find_max_qps(
    measure: Callable[[float], T],
    verdict: Callable[[float, T], Verdict],
    *,
    start_qps: float,
    min_qps: float = DEFAULT_MIN_QPS,
    max_runs: int = 10,
    tolerance: float = 0.05,
) -> SearchResult[T]:
    """Search with ``measure(qps) -> result`` and ``verdict(qps, result)``."""
    lo: float | None = None
    hi: float | None = None
    best: T | None = None
    points: list[Point[T]] = []
    q = max(start_qps, min_qps)
    for _ in range(max_runs):
        result = measure(q)
        v = verdict(q, result)
        points.append(Point(qps=q, verdict=v, result=result))
        if v.passed:
            lo, best = q, result
        else:
            hi = q
        if lo is not None and hi is not None:
            if hi <= lo * (1 + tolerance):
                break
            q = (lo + hi) / 2
        elif lo is not None:
            q = lo * 2
        else:
            assert hi is not None
            q = hi / 2
            if q < min_qps:
                break
    return SearchResult(max_qps=lo, best=best, points=points)

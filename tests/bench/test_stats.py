from __future__ import annotations

import numpy as np
import pytest

from joules.bench.config import BenchConfig, Scenario, load_plan
from joules.bench.search import Verdict, find_max_qps, judge
from joules.bench.stats import latency_summary_ms, percentile, poisson_schedule, sample_order
from joules.errors import ConfigError


def test_poisson_arrivals_have_the_asked_rate() -> None:
    t = poisson_schedule(200.0, 60.0, seed=3)
    assert t[0] == 0.0 and np.all(np.diff(t) >= 0) and t[-1] < 60.0
    # 12,000 expected arrivals: the count's standard deviation is about 110 (1 %).
    assert len(t) / 60.0 == pytest.approx(200.0, rel=0.03)
    gaps = np.diff(t)
    assert gaps.mean() == pytest.approx(1 / 200.0, rel=0.03)
    assert gaps.std() == pytest.approx(gaps.mean(), rel=0.05), "exponential gaps: std equals mean"
    assert np.array_equal(t, poisson_schedule(200.0, 60.0, seed=3)), "seeded"
    assert not np.array_equal(t[:50], poisson_schedule(200.0, 60.0, seed=4)[:50])


def test_sample_order_is_seeded_and_covers_the_samples() -> None:
    a = sample_order(5000, 10, seed=1)
    assert np.array_equal(a, sample_order(5000, 10, seed=1)) and set(a.tolist()) == set(range(10))


def test_percentile_is_mlperf_nearest_rank() -> None:
    v = list(range(1, 101))  # 1..100
    assert percentile(v, 0.5) == 51  # values[floor(100 x 0.5)]
    assert percentile(v, 0.9) == 91
    assert percentile(v, 0.99) == 100
    assert percentile([7.0], 0.99) == 7.0
    s = latency_summary_ms([0.001 * x for x in range(1, 1001)])
    assert s["p50"] == pytest.approx(501.0) and s["p99"] == pytest.approx(991.0) and s["max"] == pytest.approx(1000.0)
    with pytest.raises(ValueError):
        percentile(v, 1.0)


def test_max_qps_search_on_a_known_capacity() -> None:
    """A fake system whose p99 is 5 ms below 137 qps and explodes above it."""
    capacity = 137.0
    asked: list[float] = []

    def measure(q: float) -> float:
        asked.append(q)
        return 5.0 if q <= capacity else 5000.0

    def verdict(q: float, p99: float) -> Verdict:
        return judge(target_qps=q, p99_ms=p99, achieved_qps=q, errors=0, bound_ms=50.0)

    r = find_max_qps(measure, verdict, start_qps=10.0, max_runs=20, tolerance=0.02)
    assert r.max_qps is not None and capacity / 1.02 <= r.max_qps <= capacity
    assert r.best == 5.0 and len(r.points) == len(asked) <= 20
    none = find_max_qps(lambda q: 5000.0, verdict, start_qps=10.0)
    assert none.max_qps is None and none.best is None


def test_a_search_run_lasts_long_enough_for_a_p99() -> None:
    from joules.bench.search import MIN_SEARCH_QUERIES, search_duration

    assert search_duration(100.0, 10.0) == 10.0, "1,000 queries in the configured 10 s"
    assert search_duration(5.0, 10.0) == MIN_SEARCH_QUERIES / 5.0, "50 queries would make the p99 the worst one"
    assert search_duration(5.0, 10.0) * 5.0 >= 300


def test_a_rate_the_system_cannot_complete_fails() -> None:
    assert not judge(target_qps=100, p99_ms=10, achieved_qps=80, errors=0, bound_ms=50).passed
    assert not judge(target_qps=100, p99_ms=10, achieved_qps=100, errors=1, bound_ms=50).passed
    assert judge(target_qps=100, p99_ms=50, achieved_qps=95, errors=0, bound_ms=50).passed


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"scenario": "single-stream", "qps": 5}, "single-stream sends one query at a time"),
        ({"scenario": "server"}, "exactly one of --qps"),
        ({"scenario": "server", "qps": 5, "concurrency": 8}, "exactly one of --qps"),
        ({"scenario": "offline", "find_max_qps": True}, "offline sends every sample at once"),
        ({"scenario": "server", "qps": -1}, "--qps must be in"),
        ({"scenario": "server", "qps": 5, "duration_s": 0}, "--duration"),
    ],
)
def test_scenario_options_that_cannot_run_are_refused(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BenchConfig(model="spam", **kw)  # type: ignore[arg-type]


def test_load_plans() -> None:
    assert load_plan(BenchConfig(model="m", scenario=Scenario.SINGLE_STREAM)).concurrency == 1
    assert load_plan(BenchConfig(model="m", scenario="server", concurrency=64)).kind == "closed"
    assert load_plan(BenchConfig(model="m", scenario="server", find_max_qps=True)).search
    assert load_plan(BenchConfig(model="m", scenario="offline")).kind == "burst"


def test_the_search_stops_at_its_floor() -> None:
    """A system that fails everywhere is tried down to min_qps and no lower (runs there last 300/min_qps s)."""
    asked: list[float] = []

    def measure(q: float) -> float:
        asked.append(q)
        return 5000.0

    def verdict(q: float, p99: float) -> Verdict:
        return judge(target_qps=q, p99_ms=p99, achieved_qps=q, errors=0, bound_ms=50.0)

    r = find_max_qps(measure, verdict, start_qps=40.0, min_qps=5.0)
    assert r.max_qps is None and asked == [40.0, 20.0, 10.0, 5.0]
    with pytest.raises(ConfigError, match="--min-qps"):
        BenchConfig(model="m", scenario="server", find_max_qps=True, min_qps=0)


def test_a_search_report_is_strict_json_with_each_steps_errors() -> None:
    """A step where no query succeeded has no p99 (null, not Infinity) and keeps the errors that failed it."""
    import json

    from joules.bench.driver import BenchReport, RunResult
    from joules.bench.search import Point, SearchResult

    def run(qps: float, p99: float | None, errors: list[str]) -> RunResult:
        return RunResult(
            scenario="server", target="http://127.0.0.1:1", qps_target=qps, qps_achieved=0.0 if errors else qps,
            qps_scheduled=qps, samples=0 if errors else 100, errors=len(errors) * 10,
            latency_ms={} if p99 is None else {"p99": p99}, duration_s=5.0, concurrency=None, loadgen={},
            system={}, first_errors=errors,
        )  # fmt: skip

    good = run(10.0, 4.0, [])
    dead = run(20.0, None, ["HTTP 503: the server is overloaded", "connection refused"])
    points = [
        Point(qps=10.0, verdict=judge(target_qps=10, p99_ms=4.0, achieved_qps=10, errors=0, bound_ms=50), result=good),
        Point(qps=20.0, verdict=judge(target_qps=20, p99_ms=None, achieved_qps=0, errors=20, bound_ms=50), result=dead),
    ]
    config = BenchConfig(model="m", scenario="server", find_max_qps=True)
    report = BenchReport(config=config, result=good, search=SearchResult(max_qps=10.0, best=good, points=points))
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert d["search"][0]["p99_ms"] == 4.0 and "first_errors" not in d["search"][0]
    assert d["search"][1]["p99_ms"] is None and not d["search"][1]["passed"]
    assert d["search"][1]["first_errors"] == ["HTTP 503: the server is overloaded", "connection refused"]

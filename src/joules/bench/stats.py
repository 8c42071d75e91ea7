"""Arrival schedules and latency statistics, as MLPerf Inference LoadGen defines them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PERCENTILES = (0.5, 0.9, 0.99)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The ``p`` quantile (0 <= p < 1) of ascending values: ``values[floor(n * p)]``.

    MLPerf LoadGen's definition (loadgen/results.cc, ``ProcessLatencies``): no
    interpolation, so a reported p99 is a latency some query really had.
    """
    if not 0 <= p < 1:
        raise ValueError(f"percentile p must be in [0, 1), got {p}")
    n = len(sorted_values)
    if n == 0:
        raise ValueError("no values")
    return float(sorted_values[int(n * p)])


def latency_summary_ms(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99, mean, min and max in milliseconds."""
    if len(latencies_s) == 0:
        return {}
    v = sorted(float(x) * 1000.0 for x in latencies_s)
    out = {f"p{round(p * 100)}": percentile(v, p) for p in PERCENTILES}
    out.update(mean=float(np.mean(v)), min=v[0], max=v[-1])
    return out


def poisson_schedule(rate_qps: float, duration_s: float, seed: int) -> np.ndarray:
    """Arrival offsets (seconds from the start) of a Poisson process at ``rate_qps`` over ``duration_s``.

    Exponential inter-arrival times, as LoadGen's server scenario draws them
    (loadgen/loadgen.cc, ``ScheduleDistribution<TestScenario::Server>``); the
    first query is at 0.
    """
    if rate_qps <= 0 or duration_s <= 0:
        raise ValueError(f"rate and duration must be > 0, got {rate_qps} qps for {duration_s} s")
    rng = np.random.default_rng(seed)
    expected = rate_qps * duration_s
    n = int(expected + 6 * np.sqrt(expected) + 16)
    gaps = rng.exponential(1.0 / rate_qps, size=n)
    times = np.concatenate([[0.0], np.cumsum(gaps)])
    while times[-1] < duration_s:  # very unlikely: draw more
        more = np.cumsum(rng.exponential(1.0 / rate_qps, size=n)) + times[-1]
        times = np.concatenate([times, more])
    return times[times < duration_s]


def sample_order(n_queries: int, n_samples: int, seed: int) -> np.ndarray:
    """Which loaded sample each query carries: uniform with replacement, seeded (LoadGen's performance mode)."""
    rng = np.random.default_rng(seed + 1)
    return rng.integers(0, n_samples, size=n_queries)

"""Load generation in MLPerf Inference scenarios, and what a prediction costs."""

from joules.bench.config import BenchConfig, BenchError, LoadPlan, Scenario, load_plan
from joules.bench.runner import Bench, BenchReport, RunResult, run_bench

__all__ = [
    "Bench",
    "BenchConfig",
    "BenchError",
    "BenchReport",
    "LoadPlan",
    "RunResult",
    "Scenario",
    "load_plan",
    "run_bench",
]

"""Load generation in MLPerf Inference scenarios, and what a prediction costs."""

from joules.bench.config import BenchConfig, LoadPlan, Scenario, load_plan
from joules.bench.driver import Bench, BenchReport, RunResult, run_bench
from joules.errors import BenchError

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

"""The benchmark scripts themselves: their names, and how generate/bench.py judges the issue's targets.

They run as ``python benchmarks/<area>/<script>.py``, which puts their folder first on ``sys.path``: a script
named like a standard-library module (``profile.py``) then replaces that module for every import in the run
(``transformers`` imports ``cProfile``, which imports ``profile``, and failed)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_no_benchmark_script_shadows_a_standard_library_module() -> None:
    scripts = sorted(BENCHMARKS.rglob("*.py"))
    assert scripts, BENCHMARKS
    clashes = [str(p.relative_to(BENCHMARKS)) for p in scripts if p.stem in sys.stdlib_module_names]
    assert not clashes, f"rename these scripts: they shadow standard-library modules: {clashes}"


def _generate_bench() -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate_bench", BENCHMARKS / "generate" / "bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(system: str, one: float, streams: dict[int, float]) -> dict[str, object]:
    levels = [
        {"streams": n, "tokens_per_s": v, "itl_p50_ms": 1.0, "itl_p99_ms": None, "ttft_p50_s": None}
        for n, v in streams.items()
    ]
    return {"system": system, "ttft_s": 0.1, "decode_tokens_per_s": one, "peak_rss_mb": 1.0, "levels": levels}


def test_generate_bench_judges_targets_on_paired_ratios() -> None:
    bench: Any = _generate_bench()
    # Three repeats; the machine is slow in the second for both systems alike.
    joules = [
        _run("joules", 60, {1: 60, 16: 330}),
        _run("joules", 40, {1: 40, 16: 200}),
        _run("joules", 62, {1: 62, 16: 340}),
    ]
    llama = [
        _run("llama.cpp", 100, {1: 100, 16: 170}),
        _run("llama.cpp", 70, {1: 70, 16: 95}),
        _run("llama.cpp", 110, {1: 110, 16: 160}),
    ]
    results = [bench.median_result(joules), bench.median_result(llama)]
    assert results[0]["levels"][1]["tokens_per_s"] == 330 and results[1]["levels"][1]["tokens_per_s"] == 160
    assert [r["tokens_per_s"][16] for r in results[0]["runs"]] == [330, 200, 340]
    by = {t["target"]: t for t in bench.targets(results)}
    t = by["16 streams: joules float32 >= 2x llama-server -np 16 (aggregate)"]
    # Ratio of the medians: 330 / 160 = 2.06; the paired ratios 1.94, 2.11, 2.125 have the median 2.11.
    assert abs(t["ratio"] - 330 / 160) < 1e-9
    assert [round(r, 3) for r in t["paired_ratios"]] == [round(330 / 170, 3), round(200 / 95, 3), round(340 / 160, 3)]
    assert abs(t["paired_median"] - 200 / 95) < 1e-9 and t["met"] is True
    own = by["16 streams: joules float32 >= 6x its own single stream"]
    assert abs(own["paired_median"] - 340 / 62) < 1e-9  # of 5.5, 5.0, 5.48 and own["met"] is False
    # One run per system: no pairs, judged on the ratio itself.
    single = {t["target"]: t for t in bench.targets([joules[0], llama[0]])}
    assert single["16 streams: joules float32 >= 2x llama-server -np 16 (aggregate)"]["paired_ratios"] == []
    assert single["16 streams: joules float32 >= 2x llama-server -np 16 (aggregate)"]["met"] is False  # 1.94

"""The benchmark scripts run as ``python benchmarks/<area>/<script>.py``, which puts their folder first on
``sys.path``: a script named like a standard-library module (``profile.py``) then replaces that module for
every import in the run (``transformers`` imports ``cProfile``, which imports ``profile``, and failed)."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_no_benchmark_script_shadows_a_standard_library_module() -> None:
    scripts = sorted(BENCHMARKS.rglob("*.py"))
    assert scripts, BENCHMARKS
    clashes = [str(p.relative_to(BENCHMARKS)) for p in scripts if p.stem in sys.stdlib_module_names]
    assert not clashes, f"rename these scripts: they shadow standard-library modules: {clashes}"

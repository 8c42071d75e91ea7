"""The whole `joules optimize` on the flagship all-MiniLM-L6-v2 spam model (slow: minutes).

Uses a copy of ``$JOULES_TEST_MINILM_HOME`` (a JOULES_HOME holding a trained
spam:1, e.g. the one `joules train spam` makes) when set, else trains one.
Checks behaviour (variants, selection, lineage); speed is for docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DATA
from tests.helpers import run_joules

pytestmark = pytest.mark.slow


@pytest.fixture()
def minilm_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    source = os.environ.get("JOULES_TEST_MINILM_HOME")
    if source:
        shutil.copytree(source, home)
    else:
        run_joules("train", "spam", "--data", str(DATA), "--no-progress", home=home, timeout=3600, check=True)
    return home


def test_full_optimize_run_on_minilm(minilm_home: Path) -> None:
    proc = run_joules("optimize", "spam", "--json", "--no-progress", home=minilm_home, timeout=3600)
    out = json.loads(proc.stdout)
    # A pass that raised is a failure of this test, whatever else the run found (exit status 1).
    assert out["failed"] == [] and proc.returncode == 0, f"passes failed: {out['failed']}"
    names = {v["name"] for v in out["variants"]}
    assert {"fuse", "fuse+int8-dynamic", "distill-ngram"} <= names
    fused = next(v for v in out["variants"] if v["name"] == "fuse")
    assert fused["steps"][0]["details"]["fused_ops"] == {
        "EmbedLayerNormalization": 1,
        "Attention": 6,
        "BiasGelu": 6,
        "SkipLayerNormalization": 12,
    }
    assert fused["f1_drop_points"]["validation"] == 0.0
    assert out["chosen"] is not None
    winner = next(v for v in out["variants"] if v["name"] == out["chosen"]["variant"])
    assert winner["f1_drop_points"]["validation"] <= 1.0, "the default budget is 1 F1 point"
    for v in out["variants"]:
        if v["f1_drop_points"]["validation"] > 1.0:
            assert v["verdict"].startswith("over budget"), v
    best = out_report(out)["comparisons"]["best_student"]
    assert (
        best["variant"] is None
        or next(v for v in out["variants"] if v["name"] == best["variant"])["f1_drop_points"]["validation"] <= 1.0
    ), "the best student is chosen on validation"
    assert out["seconds"]["total"] < 30 * 60


def out_report(out: dict[str, object]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(str(out["report"])).read_text())
    return data

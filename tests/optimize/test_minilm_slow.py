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
    proc = run_joules("optimize", "spam", "--json", "--no-progress", home=minilm_home, timeout=3600, check=True)
    out = json.loads(proc.stdout)
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
    assert out["seconds"]["total"] < 30 * 60

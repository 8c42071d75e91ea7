"""`joules cost CHAT`: a text-generation model's cost per million completion tokens, and a daily projection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import run_joules
from tests.serve.chat_models import chat_home


def test_cost_per_million_tokens(tiny_llm_bundle: Path, tmp_path: Path) -> None:
    home = chat_home(tmp_path, tiny_llm_bundle)
    r = run_joules("cost", "chat", "--rounds", "1", "--max-tokens", "8", "--per-day", "2000000", "--json", home=home)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    per_m = report["per_million_completion_tokens"]
    assert report["model"] == "chat:1" and 0 < report["completion_tokens"] <= 16 * 8
    assert per_m["energy_j"] > 0 and per_m["usd"] > 0 and per_m["co2_g"] > 0
    # 2 M tokens a day cost twice what 1 M does.
    assert report["per_day"]["usd"] == pytest.approx(2 * per_m["usd"])
    plain = run_joules("cost", "chat", "--rounds", "1", "--max-tokens", "4", home=home)
    assert plain.returncode == 0 and "$/1M tok" in plain.stdout

"""joules cost and joules bench (in process) on the tiny spam model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import run_joules


def test_cost_projection_is_consistent(spam_home: Path) -> None:
    (spam_home / "config.yaml").write_text("region: fr\nprice_per_hour: 0.36\nvcpus: 4\n")
    proc = run_joules(
        "cost", "spam", "--per-day", "1000000", "--samples", "20", "--rounds", "1", "--json", home=spam_home
    )
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["method"] in ("measured", "modelled") and d["version"] == 1
    pp, day, year = d["per_prediction"], d["per_day"], d["per_year"]
    assert pp["energy_j"] > 0 and pp["usd"] > 0 and pp["co2_g"] > 0
    assert day["kwh"] == pytest.approx(pp["energy_j"] * 1e6 / 3.6e6)
    assert day["usd"] == pytest.approx(pp["usd"] * 1e6)
    assert day["co2_kg"] == pytest.approx(pp["co2_g"] * 1e6 / 1000)
    assert year["kwh"] == pytest.approx(day["kwh"] * 365)
    # Region and price settings applied: 56 g/kWh (France), $0.36/h over 4 vCPUs.
    assert pp["co2_g"] == pytest.approx(pp["energy_j"] / 3.6e6 * 56.0)
    assert pp["usd"] == pytest.approx(0.36 * pp["cpu_ms"] / 1000 / (4 * 3600))
    assert d["settings"]["origin"]["region"].endswith("config.yaml")
    flag = run_joules(
        "cost", "spam", "--per-day", "10", "--samples", "5", "--rounds", "1", "--region", "pl", "--json", home=spam_home
    )
    assert json.loads(flag.stdout)["settings"]["grid_g_per_kwh"] == 662.0


def test_cost_compares_versions(spam_home: Path) -> None:
    model_dir = spam_home / "models" / "spam" / "1"
    assert run_joules("import", str(model_dir), "--name", "spam", home=spam_home).returncode == 0
    proc = run_joules("cost", "spam:1", "--per-day", "1000", "--samples", "10", "--rounds", "1", home=spam_home)
    assert proc.returncode == 0, proc.stderr
    assert "spam:1" in proc.stdout and "spam:2" in proc.stdout and "saves" in proc.stdout
    d = json.loads(
        run_joules(
            "cost", "spam:1", "--per-day", "1000", "--samples", "10", "--rounds", "1", "--json", home=spam_home
        ).stdout
    )
    assert [v["version"] for v in d["versions"]] == [1, 2] and "spam:2" in d["savings_vs_primary"]


def test_cost_errors_are_one_line(spam_home: Path) -> None:
    proc = run_joules("cost", "spam", "--per-day", "10", "--region", "atlantis", home=spam_home)
    assert proc.returncode == 2 and "unknown region 'atlantis'" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_joules("cost", "nosuch", "--per-day", "10", home=spam_home)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("scenario", ["single-stream", "offline"])
def test_bench_in_process(spam_home: Path, tmp_path: Path, scenario: str) -> None:
    extra = ["--duration", "1"] if scenario == "single-stream" else ["--queries", "64"]
    proc = run_joules(
        "bench", "spam", "--scenario", scenario, "--warmup", "0.2", *extra, "--out", str(tmp_path / "r"), "--json",
        home=spam_home,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["scenario"] == scenario and d["target"] == "in-process" and d["errors"] == 0
    assert d["samples"] > 0 and 0 < d["latency_ms"]["p50"] <= d["latency_ms"]["p99"]
    assert d["system"]["rows"] == d["samples"] and d["system"]["energy_j_per_1000"] > 0
    if scenario == "offline":
        assert d["samples"] == 64 and d["system"]["mean_batch"] > 1, "all at once: the Predictor batches"
    assert d["loadgen"]["cpu_s"] >= 0

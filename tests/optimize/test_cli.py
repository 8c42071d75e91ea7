"""`joules optimize` end to end on the tiny spam model (smoke preset: the pipeline, not the numbers)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from joules.bundle import Bundle, SplitDataset
from joules.optimize import OptimizeConfig, optimize
from joules.registry import Registry, Stage
from joules.settings import Settings
from tests.helpers import run_joules


def test_optimize_registers_a_winner_with_lineage_and_writes_the_report(spam_home: Path) -> None:
    proc = run_joules(
        "optimize",
        "spam",
        "--preset",
        "smoke",
        "--passes",
        "fuse,int8-dynamic,distill,bf16",
        # The smoke preset's students train on 200 rows for seconds: a wide budget lets the
        # fastest variant (the n-gram student) win, so registration and lineage are exercised.
        "--max-f1-drop",
        "100",
        "--json",
        "--no-progress",
        home=spam_home,
        check=True,
    )
    out = json.loads(proc.stdout)
    assert {"report", "plot", "chosen", "variants"} <= set(out)
    report, plot = Path(out["report"]), Path(out["plot"])
    assert report.parent.parent == spam_home / "reports"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (report.parent / "report.md").read_text().startswith("# Optimization of spam:1")
    data = json.loads(report.read_text())
    assert data["chosen"] == out["chosen"] and data["model"] == "spam:1"

    names = {v["name"] for v in out["variants"]}
    assert {"fuse", "fuse+int8-dynamic", "distill-ngram", "distill-ngram+int8-dynamic"} <= names
    for v in out["variants"]:
        assert {"name", "passes", "validation", "test", "throughput_msg_s", "latency_ms", "size_mb"} <= set(v)
        assert {"f1", "f1_ci95", "accuracy", "roc_auc", "prediction_flips", "action_flips"} <= set(v["test"])
        assert v["test"]["mcnemar_vs_original"]["p_value"] <= 1.0
        assert v["latency_ms"]["p50"] > 0 and v["throughput_msg_s"] > 0 and v["peak_rss_mb"] > 0
    skipped = {s["name"]: s["reason"] for s in out["skipped"]}
    assert "bf16" in skipped["fuse+bf16"]
    assert "not smaller" in skipped["distill-1layer+fuse"], "a 1-layer teacher has no smaller transformer student"

    chosen = out["chosen"]
    assert chosen is not None and chosen["name"] == "spam" and chosen["version"] == 2
    registry = Registry(Settings(home=spam_home))
    mv = registry.get(f"spam:{chosen['version']}")
    assert mv.stage is Stage.NONE, "registered, not promoted without --promote"
    assert registry.get("spam").version == 1
    entry = mv.lineage[-1]
    assert entry["step"] == "optimize" and entry["parent"] == "spam:1" and entry["variant"] == chosen["variant"]
    assert [p["pass"] for p in entry["passes"]] == next(
        v["passes"] for v in out["variants"] if v["name"] == chosen["variant"]
    )
    assert entry["settings"]["max_f1_drop"] == 100 and entry["report"] == out["report"]
    assert mv.lineage[0]["step"] == "train", "the parent's lineage is kept"
    assert set(mv.metrics) == {"validation", "test"}
    Bundle.load(mv.path)


def test_promote_makes_the_winner_production(spam_home: Path) -> None:
    stale = spam_home / f".optimize-{_dead_pid()}-x1y2"
    (stale / "fuse-abc").mkdir(parents=True)
    registry = Registry(Settings(home=spam_home))
    config = OptimizeConfig(
        passes=("distill",), preset="smoke", max_f1_drop=100, promote=True, torch_reference=False, progress=False
    )
    state = optimize("spam:1", config, registry=registry)
    assert state.chosen is not None and state.chosen["stage"] == "production"
    assert registry.get("spam").version == state.chosen["version"]
    assert state.paths["plot"].is_file()
    assert not stale.exists(), "variants left by a killed run are removed"
    assert not list(spam_home.glob(".optimize-*")), "and this run's own are removed when it ends"


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_tensor_model_is_refused_with_the_reason(tmp_path: Path, numeric_bundle: Bundle) -> None:
    home = tmp_path / "home"
    Registry(Settings(home=home)).register(numeric_bundle.path, "linear", stage=Stage.PRODUCTION)
    proc = run_joules("optimize", "linear", "--json", home=home)
    assert proc.returncode == 2
    assert "takes tensors" in proc.stderr and proc.stdout == ""


def test_bad_flags_are_refused(spam_home: Path) -> None:
    proc = run_joules("optimize", "spam", "--passes", "fuse,sparkle", home=spam_home)
    assert proc.returncode == 2 and "sparkle" in proc.stderr
    proc = run_joules("optimize", "spam", "--max-f1-drop", "-1", home=spam_home)
    assert proc.returncode == 2 and "max-f1-drop" in proc.stderr


def test_the_time_budget_skips_training_and_still_reports(spam_home: Path) -> None:
    registry = Registry(Settings(home=spam_home))
    config = OptimizeConfig(
        passes=("fuse", "distill"), preset="smoke", budget_minutes=0.01, torch_reference=False, progress=False
    )
    state = optimize("spam:1", config, registry=registry)
    reasons = {s["name"]: s["reason"] for s in state.skipped}
    assert "time budget" in reasons["distill-ngram"]
    assert {c.name for c in state.variants} == {"fuse"}
    assert state.measure is not None and state.measure.rounds == 1
    assert json.loads(state.paths["json"].read_text())["skipped"]


def test_a_quantized_variant_over_budget_is_retried_with_sensitive_operators_in_fp32(
    tiny_bundle: Bundle, spam_data: SplitDataset, tmp_path: Path
) -> None:
    from joules.meter import EnergyMeter
    from joules.optimize.build import Builder
    from joules.optimize.evaluate import Candidate, OnnxEngine, measure_quality
    from joules.optimize.passes import DynamicInt8, PassContext
    from joules.optimize.plan import Recipe
    from joules.optimize.presets import get_preset
    from joules.optimize.run import RunState, _build_recipe
    from tests.optimize.conftest import small

    data = small(spam_data)
    preset = get_preset("smoke")
    config = OptimizeConfig(passes=("int8-dynamic",), preset="smoke", max_f1_drop=0.0)
    state = RunState("spam:1", config, preset, EnergyMeter(), tmp_path / "report")
    original = Candidate(
        "spam:1", "original", bundle=tiny_bundle, engine=OnnxEngine(tiny_bundle, batch_size=32, meter=EnergyMeter())
    )
    measure_quality(original, data, ["validation"], original=None, bootstrap=0)
    # A synthetic original no variant can match, so the quantized variant always misses the budget.
    original.quality["validation"]["f1"] = 1.0
    state.original = original
    recipe = Recipe("int8-dynamic", (DynamicInt8(),), fallback=True)
    builder = Builder(tiny_bundle, PassContext(workdir=tmp_path / "work", dataset=data), [recipe])
    out = _build_recipe(recipe, builder, state, data)
    names = [c.name for c in out]
    assert names[0] == "int8-dynamic" and len(names) == 1 + len(preset.fallback_shares)
    retry = out[1]
    assert retry.name.startswith("int8-dynamic+fp32x") and retry.passes[-1] == "fp32-fallback"
    last = retry.steps[-1]
    assert last["settings"]["exclude"] and last["details"]["kept_fp32"] == last["settings"]["exclude"]
    assert [n for n, _ in last["details"]["sensitivity"]] == last["settings"]["exclude"]

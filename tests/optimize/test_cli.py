"""`joules optimize` end to end on the tiny spam model (smoke preset: the pipeline, not the numbers)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from scipy import stats

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
        mc = v["test"]["mcnemar_vs_original"]
        discordant = mc["only_original_right"] + mc["only_variant_right"]
        # Two classes: a flipped prediction is right for exactly one of the two models.
        assert v["test"]["prediction_flips"] == discordant
        low = min(mc["only_original_right"], mc["only_variant_right"])
        assert mc["p_value"] == pytest.approx(stats.binomtest(low, discordant).pvalue if discordant else 1.0)
        assert v["latency_ms"]["p50"] > 0 and v["throughput_msg_s"] > 0 and v["peak_rss_mb"] > 0
    assert out["failed"] == [], "a pass raised: see the error"
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


def test_a_real_budget_end_to_end_chooses_nothing_over_it(spam_home: Path) -> None:
    """The default budget (1 F1 point): the n-gram student, by far the fastest, trains for seconds in the
    smoke preset and misses it; whatever is chosen is within it and beats the original."""
    proc = run_joules(
        "optimize", "spam", "--preset", "smoke", "--passes", "fuse,int8-dynamic,distill",
        "--no-torch-reference", "--json", "--no-progress", home=spam_home, check=True,
    )  # fmt: skip
    out = json.loads(proc.stdout)
    assert out["failed"] == []
    original = out["original"]
    over = []
    for v in out["variants"]:
        drop = (original["validation"]["f1"] - v["validation"]["f1"]) * 100
        assert v["f1_drop_points"]["validation"] == pytest.approx(drop, abs=1e-3)
        if drop > 1.0 + 1e-9:
            over.append(v)
            assert v["verdict"].startswith("over budget"), (v["name"], drop, v["verdict"])
    assert over, "no variant missed the budget: the check below would be empty"
    fastest = max(out["variants"], key=lambda v: v["throughput_msg_s"])
    assert fastest in over, f"the fastest variant {fastest['name']} is within budget: the budget decided nothing"
    chosen = out["chosen"]
    registry = Registry(Settings(home=spam_home))
    if chosen is None:
        assert "nothing registered" in out["selection"] and registry.get("spam").version == 1
        assert [mv.version for mv in registry.list("spam")] == [1]
    else:
        winner = next(v for v in out["variants"] if v["name"] == chosen["variant"])
        assert winner not in over and winner["verdict"].startswith("chosen")
        assert winner["throughput_msg_s"] > original["throughput_msg_s"]
        assert registry.get(f"spam:{chosen['version']}").metrics["validation"]["f1"] == winner["validation"]["f1"]
    report = json.loads(Path(out["report"]).read_text())
    best = report["comparisons"].get("best_student")
    assert best is not None and best["variant"] not in {v["name"] for v in over}


def test_a_pass_that_raises_is_reported_as_failed_not_skipped(
    spam_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bug in a pass (injected here) is FAILED in the JSON, the report and the exit status;
    the recipes built on it fail with it, and the rest of the run still reports."""
    from joules.cli.main import main
    from joules.optimize.passes.fuse import Fuse

    def broken(self: Fuse, bundle: Bundle, out: Path, ctx: object) -> None:
        raise RuntimeError("injected fault in fuse")

    monkeypatch.setattr(Fuse, "__call__", broken)
    code = main(["optimize", "spam", "--preset", "smoke", "--passes", "fuse,int8-dynamic,bf16",
                 "--no-torch-reference", "--json", "--no-progress"])  # fmt: skip
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert code == 1, "a failed pass sets the exit status"
    failed = {f["name"]: f["error"] for f in out["failed"]}
    assert set(failed) == {"fuse", "fuse+int8-dynamic", "fuse+bf16"}
    assert all("RuntimeError: injected fault in fuse" in e for e in failed.values())
    assert not {s["name"] for s in out["skipped"]} & set(failed), "failed is not skipped"
    assert "FAILED fuse: " in captured.err
    report = Path(out["report"])
    assert json.loads(report.read_text())["failed"] == out["failed"]
    assert "**FAILED** `fuse`" in (report.parent / "report.md").read_text()


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

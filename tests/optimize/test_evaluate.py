"""Interleaved measurement: quality against the original, speed, memory, batch dependence."""

from __future__ import annotations

import json
from pathlib import Path

from joules.bundle import Bundle
from joules.meter import EnergyMeter
from joules.optimize.evaluate import Candidate, OnnxEngine, measure_memory, measure_quality, measure_speed
from joules.optimize.memory import probe
from joules.optimize.passes import DynamicInt8, Fuse, PassContext
from joules.optimize.presets import Measure


def candidate(name: str, bundle: Bundle) -> Candidate:
    engine = OnnxEngine(bundle, batch_size=32, meter=EnergyMeter())
    return Candidate(name, "variant", bundle=bundle, engine=engine)


def test_quality_speed_and_batch_dependence(tiny_bundle: Bundle, ctx: PassContext, tmp_path: Path) -> None:
    assert ctx.dataset is not None
    fused = Fuse()(tiny_bundle, tmp_path / "fused", ctx).bundle
    int8 = DynamicInt8()(fused, tmp_path / "int8", ctx).bundle
    original = Candidate(
        "original", "original", bundle=tiny_bundle, engine=OnnxEngine(tiny_bundle, batch_size=32, meter=EnergyMeter())
    )
    others = [candidate("fuse", fused), candidate("int8", int8)]
    measure_quality(original, ctx.dataset, ["test"], original=None, bootstrap=20)
    for c in others:
        measure_quality(c, ctx.dataset, ["test"], original=original, bootstrap=20)
    assert "prediction_flips" not in original.quality["test"]
    q = others[0].quality["test"]
    assert q["prediction_flips"] == 0 and q["action_flips"] == 0 and q["mcnemar_vs_original"]["p_value"] == 1.0
    assert q["max_abs_diff_vs_original"] < 1e-3 and len(q["f1_ci95"]) == 2

    cfg = Measure(rounds=2, latency_rows=8, bootstrap=20)
    measure_speed([original, *others], ctx.texts("test"), cfg)
    for c in [original, *others]:
        s = c.speed
        assert len(s["throughput_runs"]) == 2 and s["throughput_msg_s"] > 0
        assert s["latency_ms"]["calls"] == 16 and 0 < s["latency_ms"]["p50"] <= s["latency_ms"]["p99"]
        assert s["energy_j_per_1000"] > 0
    # Dynamic quantization scales activations per call: a row alone is scored differently than in its batch.
    fused_dep = others[0].speed["batch_dependence"]["max_abs"]
    int8_dep = others[1].speed["batch_dependence"]["max_abs"]
    assert fused_dep < 1e-5 and int8_dep > max(10 * fused_dep, 1e-6), (fused_dep, int8_dep)


def test_memory_is_probed_in_a_fresh_process(tiny_bundle: Bundle, ctx: PassContext, tmp_path: Path) -> None:
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(ctx.texts("test")[:8]))
    out = probe(tiny_bundle.path, texts, 32)
    assert 0 < out["model_mb"] < out["peak_rss_mb"]
    c = Candidate("original", "original", bundle=tiny_bundle)
    measure_memory([c], ctx.texts("test"), Measure(memory_rows=4))
    assert c.memory["peak_rss_mb"] > 0

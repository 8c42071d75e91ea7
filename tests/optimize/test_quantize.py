"""int8-dynamic and int8-static: argmax parity on a sample, bounded calibration, fp32 fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from joules.bundle import Bundle
from joules.errors import ConfigError, PassSkipped
from joules.optimize.passes import DynamicInt8, Fuse, PassContext, StaticInt8, graph
from joules.optimize.passes.quantize import quantizable_nodes
from joules.optimize.passes.sensitivity import rank_sensitive_nodes
from joules.runtime import Predictor


def agreement(a: Bundle, b: Bundle, texts: list[str]) -> float:
    pa = Predictor(a).predict_texts(texts).probabilities
    pb = Predictor(b).predict_texts(texts).probabilities
    return float(np.mean(pa.argmax(1) == pb.argmax(1)))


def test_dynamic_int8_of_the_fused_graph_agrees_on_argmax(
    tiny_bundle: Bundle, ctx: PassContext, tmp_path: Path
) -> None:
    fused = Fuse()(tiny_bundle, tmp_path / "fused", ctx).bundle
    result = DynamicInt8()(fused, tmp_path / "int8", ctx)
    ops = result.details["ops_after"]
    assert ops.get("QAttention", 0) >= 1 and ops.get("MatMulInteger", 0) >= 1, ops
    assert agreement(tiny_bundle, result.bundle, ctx.texts("test")) >= 0.99
    assert result.bundle.model_path.stat().st_size < fused.model_path.stat().st_size


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_static_int8_calibrates_on_a_bounded_sample(
    method: str, tiny_bundle: Bundle, ctx: PassContext, tmp_path: Path
) -> None:
    result = StaticInt8(method=method, calibration_rows=24, calibration_batch=8)(tiny_bundle, tmp_path / "q", ctx)
    assert result.details["calibration_rows"] == 24
    ops = result.details["ops_after"]
    assert ops.get("QuantizeLinear", 0) >= 1 and ops.get("DequantizeLinear", 0) >= 1, ops
    assert agreement(tiny_bundle, result.bundle, ctx.texts("test")) >= 0.99


def test_dynamic_int8_works_on_any_onnx_model(numeric_bundle: Bundle, ctx: PassContext, tmp_path: Path) -> None:
    result = DynamicInt8()(numeric_bundle, tmp_path / "int8", ctx)
    feeds = graph.sample_feeds(numeric_bundle, rows=64)
    a = graph.run_output(numeric_bundle.model_path, feeds, "logits")
    b = graph.run_output(result.bundle.model_path, feeds, "logits")
    assert np.mean(a.argmax(1) == b.argmax(1)) >= 0.95
    assert "MatMulInteger" in result.details["ops_after"]


def test_static_int8_needs_calibration_text(numeric_bundle: Bundle, ctx: PassContext, tmp_path: Path) -> None:
    with pytest.raises(PassSkipped, match="calibrat"):
        StaticInt8()(numeric_bundle, tmp_path / "q", ctx)


def test_sensitive_operators_are_ranked_and_kept_in_fp32(tiny_bundle: Bundle, ctx: PassContext, tmp_path: Path) -> None:
    fused = Fuse()(tiny_bundle, tmp_path / "fused", ctx).bundle
    op_types = ("MatMul", "Attention")
    quantized = DynamicInt8()(fused, tmp_path / "int8", ctx).bundle
    feeds = graph.sample_feeds(fused, ctx.texts("train"), rows=16)
    ranked = rank_sensitive_nodes(fused.model_path, quantized.model_path, feeds, op_types)
    names = quantizable_nodes(graph.load(fused.model_path), op_types)
    assert ranked and {n for n, _ in ranked} <= set(names)
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    keep = tuple(n for n, _ in ranked[:2])
    retry = DynamicInt8(exclude=keep)(fused, tmp_path / "int8-fallback", ctx)
    assert retry.details["kept_fp32"] == list(keep)
    after = graph.load(retry.bundle.model_path)
    kept_types = {n.op_type for n in after.graph.node if n.name in keep}
    assert kept_types <= {"MatMul", "Attention"}, "the excluded nodes stay fp32 operators"


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="calibration method"):
        StaticInt8(method="kl")
    with pytest.raises(ConfigError, match="calibration_rows"):
        StaticInt8(calibration_rows=0)
    assert StaticInt8(method="Entropy").method == "entropy"

"""fuse: ONNX Runtime's transformer fusions, checked against the original outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from joules.bundle import Bundle
from joules.errors import ConfigError
from joules.optimize.passes import Fuse, PassContext, graph
from joules.runtime import Predictor

TEXTS = [
    "k",  # the shortest text a model is given ("" is refused by admission, in every mode)
    "ok",
    "URGENT! You have won a 1 week FREE membership in our 100,000 Prize Jackpot! Txt CLAIM to 81010",
    "I'll be home soon, don't wait up " * 20,
]


def test_fused_bert_outputs_match_the_original(tiny_bundle: Bundle, ctx: PassContext, tmp_path: Path) -> None:
    result = Fuse()(tiny_bundle, tmp_path / "fused", ctx)
    fused = result.details["fused_ops"]
    for op in ("EmbedLayerNormalization", "Attention", "SkipLayerNormalization", "BiasGelu"):
        assert fused.get(op, 0) >= 1, f"{op} was not fused: {fused}"
    assert result.details["nodes_after"] < result.details["nodes_before"]
    assert result.details["parity_max_abs"] <= 1e-3
    texts = [*TEXTS, *ctx.texts("test")[:60]]
    before = Predictor(tiny_bundle).predict_texts(texts).probabilities
    after = Predictor(result.bundle).predict_texts(texts).probabilities
    np.testing.assert_allclose(after, before, atol=1e-3)
    assert result.bundle.file("weights") is None, "the fp32 weights do not describe the fused graph"
    assert result.bundle.file("dataset") is not None


def test_head_counts_are_made_explicit_for_the_fusion(tiny_bundle: Bundle) -> None:
    model = graph.load(tiny_bundle.model_path)
    assert graph.explicit_head_counts(model) == 3, "Q, K and V reshapes of the one layer"
    assert graph.explicit_head_counts(model) == 0, "nothing left to rewrite"


def test_fuse_works_on_any_onnx_model(numeric_bundle: Bundle, ctx: PassContext, tmp_path: Path) -> None:
    result = Fuse()(numeric_bundle, tmp_path / "fused", ctx)
    feeds = graph.sample_feeds(numeric_bundle, rows=8)
    a = graph.run_output(numeric_bundle.model_path, feeds, "logits")
    b = graph.run_output(result.bundle.model_path, feeds, "logits")
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert result.details["fused_ops"] == {}


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="tolerance"):
        Fuse(tolerance=0)
    with pytest.raises(ConfigError, match="opt_level"):
        Fuse(opt_level=99)

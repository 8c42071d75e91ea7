"""prune: heads and FFN neurons physically removed; the smaller model still runs and reloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from joules.bundle import Bundle
from joules.errors import ConfigError, PassSkipped
from joules.optimize.passes import Fuse, PassContext, Prune, graph
from joules.optimize.passes.trainable import load_trainable
from joules.runtime import Predictor
from tests.optimize.conftest import small


@pytest.fixture()
def prune_ctx(tmp_path: Path, two_layer_bundle: Bundle) -> PassContext:
    path = two_layer_bundle.file("dataset")
    assert path is not None
    from joules.bundle import SplitDataset

    return PassContext(workdir=tmp_path, dataset=small(SplitDataset.read(path), 96, 64, 64))


def test_pruning_shrinks_the_model_and_it_still_runs(
    two_layer_bundle: Bundle, prune_ctx: PassContext, tmp_path: Path
) -> None:
    result = Prune(sparsity=0.5, importance_rows=32, epochs=1)(two_layer_bundle, tmp_path / "pruned", prune_ctx)
    d = result.details
    assert d["structure_before"] == {"heads": [4, 4], "intermediate": [64, 64]}
    assert d["structure_after"] == {"heads": [2, 2], "intermediate": [32, 32]}
    assert d["parameters_after"] < d["parameters_before"]
    before = graph.parameter_count(graph.load(two_layer_bundle.model_path))
    after = graph.parameter_count(graph.load(result.bundle.model_path))
    assert after < before, "the exported graph has smaller matrices"
    probs = Predictor(result.bundle).predict_texts(prune_ctx.texts("test")[:20]).probabilities
    assert probs.shape == (20, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    # The pruned shapes travel with the weights, so the pruned bundle can be fine-tuned again.
    reloaded = load_trainable(result.bundle, "prune")
    assert reloaded.base_model.encoder.layer[0].attention.self.num_attention_heads == 2
    # ... and ONNX Runtime still fuses attention with the per-layer head counts.
    fused = Fuse()(result.bundle, tmp_path / "fused", prune_ctx)
    assert fused.details["fused_ops"].get("Attention") == 2


def test_prune_says_why_it_does_not_apply(
    numeric_bundle: Bundle, tiny_bundle: Bundle, ctx: PassContext, tmp_path: Path
) -> None:
    with pytest.raises(PassSkipped, match="text"):
        Prune()(numeric_bundle, tmp_path / "a", ctx)
    fused = Fuse()(tiny_bundle, tmp_path / "fused", ctx).bundle
    with pytest.raises(PassSkipped, match="trainable weights"):
        Prune()(fused, tmp_path / "b", ctx)


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="sparsity"):
        Prune(sparsity=1.0)
    with pytest.raises(ConfigError, match="heads or ffn"):
        Prune(heads=False, ffn=False)

"""The w8a8 decoder pass: int8 weights per column, uint8 activations per row, SmoothQuant's smoothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from joules.bundle import Bundle
from joules.errors import OptimizeError
from joules.optimize.decoder import DecoderOptimizeConfig, optimize_decoder
from joules.optimize.passes.w8a8 import W8A8Quant, channel_maxima, smoothing_factors
from joules.registry import Registry, Stage
from joules.runtime.executor import RuntimeOptions
from joules.runtime.generation.decoder import StepSequence
from joules.runtime.generation.onnx_decoder import OnnxDecoder, decoder_config
from joules.settings import load_settings
from tests.helpers import greedy_tokens

IDS = [5, 17, 42, 99, 3, 250, 7, 8]


def _one_product(path: Path, w: np.ndarray) -> None:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", w.shape[1]])],
        [numpy_helper.from_array(w, "w")],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_the_product_is_the_integer_formula_row_by_row(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 24)).astype(np.float32)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    x[2] *= 1000  # a row with a far larger range than the others: its scale must not touch them
    x[4] = 0  # an all-zero row: scale never 0, output exactly 0
    _one_product(tmp_path / "f.onnx", w)
    info = W8A8Quant(smooth_alpha=0).write(tmp_path / "f.onnx", tmp_path / "q.onnx")
    assert info["matrices"] == 1 and info["smoothed"] == 0
    q = onnx.load(str(tmp_path / "q.onnx"))
    assert "MatMulInteger" in {n.op_type for n in q.graph.node} and "MatMul" not in {n.op_type for n in q.graph.node}
    session = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x})[0]

    # The same arithmetic in numpy: per-column weight scales, per-row activation scales, an exact int32 product.
    w_scale = np.abs(w).max(axis=0) / 127
    wq = np.clip(np.rint(w / w_scale), -127, 127).astype(np.int32)
    amax = np.maximum(np.abs(x).max(axis=1, keepdims=True), 1e-30).astype(np.float32)
    x_scale = amax / np.float32(127)
    xq = np.rint(x / x_scale).astype(np.int32)
    want = (xq @ wq).astype(np.float32) * w_scale.astype(np.float32) * x_scale
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    assert not got[4].any()
    exact = x @ w
    for r in range(4):  # int8 error is relative to each row's own range
        assert np.abs(got[r] - exact[r]).max() < 0.02 * np.abs(exact[r]).max()
    # Each row alone gives the same bits as inside the batch.
    for r in range(5):
        assert np.array_equal(session.run(None, {"x": x[r : r + 1]})[0][0], got[r])


def test_smoothing_factors() -> None:
    s = smoothing_factors(np.array([16.0, 1.0, 0.0, 4.0]), np.array([1.0, 4.0, 2.0, 0.0]), 0.5)
    np.testing.assert_allclose(s, [4.0, 0.5, 1.0, 1.0])  # sqrt(x/w); 1 where either side is all zeros
    np.testing.assert_allclose(smoothing_factors(np.array([9.0]), np.array([3.0]), 0.0), [1 / 3])
    with pytest.raises(OptimizeError, match="smooth_alpha"):
        W8A8Quant(smooth_alpha=1.5)


def test_channel_maxima_are_the_float32_activations(tiny_llm_bundle: Path) -> None:
    bundle = Bundle.load(tiny_llm_bundle)
    model = onnx.load(str(bundle.model_path))
    outputs = [o.name for o in model.graph.output]
    got = channel_maxima(model, ["norm1.0"], (tuple(IDS), tuple(IDS[:3])))
    assert [o.name for o in model.graph.output] == outputs  # the model is left as it was
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    norm = next(n for n in model.graph.node if n.output[0] == "norm1.0")
    eps = next(a.f for a in norm.attribute if a.name == "epsilon")
    x = inits["w.embed_tokens"][IDS].astype(np.float64)
    want = np.abs(x / np.sqrt((x**2).mean(axis=1, keepdims=True) + eps) * inits["w.ln1.0"]).max(axis=0)
    np.testing.assert_allclose(got["norm1.0"], want, rtol=1e-5)


def _decoder(model: Path, bundle: Bundle) -> OnnxDecoder:
    assert bundle.spec.generation is not None
    return OnnxDecoder(model, decoder_config(bundle.spec.generation, 64), 3, RuntimeOptions(intra_op_threads=1))


def test_on_a_decoder_close_to_float32_and_batch_invariant(tiny_llm_bundle: Path, tmp_path: Path) -> None:
    bundle = Bundle.load(tiny_llm_bundle)
    with pytest.raises(OptimizeError, match="calibration"):
        W8A8Quant().write(bundle.model_path, tmp_path / "none.onnx")
    info = W8A8Quant(calibration=((1, 2, 3, 4, 60, 61, 62), (9, 8, 7))).write(bundle.model_path, tmp_path / "m.onnx")
    assert info["matrices"] == 2 * 4 + 1 and info["smoothed"] == info["activations"] == 2 * 4 + 1
    ref = _decoder(bundle.model_path, bundle)
    dec = _decoder(tmp_path / "m.onnx", bundle)
    try:
        want = ref.step([StepSequence(slot=0, start=0, tokens=np.array(IDS), all_logits=True)])[0]
        got = dec.step([StepSequence(slot=0, start=0, tokens=np.array(IDS), all_logits=True)])[0]
        assert np.abs(got - want).max() < 0.1 * float(want.max() - want.min())
        assert not np.array_equal(got, want)
        # Prompts of other lengths in the other slots, then one decode step of all three together:
        # slot 0's logits are the bits it gets when it decodes alone.
        dec.step([StepSequence(slot=1, start=0, tokens=np.array(IDS[:3]))])
        dec.step([StepSequence(slot=2, start=0, tokens=np.array(IDS[2:7]))])
        together = dec.step(
            [
                StepSequence(slot=0, start=len(IDS), tokens=np.array([11])),
                StepSequence(slot=1, start=3, tokens=np.array([12])),
                StepSequence(slot=2, start=5, tokens=np.array([13])),
            ]
        )
        alone = dec.step([StepSequence(slot=0, start=len(IDS), tokens=np.array([11]))])[0]
        assert np.array_equal(alone, together[0])
        # A prompt chunked in two gives the bits of the whole prompt at once.
        dec.step([StepSequence(slot=1, start=0, tokens=np.array(IDS[:5]))])
        chunked = dec.step([StepSequence(slot=1, start=5, tokens=np.array(IDS[5:]), all_logits=True)])[0]
        assert np.array_equal(chunked, got[5:])
    finally:
        ref.close()
        dec.close()


def test_optimize_registers_a_calibrated_w8a8_the_engine_serves(
    tiny_llm_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOULES_HOME", str(tmp_path / "home"))
    registry = Registry(load_settings())
    registry.register(tiny_llm_bundle, "chat", stage=Stage.PRODUCTION)
    config = DecoderOptimizeConfig(
        variants=("w8a8",), min_agreement=0.0, max_ppl_increase=10.0, rounds=1, objective="size", memory_probe=False
    )
    report = optimize_decoder("chat", config, registry=registry)
    v = report["variants"][1]
    assert v["name"] == "w8a8" and v["settings"]["operator"].startswith("MatMulInteger")
    assert v["extra"]["written"]["smoothed"] > 0 and v["extra"]["written"]["calibration_tokens"] > 0
    assert report["chosen"] is not None and report["chosen"]["variant"] == "w8a8"
    mv = registry.get(f"chat:{report['chosen']['version']}")
    lineage = Bundle.load(mv.path).spec.lineage[-1]
    assert lineage["pass"] == "w8a8" and lineage["settings"]["smooth_alpha"] == 0.5
    assert lineage["settings"]["calibration"].startswith("8 chat prompts")  # a count, not the token ids
    assert len(greedy_tokens(mv.path)) == 4  # the engine serves it

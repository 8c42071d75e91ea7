"""The column layout of the decoder's products (runtime/generation/columns.py) and the batch-invariant switch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from joules.bundle import Bundle
from joules.runtime.executor import RuntimeOptions
from joules.runtime.generation.columns import COLUMN_MAX_TOKENS, COLUMN_MIN_TOKENS, column_graph
from joules.runtime.generation.decoder import StepSequence
from joules.runtime.generation.onnx_decoder import OnnxDecoder, decoder_config

# Eight prompts: a decode step over all of them is a call the column layout takes (8..16 tokens).
PROMPTS = [[5 + i, 9, 13 - i, 2, 7, 11, 3][: 3 + i % 5] for i in range(COLUMN_MIN_TOKENS)]


@pytest.fixture(scope="module")
def wide_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose products sum over more than 256 values (MLAS' block of K): hidden 320."""
    from joules.imports.causal_lm import import_causal_lm_dir
    from tests.llm import make_tiny_llama_dir

    src = make_tiny_llama_dir(tmp_path_factory.mktemp("wide-llm"), seed=3, layers=1, hidden=320, context=128)
    return import_causal_lm_dir(src, tmp_path_factory.mktemp("wide-llm-import")).path


def decoder(bundle_path: Path, *, batch_invariant: bool, slots: int = len(PROMPTS)) -> OnnxDecoder:
    bundle = Bundle.load(bundle_path)
    assert bundle.spec.generation is not None
    config = decoder_config(bundle.spec.generation, 64)
    return OnnxDecoder(
        bundle.model_path, config, slots, RuntimeOptions(intra_op_threads=2), batch_invariant=batch_invariant
    )


def alone_and_together(d_alone: OnnxDecoder, d_batch: OnnxDecoder) -> tuple[np.ndarray, np.ndarray]:
    """Row 0's next-token logits decoded alone, and inside a decode step of every prompt."""
    for d in (d_alone, d_batch):
        # One token at a time: every prompt is computed by one-row calls, in the bundle's layout.
        for slot, p in enumerate(PROMPTS if d is d_batch else PROMPTS[:1]):
            for pos, t in enumerate(p):
                d.step([StepSequence(slot=slot, start=pos, tokens=np.array([t]))])
    alone = d_alone.step([StepSequence(slot=0, start=len(PROMPTS[0]), tokens=np.array([1]))])[0]
    rows = [StepSequence(slot=s, start=len(p), tokens=np.array([1])) for s, p in enumerate(PROMPTS)]
    together = d_batch.step(rows)[0]
    return alone, together


def test_batch_invariant_decoding_gives_a_row_the_same_bits_alone_and_in_a_batch(wide_bundle: Path) -> None:
    d_alone, d_batch = decoder(wide_bundle, batch_invariant=True), decoder(wide_bundle, batch_invariant=True)
    try:
        alone, together = alone_and_together(d_alone, d_batch)
        assert d_batch.columns is None and d_batch.calls["columns"] == 0
        assert np.array_equal(alone, together)
    finally:
        d_alone.close()
        d_batch.close()


def test_batched_decode_steps_run_the_column_layout_and_agree_to_rounding(wide_bundle: Path) -> None:
    d_alone, d_batch = decoder(wide_bundle, batch_invariant=False), decoder(wide_bundle, batch_invariant=False)
    try:
        alone, together = alone_and_together(d_alone, d_batch)
        # The prompts went one token per call (the bundle's layout), the batched step through the columns.
        assert d_batch.calls["columns"] == 1 and d_alone.calls["columns"] == 0
        np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-4)
        assert int(np.argmax(together)) == int(np.argmax(alone))
        # Not the same bits: the model is wide enough for the layouts to round differently, so the
        # batch-invariant test above would see it if that mode ran the column layout.
        assert not np.array_equal(together, alone)
    finally:
        d_alone.close()
        d_batch.close()


def test_calls_pick_their_layout_by_tokens(tiny_llm_bundle: Path) -> None:
    d = decoder(tiny_llm_bundle, batch_invariant=False, slots=COLUMN_MIN_TOKENS)
    try:
        assert d.columns is not None
        d.step([StepSequence(slot=0, start=0, tokens=np.arange(1, COLUMN_MAX_TOKENS + 2))])  # a big prompt chunk
        d.step([StepSequence(slot=1, start=0, tokens=np.arange(1, COLUMN_MIN_TOKENS + 1))])  # a small one
        d.step([StepSequence(slot=1, start=COLUMN_MIN_TOKENS, tokens=np.array([3]))])  # one decode
        assert d.calls == {"rows": 2, "columns": 1}
        for s in range(2, COLUMN_MIN_TOKENS):
            d.step([StepSequence(slot=s, start=0, tokens=np.array([4, 5]))])  # two-token chunks: too few
        assert d.calls == {"rows": 2 + COLUMN_MIN_TOKENS - 2, "columns": 1}
        starts = [COLUMN_MAX_TOKENS + 1, COLUMN_MIN_TOKENS + 1] + [2] * (COLUMN_MIN_TOKENS - 2)
        d.step([StepSequence(slot=s, start=n, tokens=np.array([3])) for s, n in enumerate(starts)])  # 8 decodes
        assert d.calls["columns"] == 2
    finally:
        d.close()


def test_a_graph_without_float_weights_gets_no_column_layout(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x, w], [y])
    onnx.save(helper.make_model(graph), tmp_path / "model.onnx")
    assert column_graph(tmp_path / "model.onnx") is None


def test_a_pool_too_small_for_a_batched_step_gets_no_column_layout(tiny_llm_bundle: Path) -> None:
    # joules generate and joules chat keep a few slots: a second copy of the weights would never be used.
    d = decoder(tiny_llm_bundle, batch_invariant=False, slots=COLUMN_MIN_TOKENS - 1)
    try:
        assert d.columns is None
        d.step([StepSequence(slot=0, start=0, tokens=np.arange(1, COLUMN_MIN_TOKENS + 1))])
        assert d.calls == {"rows": 1, "columns": 0}
    finally:
        d.close()


def test_the_column_graph_computes_what_the_bundle_graph_does(tmp_path: Path) -> None:
    """Around its products: a vector constant rides along [tokens, width]; a [1, 1, n] one (which would
    broadcast a 2-D value to 3-D) gets the value back in its own shape first; outputs keep their shapes."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from joules.bundle.generation import INPUT_IDS

    rng = np.random.default_rng(0)
    vocab, hidden, inner = 50, 24, 40
    arrays = {
        "embed": rng.standard_normal((vocab, hidden)),
        "w1": rng.standard_normal((hidden, inner)),
        "gamma": rng.standard_normal(inner),
        "bias3": rng.standard_normal((1, 1, inner)),
        "w2": rng.standard_normal((inner, hidden)),
    }
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()]
    inits.append(numpy_helper.from_array(np.array([-1, hidden], np.int64), "flat"))
    nodes = [
        helper.make_node("Gather", ["embed", INPUT_IDS], ["h"]),
        helper.make_node("MatMul", ["h", "w1"], ["a"]),
        helper.make_node("Mul", ["a", "gamma"], ["m"]),
        helper.make_node("Add", ["m", "bias3"], ["b"]),
        helper.make_node("MatMul", ["b", "w2"], ["d"]),
        helper.make_node("Reshape", ["d", "flat"], ["d2"]),
    ]
    ids = helper.make_tensor_value_info(INPUT_IDS, TensorProto.INT64, ["batch", "sequence"])
    outs = [
        helper.make_tensor_value_info("d", TensorProto.FLOAT, ["batch", "sequence", hidden]),
        helper.make_tensor_value_info("d2", TensorProto.FLOAT, ["tokens", hidden]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [ids], outs, inits))
    onnx.save(model, tmp_path / "model.onnx")
    feed = {INPUT_IDS: rng.integers(0, vocab, (2, 3))}
    want = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feed)

    graph = column_graph(tmp_path / "model.onnx")
    assert graph is not None and len(graph.arrays) == 2  # w1 and w2, transposed
    so = ort.SessionOptions()
    session, kept = graph.session(so, ["CPUExecutionProvider"])
    got = session.run(None, feed)
    assert kept and [g.shape for g in got] == [(2, 3, hidden), (6, hidden)]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)

"""Test helpers (not fixtures): small models and subprocess runners."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

JOULES = [sys.executable, "-m", "joules.cli.main"]


def run_joules(
    *args: str, home: Path | None = None, timeout: float = 600, check: bool = False
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if home is not None:
        env["JOULES_HOME"] = str(home)
    proc = subprocess.run([*JOULES, *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"joules {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def numeric_onnx(path: Path, features: int = 4, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A linear classifier as an ONNX graph: x [N, features] float32 -> logits [N, classes]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.normal(size=(features, classes)).astype(np.float32)
    b = rng.normal(size=(classes,)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return w, b


def assert_beats_chance(y_true: np.ndarray, y_pred: np.ndarray, what: str) -> None:
    """A binary classifier (positive = True) does better than guessing on held-out rows.

    Two trivial baselines: always the majority class (accuracy), and always the
    positive class, the best F1 a predictor blind to the input can reach
    (2p / (1 + p) for a positive rate p). The model must beat both, the first
    with McNemar's exact test at p < 0.01, so a lucky split cannot pass.
    """
    from joules.quality import f1_score, mcnemar

    y_true, y_pred = np.asarray(y_true, dtype=bool), np.asarray(y_pred, dtype=bool)
    p = float(y_true.mean())
    f1 = f1_score(y_true.astype(np.int8), y_pred.astype(np.int8))
    blind_f1 = 2 * p / (1 + p)
    majority = y_true.sum() * 2 >= len(y_true)
    test = mcnemar(y_pred == y_true, np.full(len(y_true), majority) == y_true)
    assert f1 > blind_f1 + 0.2, f"{what}: F1 {f1:.3f} is within 0.2 of a blind predictor's {blind_f1:.3f}"
    assert test["only_a"] > test["only_b"] and test["p_value"] < 0.01, (
        f"{what}: accuracy {np.mean(y_pred == y_true):.3f} does not beat always-{majority} "
        f"({np.mean(y_true == majority):.3f}) significantly: {test}"
    )


def greedy_tokens(bundle_dir: Path, prompt: str = "Héllo", max_tokens: int = 4) -> tuple[int, ...]:
    """The tokens a text-generation bundle's engine generates for ``prompt`` (greedy, end of sequence ignored)."""
    from joules.runtime.generation import EngineConfig, GenerationRequest, SamplingParams, bundle_engine

    engine = bundle_engine(bundle_dir, EngineConfig(max_model_len=64, max_num_seqs=2))
    try:
        params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
        return tuple(engine.generate(GenerationRequest(prompt=prompt, params=params)).token_ids)
    finally:
        engine.close()

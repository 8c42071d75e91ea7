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

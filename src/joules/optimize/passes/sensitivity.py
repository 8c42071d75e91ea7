"""Which quantized operators hurt most: the input of the sensitive-operator fallback.

Intel Neural Compressor's accuracy-aware tuning falls back to fp32 for the
operators that quantization hurts most, until the accuracy goal is met
(https://intel.github.io/neural-compressor/latest/docs/source/tuning_strategies.html).
Here each quantizable operator is scored by the error it *adds*: the relative
error of its output against the fp32 graph, minus the relative error already
present in its input, measured on calibration rows. Scoring the added error
rather than the output error keeps late operators from being blamed for
error that reached them from earlier ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from joules.optimize.passes import graph
from joules.optimize.passes.quantize import quantizable_nodes


def _with_outputs(model: Any, names: list[str]) -> bytes:
    from onnx import TensorProto, helper

    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    data: bytes = model.SerializeToString()
    return data


def _run(model_bytes: bytes, feeds: list[dict[str, np.ndarray]], names: list[str]) -> dict[str, list[np.ndarray]]:
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    got: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for f in feeds:
        values = session.run(names, {k: v for k, v in f.items() if k in wanted})
        for n, v in zip(names, values, strict=True):
            got[n].append(np.asarray(v, dtype=np.float32).reshape(-1))
    return got


def _relative_error(ref: list[np.ndarray], other: list[np.ndarray]) -> float:
    a, b = np.concatenate(ref), np.concatenate(other)
    return float(np.linalg.norm(b - a) / (np.linalg.norm(a) + 1e-12))


def rank_sensitive_nodes(
    fp32_model: Path, quantized_model: Path, feeds: list[dict[str, np.ndarray]], op_types: tuple[str, ...]
) -> list[tuple[str, float]]:
    """``[(node, added relative error)]`` for the quantizable nodes of ``fp32_model``, worst first.

    Node names are those of the fp32 graph (what ``nodes_to_exclude`` takes).
    The quantizers keep the fp32 names of an operator's input and output
    tensors, which is what makes the two graphs comparable tensor by tensor.
    """
    fp32 = graph.load(fp32_model)
    quant = graph.load(quantized_model)
    names = set(quantizable_nodes(fp32, op_types))
    quant_tensors = {t for n in quant.graph.node for t in (*n.input, *n.output)}
    pairs = []
    for node in fp32.graph.node:
        if node.name in names and node.input[0] in quant_tensors and node.output[0] in quant_tensors:
            pairs.append((node.name, node.input[0], node.output[0]))
    if not pairs:
        return []
    tensors = sorted({t for _, i, o in pairs for t in (i, o)})
    ref = _run(_with_outputs(fp32, tensors), feeds, tensors)
    got = _run(_with_outputs(quant, tensors), feeds, tensors)
    err = {t: _relative_error(ref[t], got[t]) for t in tensors}
    scores = [(name, err[o] - err[i]) for name, i, o in pairs]
    return sorted(scores, key=lambda x: x[1], reverse=True)

"""Export a PyTorch sequence classifier to ONNX and check it against PyTorch."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from joules.errors import BundleError

OPSET = 17
PARITY_TOLERANCE = 1e-4
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def export_onnx(model: Any, path: Path, feeds: dict[str, np.ndarray], *, opset: int = OPSET) -> float:
    """Write ``model`` to ``path`` and return the largest |ONNX - torch| logit gap on ``feeds``.

    Uses the TorchScript exporter (``dynamo=False``): on all-MiniLM-L6-v2 its
    graph is the one ONNX Runtime's transformer optimizer fuses completely
    (Attention, SkipLayerNorm, BiasGelu, EmbedLayerNorm), while the dynamo
    graph only gets partial fusion. Eager attention keeps the graph free of
    SDPA's trace-time branches.
    """
    import onnxruntime as ort
    import torch

    model = model.eval()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    names = [n for n in INPUT_NAMES if n in feeds]
    args = tuple(torch.from_numpy(feeds[n]) for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch"}

    class Logits(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *xs: Any) -> Any:
            return self.inner(**dict(zip(names, xs, strict=True))).logits

    # The wrapper must be in eval mode: the exporter restores each module's mode after
    # export, and a wrapper left in training mode would switch dropout back on.
    wrapper = Logits(model).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about constant shapes; parity is checked below
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
        expected = model(**dict(zip(names, args, strict=True))).logits.numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {n: feeds[n] for n in names})[0]
    gap = float(np.max(np.abs(got - expected)))
    if gap > PARITY_TOLERANCE:
        raise BundleError(
            f"ONNX export of {type(model).__name__} differs from PyTorch by {gap:.2e} (> {PARITY_TOLERANCE:g})"
        )
    return gap


def export_tensor_model(
    module: Any,
    path: Path,
    example: np.ndarray,
    *,
    input_name: str,
    output_name: str = "logits",
    opset: int = OPSET,
) -> float:
    """Write a one-input, one-output PyTorch module to ``path`` (batch axis dynamic); return the parity gap.

    The gap is the largest |ONNX - torch| output on ``example``; over PARITY_TOLERANCE is a BundleError.
    """
    import onnxruntime as ort
    import torch

    module = module.eval()
    x = torch.from_numpy(np.ascontiguousarray(example))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (x,),
            str(path),
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
        expected = module(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([output_name], {input_name: example})[0]
    gap = float(np.max(np.abs(got - expected)))
    if gap > PARITY_TOLERANCE:
        raise BundleError(
            f"ONNX export of {type(module).__name__} differs from PyTorch by {gap:.2e} (> {PARITY_TOLERANCE:g})"
        )
    return gap

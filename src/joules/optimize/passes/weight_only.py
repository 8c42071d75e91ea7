"""Weight-only quantization of a decoder graph: MatMul weights to 8 or 4 bits (ONNX Runtime's MatMulNBits).

Each weight matrix ``[K, N]`` is quantized in blocks of ``block_size`` values
along K, per output column, with a float scale (and a zero point, asymmetric)
per block: the format of ONNX Runtime's ``MatMulNBits`` contrib operator
(``docs/ContribOperators.md``), packed by ONNX Runtime's own
``quantize_matmul_{4,8}bits`` (what ``onnxruntime.quantization``'s
``MatMulNBitsQuantizer`` calls). Activations stay float32 (``accuracy_level``
1) or are quantized to int8 per block of each row (``accuracy_level`` 4, MLAS'
int8 kernels); either way a row's result does not depend on the other rows,
so the engine's outputs stay batch-invariant.

The output head is quantized too: a tied head (``Gemm(x, embedding,
transB=1)``) is the biggest matrix of a small model (SmolLM2: 28 M of 135 M
parameters) and decoding one stream reads every weight once per token.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from joules.bundle.generation import MS_DOMAIN, is_tied_head
from joules.errors import OptimizeError


@dataclass(frozen=True, kw_only=True)
class WeightOnlyQuant:
    """A decoder's MatMul weights to ``bits`` bits in blocks of ``block_size``."""

    name: ClassVar[str] = "weight-only"
    operator: ClassVar[str] = f"{MS_DOMAIN} MatMulNBits"
    bits: int = 4
    block_size: int = 32
    symmetric: bool = False
    accuracy_level: int = 4  # 4: int8 activations per block (fast on CPUs); 1: float32 activations
    head: bool = True  # also the output head

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise OptimizeError(f"weight-only quantization takes 4 or 8 bits, got {self.bits}")
        if self.block_size not in (16, 32, 64, 128, 256):
            raise OptimizeError(f"block_size must be 16, 32, 64, 128 or 256, got {self.block_size}")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise OptimizeError(f"accuracy_level must be 0..4, got {self.accuracy_level}")

    @property
    def label(self) -> str:
        return f"int{self.bits}"

    def write(self, src: Path, dst: Path) -> dict[str, Any]:
        """Quantize the graph ``src`` into ``dst`` (+ its external data); what was done."""
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(src), load_external_data=True)
        graph = model.graph
        inits = {t.name: t for t in graph.initializer}
        consumers: dict[str, int] = {}
        for n in graph.node:
            for i in n.input:
                consumers[i] = consumers.get(i, 0) + 1
        new_nodes = []
        quantized = 0
        params = 0
        drop: set[str] = set()
        for node in graph.node:
            weight = self._weight(node, inits)
            if weight is None:
                new_nodes.append(node)
                continue
            name, w = weight  # w: [K, N]
            packed, scales, zeros = _quantize(w, self.bits, self.block_size, self.symmetric)
            k, n = w.shape
            base = f"{name}.q{self.bits}"
            graph.initializer.extend(
                [
                    numpy_helper.from_array(packed, base),
                    numpy_helper.from_array(scales, base + ".scales"),
                ]
            )
            inputs = [node.input[0], base, base + ".scales"]
            if zeros is not None:
                graph.initializer.append(numpy_helper.from_array(zeros, base + ".zeros"))
                inputs.append(base + ".zeros")
            attrs: dict[str, Any] = {"K": k, "N": n, "bits": self.bits, "block_size": self.block_size}
            if self.accuracy_level:
                attrs["accuracy_level"] = self.accuracy_level
            new_nodes.append(
                onnx.helper.make_node(
                    "MatMulNBits",
                    inputs,
                    list(node.output),
                    name=f"{node.name}_q{self.bits}",
                    domain=MS_DOMAIN,
                    **attrs,
                )
            )
            consumers[name] -= 1
            if consumers[name] == 0:
                drop.add(name)
            quantized += 1
            params += k * n
        if not quantized:
            raise OptimizeError(f"{src} has no float32 MatMul weights to quantize")
        del graph.node[:]
        graph.node.extend(new_nodes)
        kept = [t for t in graph.initializer if t.name not in drop]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        if not any(o.domain == MS_DOMAIN for o in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
        save_with_external_data(model, dst)
        return {"matrices": quantized, "parameters": params, "bits": self.bits, "block_size": self.block_size}

    def _weight(self, node: Any, inits: dict[str, Any]) -> tuple[str, np.ndarray] | None:
        return float_weight(node, inits, head=self.head)


def _quantize(
    w: np.ndarray, bits: int, block: int, symmetric: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """MatMulNBits' packed weight [N, k_blocks, blob], scales [N * k_blocks], zero points (asymmetric)."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    k, n = w.shape
    k_blocks = (k + block - 1) // block
    per_byte = 8 // bits
    if k_blocks * block != k:
        w = np.pad(w, ((0, k_blocks * block - k), (0, 0)))
    w = np.ascontiguousarray(w, dtype=np.float32)
    packed = np.zeros((n, k_blocks, block // per_byte), dtype=np.uint8)
    zeros = np.zeros((n, (k_blocks + per_byte - 1) // per_byte), dtype=np.uint8)
    scales = np.zeros((n, k_blocks), dtype=np.float32)
    fn = quantize_matmul_8bits if bits == 8 else quantize_matmul_4bits
    fn(packed, w, scales, zeros, block, n, k, symmetric)
    return packed, scales.reshape(-1), (None if symmetric else zeros.reshape(-1))


def float_weight(node: Any, inits: dict[str, Any], *, head: bool) -> tuple[str, np.ndarray] | None:
    """(initializer name, [K, N] float32 weight) of a MatMul, or of a tied-head Gemm when ``head``; else None."""
    from onnx import numpy_helper

    if node.op_type == "MatMul" and node.input[1] in inits:
        w = numpy_helper.to_array(inits[node.input[1]])
        return (node.input[1], w) if w.ndim == 2 and w.dtype == np.float32 else None
    if head and is_tied_head(node) and node.input[1] in inits:
        w = numpy_helper.to_array(inits[node.input[1]])  # [N, K]
        return (node.input[1], np.ascontiguousarray(w.T)) if w.dtype == np.float32 else None
    return None


def save_with_external_data(model: Any, dst: Path) -> None:
    """Write ``model`` to ``dst`` with every tensor of 1 KiB or more in ``dst.name + '.data'`` beside it."""
    import onnx
    from onnx import external_data_helper

    data = dst.name + ".data"
    for t in model.graph.initializer:
        if t.HasField("raw_data") and len(t.raw_data) >= 1024:
            external_data_helper.set_external_data(t, location=data)
    external_data_helper.convert_model_to_external_data(
        model, all_tensors_to_one_file=True, location=data, size_threshold=1024
    )
    onnx.save_model(model, str(dst))


def iter_matmul_weights(model: Any) -> Iterator[str]:
    """Names of the float32 MatMul weights of ``model`` (for reports)."""
    inits = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits:
            yield node.input[1]

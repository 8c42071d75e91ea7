"""W8A8 for decoders: int8 weights per output column, int8 activations per row (token), integer products.

Each MatMul with a float32 weight ``[K, N]`` (and the tied output head,
``Gemm(x, embedding, transB=1)``) becomes ONNX's ``MatMulInteger`` over

- the weight, quantized once at optimize time: symmetric int8 with one float
  scale per output column (``max |w| / 127``);
- the activation, quantized in the graph at every call: uint8 with zero point
  128 and one scale per row (``max |x| / 127`` over the row's K values), the
  "dynamic per-token" activations of vLLM's W8A8 int8.

The int32 product is exact, then scaled back to float32 by the row's scale
and the column's. Every scale belongs to one row, so a sequence's numbers do
not depend on the other rows of a call nor on how its prompt was chunked: the
engine's outputs stay batch-invariant, as in float32. (ONNX Runtime's own
``DynamicQuantizeLinear`` uses one scale for the whole tensor, which would
not be.)

Why: weight-only formats (``MatMulNBits``) save memory reads, which is what
one stream waits for, but at 16 or 64 rows their products are no faster than
float32 on a CPU (docs/benchmarks.md, "A step's matrix products alone"). Integer products run on the
CPU's int8 dot-product instructions (VNNI where present), several times
float32's rate, so this variant speeds up batched decoding as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from joules.errors import OptimizeError
from joules.optimize.passes.weight_only import save_with_external_data

ACTIVATION_ZERO_POINT = 128  # uint8 activations: a row's values land in [1, 255]
QMAX = 127.0
# A row of zeros (or of denormals) gets this as its absolute maximum, so its scale is never 0.
TINY = np.float32(1e-30)


@dataclass(frozen=True, kw_only=True)
class W8A8Quant:
    """A decoder's MatMul weights to int8 per column, their activations to uint8 per row, in the graph."""

    name: ClassVar[str] = "w8a8"
    operator: ClassVar[str] = "MatMulInteger (int8 weights per column, uint8 activations per row)"
    head: bool = True  # also the output head
    # Weights kept in float32: shell patterns on their initializer names (e.g. "w.down.*"), for sensitive layers.
    exclude: tuple[str, ...] = ()
    # SmoothQuant's migration strength (Xiao et al., 2023): each input channel j of a product is divided by
    # s_j = max|x_j| ** alpha / max|w_j| ** (1 - alpha) and its weight row multiplied by it, which moves
    # the activations' outlier channels into the weights before both are rounded. 0 turns it off.
    smooth_alpha: float = 0.5
    # Token ids of the calibration texts the channel maxima come from (optimize/decoder.py sets them).
    calibration: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "calibration", tuple(tuple(int(t) for t in c) for c in self.calibration))
        if not 0 <= self.smooth_alpha <= 1:
            raise OptimizeError(f"w8a8 smooth_alpha must be in [0, 1], got {self.smooth_alpha}")

    @property
    def label(self) -> str:
        return "w8a8"

    def write(self, src: Path, dst: Path) -> dict[str, Any]:
        """Quantize the graph ``src`` into ``dst`` (+ its external data); what was done."""
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        model = onnx.load(str(src), load_external_data=True)
        graph = model.graph
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        inits = {t.name: t for t in graph.initializer}
        consumers: dict[str, int] = {}
        for n in graph.node:
            for i in n.input:
                consumers[i] = consumers.get(i, 0) + 1
        nodes = list(graph.node)
        # By position: protobuf hands out a new wrapper per access, so id() of a node is not stable.
        targets = {i: found for i, node in enumerate(nodes) if (found := self._weight(node, inits)) is not None}
        if not targets:
            raise OptimizeError(f"{src} has no float32 MatMul weights to quantize")
        # The weights that read each activation: smoothing divides the activation once, so one factor serves them.
        readers: dict[str, list[np.ndarray]] = {}
        for i, (_, w) in targets.items():
            readers.setdefault(nodes[i].input[0], []).append(w)
        smooth: dict[str, np.ndarray] = {}
        if self.smooth_alpha > 0:
            if not self.calibration:
                raise OptimizeError("w8a8 smoothing needs calibration texts (token ids); none were given")
            maxima = channel_maxima(model, list(readers), self.calibration)
            for x, ws in readers.items():
                w_max = np.max([np.abs(w).max(axis=1) for w in ws], axis=0)
                smooth[x] = smoothing_factors(maxima[x], w_max, self.smooth_alpha)
        constants: dict[str, np.ndarray] = {
            "w8a8.zero_point": np.array(ACTIVATION_ZERO_POINT, dtype=np.uint8),
            "w8a8.qmax": np.array(QMAX, dtype=np.float32),
            "w8a8.tiny": np.array(TINY, dtype=np.float32),
            "w8a8.offset": np.array(float(ACTIVATION_ZERO_POINT), dtype=np.float32),
            "w8a8.last_axis": np.array([-1], dtype=np.int64),
        }
        graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in constants.items())
        quantized_inputs: dict[str, tuple[str, str]] = {}  # activation -> (uint8 tensor, per-row scale)
        new_nodes: list[Any] = []
        drop: set[str] = set()
        matrices = params = 0

        def quantize_rows(x: str) -> tuple[str, str]:
            if x in quantized_inputs:
                return quantized_inputs[x]
            p = f"{x}.w8a8"
            source = x
            if x in smooth:
                inverse = (1.0 / smooth[x]).astype(np.float32)
                graph.initializer.append(numpy_helper.from_array(inverse, p + ".smooth"))
                new_nodes.append(helper.make_node("Mul", [x, p + ".smooth"], [p + ".smoothed"], name=p + ".smoothed"))
                source = p + ".smoothed"
            reduce_inputs = [p + ".abs"] + (["w8a8.last_axis"] if opset >= 18 else [])
            reduce_attrs: dict[str, Any] = {} if opset >= 18 else {"axes": [-1]}
            new_nodes.extend(
                [
                    helper.make_node("Abs", [source], [p + ".abs"], name=p + ".abs"),
                    helper.make_node(
                        "ReduceMax", reduce_inputs, [p + ".amax"], name=p + ".amax", keepdims=1, **reduce_attrs
                    ),
                    helper.make_node("Max", [p + ".amax", "w8a8.tiny"], [p + ".amax1"], name=p + ".amax1"),
                    helper.make_node("Div", [p + ".amax1", "w8a8.qmax"], [p + ".scale"], name=p + ".scale"),
                    helper.make_node("Div", [source, p + ".scale"], [p + ".scaled"], name=p + ".scaled"),
                    helper.make_node("Round", [p + ".scaled"], [p + ".round"], name=p + ".round"),
                    helper.make_node("Add", [p + ".round", "w8a8.offset"], [p + ".shift"], name=p + ".shift"),
                    helper.make_node("Cast", [p + ".shift"], [p + ".u8"], name=p + ".u8", to=TensorProto.UINT8),
                ]
            )
            quantized_inputs[x] = (p + ".u8", p + ".scale")
            return quantized_inputs[x]

        for i, node in enumerate(nodes):
            if i not in targets:
                new_nodes.append(node)
                continue
            name, w = targets[i]  # [K, N]
            k, n = w.shape
            if node.input[0] in smooth:
                w = w * smooth[node.input[0]][:, None]
            wq, scale = quantize_columns(w)
            base = f"{name}.w8a8"
            graph.initializer.extend(
                [numpy_helper.from_array(wq, base), numpy_helper.from_array(scale, base + ".scale")]
            )
            xq, xs = quantize_rows(node.input[0])
            out = node.output[0]
            new_nodes.extend(
                [
                    helper.make_node("MatMulInteger", [xq, base, "w8a8.zero_point"], [out + ".i32"], name=out + ".mmi"),
                    helper.make_node("Cast", [out + ".i32"], [out + ".f32"], name=out + ".f32", to=TensorProto.FLOAT),
                    helper.make_node("Mul", [out + ".f32", base + ".scale"], [out + ".col"], name=out + ".col"),
                    helper.make_node("Mul", [out + ".col", xs], [out], name=out + ".row"),
                ]
            )
            consumers[name] -= 1
            if consumers[name] == 0:
                drop.add(name)
            matrices += 1
            params += k * n
        del graph.node[:]
        graph.node.extend(new_nodes)
        kept = [t for t in graph.initializer if t.name not in drop]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        save_with_external_data(model, dst)
        return {
            "matrices": matrices,
            "parameters": params,
            "activations": len(quantized_inputs),
            "smoothed": len(smooth),
            "calibration_tokens": sum(len(c) for c in self.calibration) if smooth else 0,
        }

    def _weight(self, node: Any, inits: dict[str, Any]) -> tuple[str, np.ndarray] | None:
        from fnmatch import fnmatchcase

        from joules.optimize.passes.weight_only import float_weight

        found = float_weight(node, inits, head=self.head)
        if found is None or any(fnmatchcase(found[0], pat) for pat in self.exclude):
            return None
        return found


def quantize_columns(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 of ``w`` [K, N] with one float32 scale per column (a column of zeros gets scale 1)."""
    scale = np.abs(w).max(axis=0) / QMAX
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return np.clip(np.rint(w / scale), -QMAX, QMAX).astype(np.int8), scale


def smoothing_factors(x_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's per-channel s = x_max**alpha / w_max**(1 - alpha); 1 where a side is all zeros."""
    x_max = x_max.astype(np.float64)
    w_max = w_max.astype(np.float64)
    ok = (x_max > 0) & (w_max > 0) & np.isfinite(x_max)
    s = np.ones_like(x_max)
    s[ok] = x_max[ok] ** alpha / w_max[ok] ** (1 - alpha)
    return np.clip(s, 1e-5, 1e5).astype(np.float32)


def channel_maxima(model: Any, tensors: list[str], sequences: tuple[tuple[int, ...], ...]) -> dict[str, np.ndarray]:
    """max |x| per last-axis channel of each of ``tensors`` while the float32 decoder prefills ``sequences``.

    Runs ``model`` (a text-generation decoder graph, bundle/generation.py) once per sequence from an empty
    cache, with the tensors added as outputs for the run (the model is left as it was).
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from joules.bundle.generation import INPUT_IDS, LOGITS_INDEX, SEQLENS_K, TOTAL_SEQUENCE_LENGTH

    graph = model.graph
    n_outputs = len(graph.output)
    graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors)
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    finally:
        del graph.output[n_outputs:]
    caches = [i for i in session.get_inputs() if len(i.shape) == 4]
    maxima: dict[str, np.ndarray] = {}
    for seq in sequences:
        n = len(seq)
        feeds: dict[str, np.ndarray] = {
            INPUT_IDS: np.array([seq], dtype=np.int64),
            SEQLENS_K: np.array([n - 1], dtype=np.int32),
            TOTAL_SEQUENCE_LENGTH: np.array(n, dtype=np.int32),
            LOGITS_INDEX: np.array([n - 1], dtype=np.int64),
        }
        for c in caches:
            kv_heads, head_dim = c.shape[1], c.shape[3]
            feeds[c.name] = np.zeros((1, kv_heads, n, head_dim), dtype=np.float32)
        for t, value in zip(tensors, session.run(tensors, feeds), strict=True):
            m = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            maxima[t] = np.maximum(maxima[t], m) if t in maxima else m
    return maxima

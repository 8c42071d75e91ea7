"""``bf16`` and ``fp16``: half-precision weights, where the execution provider runs them.

Before converting anything the pass asks the provider the model would run on
whether it executes a half-precision MatMul, by running a one-node probe
graph. ONNX Runtime's CPU provider has no bf16 MatMul kernel, and fp16 pays
off only on GPUs, so on a CPU-only machine both passes are skipped with the
provider's own answer as the reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from joules.bundle import Bundle
from joules.errors import ConfigError, PassSkipped
from joules.optimize.passes import graph
from joules.optimize.passes.base import PassContext, PassResult, derive_bundle

HALF_TYPES = {"bf16": 16, "fp16": 10}  # onnx.TensorProto.BFLOAT16, FLOAT16
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider", "DmlExecutionProvider")


def probe_half_matmul(dtype: str, providers: list[str]) -> str | None:
    """None when ``providers[0]`` runs a ``dtype`` MatMul, else the reason it does not."""
    import onnxruntime as ort
    from onnx import helper

    elem = HALF_TYPES[dtype]
    node = helper.make_node("MatMul", ["a", "b"], ["c"])
    g = helper.make_graph(
        [node],
        "probe",
        [helper.make_tensor_value_info("a", elem, [2, 2]), helper.make_tensor_value_info("b", elem, [2, 2])],
        [helper.make_tensor_value_info("c", elem, [2, 2])],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.log_severity_level = 4
    try:
        session = ort.InferenceSession(model.SerializeToString(), so, providers=providers)
        if session.get_providers()[0] != providers[0]:
            return f"{providers[0]} could not be used (ONNX Runtime fell back to {session.get_providers()[0]})"
        if dtype == "fp16":
            x = np.ones((2, 2), dtype=np.float16)
            session.run(None, {"a": x, "b": x})
    except Exception as e:  # ONNX Runtime reports a missing kernel as a generic exception
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"ONNX Runtime's {providers[0]} does not run a {dtype} MatMul here ({first[:200]})"
    return None


def _convert_bf16(model: Any) -> int:
    """Store MatMul weights as bf16, computing in bf16 between Casts; returns the MatMuls converted."""
    from onnx import TensorProto, helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes = []
    converted = 0
    for node in model.graph.node:
        w = node.input[1] if node.op_type == "MatMul" and len(node.input) > 1 else None
        if w is None or w not in inits or inits[w].data_type != TensorProto.FLOAT:
            nodes.append(node)
            continue
        arr = numpy_helper.to_array(inits[w]).astype(np.float32)
        # bf16 is the upper half of an fp32 word; round to nearest even before truncating.
        bits = arr.view(np.uint32)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        half = helper.make_tensor(f"{w}_bf16", TensorProto.BFLOAT16, arr.shape, rounded.tobytes(), raw=True)
        model.graph.initializer.append(half)
        x16, y16 = f"{node.output[0]}_in_bf16", f"{node.output[0]}_bf16"
        nodes.append(helper.make_node("Cast", [node.input[0]], [x16], to=TensorProto.BFLOAT16))
        nodes.append(helper.make_node("MatMul", [x16, half.name], [y16], name=node.name))
        nodes.append(helper.make_node("Cast", [y16], [node.output[0]], to=TensorProto.FLOAT))
        converted += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return converted


@dataclass(frozen=True, kw_only=True)
class HalfPrecision:
    name: ClassVar[str] = "half"
    dtype: str = "bf16"
    providers: tuple[str, ...] | None = None  # None: those the runtime would choose

    def __post_init__(self) -> None:
        if self.dtype not in HALF_TYPES:
            raise ConfigError(f"half-precision dtype {self.dtype!r} is not one of {list(HALF_TYPES)}")

    def __call__(self, bundle: Bundle, out: Path, ctx: PassContext) -> PassResult:
        from joules.runtime import RuntimeOptions
        from joules.runtime.executor import choose_providers

        started = time.perf_counter()
        providers = list(self.providers) if self.providers else choose_providers(RuntimeOptions())
        if self.dtype == "fp16" and providers[0] not in GPU_PROVIDERS:
            raise PassSkipped(
                f"fp16 pays off on GPU execution providers; this machine runs {providers[0]} "
                f"(available: {', '.join(providers)})"
            )
        reason = probe_half_matmul(self.dtype, providers)
        if reason is not None:
            raise PassSkipped(reason)
        if self.dtype == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            model = convert_float_to_float16(graph.load(bundle.model_path), keep_io_types=True)
            converted = sum(1 for n in model.graph.node if n.op_type == "MatMul")
        else:
            model = graph.load(bundle.model_path)
            converted = _convert_bf16(model)
        new = derive_bundle(bundle, out, lambda p: graph.save(model, p))
        details = {"dtype": self.dtype, "provider": providers[0], "matmuls": converted}
        return PassResult(new, details, time.perf_counter() - started)


@dataclass(frozen=True, kw_only=True)
class Bf16(HalfPrecision):
    name: ClassVar[str] = "bf16"
    dtype: str = "bf16"


@dataclass(frozen=True, kw_only=True)
class Fp16(HalfPrecision):
    name: ClassVar[str] = "fp16"
    dtype: str = "fp16"

"""``int8-dynamic`` and ``int8-static``: ONNX Runtime quantization.

Dynamic: weights become int8 ahead of time (per output channel by default),
activations are quantized at run time with scales computed per call. Static:
QDQ (QuantizeLinear/DequantizeLinear) pairs with activation scales fixed by
calibration on a bounded sample of the training split, so a row's output does
not depend on the rows that share its batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from joules.bundle import Bundle
from joules.errors import ConfigError, PassSkipped
from joules.optimize.passes import graph
from joules.optimize.passes.base import PassContext, PassResult, derive_bundle
from joules.optimize.passes.quiet import quiet_onnxruntime_tools

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# ONNX Runtime's fused transformer operators carry no output type the quantizer's shape inference
# can read; without a default it stops at them.
_FLOAT = 1  # onnx.TensorProto.FLOAT


def quantizable_nodes(model: Any, op_types: tuple[str, ...]) -> list[str]:
    """Names of the nodes the quantizer will quantize: MatMuls only with a constant weight."""
    inits = {i.name for i in model.graph.initializer}
    return [
        n.name
        for n in model.graph.node
        if n.op_type in op_types and (n.op_type != "MatMul" or (len(n.input) > 1 and n.input[1] in inits))
    ]


def _quantized_details(before: Any, after: Any, op_types: tuple[str, ...], exclude: tuple[str, ...]) -> dict[str, Any]:
    candidates = quantizable_nodes(before, op_types)
    return {
        "quantizable_nodes": len(candidates),
        "kept_fp32": [n for n in exclude if n in candidates],
        "ops_after": graph.op_counts(after),
        "parameters": graph.parameter_count(after),
    }


def _agreement(bundle: Bundle, new: Bundle, ctx: PassContext, rows: int) -> dict[str, float]:
    """How far the quantized outputs are from the input graph's on a sample (reported, not enforced)."""
    texts = ctx.texts("validation") if ctx.dataset is not None else None
    feeds = graph.sample_feeds(bundle, texts, rows=rows, seed=ctx.seed)
    output = bundle.spec.postprocess.output
    a = graph.run_output(bundle.model_path, feeds, output)
    b = graph.run_output(new.model_path, feeds, output)
    return {
        "sample_rows": len(a),
        "sample_max_abs": float(np.max(np.abs(a - b))),
        "sample_argmax_agreement": float(np.mean(a.argmax(1) == b.argmax(1))) if a.shape[1] > 1 else 1.0,
    }


@dataclass(frozen=True, kw_only=True)
class DynamicInt8:
    name: ClassVar[str] = "int8-dynamic"
    # Per-channel weight scales: on all-MiniLM-L6-v2 per-tensor scales gave embeddings with a
    # minimum cosine of 0.75 to fp32, per-channel 0.956, at the same speed (measured when this pass was written).
    per_channel: bool = True
    op_types: tuple[str, ...] = ("MatMul", "Attention")
    exclude: tuple[str, ...] = ()  # nodes kept in fp32 (the sensitive-operator fallback)
    reduce_range: bool = False  # 7-bit weights, for CPUs without VNNI
    sample_rows: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "op_types", tuple(self.op_types))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if not self.op_types:
            raise ConfigError("int8-dynamic needs at least one operator type to quantize")

    def __call__(self, bundle: Bundle, out: Path, ctx: PassContext) -> PassResult:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        started = time.perf_counter()
        before = graph.load(bundle.model_path)
        if not quantizable_nodes(before, self.op_types):
            raise PassSkipped(f"the graph has no {'/'.join(self.op_types)} operators with weights to quantize")

        def write(path: Path) -> None:
            with quiet_onnxruntime_tools():
                quantize_dynamic(
                    str(bundle.model_path),
                    str(path),
                    per_channel=self.per_channel,
                    reduce_range=self.reduce_range,
                    weight_type=QuantType.QInt8,
                    op_types_to_quantize=list(self.op_types),
                    nodes_to_exclude=list(self.exclude),
                    extra_options={"DefaultTensorType": _FLOAT},
                )

        new = derive_bundle(bundle, out, write)
        details = _quantized_details(before, graph.load(new.model_path), self.op_types, self.exclude)
        details.update(_agreement(bundle, new, ctx, self.sample_rows))
        return PassResult(new, details, time.perf_counter() - started)


class TextCalibrationReader:
    """Feeds a bounded, seeded sample of texts to the calibrator in length-sorted batches.

    Implements ONNX Runtime's ``CalibrationDataReader`` protocol (get_next, rewind).
    """

    def __init__(self, bundle: Bundle, texts: list[str], *, rows: int, batch: int, seed: int) -> None:
        self.batches = graph.sample_feeds(bundle, texts, rows=rows, batch=batch, seed=seed, same_length=True)
        self._it: Iterator[dict[str, np.ndarray]] = iter(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.batches)

    def __len__(self) -> int:
        return sum(len(next(iter(b.values()))) for b in self.batches)


@dataclass(frozen=True, kw_only=True)
class StaticInt8:
    name: ClassVar[str] = "int8-static"
    method: str = "minmax"  # minmax | percentile | entropy
    per_channel: bool = True
    # Bounded: histogram calibrators (percentile, entropy) keep every calibrated activation of
    # these rows in memory until the ranges are computed.
    calibration_rows: int = 128
    calibration_batch: int = 16
    percentile: float = 99.999
    op_types: tuple[str, ...] = ("MatMul",)
    exclude: tuple[str, ...] = ()
    sample_rows: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", str(self.method).lower())
        object.__setattr__(self, "op_types", tuple(self.op_types))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.method not in CALIBRATION_METHODS:
            raise ConfigError(f"calibration method {self.method!r} is not one of {list(CALIBRATION_METHODS)}")
        if not 1 <= self.calibration_rows <= 4096:
            raise ConfigError(f"calibration_rows must be in [1, 4096], got {self.calibration_rows}")
        if not 0 < self.percentile <= 100:
            raise ConfigError(f"percentile must be in (0, 100], got {self.percentile}")

    def __call__(self, bundle: Bundle, out: Path, ctx: PassContext) -> PassResult:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        started = time.perf_counter()
        if not bundle.spec.preprocess.tokenized or ctx.dataset is None:
            raise PassSkipped(
                "int8-static calibrates on the training split, and this model has no labelled text dataset; "
                "int8-dynamic needs no calibration data"
            )
        before = graph.load(bundle.model_path)
        if not quantizable_nodes(before, self.op_types):
            raise PassSkipped(f"the graph has no {'/'.join(self.op_types)} operators with weights to quantize")
        reader = TextCalibrationReader(
            bundle, ctx.texts("train"), rows=self.calibration_rows, batch=self.calibration_batch, seed=ctx.seed
        )
        method = {
            "minmax": CalibrationMethod.MinMax,
            "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy,
        }[self.method]
        extra: dict[str, Any] = {"DefaultTensorType": _FLOAT, "MatMulConstBOnly": True}
        if self.method == "percentile":
            extra["CalibPercentile"] = self.percentile

        def write(path: Path) -> None:
            with quiet_onnxruntime_tools():
                quantize_static(
                    str(bundle.model_path),
                    str(path),
                    reader,
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(self.op_types),
                    per_channel=self.per_channel,
                    # uint8 activations, int8 weights: ONNX Runtime's advice for x86 CPUs.
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=list(self.exclude),
                    calibrate_method=method,
                    extra_options=extra,
                )

        new = derive_bundle(bundle, out, write)
        details = _quantized_details(before, graph.load(new.model_path), self.op_types, self.exclude)
        details["calibration_rows"] = len(reader)
        details.update(_agreement(bundle, new, ctx, self.sample_rows))
        return PassResult(new, details, time.perf_counter() - started)

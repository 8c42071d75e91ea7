"""bf16/fp16: detected per execution provider and skipped with the reason where they do not run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from joules.bundle import Bundle
from joules.errors import PassSkipped
from joules.optimize.passes import Bf16, Fp16, PassContext, graph
from joules.optimize.passes.precision import GPU_PROVIDERS, _convert_bf16, probe_half_matmul

CPU_ONLY = not any(p in ort.get_available_providers() for p in GPU_PROVIDERS)


@pytest.mark.skipif(not CPU_ONLY, reason="checks the CPU provider's answer; this machine has a GPU provider")
def test_bf16_is_skipped_where_the_cpu_provider_has_no_bf16_matmul(
    tiny_bundle: Bundle, ctx: PassContext, tmp_path: Path
) -> None:
    reason = probe_half_matmul("bf16", ["CPUExecutionProvider"])
    if reason is None:
        pytest.skip("this onnxruntime build runs bf16 MatMul on CPU")
    with pytest.raises(PassSkipped, match="bf16"):
        Bf16()(tiny_bundle, tmp_path / "bf16", ctx)


@pytest.mark.skipif(not CPU_ONLY, reason="fp16 runs on this machine's GPU provider")
def test_fp16_is_skipped_without_a_gpu(tiny_bundle: Bundle, ctx: PassContext, tmp_path: Path) -> None:
    with pytest.raises(PassSkipped, match="GPU"):
        Fp16()(tiny_bundle, tmp_path / "fp16", ctx)


def test_bf16_conversion_writes_a_valid_graph(tiny_bundle: Bundle) -> None:
    import onnx

    model = graph.load(tiny_bundle.model_path)
    converted = _convert_bf16(model)
    assert converted >= 1
    onnx.checker.check_model(model)
    half = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.BFLOAT16]
    assert len(half) == converted
    # bf16 keeps the top 16 bits of fp32: values round-trip within bf16's 8-bit mantissa.
    w = np.frombuffer(half[0].raw_data, dtype=np.uint16).astype(np.uint32) << 16
    assert np.all(np.isfinite(w.view(np.float32)))

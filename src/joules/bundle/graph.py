"""Reading an ONNX graph's interface without loading its weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from joules.bundle.spec import TensorSpec
from joules.errors import BundleError

# onnx.TensorProto element types joules declares in joules.yaml.
ONNX_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 9: "bool", 8: "string"}


def read_graph(model_path: Path) -> Any:
    """The ONNX model at ``model_path`` (external weights not loaded); BundleError if it is not ONNX."""
    import onnx

    try:
        return onnx.load(str(model_path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others: all mean "not an ONNX model"
        raise BundleError(f"{str(model_path)!r} is not a readable ONNX model: {e}") from e


def graph_inputs(model_path: Path) -> tuple[TensorSpec, ...]:
    """The graph's real inputs (initializers excluded), as joules.yaml declares them."""
    model = read_graph(model_path)
    init = {i.name for i in model.graph.initializer}
    specs = []
    for i in model.graph.input:
        if i.name in init:
            continue
        t = i.type.tensor_type
        dims: list[int | str] = [d.dim_param or (d.dim_value if d.dim_value else "?") for d in t.shape.dim]
        specs.append(TensorSpec(name=i.name, dtype=ONNX_DTYPES.get(t.elem_type, "float32"), shape=tuple(dims)))
    return tuple(specs)

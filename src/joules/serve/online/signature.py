"""A served model's tensors as the Open Inference Protocol names them.

The inputs are the fields of the bundle's input kind (``runtime/admission.py``):
a tensor model takes its model inputs, with their datatypes and shapes; any
other kind (text, and kinds added later) takes one BYTES input of shape [N] per
field, each element one row's raw value for admission to convert. Every model
answers ``probabilities`` (FP32 [N, C]), ``label`` and ``action`` (BYTES [N]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from joules.runtime import Predictor
from joules.runtime.admission import TensorKind, TextKind

# V2 datatype -> numpy dtype, for decoding any tensor a client sends.
V2_NUMPY: dict[str, type] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
OUTPUTS = ("probabilities", "label", "action")
_V2_OF = {np.dtype(t): name for name, t in V2_NUMPY.items() if name != "BYTES"}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for a dimension of any size; the first is the row

    @property
    def numpy(self) -> type:
        return V2_NUMPY[self.datatype]

    def metadata(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    labels: tuple[str, ...]
    is_text: bool

    @classmethod
    def of(cls, predictor: Predictor) -> Signature:
        spec = predictor.spec
        kind = predictor.kind
        if isinstance(kind, TensorKind):
            inputs: tuple[TensorInfo, ...] = tuple(
                TensorInfo(t.name, _V2_OF[np.dtype(t.dtype)], (-1, *t.row_shape)) for t in kind.inputs
            )
        else:
            inputs = tuple(TensorInfo(name, "BYTES", (-1,)) for name in kind.fields)
        outputs = (
            TensorInfo("probabilities", "FP32", (-1, len(spec.labels))),
            TensorInfo("label", "BYTES", (-1,)),
            TensorInfo("action", "BYTES", (-1,)),
        )
        return cls(inputs, outputs, tuple(spec.labels), isinstance(kind, TextKind))

    def input(self, name: str) -> TensorInfo | None:
        return next((t for t in self.inputs if t.name == name), None)

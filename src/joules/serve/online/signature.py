"""A served model's tensors as the Open Inference Protocol names them.

The inputs are the fields of the bundle's input kind (``runtime/admission.py``):
a tensor model takes its model inputs, with their datatypes and shapes; a
tabular model its one float input [N, len(features)] in feature order (or one
[N] tensor per feature, by name); any other kind (text, e-mail, image) takes
one BYTES input of shape [N] per field, each element one row's raw value for
admission to convert. Every model
answers ``probabilities`` (FP32 [N, C]), ``label`` and ``action`` (BYTES [N]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from joules.runtime import Predictor
from joules.runtime.admission import TabularKind, TensorKind

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
    kind: str  # the bundle's input kind: text, tensors, email, tabular, image
    fields: tuple[str, ...] = ()  # the names a /v1 instance may carry (default: the V2 inputs')
    feature_inputs: tuple[TensorInfo, ...] = ()  # tabular: V2 may send one [N] tensor per feature instead

    @property
    def is_text(self) -> bool:
        """One text-like field per row (text, e-mail)."""
        return self.kind in ("text", "email")

    @property
    def instance_fields(self) -> tuple[str, ...]:
        return self.fields or tuple(t.name for t in self.inputs)

    @classmethod
    def of(cls, predictor: Predictor) -> Signature:
        spec = predictor.spec
        kind = predictor.kind
        features: tuple[TensorInfo, ...] = ()
        fields: tuple[str, ...] = ()
        if isinstance(kind, TensorKind):
            inputs: tuple[TensorInfo, ...] = tuple(
                TensorInfo(t.name, _V2_OF[np.dtype(t.dtype)], (-1, *t.row_shape)) for t in kind.inputs
            )
        elif isinstance(kind, TabularKind):
            # V2: the tensor itself, [N, F] in feature order (or one tensor per feature); /v1: features by name.
            dtype = _V2_OF[np.dtype(kind.converter.dtype)]
            inputs = (TensorInfo(kind.input, dtype, (-1, len(kind.fields))),)
            features = tuple(TensorInfo(name, dtype, (-1,)) for name in kind.fields)
            fields = (*kind.fields, kind.input)
        else:
            inputs = tuple(TensorInfo(name, "BYTES", (-1,)) for name in kind.fields)
        outputs = (
            TensorInfo("probabilities", "FP32", (-1, len(spec.labels))),
            TensorInfo("label", "BYTES", (-1,)),
            TensorInfo("action", "BYTES", (-1,)),
        )
        return cls(inputs, outputs, tuple(spec.labels), kind.name, fields, features)

    def input(self, name: str) -> TensorInfo | None:
        return next((t for t in (*self.inputs, *self.feature_inputs) if t.name == name), None)

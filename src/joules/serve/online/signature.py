"""A served model's tensors as the Open Inference Protocol names them.

A text model takes one BYTES input (its text field) of shape [N]; a tensor
model takes the inputs its bundle declares. Every model answers
``probabilities`` (FP32 [N, C]), ``label`` and ``action`` (BYTES [N]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from joules.runtime import Predictor

# joules.yaml dtype -> (V2 datatype, numpy dtype)
DTYPES: dict[str, tuple[str, type]] = {
    "float32": ("FP32", np.float32),
    "float16": ("FP16", np.float16),
    "int64": ("INT64", np.int64),
    "int32": ("INT32", np.int32),
    "bool": ("BOOL", np.bool_),
    "string": ("BYTES", np.object_),
}
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
        if predictor.is_text:
            inputs: tuple[TensorInfo, ...] = (TensorInfo(spec.preprocess.text_field, "BYTES", (-1,)),)
        else:
            inputs = tuple(
                TensorInfo(
                    t.name,
                    DTYPES[t.dtype][0],
                    tuple(-1 if i == 0 or not isinstance(d, int) or d < 0 else d for i, d in enumerate(t.shape)),
                )
                for t in spec.inputs
            )
        outputs = (
            TensorInfo("probabilities", "FP32", (-1, len(spec.labels))),
            TensorInfo("label", "BYTES", (-1,)),
            TensorInfo("action", "BYTES", (-1,)),
        )
        return cls(inputs, outputs, tuple(spec.labels), predictor.is_text)

    def input(self, name: str) -> TensorInfo | None:
        return next((t for t in self.inputs if t.name == name), None)

"""Open Inference Protocol V2 (KServe / Triton) bodies: decoding requests, encoding responses.

Both JSON tensors and Triton's binary tensor data extension are spoken: the
body starts with a JSON header of ``Inference-Header-Content-Length`` bytes,
followed by the raw tensors of the inputs whose parameters carry
``binary_data_size``, in input order. Numbers are little-endian, row-major;
a BYTES element is a 4-byte little-endian length and that many bytes. Outputs
travel as binary when the request asks (an output's ``binary_data``, or
``binary_data_output`` when no outputs are named, as tritonclient does).
See github.com/triton-inference-server/server docs/protocol/extension_binary_data.md.

The tensors are cut into rows (the first dimension) and each row is admitted
by the bundle's input kind, as in every mode: a refused row answers 400 with
``row i: <reason>``.

A response's ``parameters`` carry the request's cost: ``energy_j``,
``cost_usd``, ``co2_g`` and ``energy_method`` (``joules.meter.Cost.parameters``).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from joules.errors import InputError
from joules.serve.online.handler import Answer, Job
from joules.serve.online.protocol_v1 import Admit
from joules.serve.online.schemas import InferenceRequest, RequestInput, parse
from joules.serve.online.signature import OUTPUTS, V2_NUMPY, Signature, TensorInfo

HEADER_LENGTH = "inference-header-content-length"
_U32 = struct.Struct("<I")


@dataclass(frozen=True)
class OutputRequest:
    name: str
    binary: bool
    classification: int = 0  # top-k classes as "score:index:label" strings instead of the tensor


@dataclass(frozen=True)
class V2Request:
    job: Job
    outputs: tuple[OutputRequest, ...]
    id: str | None
    timeout_s: float | None  # the client's own deadline (Triton's `timeout` parameter, microseconds)


# -- requests ----------------------------------------------------------------------------------


def decode_request(body: bytes, header_length: str | None, sig: Signature, admit: Admit, *, max_rows: int) -> V2Request:
    head, binary = _split(body, header_length)
    req: InferenceRequest = parse(InferenceRequest, head)
    params = req.parameters or {}
    binary_output = _flag(params, "binary_data_output", "request parameters")
    timeout_s = None
    if "timeout" in params:
        t = params["timeout"]
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise InputError(f"parameters.timeout must be a whole number of microseconds >= 0, got {t!r}")
        timeout_s = t / 1e6 if t > 0 else None
    job = _decode_inputs(req.inputs, binary, sig, admit, max_rows)
    return V2Request(job, _decode_outputs(req, sig, binary_output), req.id, timeout_s)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    # ASCII digits only: int() also takes "1_0", "+10" and other scripts' digits.
    n = int(header_length) if header_length.isascii() and header_length.isdigit() else -1
    if not 0 <= n <= len(body):
        raise InputError(
            f"Inference-Header-Content-Length {header_length!r} must be a whole number between 0 and "
            f"the body's length ({len(body)} bytes)"
        )
    view = memoryview(body)
    return bytes(view[:n]), view[n:]


def _flag(params: dict[str, Any], key: str, where: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise InputError(f"{where}: {key} must be true or false, got {value!r}")
    return value


def _decode_inputs(
    inputs: Sequence[RequestInput], binary: memoryview, sig: Signature, admit: Admit, max_rows: int
) -> Job:
    if not inputs:
        raise InputError(f"the request has no inputs; the model takes {[t.name for t in sig.inputs]}")
    names = [i.name for i in inputs]
    wanted = [t.name for t in sig.inputs]
    if sig.feature_inputs and set(names) & {t.name for t in sig.feature_inputs}:
        wanted = [t.name for t in sig.feature_inputs]  # a tabular model's features, one tensor each
    unknown = sorted(set(names) - set(wanted))
    missing = sorted(set(wanted) - set(names))
    if unknown or missing or len(set(names)) != len(names):
        raise InputError(f"the model takes inputs {wanted}; got {names} (unknown {unknown}, missing {missing})")
    offset = 0
    arrays: dict[str, Any] = {}
    rows = None
    for inp in inputs:
        info = sig.input(inp.name)
        assert info is not None  # checked above
        count = _check_shape(inp, info, max_rows)
        size = _binary_size(inp)
        if size is not None:
            if inp.data is not None:
                raise InputError(f"input {inp.name!r} has both 'data' and parameters.binary_data_size; send one")
            if offset + size > len(binary):
                raise InputError(
                    f"input {inp.name!r} declares binary_data_size {size} but only {len(binary) - offset} bytes "
                    "of binary data follow the JSON header"
                )
            values = _from_binary(inp, info, binary[offset : offset + size], count)
            offset += size
        elif inp.data is not None:
            values = _from_json(inp, info, inp.data, count)
        else:
            raise InputError(f"input {inp.name!r} has no 'data' and no parameters.binary_data_size")
        arrays[inp.name] = values
        n = inp.shape[0]
        if rows is not None and n != rows:
            raise InputError(f"inputs disagree on the number of rows: {inp.name!r} has {n}, others {rows}")
        rows = n
    if offset != len(binary):
        raise InputError(f"{len(binary) - offset} bytes of binary data follow the JSON header that no input claims")
    values = []
    for i in range(rows or 0):
        try:
            values.append(admit({name: column[i] for name, column in arrays.items()}))
        except InputError as e:
            raise InputError(f"row {i}: {e}") from None
    return Job(values)


def _check_shape(inp: RequestInput, info: TensorInfo, max_rows: int) -> int:
    if inp.datatype != info.datatype:
        raise InputError(f"input {inp.name!r} has datatype {inp.datatype!r}; the model takes {info.datatype}")
    shape = inp.shape
    if info.datatype == "BYTES" and len(info.shape) == 1 and len(shape) == 2 and shape[1] == 1:
        shape = shape[:1]  # [N, 1] is how many Triton clients send a batch of strings
    if len(shape) != len(info.shape):
        raise InputError(f"input {inp.name!r} has shape {inp.shape}; the model takes {list(info.shape)} (-1: any)")
    for axis, (got, want) in enumerate(zip(shape, info.shape, strict=True)):
        if want >= 0 and got != want:
            raise InputError(f"input {inp.name!r} dimension {axis} is {got}; the model takes {want}")
    rows = shape[0]
    if rows == 0:
        raise InputError(f"input {inp.name!r} has no rows (shape {inp.shape}); send at least one")
    if 0 in shape:
        raise InputError(f"input {inp.name!r} has an empty dimension (shape {inp.shape})")
    if rows > max_rows:
        raise InputError(
            f"input {inp.name!r} has {rows} rows; a request may carry at most {max_rows} (--max-instances)"
        )
    return math.prod(inp.shape)


def _binary_size(inp: RequestInput) -> int | None:
    params = inp.parameters or {}
    if any(k.startswith("shared_memory") for k in params):
        raise InputError(f"input {inp.name!r}: shared memory is not supported by this server; send the data")
    if "binary_data_size" not in params:
        return None
    size = params["binary_data_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InputError(f"input {inp.name!r}: binary_data_size must be a whole number >= 0, got {size!r}")
    return size


def _from_binary(inp: RequestInput, info: TensorInfo, data: memoryview, count: int) -> Any:
    if info.datatype == "BYTES":
        items: list[bytes] = []
        pos = 0
        while pos < len(data):
            if pos + 4 > len(data):
                raise InputError(f"input {inp.name!r}: binary BYTES data ends inside an element's length prefix")
            (n,) = _U32.unpack_from(data, pos)
            pos += 4
            if pos + n > len(data):
                raise InputError(f"input {inp.name!r}: binary BYTES element {len(items)} is cut short")
            items.append(bytes(data[pos : pos + n]))  # decoded (strict UTF-8) by admission
            pos += n
        if len(items) != count:
            raise InputError(f"input {inp.name!r} has shape {inp.shape} ({count} elements) but carries {len(items)}")
        return items
    dtype = np.dtype(V2_NUMPY[info.datatype]).newbyteorder("<")
    if len(data) != count * dtype.itemsize:
        raise InputError(
            f"input {inp.name!r}: shape {inp.shape} of {info.datatype} is {count * dtype.itemsize} bytes, "
            f"binary_data_size is {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype).astype(dtype.newbyteorder("="), copy=True).reshape(inp.shape)


def _from_json(inp: RequestInput, info: TensorInfo, data: list[Any], count: int) -> Any:
    flat = _flatten(data, len(inp.shape), inp.name)
    if len(flat) != count:
        raise InputError(f"input {inp.name!r} has shape {inp.shape} ({count} elements) but carries {len(flat)}")
    if info.datatype == "BYTES":
        return flat  # one element per row ([N] or [N, 1]); each element's type is admission's to check
    want_bool = info.datatype == "BOOL"
    for i, x in enumerate(flat):
        ok = isinstance(x, bool) if want_bool else isinstance(x, (int, float)) and not isinstance(x, bool)
        if not ok:
            raise InputError(
                f"input {inp.name!r} element {i} must be {'true/false' if want_bool else 'a number'}, "
                f"got {type(x).__name__} ({str(x)[:20]!r})"
            )
    # Numbers stay float64 (bool for BOOL) until admission converts each row to the model's dtype,
    # so a value out of the model's range (1e39 for float32) is refused there, as in every mode.
    return np.array(flat, dtype=np.bool_ if want_bool else np.float64).reshape(inp.shape)


def _flatten(data: list[Any], depth: int, name: str) -> list[Any]:
    if not any(isinstance(x, list) for x in data):
        return data
    if depth <= 1:
        raise InputError(f"input {name!r}: 'data' is nested deeper than its shape")
    out: list[Any] = []
    for x in data:
        if not isinstance(x, list):
            raise InputError(f"input {name!r}: 'data' mixes nested lists and values")
        out.extend(_flatten(x, depth - 1, name))
    return out


def _decode_outputs(req: InferenceRequest, sig: Signature, binary_output: bool) -> tuple[OutputRequest, ...]:
    if req.outputs is None:
        return tuple(OutputRequest(name, binary_output) for name in OUTPUTS)
    out = []
    for o in req.outputs:
        if o.name not in OUTPUTS:
            raise InputError(f"unknown output {o.name!r}; the model answers {list(OUTPUTS)}")
        params = o.parameters or {}
        if any(k.startswith("shared_memory") for k in params):
            raise InputError(f"output {o.name!r}: shared memory is not supported by this server")
        top = params.get("classification", 0)
        if isinstance(top, bool) or not isinstance(top, int) or top < 0:
            raise InputError(f"output {o.name!r}: classification must be a whole number >= 0, got {top!r}")
        if top and o.name != "probabilities":
            raise InputError(f"output {o.name!r}: classification applies to 'probabilities' only")
        out.append(OutputRequest(o.name, _flag(params, "binary_data", f"output {o.name!r}"), min(top, len(sig.labels))))
    return tuple(out)


# -- responses ---------------------------------------------------------------------------------


def encode_response(
    model: str, version: int, answer: Answer, req: V2Request, labels: Sequence[str]
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (``Inference-Header-Content-Length`` when binary follows)."""
    n = len(answer)
    probs = np.array([[r.probabilities[c] for c in labels] for r in answer.rows if r.probabilities], dtype=np.float32)
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for o in req.outputs:
        datatype, shape, values = _output(o, answer, probs.reshape(n, len(labels)), labels, n)
        entry: dict[str, Any] = {"name": o.name, "datatype": datatype, "shape": shape}
        if o.binary:
            chunk = _bytes_tensor(values) if datatype == "BYTES" else np.ascontiguousarray(values, "<f4").tobytes()
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = values if datatype == "BYTES" else values.ravel().tolist()
        outputs.append(entry)
    head: dict[str, Any] = {"model_name": model, "model_version": str(version)}
    if req.id is not None:
        head["id"] = req.id
    head["parameters"] = answer.cost.parameters()  # this request's energy, dollars and CO2
    head["outputs"] = outputs
    header = json.dumps(head, separators=(",", ":"), allow_nan=False).encode()
    if not chunks:
        return header, {"Content-Type": "application/json"}
    return b"".join([header, *chunks]), {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


def _output(
    o: OutputRequest, answer: Answer, probs: np.ndarray, labels: Sequence[str], n: int
) -> tuple[str, list[int], Any]:
    if o.name == "label":
        return "BYTES", [n], [r.label or "" for r in answer.rows]
    if o.name == "action":
        return "BYTES", [n], [r.action or "" for r in answer.rows]
    if o.classification:
        k = o.classification
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        values = [f"{probs[r, c]:f}:{c}:{labels[c]}" for r in range(n) for c in top[r].tolist()]
        return "BYTES", [n, k], values
    return "FP32", [n, len(labels)], probs


def _bytes_tensor(values: Sequence[str]) -> bytes:
    parts = []
    for v in values:
        b = v.encode("utf-8")
        parts.append(_U32.pack(len(b)))
        parts.append(b)
    return b"".join(parts)

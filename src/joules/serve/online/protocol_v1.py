"""The simple JSON API: ``{"instances": [...]}`` in, ``{"model", "version", "predictions", "cost"}`` out.

Each instance is one row, admitted by the bundle's input kind; a refused row
answers 400 with ``instances[i]: <reason>``, the reason worded as in every
other mode.

``cost`` is the request's share of the model calls that served it, the same
figures as the ``X-Joules-*`` headers and a V2 response's ``parameters``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from joules.errors import InputError
from joules.serve.online.handler import Answer, Job
from joules.serve.online.schemas import PredictRequest, parse
from joules.serve.online.signature import Signature

Admit = Callable[[Mapping[str, Any]], Any]  # Predictor.admit: one row's fields -> its value, or InputError


def decode_request(body: bytes, sig: Signature, admit: Admit, *, max_rows: int) -> Job:
    """The request's rows, each admitted (``runtime/admission.py``); the first refused row is a 400."""
    req: PredictRequest = parse(PredictRequest, body)
    instances = req.instances
    if not instances:
        raise InputError("'instances' is empty: send at least one instance")
    if len(instances) > max_rows:
        raise InputError(f"{len(instances)} instances; a request may carry at most {max_rows} (--max-instances)")
    names = set(sig.instance_fields)
    values = []
    for i, inst in enumerate(instances):
        unknown = sorted(set(inst) - names)
        if unknown:
            raise InputError(f"instances[{i}]: unknown field {unknown[0]!r}; each instance is {_example(sig)}")
        try:
            values.append(admit(inst))
        except InputError as e:
            hint = f"; each instance is {_example(sig)}" if _incomplete(sig, inst) else ""
            raise InputError(f"instances[{i}]: {e}{hint}") from None
    return Job(values)


def _incomplete(sig: Signature, inst: Mapping[str, Any]) -> bool:
    if sig.kind == "tabular":  # the features by name, or the input tensor: either names every value
        return not (set(sig.fields[:-1]) <= set(inst) or sig.fields[-1] in inst)
    return any(n not in inst for n in sig.instance_fields)


def _example(sig: Signature) -> str:
    if sig.kind == "email":
        return json.dumps({sig.inputs[0].name: "<the raw message, headers and body>"})
    if sig.kind == "image":
        return json.dumps({sig.inputs[0].name: {"b64": "<base64 of a PNG or JPEG file>"}})
    if sig.kind == "tabular":
        names = sig.fields[:-1]
        shown = ", ".join(f"{json.dumps(n)}: <number>" for n in names[:3]) + (", ..." if len(names) > 3 else "")
        return "{" + shown + "} (" + f"{len(names)} features) or " + json.dumps({sig.fields[-1]: "[...]"})
    if sig.is_text:
        return json.dumps({sig.inputs[0].name: "..."})
    return "{" + ", ".join(f'"{t.name}": <{t.datatype} array of shape {list(t.shape[1:])}>' for t in sig.inputs) + "}"


def encode_response(model: str, version: int, answer: Answer) -> bytes:
    """Strict JSON: a non-finite number is never written (such rows are refused before, as 422)."""
    predictions = [r.to_dict() for r in answer.rows]
    body = {"model": model, "version": version, "predictions": predictions, "cost": answer.cost.parameters()}
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()

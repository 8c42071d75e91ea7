"""The simple JSON API: ``{"instances": [...]}`` in, ``{"model", "version", "predictions", "cost"}`` out.

``cost`` is the request's share of the model calls that served it, the same
figures as the ``X-Joules-*`` headers and a V2 response's ``parameters``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from joules.errors import InputError
from joules.serve.online.handler import Job, Outcome
from joules.serve.online.schemas import PredictRequest, parse
from joules.serve.online.signature import Signature


def decode_request(body: bytes, sig: Signature, *, max_rows: int) -> Job:
    req: PredictRequest = parse(PredictRequest, body)
    instances = req.instances
    if not instances:
        raise InputError("'instances' is empty: send at least one instance")
    if len(instances) > max_rows:
        raise InputError(f"{len(instances)} instances; a request may carry at most {max_rows} (--max-instances)")
    names = [t.name for t in sig.inputs]
    example = _example(sig)
    for i, inst in enumerate(instances):
        unknown = sorted(set(inst) - set(names))
        if unknown:
            raise InputError(f"instances[{i}]: unknown field {unknown[0]!r}; each instance is {example}")
        missing = [n for n in names if n not in inst]
        if missing:
            raise InputError(f"instances[{i}]: missing field {missing[0]!r}; each instance is {example}")
    if sig.is_text:
        field = names[0]
        for i, inst in enumerate(instances):
            if not isinstance(inst[field], str):
                raise InputError(
                    f"instances[{i}].{field} must be a string, got {type(inst[field]).__name__} "
                    f"({str(inst[field])[:20]!r})"
                )
        return Job(texts=[inst[field] for inst in instances])
    return Job(tensors={t.name: _column(instances, t.name, t.numpy, t.datatype) for t in sig.inputs})


def _example(sig: Signature) -> str:
    if sig.is_text:
        return json.dumps({sig.inputs[0].name: "..."})
    return "{" + ", ".join(f'"{t.name}": <{t.datatype} array of shape {list(t.shape[1:])}>' for t in sig.inputs) + "}"


def _column(instances: Sequence[dict[str, Any]], name: str, dtype: type, datatype: str) -> np.ndarray:
    rows: list[np.ndarray] = []
    for i, inst in enumerate(instances):
        value = inst[name]
        _check_numbers(value, f"instances[{i}].{name}", datatype == "BOOL")
        try:
            rows.append(np.asarray(value, dtype=dtype))
        except (OverflowError, ValueError) as e:
            raise InputError(f"instances[{i}].{name} cannot be read as {datatype}: {e}") from None
        if rows[-1].shape != rows[0].shape:
            raise InputError(
                f"instances[{i}].{name} has shape {list(rows[-1].shape)}, instances[0] has {list(rows[0].shape)}"
            )
    return np.stack(rows)


def _check_numbers(value: Any, where: str, want_bool: bool, depth: int = 0) -> None:
    if isinstance(value, list):
        if depth > 8:
            raise InputError(f"{where} is nested too deeply")
        for x in value:
            _check_numbers(x, where, want_bool, depth + 1)
        return
    ok = isinstance(value, bool) if want_bool else isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        raise InputError(
            f"{where} must hold {'true/false' if want_bool else 'numbers'}, got {type(value).__name__} "
            f"({str(value)[:20]!r})"
        )


def encode_response(model: str, version: int, outcome: Outcome, labels: Sequence[str]) -> bytes:
    probs = outcome.probabilities.tolist()
    predictions = [
        {"label": lab, "probabilities": dict(zip(labels, p, strict=True)), "action": act}
        for lab, p, act in zip(outcome.labels, probs, outcome.actions, strict=True)
    ]
    body = {"model": model, "version": version, "predictions": predictions, "cost": outcome.cost.parameters()}
    return json.dumps(body, separators=(",", ":")).encode()

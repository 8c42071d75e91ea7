"""Fuzz both APIs from the served OpenAPI document (schemathesis), and the binary tensor
extension with hypothesis: no input may cause a 5xx, and every body is strict JSON
(no NaN or Infinity literals, which strict parsers reject)."""

from __future__ import annotations

import json
import struct

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode

from tests.serve.online.conftest import ServerProcess

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


def _refuse(constant: str) -> None:
    raise AssertionError(f"the body is not strict JSON: it holds {constant}")


def strict_json(body: bytes, headers: httpx.Headers | dict[str, str]) -> object:
    """The body (its JSON header when binary tensors follow) parsed as strict JSON."""
    n = headers.get("inference-header-content-length")
    head = body[: int(n)] if n is not None else body
    return json.loads(head.decode("utf-8"), parse_constant=_refuse)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_makes_a_server_error(spam_server: ServerProcess, mode: GenerationMode) -> None:
    # Loading and unloading change the server under test; tests/serve/online/test_hot_swap.py covers them.
    schema = schemathesis.openapi.from_url(spam_server.url + "/openapi.json").exclude(
        path_regex=r"^/v2/repository/models/"
    )

    @given(case=schema.as_strategy(mode))
    @settings(FUZZ, max_examples=150)
    def check(case) -> None:
        response = case.call(base_url=spam_server.url, timeout=30)
        assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.text[:300])
        if case.formatted_path not in ("/metrics", "/docs"):
            strict_json(response.content, response.headers)
        if response.status_code >= 400 and case.formatted_path != "/metrics":
            assert "error" in response.json() and "Traceback" not in response.text

    check()


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=20))
_json = st.recursive(
    _scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12
)
_inputs = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["text", "x"]),
            "shape": st.lists(st.integers(0, 4), max_size=3),
            "datatype": st.sampled_from(["BYTES", "FP32", "INT64", "bogus"]),
        },
        optional={
            "parameters": st.dictionaries(st.sampled_from(["binary_data_size", "other"]), _json, max_size=2),
            "data": _json,
        },
    ),
    max_size=3,
)


@given(
    inputs=_inputs,
    outputs=st.none()
    | st.lists(
        st.fixed_dictionaries(
            {"name": st.sampled_from(["label", "probabilities", "nope"])},
            optional={
                "parameters": st.dictionaries(st.sampled_from(["binary_data", "classification"]), _json, max_size=2)
            },
        ),
        max_size=3,
    ),
    tail=st.binary(max_size=64),
    header_delta=st.integers(-8, 8),
    use_header=st.booleans(),
)
@FUZZ
def test_binary_tensor_bodies_never_make_a_server_error(
    spam_server: ServerProcess, inputs, outputs, tail: bytes, header_delta: int, use_header: bool
) -> None:
    request: dict = {"inputs": inputs}
    if outputs is not None:
        request["outputs"] = outputs
    head = json.dumps(request).encode()
    headers = {"Inference-Header-Content-Length": str(len(head) + header_delta)} if use_header else {}
    r = httpx.post(spam_server.url + "/v2/models/spam/infer", content=head + tail, headers=headers, timeout=30)
    assert r.status_code < 500, (request, tail, r.text[:300])
    strict_json(r.content, r.headers)


@given(texts=st.lists(st.text(max_size=300), min_size=1, max_size=5))
@FUZZ
def test_any_text_is_answered(spam_server: ServerProcess, texts: list[str]) -> None:
    data = b"".join(
        struct.pack("<I", len(t.encode("utf-8", "surrogatepass"))) + t.encode("utf-8", "surrogatepass") for t in texts
    )
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "shape": [len(texts)],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(data)},
                }
            ]
        }
    ).encode()
    r = httpx.post(
        spam_server.url + "/v2/models/spam/infer",
        content=head + data,
        headers={"Inference-Header-Content-Length": str(len(head))},
        timeout=30,
    )
    # Admission's text rules: valid UTF-8 and not empty or only whitespace (the same in every mode).
    valid = all(_is_utf8(t) and t.strip() for t in texts)
    assert r.status_code == (200 if valid else 400), r.text[:300]
    body = strict_json(r.content, r.headers)
    if not valid:
        assert isinstance(body, dict) and body["error"].startswith("row ")


def _is_utf8(t: str) -> bool:
    try:
        t.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False

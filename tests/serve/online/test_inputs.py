"""E-mail, tabular and image models served by a real server: /v1 instances and V2 tensors, bad inputs as 400s."""

from __future__ import annotations

import base64
import json
import signal
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.runtime.inputs.samples import jpeg_with_size, png_bomb
from tests.serve.inputs_models import BROKEN_MAIL, FEATURES, MAIL, make_inputs_home, png, tab_expected
from tests.serve.online.conftest import ServerProcess


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_bundle_dir: Path) -> Iterator[tuple[ServerProcess, tuple]]:
    work = tmp_path_factory.mktemp("inputs-online")
    wb = make_inputs_home(work / "home", tiny_bundle_dir, work)
    server = ServerProcess(work / "home", ["mail", "tab", "img"], work / "server.log").wait_ready()
    yield server, wb
    server.stop(signal.SIGKILL)


def v1(server: ServerProcess, model: str, instances: list[object]) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/models/{model}:predict", json={"instances": instances}, timeout=60)


def v2(server: ServerProcess, model: str, inputs: list[dict[str, object]]) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{model}/infer", json={"inputs": inputs}, timeout=60)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_email_raw_message_over_v1_and_v2(served: tuple[ServerProcess, tuple]) -> None:
    server, _ = served
    r = v1(server, "mail", [{"email": MAIL.decode()}])
    assert r.status_code == 200, r.text
    first = r.json()["predictions"][0]
    assert first["label"] in ("ham", "spam") and first["action"]
    r2 = v2(server, "mail", [{"name": "email", "datatype": "BYTES", "shape": [1], "data": [MAIL.decode()]}])
    assert r2.status_code == 200, r2.text
    assert r2.json()["outputs"][1]["data"] == [first["label"]]
    for bad, reason in (("", "not an e-mail"), (BROKEN_MAIL.decode("latin-1"), "not an e-mail")):
        r = v1(server, "mail", [{"email": MAIL.decode()}, {"email": bad}])
        assert r.status_code == 400 and "instances[1]" in r.text and reason in r.text, r.text
    no_text = "From: a@example.com\r\nSubject: \r\n\r\n"
    r = v1(server, "mail", [{"email": no_text}])
    assert r.status_code == 400 and "has no text" in r.text
    r = v1(server, "mail", [{"text": "hello"}])
    assert r.status_code == 400 and "unknown field 'text'" in r.text and '{"email": ' in r.json()["error"]


def test_tabular_by_name_over_v1_and_as_a_tensor_over_v2(served: tuple[ServerProcess, tuple]) -> None:
    server, (w, b) = served
    x = np.array([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, -1.0, 2.5]])
    want = tab_expected(w, b, x)
    # /v1: features by name, in any order, numbers or numeric strings
    rows = [dict(reversed(list(zip(FEATURES, map(float, row), strict=True)))) for row in x]
    rows[1]["b"] = "1.0"
    r = v1(server, "tab", rows)
    assert r.status_code == 200, r.text
    assert [p["label"] for p in r.json()["predictions"]] == want
    # V2: the graph input [N, F] in feature order ...
    r = v2(server, "tab", [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": x.ravel().tolist()}])
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][1]["data"] == want
    # ... or one [N] tensor per feature, by name
    named = [{"name": f, "datatype": "FP32", "shape": [2], "data": x[:, i].tolist()} for i, f in enumerate(FEATURES)]
    r = v2(server, "tab", named)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][1]["data"] == want
    meta = httpx.get(f"{server.url}/v2/models/tab", timeout=10).json()
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    # bad inputs: the reason names the column
    r = v1(server, "tab", [{"a": 1, "b": "abc", "c": 0, "d": 0}])
    assert r.status_code == 400 and "feature 'b': 'abc' is not a number" in r.text, r.text
    r = v1(server, "tab", [{"a": 1, "b": 2, "c": 0}])
    assert r.status_code == 400 and "feature 'd' is missing" in r.text
    r = v2(server, "tab", [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}])
    assert r.status_code == 400 and "dimension 1 is 3; the model takes 4" in r.text
    r = v2(server, "tab", named[:3])
    assert r.status_code == 400 and "missing ['d']" in r.text


def test_image_b64_over_v1_and_bytes_over_v2(served: tuple[ServerProcess, tuple]) -> None:
    server, _ = served
    light, dark = png(230), png(20)
    r = v1(server, "img", [{"image": {"b64": b64(light)}}, {"image": {"b64": b64(dark)}}])
    assert r.status_code == 200, r.text
    assert [p["label"] for p in r.json()["predictions"]] == ["light", "dark"]
    # V2 JSON: BYTES elements are base64 text
    r = v2(server, "img", [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(dark)]}])
    assert r.status_code == 200 and r.json()["outputs"][1]["data"] == ["dark"], r.text
    # V2 binary: the file's bytes themselves
    body = struct.pack("<I", len(light)) + light
    head = json.dumps(
        {
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(body)}}
            ]
        }
    ).encode()
    r = httpx.post(
        f"{server.url}/v2/models/img/infer",
        content=head + body,
        headers={"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"},
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["outputs"][1]["data"] == ["light"], r.text
    for bad, reason in (
        (light[: len(light) // 2], "truncated"),
        (png_bomb(10_000, 10_000), "100,000,000 pixels, over the limit"),
        (jpeg_with_size(40_000, 30_000), "over the limit"),
        (b"GIF89a" + bytes(40), "not a PNG or JPEG"),
    ):
        r = v1(server, "img", [{"image": {"b64": b64(light)}}, {"image": {"b64": b64(bad)}}])
        assert r.status_code == 400 and "instances[1]" in r.text and reason in r.text, r.text
    r = v1(server, "img", [{"image": "not base64!"}])
    assert r.status_code == 400 and "base64" in r.text
    r = v1(server, "img", [{}])
    assert r.status_code == 400 and "missing field 'image'" in r.text and "b64" in r.text
    # the server is still well and answers after the bombs
    assert httpx.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200

"""Open Inference Protocol V2 against a real server, with the real tritonclient (JSON and binary)."""

from __future__ import annotations

import gzip
import json
import struct

import httpx
import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from tests.serve.online.conftest import ServerProcess, sms

SPAM = "WINNER!! You have won a 1000 prize. Call 09061701461 to claim now"


@pytest.fixture(scope="module")
def client(spam_server: ServerProcess) -> th.InferenceServerClient:
    return th.InferenceServerClient(spam_server.url.removeprefix("http://"))


def infer(client: th.InferenceServerClient, texts: list[str], binary: bool, **kw):
    inp = th.InferInput("text", [len(texts)], "BYTES")
    inp.set_data_from_numpy(np.array(texts, dtype=object), binary_data=binary)
    outs = [th.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "label", "action")]
    return client.infer("spam", [inp], outputs=outs, **kw)


def decoded(a: np.ndarray) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else x for x in a.tolist()]


def test_health_and_metadata(client: th.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("spam") and client.is_model_ready("spam", "1")
    assert not client.is_model_ready("spam", "7") and not client.is_model_ready("nope")
    meta = client.get_model_metadata("spam")
    assert meta["name"] == "spam" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in meta["outputs"]] == ["probabilities", "label", "action"]
    server = client.get_server_metadata()
    assert "binary_tensor_data" in server["extensions"]
    config = client.get_model_config("spam")
    assert config["input"][0]["data_type"] == "TYPE_STRING" and config["dynamic_batching"]


def test_json_and_binary_tensors_agree(client: th.InferenceServerClient) -> None:
    texts = [SPAM, "Are we still on for lunch tomorrow?", *sms(6)]
    by_json = infer(client, texts, binary=False)
    by_binary = infer(client, texts, binary=True)
    pj, pb = by_json.as_numpy("probabilities"), by_binary.as_numpy("probabilities")
    assert pj.shape == (len(texts), 2) and pb.dtype == np.float32
    np.testing.assert_allclose(pj, pb, atol=1e-6)
    np.testing.assert_allclose(pj.sum(axis=1), 1.0, atol=1e-5)
    assert decoded(by_json.as_numpy("label")) == decoded(by_binary.as_numpy("label"))
    labels = decoded(by_binary.as_numpy("label"))
    assert labels == [("ham", "spam")[int(p[1] > p[0])] for p in pb]
    assert set(decoded(by_binary.as_numpy("action"))) <= {"move_to_spam", "flag_for_review", "deliver_to_inbox"}


def test_all_outputs_binary_by_default_and_request_id_echoed(client: th.InferenceServerClient) -> None:
    inp = th.InferInput("text", [1], "BYTES")
    inp.set_data_from_numpy(np.array([SPAM], dtype=object))
    result = client.infer("spam", [inp], request_id="req-42")  # no outputs named: binary_data_output
    response = result.get_response()
    assert response["id"] == "req-42" and response["model_version"] == "1"
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])
    assert result.as_numpy("probabilities").shape == (1, 2)


def test_compressed_request_and_explicit_version(client: th.InferenceServerClient) -> None:
    inp = th.InferInput("text", [2], "BYTES")
    inp.set_data_from_numpy(np.array([SPAM, "see you at 5"], dtype=object))
    plain = client.infer("spam", [inp], model_version="1").as_numpy("probabilities")
    for algorithm in ("gzip", "deflate"):
        packed = client.infer("spam", [inp], request_compression_algorithm=algorithm).as_numpy("probabilities")
        np.testing.assert_allclose(plain, packed, atol=1e-6)


def test_classification_extension(client: th.InferenceServerClient) -> None:
    inp = th.InferInput("text", [1], "BYTES")
    inp.set_data_from_numpy(np.array([SPAM], dtype=object), binary_data=False)
    out = th.InferRequestedOutput("probabilities", binary_data=False, class_count=2)
    top = client.infer("spam", [inp], outputs=[out]).as_numpy("probabilities")
    assert top.shape == (1, 2)
    score, index, label = decoded(top[0])[0].split(":")
    assert label in ("ham", "spam") and int(index) == ("ham", "spam").index(label) and float(score) >= 0.5


def test_tritonclient_sees_errors_as_exceptions(client: th.InferenceServerClient) -> None:
    inp = th.InferInput("text", [1], "FP32")
    inp.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    with pytest.raises(InferenceServerException, match="datatype"):
        client.infer("spam", [inp])
    with pytest.raises(InferenceServerException, match="no model named 'nope'"):
        client.infer("nope", [inp])


def test_repository_index(client: th.InferenceServerClient) -> None:
    index = client.get_model_repository_index()
    assert {"name": "spam", "version": "1", "state": "READY"}.items() <= index[0].items()


def raw(server: ServerProcess, body: bytes, path: str = "/v2/models/spam/infer", **headers: str) -> httpx.Response:
    return httpx.post(server.url + path, content=body, headers=headers, timeout=30)


def bytes_tensor(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


def test_binary_body_by_hand(spam_server: ServerProcess) -> None:
    head = json.dumps(
        {
            "inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "parameters": {"binary_data_size": 0}}],
            "outputs": [{"name": "label", "parameters": {"binary_data": True}}, {"name": "action"}],
            "parameters": {"unused": {"nested": [1, 2]}, "priority": 0},
        }
    )
    data = bytes_tensor(SPAM.encode(), "ünïcode ok".encode())
    head = head.replace('"binary_data_size": 0', f'"binary_data_size": {len(data)}').encode()
    r = raw(spam_server, head + data, **{"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:n])
    label, action = meta["outputs"]
    assert label["shape"] == [2] and "data" not in label and "data" in action
    tail = r.content[n:]
    assert len(tail) == label["parameters"]["binary_data_size"]
    first = struct.unpack_from("<I", tail)[0]
    assert tail[4 : 4 + first].decode() in ("ham", "spam")


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (b"{not json", {}, "not valid JSON"),
        (b'{"inputs": [], "bogus": 1}', {}, "unknown field 'bogus'"),
        (b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"], "x": 1}]}', {}, "inputs.0.x"),
        (b'{"inputs": [{"name": "text", "shape": ["1"], "datatype": "BYTES", "data": ["a"]}]}', {}, "inputs.0.shape.0"),
        (b'{"inputs": []}', {}, "no inputs"),
        (b'{"inputs": [{"name": "txt", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}', {}, "unknown ['txt']"),
        (b'{"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a"]}]}', {}, "3 elements"),
        (b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [5]}]}', {}, "must be a string"),
        (b'{"inputs": [{"name": "text", "shape": [0], "datatype": "BYTES", "data": []}]}', {}, "no rows"),
        (b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES"}]}', {}, "no 'data'"),
        (b'{"inputs": [{"name": "text", "shape": [1, 2, 3], "datatype": "BYTES", "data": ["a"]}]}', {}, "shape"),
        (b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [["a"]]}]}', {}, "nested"),
        (
            b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}],'
            b' "outputs": [{"name": "logits"}]}',
            {},
            "unknown output",
        ),
        (
            b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}],'
            b' "parameters": {"binary_data_output": "yes"}}',
            {},
            "binary_data_output",
        ),
        (
            b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}]}',
            {"Inference-Header-Content-Length": "whole body"},
            "binary_data_size 9",
        ),
        (b'{"inputs": []}', {"Inference-Header-Content-Length": "999"}, "Inference-Header-Content-Length"),
        # Python's int() reads these as 10; a length is ASCII digits only.
        (b'{"inputs": []}', {"Inference-Header-Content-Length": "1_0"}, "Inference-Header-Content-Length"),
        (b'{"inputs": []}', {"Inference-Header-Content-Length": "+10"}, "Inference-Header-Content-Length"),
        (
            b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "parameters":'
            b' {"shared_memory_region": "r"}}]}',
            {},
            "shared memory",
        ),
    ],
)
def test_bad_requests_are_400_and_say_why(
    spam_server: ServerProcess, body: bytes, headers: dict[str, str], message: str
) -> None:
    headers = {k: str(len(body)) if v == "whole body" else v for k, v in headers.items()}
    r = raw(spam_server, body, **headers)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]
    assert "Traceback" not in r.text


def test_binary_bytes_cut_short_and_bad_utf8(spam_server: ServerProcess) -> None:
    for data, message in ((struct.pack("<I", 50) + b"abc", "cut short"), (bytes_tensor(b"\xff\xfe"), "UTF-8")):
        head = json.dumps(
            {
                "inputs": [
                    {"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(data)}}
                ]
            }
        ).encode()
        r = raw(spam_server, head + data, **{"Inference-Header-Content-Length": str(len(head))})
        assert r.status_code == 400 and message in r.json()["error"], r.text


def test_unknown_model_version_and_bad_names(spam_server: ServerProcess) -> None:
    body = b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}'
    assert raw(spam_server, body, "/v2/models/nope/infer").status_code == 404
    assert raw(spam_server, body, "/v2/models/spam/versions/9/infer").status_code == 404
    assert raw(spam_server, body, "/v2/models/spam/versions/x/infer").status_code == 400
    r = httpx.get(spam_server.url + "/v2/models/..%2f..%2fetc/ready", timeout=10)
    assert r.status_code in (400, 404) and "error" in r.json()
    assert httpx.get(spam_server.url + "/v2/models/spam/infer", timeout=10).status_code == 405
    assert httpx.get(spam_server.url + "/nowhere", timeout=10).json() == {"error": "Not Found"}


def test_gzip_bomb_is_413(spam_server: ServerProcess) -> None:
    bomb = gzip.compress(b'{"inputs": [' + b" " * (8 << 20) + b"]}")
    assert len(bomb) < (1 << 20)
    r = raw(spam_server, bomb, **{"Content-Encoding": "gzip"})
    assert r.status_code == 413, r.text
    assert raw(spam_server, b"xx", **{"Content-Encoding": "br"}).status_code == 415

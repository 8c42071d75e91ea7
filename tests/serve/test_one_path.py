"""One prediction path: the same bad rows get the same reason in every mode.

Online through a real `joules serve` (/v1 JSON and V2, binary where JSON cannot
carry the row), batch through the CLI, stream through `--source -` (JSONL) and
through a real redis-server. Each mode's answer for each row is read the way a
user reads it (a 4xx body, an error row, a dead letter) and must name the same
reason, word for word; the good rows get the same labels and actions.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.helpers import JOULES, run_joules
from tests.serve.online.conftest import Starter
from tests.serve.stream.conftest import RedisServer, wait_until

LIMIT = "100"  # --max-text-bytes, in every mode
NOT_FINITE_X = (
    "field 'X' holds a value that is not finite (NaN, infinity, or out of the float32 range); "
    "set preprocess.allow_non_finite: true in joules.yaml to allow it"
)
# Text rows: (id, the value's raw bytes inside a JSON string / a Redis field, the reason).
TEXT = [
    ("good", b"Are we still on for lunch tomorrow?", None),
    ("empty", b"", "field 'text' is empty or only whitespace"),
    ("blank", b"   ", "field 'text' is empty or only whitespace"),
    ("utf8", b"caf\xe9 au lait", "field 'text' is not valid UTF-8 text"),
    ("long", b"x" * 101, "field 'text' is 101 bytes, over the limit of 100 (max_text_bytes)"),
]
# Tensor rows for a model X [N, 4] -> probabilities [N, 2] with rules: (id, X as JSON text, the reason).
TENSOR = [
    ("good", "[1, 2, 3, 4]", None),
    ("nan", "[NaN, 1, 1, 1]", NOT_FINITE_X),
    ("inf", "[Infinity, 1, 1, 1]", NOT_FINITE_X),
    ("overflow", "[1e39, 1, 1, 1]", NOT_FINITE_X),
    ("output", "[3e38, 3e38, 0, 0]", "model output is not finite"),  # finite input, overflow inside the graph
]
MODES = ["online", "batch", "stream-jsonl", "stream-redis"]


def tensor_model(home: Path, tmp: Path) -> None:
    """The acceptance check's model: X float32 [N, 4] -> softmax probabilities, refer >= 0.5 -> review."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.array([[1, -1], [0.5, -0.5], [-1, 1], [0, 0]], dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Z"]), helper.make_node("Softmax", ["Z"], ["probabilities"], axis=1)],
        "t",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp / "t.onnx"))
    (tmp / "t.yaml").write_text(
        "task: classification\npreprocess: {kind: tensors}\n"
        "postprocess: {output: probabilities, labels: [approve, refer], activation: none}\n"
        "rules:\n  rules:\n  - {when: refer >= 0.5, action: send_to_review}\n  default: auto_approve\n"
    )
    run_joules(
        "import", str(tmp / "t.onnx"), "--spec", str(tmp / "t.yaml"), "--name", "t", "--promote", home=home, check=True
    )


def json_line(row_id: str, field: str, raw: bytes, *, tensor: bool) -> bytes:
    """One JSONL line; a text's bytes go in as they are (a non-UTF-8 byte stays a raw byte)."""
    value = raw if tensor else b'"' + raw + b'"'
    return b'{"id": "' + row_id.encode() + b'", "' + field.encode() + b'": ' + value + b"}\n"


# -- each mode: the answer for each row, as {"id": reason or None}, and the labels of the good ones --------


Answers = tuple[dict[str, str | None], dict[str, tuple[str, str]]]


def via_online(home: Path, start_server: Starter, model: str, rows: list[tuple[str, bytes, Any]]) -> Answers:
    server = start_server(home, model, "--max-text-bytes", LIMIT)
    reasons: dict[str, str | None] = {}
    labels: dict[str, tuple[str, str]] = {}
    for row_id, raw, _ in rows:
        got = []
        for path, body, headers in _online_bodies(model, raw):
            r = httpx.post(server.url + path, content=body, headers=headers, timeout=60)
            d = json.loads(r.text, parse_constant=_no_constant)  # every body is strict JSON
            if r.status_code == 200:
                got.append(None)
                if "predictions" in d:
                    p = d["predictions"][0]
                    labels[row_id] = (p["label"], p["action"])
                continue
            assert r.status_code in (400, 422), (path, row_id, r.status_code, r.text[:200])
            prefix = "instances[0]: " if path.startswith("/v1") else "row 0: "
            assert d["error"].startswith(prefix), d["error"]
            if r.status_code == 422:  # a non-finite output: never a label or an action
                assert "send_to_review" not in r.text and "auto_approve" not in r.text
            got.append(d["error"][len(prefix) :].split("; no label or action")[0])
        assert len(set(got)) == 1, f"/v1 and V2 disagree on {row_id}: {got}"
        reasons[row_id] = got[0]
    return reasons, labels


def _no_constant(c: str) -> None:
    raise AssertionError(f"a body is not strict JSON: it holds {c}")


def _online_bodies(model: str, raw: bytes) -> list[tuple[str, bytes, dict[str, str]]]:
    """The row as /v1 JSON and V2 JSON, and as a binary V2 tensor when it is text (JSON carries only UTF-8)."""
    v1, v2 = f"/v1/models/{model}:predict", f"/v2/models/{model}/infer"
    as_json = {"Content-Type": "application/json"}
    if model != "spam":
        v2_body = b'{"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 4], "data": ' + raw + b"}]}"
        return [(v1, b'{"instances": [{"X": ' + raw + b"}]}", as_json), (v2, v2_body, as_json)]
    out = []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        tensor = {"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}
        out.append((v1, json.dumps({"instances": [{"text": text}]}).encode(), as_json))
        out.append((v2, json.dumps({"inputs": [tensor]}).encode(), as_json))
    data = struct.pack("<I", len(raw)) + raw
    binary = {"name": "text", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(data)}}
    head = json.dumps({"inputs": [binary]}).encode()
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}
    out.append((v2, head + data, headers))
    return out


def via_batch(home: Path, tmp: Path, model: str, rows: list[tuple[str, bytes, Any]]) -> Answers:
    field, tensor = ("text", False) if model == "spam" else ("X", True)
    inp, out = tmp / f"{model}-in.jsonl", tmp / f"{model}-out.jsonl"
    inp.write_bytes(b"".join(json_line(i, field, raw, tensor=tensor) for i, raw, _ in rows))
    run_joules(
        "batch", model, str(inp), "-o", str(out), "--max-text-bytes", LIMIT, "--no-progress", home=home, check=True
    )
    errors = [
        json.loads(line, parse_constant=_no_constant) for line in Path(f"{out}.errors.jsonl").read_text().splitlines()
    ]
    scored = [json.loads(line, parse_constant=_no_constant) for line in out.read_text().splitlines()]
    reasons: dict[str, str | None] = {e["id"]: e["reason"] for e in errors}
    reasons.update({s["id"]: None for s in scored})
    return reasons, {s["id"]: (s["label"], s["action"]) for s in scored}


def via_stream_jsonl(home: Path, model: str, rows: list[tuple[str, bytes, Any]]) -> Answers:
    field, tensor = ("text", False) if model == "spam" else ("X", True)
    proc = subprocess.run(
        [*JOULES, "stream", model, "--source", "-", "--max-text-bytes", LIMIT, "--json"],
        input=b"".join(json_line(i, field, raw, tensor=tensor) for i, raw, _ in rows),
        capture_output=True,
        env={**os.environ, "JOULES_HOME": str(home)},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    out = [json.loads(line, parse_constant=_no_constant) for line in proc.stdout.decode().splitlines()]
    return {o["id"]: o.get("reason") for o in out}, {o["id"]: (o["label"], o["action"]) for o in out if "label" in o}


def via_stream_redis(
    home: Path, tmp: Path, redis: RedisServer, model: str, rows: list[tuple[str, bytes, Any]]
) -> Answers:
    field = "text" if model == "spam" else "X"
    source, sink = f"in-{model}", f"out-{model}"
    for row_id, raw, _ in rows:
        redis.client.xadd(source, {"id": row_id, field: raw})
    log = tmp / f"stream-{model}.log"
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [
                *JOULES,
                "stream",
                model,
                "--source",
                redis.url(source),
                "--sink",
                redis.url(sink),
                "--max-text-bytes",
                LIMIT,
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**os.environ, "JOULES_HOME": str(home)},
        )
    try:

        def settled() -> bool:
            return redis.client.xlen(sink) + redis.client.xlen(f"{source}:dead") >= len(rows)

        wait_until(settled, 180, f"{len(rows)} outcomes in {sink} and {source}:dead")
    finally:
        proc.terminate()
        proc.wait(60)
    reasons: dict[str, str | None] = {}
    labels: dict[str, tuple[str, str]] = {}
    for _, f in redis.client.xrange(f"{source}:dead"):
        reasons[f[b"id"].decode()] = f[b"reason"].decode()
    for _, f in redis.client.xrange(sink):
        reasons[f[b"id"].decode()] = None
        labels[f[b"id"].decode()] = (f[b"label"].decode(), f[b"action"].decode())
    return reasons, labels


@pytest.fixture()
def one_path_home(spam_home: Path, tmp_path: Path) -> Path:
    tensor_model(spam_home, tmp_path)
    return spam_home


@pytest.mark.parametrize("mode", MODES)
def test_the_same_bad_rows_get_the_same_reason_in_every_mode(
    mode: str, one_path_home: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    home = one_path_home
    run: Callable[[str, list[tuple[str, bytes, Any]]], Answers]
    if mode == "online":
        starter = request.getfixturevalue("start_server")
        run = lambda model, rows: via_online(home, starter, model, rows)  # noqa: E731
    elif mode == "batch":
        run = lambda model, rows: via_batch(home, tmp_path, model, rows)  # noqa: E731
    elif mode == "stream-jsonl":
        run = lambda model, rows: via_stream_jsonl(home, model, rows)  # noqa: E731
    else:
        redis = request.getfixturevalue("redis_server")
        run = lambda model, rows: via_stream_redis(home, tmp_path, redis, model, rows)  # noqa: E731
    tensor_rows = [(i, x.encode(), r) for i, x, r in TENSOR]
    for model, rows in (("spam", TEXT), ("t", tensor_rows)):
        reasons, labels = run(model, rows)
        assert reasons == {i: r for i, _, r in rows}, f"{mode}, model {model}"
        assert set(labels) == {"good"}, labels
    # X = [1, 2, 3, 4]: z = X @ W = (-1, 1), refer = 0.88: the label and the rule agree.
    assert labels["good"] == ("refer", "send_to_review")

"""The registry poller and the repository API: a load that raises anything, model control
off by default, truthful readiness; against real server processes."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.helpers import numeric_onnx, run_joules
from tests.serve.online.conftest import ServerProcess, Starter, import_tensor_model

INFER = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}]}


@pytest.fixture()
def home(tmp_path: Path, lin_home: Path) -> Path:
    """A private copy of the home holding `lin:1` (tests here register and promote versions)."""
    h = tmp_path / "home"
    shutil.copytree(lin_home, h)
    return h


def failing_onnx(path: Path) -> None:
    """A graph ONNX Runtime loads but cannot run: its answer is reshaped to a size it never has, so the
    warm-up call raises ONNX Runtime's own error (not a joules one)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.ones((4, 2), np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Reshape", ["xw", "shape"], ["logits"])],
        "fails",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([3, -1], np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def served_version(server: ServerProcess) -> int | None:
    r = httpx.post(server.url + "/v2/models/lin/infer", json=INFER, timeout=30)
    return int(r.json()["model_version"]) if r.status_code == 200 else None


def wait_for(check: Callable[[], bool], what: str, server: ServerProcess, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}:\n{server.output()[-3000:]}"
        time.sleep(0.05)  # polling server state, bounded above


def test_a_load_that_raises_anything_is_logged_counted_and_the_poller_goes_on(
    home: Path, tmp_path: Path, start_server: Starter
) -> None:
    server = start_server(home, "lin", "--poll-interval-s", "0.2", "--model-control", "explicit")
    failing_onnx(tmp_path / "fails.onnx")
    import_tensor_model(home, tmp_path / "fails.onnx", "lin")  # lin:2, promoted
    failed = {"model": "lin", "outcome": "failed"}
    wait_for(lambda: server.metric("joules_model_loads_total", **failed) >= 1, "a failed load", server)
    assert served_version(server) == 1  # the old version keeps serving
    assert "could not load lin:2" in server.output()
    index = httpx.post(server.url + "/v2/repository/index", timeout=10).json()
    assert "failed to load" in index[0]["reason"]
    # Asked explicitly, the same load is answered with its reason, not a 500.
    r = httpx.post(server.url + "/v2/repository/models/lin/load", timeout=60)
    assert r.status_code == 400 and "lin:2 could not be loaded" in r.json()["error"], r.text
    # A later promotion is still picked up.
    numeric_onnx(tmp_path / "good.onnx", features=4, classes=2, seed=3)
    import_tensor_model(home, tmp_path / "good.onnx", "lin")  # lin:3, promoted
    wait_for(lambda: served_version(server) == 3, "lin:3 to be served", server)
    assert server.metric("joules_registry_poll_errors_total") == 0


def test_repository_control_is_off_by_default(home: Path, start_server: Starter) -> None:
    server = start_server(home, "lin")
    for verb in ("unload", "load"):
        r = httpx.post(server.url + f"/v2/repository/models/lin/{verb}", timeout=30)
        assert r.status_code == 403 and "--model-control explicit" in r.json()["error"], r.text
    assert served_version(server) == 1
    assert httpx.get(server.url + "/v2/health/ready", timeout=10).status_code == 200
    # Reading the index stays open: it changes nothing.
    assert httpx.post(server.url + "/v2/repository/index", timeout=10).json()[0]["state"] == "READY"


def test_readiness_is_false_while_a_served_model_is_unloaded(home: Path, start_server: Starter) -> None:
    server = start_server(
        home,
        "lin",
        "--model-control",
        "explicit",
        "--api-key-env",
        "JOULES_TEST_KEY",
        env={"JOULES_TEST_KEY": "k3y"},
    )
    key = {"X-API-Key": "k3y"}
    r = httpx.post(server.url + "/v2/repository/models/lin/unload", timeout=30)
    assert r.status_code == 401  # control needs the key when one is configured
    assert httpx.post(server.url + "/v2/repository/models/lin/unload", headers=key, timeout=30).status_code == 200
    ready = httpx.get(server.url + "/v2/health/ready", timeout=10)
    assert ready.status_code == 503 and ready.json() == {"ready": False}
    assert httpx.post(server.url + "/v2/repository/models/lin/load", headers=key, timeout=60).status_code == 200
    assert httpx.get(server.url + "/v2/health/ready", timeout=10).status_code == 200


def test_a_model_that_cannot_load_at_startup_is_one_line(home: Path, tmp_path: Path) -> None:
    failing_onnx(tmp_path / "fails.onnx")
    import_tensor_model(home, tmp_path / "fails.onnx", "lin")
    proc = run_joules("serve", "lin", "--port", "0", home=home, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines()[-1].startswith("joules: error: lin:2 could not be loaded: Fail:")

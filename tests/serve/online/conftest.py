"""Real `joules serve` processes on free ports, waited for through /v2/health/ready."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DATA
from tests.helpers import numeric_onnx, run_joules

READY_TIMEOUT_S = 180


def port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return int(p)


class ServerProcess:
    def __init__(self, home: Path, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.port = port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.headers: dict[str, str] = {}  # sent with /metrics (e.g. the API key)
        environ = {**os.environ, "JOULES_HOME": str(home), **(env or {})}
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "joules.cli.main", "serve", *args, "--port", str(self.port)],
            env=environ,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> ServerProcess:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode} before ready:\n{self.output()[-3000:]}")
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)  # polling a readiness condition, bounded by the deadline above
        raise AssertionError(f"server not ready in {timeout} s:\n{self.output()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        r = httpx.get(self.url + "/metrics", headers=self.headers, timeout=10)
        r.raise_for_status()
        text = r.text
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def metric(self, name: str, **labels: str) -> float:
        """The sum of ``name`` over the series whose labels include ``labels``."""
        return sum(
            v
            for (n, lab), v in self.metrics().items()
            if n == name and all(dict(lab).get(k) == want for k, want in labels.items())
        )

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")


Starter = Callable[..., ServerProcess]


@pytest.fixture()
def start_server(tmp_path: Path) -> Iterator[Starter]:
    """Start servers for this test; every one is stopped (and killed if need be) afterwards."""
    started: list[ServerProcess] = []

    def start(home: Path, *args: str, env: dict[str, str] | None = None, ready: bool = True) -> ServerProcess:
        server = ServerProcess(home, list(args), tmp_path / f"server-{len(started)}.log", env)
        started.append(server)
        return server.wait_ready() if ready else server

    yield start
    for s in started:
        s.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def module_home(tmp_path_factory: pytest.TempPathFactory, trained_home: Path) -> Path:
    """A private copy of the trained home (tiny spam model, spam:1 in production) for a module's server."""
    home = tmp_path_factory.mktemp("online-home") / "home"
    shutil.copytree(trained_home, home)
    return home


@pytest.fixture(scope="module")
def spam_server(tmp_path_factory: pytest.TempPathFactory, module_home: Path) -> Iterator[ServerProcess]:
    """One server for a module's read-only tests: `joules serve spam` with defaults."""
    log = tmp_path_factory.mktemp("online-log") / "server.log"
    server = ServerProcess(module_home, ["spam"], log)
    try:
        yield server.wait_ready()
    finally:
        server.stop(signal.SIGKILL)


def sms(n: int, *, offset: int = 0) -> list[str]:
    """The first ``n`` distinct SMS messages (after ``offset``), in file order."""
    seen: dict[str, None] = {}
    for line in DATA.open(encoding="utf-8"):
        seen.setdefault(line.rstrip("\n").split("\t", 1)[1], None)
        if len(seen) >= offset + n:
            break
    return list(seen)[offset : offset + n]


def slow_onnx(path: Path, *, matmuls: int = 960, size: int = 512, features: int = 4) -> np.ndarray:
    """A numeric classifier whose every call also does ``matmuls`` matrix products of ``size``^2
    (960: 0.8 s on the 2-core machine; `calibrated_slow_onnx` sizes it for this machine):
    x [N, features] -> logits = x @ w, two classes.

    The busy work depends on the input (so it is not folded away) and is multiplied
    by zero, so the answer stays x @ w. It keeps an instance busy long enough to
    observe a queue, a running call, a disconnect or a shutdown through /metrics.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).normal(size=(features, 2)).astype(np.float32)
    c = np.full((size, size), 1.0 / size, dtype=np.float32)  # products stay bounded
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("ReduceSum", ["x"], ["xs"], keepdims=0),
        helper.make_node("Sigmoid", ["xs"], ["s"]),
        helper.make_node("Mul", ["c", "s"], ["m0"]),
        *(helper.make_node("MatMul", [f"m{i}", "c"], [f"m{i + 1}"]) for i in range(matmuls)),
        helper.make_node("ReduceSum", [f"m{matmuls}"], ["busy"], keepdims=0),
        helper.make_node("Mul", ["busy", "zero"], ["nothing"]),
        helper.make_node("Add", ["xw", "nothing"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(c, "c"),
            numpy_helper.from_array(np.zeros((), np.float32), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return w


def import_tensor_model(home: Path, onnx_file: Path, name: str) -> None:
    """Register ``onnx_file`` (input x, output logits, labels low/high) as ``name``, in production."""
    spec = onnx_file.with_suffix(".yaml")
    spec.write_text(
        "task: classification\npreprocess: {kind: tensors}\n"
        "postprocess: {output: logits, labels: [low, high]}\n"
        "rules:\n  rules:\n    - when: high >= 0.5\n      action: act\n  default: wait\n"
    )
    run_joules("import", str(onnx_file), "--spec", str(spec), "--name", name, "--promote", home=home, check=True)


SLOW_CALL_S = 0.8  # at least, on this machine: a queue and a running call stay observable


def calibrated_slow_onnx(path: Path, *, seconds: float = SLOW_CALL_S) -> int:
    """`slow_onnx` with enough matrix products for a call to take ``seconds`` here, whatever the CPU.

    The tests that use it watch states (a call running, a request queued, a deadline passed while
    a call runs); a fixed amount of work that a faster machine finishes in 0.1 s would close
    those windows. The probe is timed in CPU seconds without spinning threads (the least of a
    few calls), which other jobs inflate far less than wall seconds (measured: 13 s of wall
    time for 0.8 s of idle work at a load average of 12), and its wall time on an idle machine
    is taken as CPU seconds / cores (every core busy), the shortest the call can be. A busy
    machine makes the calls longer, which the tests tolerate (their deadlines are minutes).
    """
    import onnxruntime as ort

    probe_matmuls = 32
    slow_onnx(path, matmuls=probe_matmuls)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # spinning is CPU time, not work
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.ones((1, 4), dtype=np.float32)
    session.run(None, {"x": x})
    cpu = []
    for _ in range(5):
        cpu0 = time.process_time()
        session.run(None, {"x": x})
        cpu.append(time.process_time() - cpu0)
    idle_wall_per_matmul = min(cpu) / (os.cpu_count() or 1) / probe_matmuls
    matmuls = int(min(50_000, max(probe_matmuls, np.ceil(seconds / max(idle_wall_per_matmul, 1e-9)))))
    slow_onnx(path, matmuls=matmuls)
    return matmuls


@pytest.fixture(scope="module")
def slow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A JOULES_HOME holding `slow:1`, a tensor model whose calls take at least SLOW_CALL_S here."""
    root = tmp_path_factory.mktemp("slow")
    calibrated_slow_onnx(root / "slow.onnx")
    import_tensor_model(root / "home", root / "slow.onnx", "slow")
    return root / "home"


@pytest.fixture(scope="module")
def lin_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A JOULES_HOME holding `lin:1`, a linear tensor model: loads in a second, answers at once."""
    root = tmp_path_factory.mktemp("lin")
    numeric_onnx(root / "lin.onnx", features=4, classes=2)
    import_tensor_model(root / "home", root / "lin.onnx", "lin")
    return root / "home"

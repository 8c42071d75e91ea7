"""A real local Ray head for the Ray tests, started on free ports and stopped by the test that started it.

``ray start --head --block`` is the head's parent: SIGTERM to it stops that head's processes (GCS, raylet,
workers) and no other Ray on the machine (``ray stop`` would stop every one).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serve.online.conftest import port

BIN = Path(sys.executable).parent


class RayHead:
    def __init__(self, log: Path, cpus: int = 2) -> None:
        self.port = port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = log
        self._log_file = log.open("wb")
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}  # RAY_AUTH_MODE: set by the fixture
        self.proc = subprocess.Popen(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--block",
                f"--port={self.port}",
                "--node-ip-address=127.0.0.1",
                f"--num-cpus={cpus}",
                "--include-dashboard=false",
                f"--object-store-memory={256 << 20}",
                f"--ray-client-server-port={port()}",
                f"--node-manager-port={port()}",
                f"--object-manager-port={port()}",
                f"--dashboard-agent-listen-port={port()}",
                f"--metrics-export-port={port()}",
            ],
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 180) -> RayHead:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"ray start exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            if "Ray runtime started" in self.log.read_text(errors="replace"):
                return self
            time.sleep(0.2)  # polling the head's own readiness line, bounded by the deadline
        raise AssertionError(f"Ray head not up in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log_file.close()


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    # Token authentication, as Ray 2.60 sets up for its local clusters: the head and every driver the tests
    # start (they inherit this environment) use a token of this test run's own. `ray start` does not create
    # one, and ~/.ray/auth_token does not exist on a fresh machine (CI) until some local ray.init() writes it.
    directory = tmp_path_factory.mktemp("ray")
    token = directory / "auth_token"
    token.write_text(secrets.token_hex(32))  # what Ray's own generator writes
    token.chmod(0o600)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("RAY_AUTH_TOKEN_PATH", str(token))
        head = RayHead(directory / "head.log")
        try:
            yield head.wait_ready()
        finally:
            head.stop()


def model_workers(head_pid: int | None = None) -> list[int]:
    """Ray worker processes (``ray::...``) with ONNX Runtime mapped: the ones holding a model."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if not cmd.startswith("ray::") or cmd.startswith("ray::IDLE"):
                continue
            if "onnxruntime" in (d / "maps").read_text(errors="replace"):
                out.append(int(d.name))
        except OSError:
            continue
    return out

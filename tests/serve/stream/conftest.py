"""A private redis-server per test, on a free port, stopped afterwards.

These tests need Debian's redis-server. `make test` installs it when it is
missing (as root) or stops saying how; a test run without it fails here, loudly,
never skips: crash safety is only checked when these tests run.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass
class RedisServer:
    port: int
    client: Any  # redis.Redis, bytes in and out

    def url(self, stream: str) -> str:
        return f"redis://127.0.0.1:{self.port}/{stream}"


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture()
def redis_server(tmp_path: Path, free_port: int) -> Iterator[RedisServer]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail(
            "redis-server is not on PATH: the stream tests need it. Run `make test` (it installs Debian's "
            "redis-server as root) or `sudo apt-get install redis-server`"
        )
    import redis

    data = tmp_path / "redis"
    data.mkdir()
    log = (data / "redis.log").open("wb")
    proc = subprocess.Popen(
        [exe, "--port", str(free_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(data)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = redis.Redis(port=free_port)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"redis-server exited {proc.returncode}: {(data / 'redis.log').read_text()[-2000:]}")
        try:
            return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False

    try:
        wait_until(ready, 20, "redis-server to answer PING")
        yield RedisServer(port=free_port, client=client)
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()

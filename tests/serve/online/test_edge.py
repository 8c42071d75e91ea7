"""Safety at the edge: API key, body limits, startup errors; all against real server processes."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import tritonclient.http as th

from tests.helpers import run_joules
from tests.serve.online.conftest import Starter

BODY = {"instances": [{"text": "hello"}]}


def test_api_key_is_required_except_for_probes(spam_home: Path, start_server: Starter) -> None:
    server = start_server(spam_home, "spam", "--api-key-env", "JOULES_TEST_KEY", env={"JOULES_TEST_KEY": "s3cret-key"})
    predict = server.url + "/v1/models/spam:predict"
    assert httpx.post(predict, json=BODY, timeout=10).status_code == 401
    r = httpx.post(predict, json=BODY, headers={"X-API-Key": "wrong"}, timeout=10)
    assert (
        r.status_code == 401 and "API key" in r.json()["error"] and r.headers["www-authenticate"].startswith("Bearer")
    )
    assert httpx.post(predict, json=BODY, headers={"X-API-Key": "s3cret-key"}, timeout=10).status_code == 200
    assert httpx.post(predict, json=BODY, headers={"Authorization": "Bearer s3cret-key"}, timeout=10).status_code == 200
    assert httpx.get(server.url + "/metrics", timeout=10).status_code == 401
    assert httpx.get(server.url + "/v2/health/ready", timeout=10).status_code == 200
    client = th.InferenceServerClient(server.url.removeprefix("http://"))
    inp = th.InferInput("text", [1], "BYTES")
    inp.set_data_from_numpy(np.array(["hi"], dtype=object))
    result = client.infer("spam", [inp], headers={"Authorization": "Bearer s3cret-key"})
    assert result.as_numpy("probabilities").shape == (1, 2)
    server.headers = {"X-API-Key": "s3cret-key"}
    assert server.metric("joules_requests_total", status="401") >= 2


def test_missing_api_key_variable_stops_startup(spam_home: Path) -> None:
    proc = run_joules("serve", "spam", "--api-key-env", "JOULES_TEST_UNSET_KEY", "--port", "0", home=spam_home)
    assert proc.returncode == 2 and "JOULES_TEST_UNSET_KEY" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_model_stops_startup(spam_home: Path) -> None:
    proc = run_joules("serve", "ghost", "--port", "0", home=spam_home)
    assert proc.returncode == 2 and "ghost" in proc.stderr and "Traceback" not in proc.stderr


def test_oversize_body_is_413_before_it_is_read(spam_home: Path, start_server: Starter) -> None:
    server = start_server(spam_home, "spam", "--max-body-mb", "0.01")
    # Only the headers are sent: the answer must come without the body.
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/models/spam:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 52428800\r\n\r\n"
        )
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 413"), head[:100]
    # A chunked body (no Content-Length) is cut off at the limit as it arrives.
    chunks = (b'{"instances": [' + b'{"text": "x"},' * 2000 + b'{"text": "x"}]}' for _ in range(1))
    r = httpx.post(server.url + "/v1/models/spam:predict", content=chunks, timeout=30)
    assert r.status_code == 413 and "at most" in r.json()["error"]
    assert httpx.post(server.url + "/v1/models/spam:predict", json=BODY, timeout=10).status_code == 200
    assert server.metric("joules_requests_total", status="413") >= 1
    # A client that goes away half-way through its body is not an error of the server.
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b'POST /v1/models/spam:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\n\r\n{"inst')
    end = time.monotonic() + 30
    while server.metric("joules_requests_total", status="499") < 1:
        assert time.monotonic() < end, server.output()[-2000:]
        time.sleep(0.02)  # polling server state, bounded above
    assert "Traceback" not in server.output()


def test_serving_never_imports_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, joules.cli.main, joules.serve.online, joules.cli.serve\n"
        "joules.cli.main.build_parser()\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


class _Receive:
    """An ASGI ``receive`` whose disconnect the test triggers."""

    def __init__(self) -> None:
        import asyncio

        self.gone = asyncio.Event()

    async def __call__(self) -> dict[str, str]:
        await self.gone.wait()
        return {"type": "http.disconnect"}


def _request(receive: _Receive) -> Any:
    from starlette.requests import Request

    return Request({"type": "http", "method": "POST", "path": "/", "headers": []}, receive)


def test_a_disconnect_cancels_the_awaited_work_and_is_reported() -> None:
    import asyncio

    from joules.errors import ClientClosedError
    from joules.serve.online.edge import unless_disconnected

    async def scenario() -> tuple[bool, str]:
        receive = _Receive()
        cancelled = asyncio.Event()

        async def work() -> str:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return "never"

        asyncio.get_running_loop().call_later(0.01, receive.gone.set)
        try:
            await unless_disconnected(_request(receive), work())
        except ClientClosedError as e:
            task = asyncio.current_task()
            assert task is not None and task.cancelling() == 0  # the caller itself is not left cancelled
            return cancelled.is_set(), str(e)
        raise AssertionError("no ClientClosedError")

    was_cancelled, message = asyncio.run(scenario())
    assert was_cancelled
    assert "disconnected" in message


def test_a_disconnect_right_after_the_answer_does_not_cancel_the_caller() -> None:
    import asyncio

    from joules.serve.online.edge import unless_disconnected

    async def scenario() -> str:
        receive = _Receive()

        async def work() -> str:
            receive.gone.set()  # the client goes away in the same turn of the loop as the answer
            await asyncio.sleep(0)
            return "answer"

        out = await unless_disconnected(_request(receive), work())
        for _ in range(5):
            await asyncio.sleep(0)  # a late disconnect callback would cancel us here
        return out

    assert asyncio.run(scenario()) == "answer"

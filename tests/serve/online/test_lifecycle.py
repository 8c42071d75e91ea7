"""Deadlines, client disconnects and graceful shutdown, observed on a model whose calls take
about a second (so a queue and a running call can be seen through /metrics)."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.serve.online.conftest import ServerProcess, Starter

ROW = {"instances": [{"x": [0.5, -1.0, 2.0, 0.25]}]}


def until(predicate: Callable[[], bool], timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)  # polling server state, bounded by the deadline above


def post_in_thread(server: ServerProcess, results: list, body: object = ROW, **kw) -> threading.Thread:
    def go() -> None:
        r = httpx.post(server.url + "/v1/models/slow:predict", json=body, timeout=120, **kw)
        results.append(r)

    t = threading.Thread(target=go)
    t.start()
    return t


def queued_raw(server: ServerProcess) -> socket.socket:
    """A request sent over a raw socket (to be able to vanish without reading the answer)."""
    body = b'{"instances": [{"x": [1, 2, 3, 4]}]}'
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(
        b"POST /v1/models/slow:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def calls(server: ServerProcess) -> float:
    return server.metric("joules_batch_size_count", model="slow")


def test_tensor_model_answers_both_apis(slow_home: Path, start_server: Starter) -> None:
    # A call takes about a second, more on a loaded machine: a long deadline, or a 504 instead of an answer.
    server = start_server(slow_home, "slow", "--timeout-ms", "60000")
    r1 = httpx.post(server.url + "/v1/models/slow:predict", json=ROW, timeout=90)
    r2 = httpx.post(
        server.url + "/v2/models/slow/infer",
        json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [[0.5, -1.0, 2.0, 0.25]]}]},
        timeout=90,
    )
    assert r1.status_code == r2.status_code == 200, (r1.text, r2.text)
    v1, v2 = r1.json(), r2.json()
    probs = next(o for o in v2["outputs"] if o["name"] == "probabilities")["data"]
    assert v1["predictions"][0]["probabilities"]["high"] == pytest.approx(probs[1], abs=1e-6)
    assert v1["predictions"][0]["action"] in ("act", "wait")
    bad = httpx.post(server.url + "/v1/models/slow:predict", json={"instances": [{"x": [1, 2]}]}, timeout=60)
    assert bad.json()["error"].startswith("instances[0]: field 'x' has shape [2]; the model takes [4] per row")
    bad = httpx.post(server.url + "/v1/models/slow:predict", json={"instances": [{"x": [1, "a", 3, 4]}]}, timeout=60)
    assert bad.status_code == 400 and "instances[0]: field 'x' must hold numbers, got str" in bad.json()["error"]


def test_past_the_deadline_is_504_and_queued_work_is_dropped(slow_home: Path, start_server: Starter) -> None:
    server = start_server(slow_home, "slow", "--timeout-ms", "100")
    results: list[httpx.Response] = []
    threads = [post_in_thread(server, results) for _ in range(4)]
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [504] * 4
    assert "deadline" in results[0].json()["error"]
    # The first request's call started before its deadline passed; the others never ran.
    until(lambda: server.metric("joules_running_calls") == 0)
    assert calls(server) <= 2
    # A client's own, shorter deadline (tritonclient's `timeout`, microseconds) is honoured too.
    r = httpx.post(
        server.url + "/v2/models/slow/infer",
        json={
            "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
            "parameters": {"timeout": 1},
        },
        timeout=60,
    )
    assert r.status_code == 504


def test_a_client_that_disconnects_costs_no_model_call(slow_home: Path, start_server: Starter) -> None:
    server = start_server(slow_home, "slow", "--timeout-ms", "120000")
    results: list[httpx.Response] = []
    first = post_in_thread(server, results)
    until(lambda: server.metric("joules_running_calls") == 1)
    sock = queued_raw(server)
    until(lambda: server.metric("joules_queue_depth", model="slow") == 1)
    sock.close()  # the client goes away while its request waits
    until(lambda: server.metric("joules_queue_depth", model="slow") == 0)
    first.join()
    assert results[0].status_code == 200
    until(lambda: server.metric("joules_running_calls") == 0)
    assert calls(server) == 1  # only the first request was computed
    assert server.metric("joules_requests_total", model="slow", status="499") == 1


def test_sigterm_drains_in_flight_requests_and_exits_0(slow_home: Path, start_server: Starter) -> None:
    server = start_server(slow_home, "slow", "--timeout-ms", "120000")
    results: list[httpx.Response] = []
    running = post_in_thread(server, results)
    until(lambda: server.metric("joules_running_calls") == 1)
    queued = post_in_thread(server, results)
    until(lambda: server.metric("joules_queue_depth", model="slow") == 1)
    server.proc.send_signal(signal.SIGTERM)
    running.join()
    queued.join()
    assert [r.status_code for r in results] == [200, 200]
    assert server.proc.wait(60) == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/v2/health/live", timeout=5)
    assert "Traceback" not in server.output()

"""What a client may send before the app sees a request: header size and count, header and
body time, the connection limit, and protocol errors as JSON; all against real server processes."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import httpx
import pytest

from tests.serve.online.conftest import ServerProcess, Starter

INFER = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}]}


def exchange(server: ServerProcess, data: bytes, timeout: float = 60) -> bytes:
    """Send ``data`` on a new connection and read until the server closes it (or ``timeout``)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(data)
        return read_to_close(s)


def read_to_close(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def status_and_error(response: bytes) -> tuple[int, str]:
    """The status of a raw response and its JSON ``error`` (the body must be JSON)."""
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), response[:300]
    return int(head.split(b" ", 2)[1]), json.loads(body)["error"]


def test_header_size_and_count_are_bounded(lin_home: Path, start_server: Starter) -> None:
    server = start_server(lin_home, "lin", "--max-header-kb", "4", "--max-headers", "20")
    big = b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n"
    status, error = status_and_error(exchange(server, big))
    assert status == 431 and "--max-header-kb" in error and "4 KiB" in error
    many = b"GET /v2 HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(30)) + b"\r\n"
    status, error = status_and_error(exchange(server, many))
    assert status == 431 and "--max-headers" in error
    # Within the limits, the same request is served.
    fine = b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 3000 + b"\r\nConnection: close\r\n\r\n"
    assert exchange(server, fine).startswith(b"HTTP/1.1 200")
    assert "Traceback" not in server.output()


def test_a_huge_header_is_cut_off_early_and_others_are_served(lin_home: Path, start_server: Starter) -> None:
    server = start_server(lin_home, "lin", "--api-key-env", "JOULES_TEST_KEY", env={"JOULES_TEST_KEY": "k3y"})
    sent_mb: list[int] = []

    def bomb() -> None:
        # 100 MB of one header from a client without the key: the server must stop reading long before.
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as s:
            s.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-A: ")
            try:
                for _ in range(100):
                    s.sendall(b"a" * (1 << 20))
                    sent_mb.append(1)
                reply = s.recv(100)
            except OSError:
                reply = b""
            assert not reply.startswith(b"HTTP/1.1 200"), reply

    thread = threading.Thread(target=bomb)
    thread.start()
    key = {"X-API-Key": "k3y"}
    codes = [
        httpx.post(server.url + "/v2/models/lin/infer", json=INFER, headers=key, timeout=30).status_code
        for _ in range(5)
    ]
    thread.join(120)
    assert not thread.is_alive()
    assert codes == [200] * 5
    # Kernel buffers absorb a few MB; a server that parsed the whole header would take all 100.
    assert sum(sent_mb) < 50, f"the server read {sum(sent_mb)} MB of one header"


def test_slow_heads_and_silent_bodies_are_dropped(lin_home: Path, start_server: Starter) -> None:
    server = start_server(lin_home, "lin", "--header-timeout-s", "1", "--body-timeout-s", "1")
    status, error = status_and_error(
        exchange(server, b"POST /v2/models/lin/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 900000\r\n\r\n{")
    )
    assert status == 408 and "--body-timeout-s" in error
    status, error = status_and_error(exchange(server, b"POST /v2/models/lin/infer HTTP/1.1\r\nHost: x\r\n"))
    assert status == 408 and "--header-timeout-s" in error
    # A connection that never sends a byte is closed without an answer.
    assert exchange(server, b"") == b""
    assert server.metric("joules_requests_total", status="200") == 0  # no request reached a model


def test_half_sent_requests_do_not_lock_out_probes_or_clients(lin_home: Path, start_server: Starter) -> None:
    server = start_server(lin_home, "lin", "--max-connections", "4", "--header-timeout-s", "2")
    stalled = [socket.create_connection(("127.0.0.1", server.port), timeout=60) for _ in range(6)]
    try:
        for s in stalled:
            s.sendall(b"POST /v2/models/lin/infer HTTP/1.1\r\nHost: x\r\n")
        # Every slot is held: probes are still answered; other requests get a JSON 503 until the heads time out.
        assert httpx.get(server.url + "/v2/health/ready", timeout=10).status_code == 200
        assert httpx.get(server.url + "/v2/health/live", timeout=10).status_code == 200
        busy = httpx.post(server.url + "/v2/models/lin/infer", json=INFER, timeout=10)
        assert busy.status_code == 503 and "--max-connections" in busy.json()["error"]
        assert busy.headers["retry-after"] == "1"
        for s in stalled:
            status, error = status_and_error(read_to_close(s))
            assert status == 408 and "--header-timeout-s" in error
        assert httpx.post(server.url + "/v2/models/lin/infer", json=INFER, timeout=10).status_code == 200
    finally:
        for s in stalled:
            s.close()


def test_protocol_errors_are_json(lin_home: Path, start_server: Starter) -> None:
    server = start_server(lin_home, "lin")
    status, error = status_and_error(exchange(server, b"NOT HTTP AT ALL\r\n\r\n"))
    assert status == 400 and "invalid HTTP request" in error
    status, error = status_and_error(exchange(server, b"GET /v2 HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n"))
    assert status == 400
    # No route takes a WebSocket: an upgrade is answered as the plain HTTP request it also is.
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"}
    r = httpx.get(server.url + "/v2", headers={**upgrade, "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}, timeout=10)
    assert r.status_code == 200 and r.json()["name"] == "joules"
    r = httpx.request("DELETE", server.url + "/v2", timeout=10)
    assert r.status_code == 405 and "error" in r.json()
    r = httpx.get(server.url + "/nowhere", timeout=10)
    assert r.status_code == 404 and "error" in r.json()


def test_limits_are_flags_with_the_config_defaults() -> None:
    from joules.cli.main import build_parser
    from joules.cli.serve import config_from_args
    from joules.serve.online.config import ServeConfig

    parser = build_parser()
    defaults = config_from_args(parser.parse_args(["serve", "spam"]))
    assert defaults.http_limits() == ServeConfig().http_limits()
    assert defaults.model_control == ServeConfig().model_control
    help_text = " ".join(parser._subparsers._group_actions[0].choices["serve"].format_help().split())  # type: ignore[union-attr]
    for flag, field in [
        ("--max-header-kb", "max_header_kb"),
        ("--max-headers", "max_headers"),
        ("--header-timeout-s", "header_timeout_s"),
        ("--body-timeout-s", "body_timeout_s"),
        ("--keep-alive-s", "keep_alive_s"),
        ("--model-control", "model_control"),
    ]:
        default = getattr(ServeConfig(), field)
        shown = f"{default:g}" if isinstance(default, float) else str(default)
        assert flag in help_text and f"(default {shown})" in help_text.split(flag, 2)[-1].split("--", 1)[0], flag
    given = config_from_args(
        parser.parse_args(["serve", "--max-header-kb", "8", "--body-timeout-s", "3", "--model-control", "explicit"])
    )
    assert (given.max_header_kb, given.body_timeout_s, given.model_control) == (8, 3, "explicit")


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"max_header_kb": 0}, "max_header_kb"),
        ({"max_headers": 0}, "max_headers"),
        ({"header_timeout_s": 0}, "header_timeout_s"),
        ({"body_timeout_s": -1}, "body_timeout_s"),
        ({"model_control": "poll"}, "model_control"),
    ],
)
def test_bad_limits_are_refused(changes: dict[str, object], fragment: str) -> None:
    from joules.errors import ConfigError
    from joules.serve.online.config import ServeConfig

    with pytest.raises(ConfigError, match=fragment):
        ServeConfig(**changes)  # type: ignore[arg-type]


def test_an_idle_keep_alive_connection_is_closed(lin_home: Path, start_server: Starter) -> None:
    server = start_server(lin_home, "lin", "--keep-alive-s", "0.5")
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b'{"live":true}'):  # the head and the body may come in two reads
            chunk = s.recv(4096)
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")
        assert s.recv(4096) == b""  # closed by the server (a socket timeout would raise)

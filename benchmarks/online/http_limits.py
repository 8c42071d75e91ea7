"""What the connection limits cost per request: joules' protocol (serve/online/connection.py) against
uvicorn's own httptools protocol, on the same app and model.

Two measurements, in interleaved rounds:

- in process: the CPU time per request of each protocol class fed whole requests (a 4-header GET)
  on an asyncio loop with a stub transport and a minimal ASGI app: the protocol's own cost, and
  the least disturbed by other load on the machine;
- end to end: each variant as its own server process; one client sends requests one at a time over
  one kept-alive connection (raw sockets, so the client adds little), for a cheap route
  (GET /v2/health/live: HTTP overhead only) and an inference (POST /v1 predict).

Prints medians of each and the ratios.

    JOULES_HOME=... .venv/bin/python benchmarks/online/http_limits.py --model spam --rounds 5
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

VARIANTS = ("uvicorn", "joules")


def serve(variant: str, model: str, port: int) -> None:
    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from joules.registry import Registry
    from joules.serve.online import ServeConfig, create_app
    from joules.serve.online.connection import protocol_class

    config = ServeConfig(models=(model,), port=port)
    http = protocol_class(config.http_limits()) if variant == "joules" else HttpToolsProtocol
    app = create_app(config, Registry())
    server = uvicorn.Server(
        uvicorn.Config(app, port=port, http=http, ws="none", log_level="warning", lifespan="on", access_log=False)
    )
    server.run()


class _StubTransport:
    def __init__(self) -> None:
        self.writes = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, key: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 1), "peername": ("127.0.0.1", 2)}.get(key, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def _protocol_us(cls: Any, n: int) -> float:
    """CPU microseconds per whole request fed to a protocol of class ``cls``."""
    import asyncio

    import uvicorn
    from uvicorn.server import ServerState

    config = uvicorn.Config(_ok_app, log_level="warning", lifespan="off")
    config.load()
    protocol = cls(config=config, server_state=ServerState(), app_state={})
    transport = _StubTransport()
    protocol.connection_made(transport)
    data = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
    for i in range(200 + n):
        if i == 200:
            started = time.process_time()
        protocol.data_received(data)
        await asyncio.sleep(0)  # the request's task runs and answers
        await asyncio.sleep(0)
    cpu = time.process_time() - started
    if transport.writes < n:
        raise SystemExit(f"{cls.__name__} answered {transport.writes} of {n} requests")
    protocol.connection_lost(None)
    return cpu / n * 1e6


def in_process(rounds: int, n: int) -> dict[str, float]:
    import asyncio

    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from joules.serve.online.config import HttpLimits
    from joules.serve.online.connection import protocol_class

    classes = {"uvicorn": HttpToolsProtocol, "joules": protocol_class(HttpLimits())}
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(rounds):
        for variant in VARIANTS:
            times[variant].append(asyncio.run(_protocol_us(classes[variant], n)))
    medians = {v: statistics.median(t) for v, t in times.items()}
    return {
        **{f"{v}_us_per_request": round(m, 2) for v, m in medians.items()},
        "joules_extra_us": round(medians["joules"] - medians["uvicorn"], 2),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(sock: socket.socket, data: bytes) -> None:
    """Send one request and read its whole response (Content-Length framed)."""
    sock.sendall(data)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, _, body = buf.partition(b"\r\n\r\n")
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    while len(body) < length:
        body += sock.recv(65536)
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"unexpected answer: {head[:100]!r}")


def rate(port: int, data: bytes, n: int) -> float:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for _ in range(20):
            request(sock, data)
        started = time.perf_counter()
        for _ in range(n):
            request(sock, data)
        return n / (time.perf_counter() - started)


def wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    end = time.monotonic() + 300
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
                if s.recv(100).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.2)  # polling readiness, bounded above
    raise SystemExit("server not ready in 300 s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="spam")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--live-requests", type=int, default=3000)
    p.add_argument("--predict-requests", type=int, default=500)
    p.add_argument("--in-process-requests", type=int, default=20000)
    p.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.model, args.port)
        return 0
    protocol_cost = in_process(args.rounds, args.in_process_requests)
    body = json.dumps({"instances": [{"text": "Lunch tomorrow? I can be there by noon."}]}).encode()
    routes = {
        "GET /v2/health/live": (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n", args.live_requests),
        "POST /v1 predict": (
            b"POST /v1/models/%s:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (args.model.encode(), len(body), body),
            args.predict_requests,
        ),
    }
    servers = {}
    try:
        for variant in VARIANTS:
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, __file__, "--serve", variant, "--port", str(port), "--model", args.model]
            )
            servers[variant] = (port, proc)
        for port, proc in servers.values():
            wait_ready(port, proc)
        results: dict[tuple[str, str], list[float]] = {(v, r): [] for v in VARIANTS for r in routes}
        for _ in range(args.rounds):
            for route, (data, n) in routes.items():
                for variant in VARIANTS:
                    results[(variant, route)].append(rate(servers[variant][0], data, n))
    finally:
        for _, proc in servers.values():
            proc.terminate()
            proc.wait(timeout=60)
    out = {}
    for route in routes:
        medians = {v: statistics.median(results[(v, route)]) for v in VARIANTS}
        out[route] = {
            **{f"{v}_req_per_s": round(m, 1) for v, m in medians.items()},
            "joules_over_uvicorn": round(medians["joules"] / medians["uvicorn"], 3),
        }
    report = {"rounds": args.rounds, "model": args.model, "in_process": protocol_cost, "end_to_end": out}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run the app under uvicorn: one process, graceful shutdown, exit 0 after SIGTERM.

On SIGTERM or SIGINT uvicorn stops accepting connections, lets in-flight
requests finish (up to ``drain_timeout_s``), then runs the app's shutdown,
which drains and closes every batcher. uvicorn re-raises the signal after its
graceful shutdown so that the process dies of it; a server that drained
cleanly should report success, so this server does not.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Generator

import uvicorn

from joules.errors import JoulesError
from joules.registry import Registry
from joules.serve.online.app import create_app
from joules.serve.online.config import ServeConfig
from joules.serve.online.connection import protocol_class

log = logging.getLogger(__name__)
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def run_server(config: ServeConfig, *, registry: Registry | None = None) -> int:
    """Serve until SIGTERM/SIGINT; 0 after a graceful stop, 2 when the models could not be loaded."""
    registry = registry or Registry()
    for name in config.models:
        registry.get(name)  # an unknown or unpromoted model is a clear error before anything starts
    failure: list[BaseException] = []
    server: _Server | None = None

    def fatal(e: BaseException) -> None:
        failure.append(e)
        log.error("cannot serve: %s", e)
        if server is not None:
            server.should_exit = True

    app = create_app(config, registry, on_fatal=fatal)
    uv = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level="info",
        access_log=config.access_log,
        timeout_graceful_shutdown=int(config.drain_timeout_s),
        limit_concurrency=config.max_connections,
        http=protocol_class(config.http_limits()),  # header, body and connection limits (connection.py)
        ws="none",  # no route takes a WebSocket: an upgrade request is answered as plain HTTP
        lifespan="on",
        server_header=False,
    )
    server = _Server(uv)
    server.run()
    if failure:
        e = failure[0]
        if isinstance(e, JoulesError):
            raise e
        return 2
    if not server.started:
        return 1  # uvicorn could not bind the port; it has logged why
    return 0

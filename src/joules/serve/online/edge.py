"""The edge: API key, body size limit, body decoding, client disconnects.

``EdgeMiddleware`` is a small ASGI wrapper folded around the app (as
starlette's middleware are): it refuses a request without the API key (401)
or with a declared body over the limit (413) before any route runs and before
the body is read, and counts bytes as the body arrives so that a chunked body
is cut off at the limit too.
"""

from __future__ import annotations

import asyncio
import hmac
import zlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from joules.errors import ClientClosedError, PayloadTooLargeError, UnauthorizedError, UnsupportedMediaError
from joules.serve.online.errors import error_response

T = TypeVar("T")
# Probes must work without the key (a load balancer or kubelet holds none).
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})


class EdgeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: str | None,
        max_body: int,
        on_refused: Callable[[int], None] | None = None,
    ) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body = max_body
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        error: Exception | None = None
        if self.api_key is not None and scope["path"] not in OPEN_PATHS and not self._authorized(headers):
            error = UnauthorizedError("this server needs an API key: send it as X-API-Key or Authorization: Bearer")
        else:
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body:
                error = self._too_large(int(declared))
        if error is not None:
            response = error_response(error)
            if self.on_refused is not None:
                self.on_refused(response.status_code)
            await response(scope, receive, send)
            return
        await self.app(scope, self._limited(receive), send)

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        assert self.api_key is not None
        given = headers.get(b"x-api-key")
        if given is None:
            auth = headers.get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            given = token.strip() if scheme.lower() == b"bearer" else None
        return given is not None and hmac.compare_digest(given, self.api_key)

    def _too_large(self, size: int) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"the request body is {size:,} bytes; this server takes at most {self.max_body:,} (--max-body-mb)"
        )

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise self._too_large(seen)
            return message

        return wrapped


async def read_body(request: Request, max_body: int) -> bytes:
    """The whole body, decompressed (gzip or deflate, as tritonclient can send), within ``max_body``."""
    body = await request.body()
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        d = zlib.decompressobj(wbits=zlib.MAX_WBITS)
    else:
        raise UnsupportedMediaError(f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none")
    try:
        out = d.decompress(body, max_body + 1)
    except zlib.error as e:
        raise UnsupportedMediaError(f"the body is not valid {encoding} data: {e}") from None
    if len(out) > max_body or d.unconsumed_tail:
        raise PayloadTooLargeError(f"the decompressed body is over {max_body:,} bytes (--max-body-mb)")
    if not d.eof:
        raise UnsupportedMediaError(f"the {encoding} body is truncated")
    return out


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it (a queued request then costs no
    model call) and raise ClientClosedError.

    ``work`` runs in the calling task (no task of its own: one hop less per request); a
    watcher task listens for the disconnect and cancels the caller when it comes.
    """
    caller = asyncio.current_task()
    assert caller is not None  # called from a request's task
    gone = False
    waiting = True  # a done callback already scheduled must not cancel the caller once work is over

    def on_disconnect(watcher: asyncio.Future[None]) -> None:
        nonlocal gone
        if waiting and not watcher.cancelled() and watcher.exception() is None:
            gone = True
            caller.cancel()

    watcher = asyncio.ensure_future(_disconnect(request.receive))
    watcher.add_done_callback(on_disconnect)
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise  # cancelled for another reason (shutdown): not ours to swallow
        caller.uncancel()
        raise ClientClosedError("the client disconnected before its answer was ready") from None
    finally:
        waiting = False
        watcher.remove_done_callback(on_disconnect)
        watcher.cancel()


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass

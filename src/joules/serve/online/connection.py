"""The HTTP connection: what a client may send before the app sees its request.

uvicorn's httptools protocol parses a request's line and headers before any
ASGI code runs (so before the API key is checked), and httptools gathers a
header by concatenating bytes objects, which is quadratic in its length: one
100 MB header held the event loop for about 12 s. Nor does uvicorn bound the
time a client may take to send its headers or its declared body, so a few
half-sent requests held every ``--max-connections`` slot, health checks
included. This subclass adds, per connection:

- a limit on the bytes of a request's line and headers (``--max-header-kb``),
  counted as they arrive, before the parser sees them: 431, then the
  connection is closed;
- a limit on the number of header fields (``--max-headers``): 431;
- a time limit on the headers (``--header-timeout-s``, from the connection's
  first byte or the request's) and on the body (``--body-timeout-s``, from the
  end of the headers): 408, then the connection is closed;
- health probes answered even when the connection limit is reached (a load
  balancer must see a busy server as alive and ready), and the limit's 503
  and the parser's 400 as ``{"error": ...}`` JSON like every other answer.

Every refusal goes through ``errors.error_response``, the one status table.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from joules.errors import (
    HeaderTooLargeError,
    JoulesError,
    MalformedRequestError,
    QueueFullError,
    RequestTimeoutError,
    TooManyHeadersError,
)
from joules.serve.online.config import HttpLimits
from joules.serve.online.errors import error_response

log = logging.getLogger(__name__)

# Answered even when --max-connections is reached: cheap, and what orchestrators act on.
PROBE_PATHS = frozenset({b"/v2/health/live", b"/v2/health/ready"})


def protocol_class(limits: HttpLimits) -> type[LimitedHttpProtocol]:
    """The protocol class uvicorn instantiates per connection, bound to ``limits``."""
    return type("BoundLimitedHttpProtocol", (LimitedHttpProtocol,), {"limits": limits})


class LimitedHttpProtocol(HttpToolsProtocol):
    limits: HttpLimits = HttpLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.limits.keep_alive_s  # type: ignore[assignment]  # uvicorn's is whole seconds
        self._max_head = self.limits.max_header_bytes
        self._in_head = True  # waiting for (more of) a request's line and headers
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # -- connection ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that never sends a byte holds a slot too.
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    # -- reading ------------------------------------------------------------------------------------
    # Every request goes through here: the common case (a whole request in one read) costs a few
    # attribute checks and no timer.

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._in_head:
            room = self._max_head - self._head_bytes
            self._head_bytes += len(data)  # past the head's end too, within this read: bounded by the read size
            if len(data) > room:
                # Parse only what fits; if the head has not ended by then it is too large.
                if room > 0 and not self._feed(data[:room]):
                    return
                if self._in_head:
                    self._refuse(
                        HeaderTooLargeError(
                            f"the request line and headers are over {self._max_head:,} bytes; "
                            f"this server takes at most {self.limits.max_header_kb:g} KiB (--max-header-kb)"
                        )
                    )
                    return
                data = data[max(room, 0) :]
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:
            self._parse_failed(e)
            return
        if self._in_head:  # part of a head: it has header_timeout_s to end
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)
        elif self.cycle is not None and self.cycle.more_body:  # headers in, body not whole: body_timeout_s to come
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timed_out)
        else:  # the request is whole: what comes next is a new head
            self._in_head = True
            self._head_bytes = 0
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None

    def _feed(self, data: bytes) -> bool:
        """Parse ``data``; False when the connection was refused (and is closing)."""
        if not data:
            return True
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:
            self._parse_failed(e)
            return False
        return not self.transport.is_closing()

    def _parse_failed(self, e: Exception) -> None:
        if isinstance(e, httptools.HttpParserUpgrade):  # uvicorn's handling, unchanged
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if isinstance(e.__context__, TooManyHeadersError):
            error: JoulesError = HeaderTooLargeError(
                f"the request has more than {self.limits.max_headers} header fields; "
                f"this server takes at most {self.limits.max_headers} (--max-headers)"
            )
        else:
            error = MalformedRequestError(f"invalid HTTP request: {e}")
        self._refuse(error)

    # -- parser callbacks ---------------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if len(self.headers) > self.limits.max_headers:  # counted here: the head's size bounds their number
            raise TooManyHeadersError
        limit = self.limit_concurrency
        if limit is None or (len(self.connections) < limit and len(self.tasks) < limit):
            super().on_headers_complete()
            return
        # Over the connection limit: probes are still answered, everything else gets a JSON 503.
        app = self.app
        self.limit_concurrency = None
        if httptools.parse_url(self.url).path not in PROBE_PATHS:
            self.app = _busy_app(limit)
        try:
            super().on_headers_complete()
        finally:
            self.app, self.limit_concurrency = app, limit

    # -- refusing -----------------------------------------------------------------------------------

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_bytes == 0:
            self.transport.close()  # nothing was asked: nothing to answer
            return
        self._refuse(
            RequestTimeoutError(
                f"the request line and headers did not arrive within {self.limits.header_timeout_s:g} s "
                "(--header-timeout-s)"
            )
        )

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        self._refuse(
            RequestTimeoutError(
                f"the request body did not arrive within {self.limits.body_timeout_s:g} s of its headers "
                "(--body-timeout-s)"
            )
        )

    def _refuse(self, error: JoulesError) -> None:
        """Answer ``error`` (unless a response is already under way on this connection) and close."""
        self._cancel_timers()
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        log.warning("refused %s: %s", client, error)
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            response = error_response(error)
            head = [STATUS_LINE[response.status_code]]
            for name, value in [*self.server_state.default_headers, *response.raw_headers]:
                head += [name, b": ", value, b"\r\n"]
            head.append(b"connection: close\r\n\r\n")
            self.transport.write(b"".join(head) + bytes(response.body))
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's own answer, if it comes, has nowhere to go
            cycle.message_event.set()
        self.transport.close()


def _busy_app(limit: int) -> Any:
    response = error_response(
        QueueFullError(
            f"the server holds {limit} connections, its limit (--max-connections); retry later", retry_after_s=1
        )
    )
    response.headers["connection"] = "close"
    return response

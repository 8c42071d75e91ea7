"""A small asyncio HTTP/1.1 client with keep-alive connections.

The load generator shares two cores with the server it measures, so it must
cost little per request: request bytes are built once per sample, and a
response is read with a status line, headers and a Content-Length (or chunked)
body, nothing more.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit

from joules.errors import ConfigError, HttpError


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_url(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"--url must be http://HOST:PORT, got {url!r} (https is not supported by the load generator)")
    return parts.hostname, parts.port or 80, parts.path.rstrip("/")


def build_request(method: str, host: str, port: int, path: str, body: bytes = b"", content_type: str = "") -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    if content_type:
        head.append(f"Content-Type: {content_type}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


async def _read_response(reader: asyncio.StreamReader) -> Response:
    line = await reader.readline()
    if not line:
        raise ConnectionResetError("connection closed before a response")
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise HttpError(f"not an HTTP response: {line[:80]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                break
            chunks.append(await reader.readexactly(size))
            await reader.readline()
        body = b"".join(chunks)
    else:
        body = await reader.read()
        headers["connection"] = "close"
    return Response(status, headers, body)


class ConnectionPool:
    """Up to ``max_connections`` keep-alive connections to one server; requests wait for a free one."""

    def __init__(self, host: str, port: int, max_connections: int) -> None:
        self.host = host
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(max_connections)

    async def request(self, raw: bytes, timeout_s: float) -> Response:
        async with self.slots:
            for attempt in (0, 1):
                # A retry always opens a new connection: the next idle one may be as stale as the first.
                idle = self._take_idle() if attempt == 0 else None
                reused = idle is not None
                reader, writer = idle if idle is not None else await self._connect(timeout_s)
                try:
                    writer.write(raw)
                    resp = await asyncio.wait_for(_read_response(reader), timeout_s)
                except (ConnectionError, asyncio.IncompleteReadError) as e:
                    writer.close()
                    if reused and attempt == 0:
                        continue  # the server closed an idle keep-alive connection: retry on a new one
                    raise HttpError(f"connection to {self.host}:{self.port} failed: {e!r}") from None
                except TimeoutError:
                    writer.close()
                    raise HttpError(f"no response within {timeout_s:g} s") from None
                except asyncio.CancelledError:
                    writer.close()  # the caller gave up: this connection has a response in flight
                    raise
                if resp.headers.get("connection", "").lower() == "close":
                    writer.close()
                else:
                    self.idle.append((reader, writer))
                return resp
        raise HttpError("unreachable")  # pragma: no cover

    def _take_idle(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The most recently used idle connection the server has not closed yet (as far as we have heard)."""
        while self.idle:
            reader, writer = self.idle.pop()
            if reader.at_eof() or writer.is_closing():
                writer.close()  # the server closed it while idle (its keep-alive timeout)
                continue
            return reader, writer
        return None

    async def _connect(self, timeout_s: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.wait_for(asyncio.open_connection(self.host, self.port), timeout_s)
        except (OSError, TimeoutError) as e:
            raise HttpError(f"cannot connect to {self.host}:{self.port}: {e!r}") from None

    def close(self) -> None:
        for _, w in self.idle:
            w.close()
        self.idle.clear()

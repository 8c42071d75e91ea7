"""The load generator's keep-alive pool against a server that closes idle connections (uvicorn's keep-alive timeout)."""

from __future__ import annotations

import asyncio

from joules.bench.http import ConnectionPool, build_request

IDLE_CLOSE_S = 0.2
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer requests on one connection; close it after IDLE_CLOSE_S without one."""
    try:
        while True:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_CLOSE_S)
            except (TimeoutError, asyncio.IncompleteReadError):
                return
            length = next(
                (int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0
            )
            await reader.readexactly(length)
            await asyncio.sleep(0.01)  # keep several requests in flight at once
            writer.write(RESPONSE)
            await writer.drain()
    finally:
        writer.close()


def test_requests_after_the_server_closed_every_idle_connection_do_not_fail() -> None:
    async def main() -> list[int]:
        server = await asyncio.start_server(_serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = ConnectionPool("127.0.0.1", port, max_connections=8)
        raw = build_request("POST", "127.0.0.1", port, "/x", b"{}", "application/json")
        try:
            statuses = [r.status for r in await asyncio.gather(*(pool.request(raw, 5) for _ in range(8)))]
            assert len(pool.idle) == 8, "a burst of 8 leaves 8 keep-alive connections"
            await asyncio.sleep(3 * IDLE_CLOSE_S)  # the server closes all of them
            # Every idle connection is stale now; one request at a time, none may fail (a retry that took the
            # next idle connection would find it closed too).
            for _ in range(8):
                statuses.append((await pool.request(raw, 5)).status)
            return statuses
        finally:
            pool.close()
            server.close()
            await server.wait_closed()

    assert asyncio.run(main()) == [200] * 16

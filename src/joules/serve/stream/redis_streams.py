"""Redis Streams: connecting, mapping errors, and the consumer-group source.

The source reads with XREADGROUP and hands out, in this order: its own pending
entries left by an earlier run under the same consumer name (at start-up and
after a lost connection), entries of dead consumers claimed with XAUTOCLAIM
once idle for ``--claim-idle-ms`` (at start-up and every half of that), then
new entries. While a batch is being judged, a lease thread re-claims its
entries for their own consumer (XCLAIM JUSTID, which resets the idle time
without counting a delivery), so a slow batch is never mistaken for a dead
consumer's. Messages are acked only after their outcome is written (the sink
is in ``redis_sink.py``).

redis-py is imported lazily: it is the ``stream`` extra.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from joules.errors import BrokerUnavailableError, StreamError, require
from joules.runtime.reasons import invalid_utf8
from joules.serve.stream.base import Backlog
from joules.serve.stream.config import RedisEndpoint, StreamConfig
from joules.serve.stream.messages import Message, stream_id_ms

log = logging.getLogger("joules.stream")

MIN_REDIS = (6, 2)  # XAUTOCLAIM appeared in Redis 6.2
SOCKET_TIMEOUT_S = 30.0  # longer than any BLOCK we send (at most 1 s), so a dead TCP peer is noticed
PRUNE_EVERY_S = 60.0
PRUNE_IDLE_MS = 600_000  # at least; and at least twice --claim-idle-ms

# Consumers are named HOST-PID, so every restart leaves a name behind in the group. Remove the
# names that hold no pending entry and have not read for a long time: checked and deleted in one
# script, so no entry can be delivered to a name between the check and the delete (which would
# drop it from the pending list). A live consumer reads at least every second, and one that
# comes back after being pruned is re-created by its next read.
# KEYS[1]: stream; ARGV: group, idle ms, this consumer (never pruned). Returns the names removed.
PRUNE_CONSUMERS_LUA = """
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['pending'] == 0 and f['idle'] > tonumber(ARGV[2]) and f['name'] ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    removed[#removed + 1] = f['name']
  end
end
return removed
"""


def connect(endpoint: RedisEndpoint, *, name: str) -> Any:
    """A client for ``endpoint``'s server, checked with PING; a clear error when it cannot be reached."""
    require("redis", "stream")
    import redis

    client = redis.Redis.from_url(
        endpoint.connection_url,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=5.0,
        health_check_interval=15,
        client_name=name,
    )
    try:
        client.ping()
        info = client.info("server")
    except redis.exceptions.AuthenticationError as e:
        raise StreamError(f"redis at {endpoint.server} refused the credentials in the URL: {e}") from None
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
        raise StreamError(
            f"cannot connect to redis at {endpoint.server}: {e}; is redis-server running there?"
        ) from None
    version = tuple(int(x) for x in str(info.get("redis_version", "0.0")).split(".")[:2])
    if version < MIN_REDIS:
        raise StreamError(
            f"redis at {endpoint.server} is version {info.get('redis_version')}; joules stream needs 6.2 or newer "
            "(for XAUTOCLAIM)"
        )
    return client


@contextmanager
def broker_errors(where: str) -> Iterator[None]:
    """Map redis-py's errors: what passes (a lost connection, a failover, memory full, a busy
    script) is retried by the caller; anything else is a fatal StreamError."""
    import redis

    transient = (
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        redis.exceptions.OutOfMemoryError,
        redis.exceptions.ReadOnlyError,
        redis.exceptions.TryAgainError,
        redis.exceptions.MasterDownError,
    )
    try:
        yield
    except transient as e:
        raise BrokerUnavailableError(f"{where}: {e}") from e
    except redis.exceptions.ResponseError as e:
        if str(e).startswith("BUSY "):  # another client's script is running; it ends or is killed
            raise BrokerUnavailableError(f"{where}: {e}") from e
        raise StreamError(f"{where}: redis refused the command: {e}") from e


def check_stream_key(client: Any, endpoint: RedisEndpoint, role: str) -> None:
    with broker_errors(f"checking {endpoint}"):
        kind = client.type(endpoint.stream)
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    if kind not in ("none", "stream"):
        raise StreamError(
            f"the {role} {endpoint} is a Redis {kind}, not a stream; "
            f"choose another key or delete it (DEL {endpoint.stream})"
        )


class RedisStreamSource:
    """One consumer of a consumer group. Not thread-safe: one loop calls it; the lease thread is internal."""

    def __init__(self, client: Any, endpoint: RedisEndpoint, config: StreamConfig) -> None:
        self.client = client
        self.endpoint = endpoint
        self.cfg = config
        self.stream = endpoint.stream
        self.description = f"{endpoint} (group {config.group!r}, consumer {config.consumer!r})"
        self._id_field = config.id_field.encode()
        self._history: str | None = "0"  # read our own pending entries first, from this id on
        self._claim_cursor = "0-0"
        self._claim_due = 0.0  # monotonic time of the next XAUTOCLAIM; now: at start-up
        self._held: set[bytes] = set()  # entries handed out and not yet acked or released
        self._held_lock = threading.Lock()
        self._closing = threading.Event()
        self._stopped = False
        self.deleted = 0  # pending entries found deleted from the stream (nothing left to judge)
        self.claimed = 0
        self._lease = threading.Thread(target=self._renew_leases, name="joules-stream-lease", daemon=True)
        self._prune = client.register_script(PRUNE_CONSUMERS_LUA)
        self._prune_due = 0.0
        self._last_seen: str | None = None  # the latest entry id handed out: where a lost group restarts

    @property
    def exhausted(self) -> bool:
        return False

    def open(self) -> None:
        """Check the stream and create the group (from ``--start``) unless it exists."""
        check_stream_key(self.client, self.endpoint, "source")
        self._create_group()
        self._lease.start()

    def _create_group(self, start: str | None = None) -> None:
        import redis

        start = start or self.cfg.start
        with broker_errors(f"creating group {self.cfg.group!r} on {self.endpoint}"):
            try:
                self.client.xgroup_create(self.stream, self.cfg.group, id=start, mkstream=True)
                log.info("created consumer group %r on %s from %s", self.cfg.group, self.endpoint, start)
            except redis.exceptions.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    # -- reading ---------------------------------------------------------------------------------

    def stop_reading(self) -> None:
        self._stopped = True

    def fetch(self, max_count: int, block_ms: int) -> list[Message]:
        if self._stopped:
            return []
        import redis

        with broker_errors(f"reading {self.endpoint}"):
            try:
                return self._fetch(max_count, block_ms)
            except redis.exceptions.ResponseError as e:
                if not _gone(e):
                    raise
        # The stream or the group is gone (deleted, or a Redis restarted without persistence). Create it
        # again after the last entry this consumer saw: entries of a stream created anew since then
        # come after it (their ids are times); with the stream intact, what was judged is not read again.
        start = self._last_seen or self.cfg.start
        log.warning("consumer group %r on %s is gone; creating it again from %s", self.cfg.group, self.endpoint, start)
        self._create_group(start)
        self._claim_cursor = "0-0"
        return []

    def _fetch(self, max_count: int, block_ms: int) -> list[Message]:
        """Our own pending entries first, then entries claimed from dead consumers, then new ones."""
        if self._history is not None:
            got = self._read_history(self._history, max_count)
            if got:
                return got
        if time.monotonic() >= self._claim_due:
            got = self._claim(max_count)
            if got:
                return got
        if time.monotonic() >= self._prune_due:
            self._prune_consumers()
        reply = self.client.xreadgroup(
            self.cfg.group, self.cfg.consumer, {self.stream: ">"}, count=max_count, block=block_ms or None
        )
        return self._messages(_entries(reply), {})

    def _read_history(self, after: str, max_count: int) -> list[Message]:
        reply = self.client.xreadgroup(self.cfg.group, self.cfg.consumer, {self.stream: after}, count=max_count)
        entries = _entries(reply)
        if not entries:
            self._history = None
            return []
        self._history = entries[-1][0].decode()
        gone = [eid for eid, fields in entries if not fields]  # deleted from the stream while pending
        if gone:
            self._forget_deleted(gone)
        live = [(eid, fields) for eid, fields in entries if fields]
        if live:
            log.info(
                "re-reading %d entries pending to consumer %r since an earlier run or a lost connection",
                len(live),
                self.cfg.consumer,
            )
        return self._messages(live, self._delivery_info([eid for eid, _ in live]))

    def _claim(self, max_count: int) -> list[Message]:
        reply = self.client.xautoclaim(
            self.stream, self.cfg.group, self.cfg.consumer, self.cfg.claim_idle_ms, self._claim_cursor, count=max_count
        )
        cursor = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        entries = [(eid, fields) for eid, fields in reply[1] if eid is not None]
        deleted = list(reply[2]) if len(reply) > 2 else []  # Redis 7: deleted entries, dropped from the PEL
        if deleted:
            self.deleted += len(deleted)
            log.warning(
                "%d pending entries of %s were deleted from the stream before anyone judged them",
                len(deleted),
                self.endpoint,
            )
        self._claim_cursor = cursor
        # Come back at once while the scan has more to give; else after half the idle time.
        self._claim_due = time.monotonic() + (0 if cursor != "0-0" else self.cfg.claim_every_ms / 1000)
        if not entries:
            return []
        self.claimed += len(entries)
        log.info("claimed %d entries idle for over %d ms from stopped consumers", len(entries), self.cfg.claim_idle_ms)
        return self._messages(entries, self._delivery_info([eid for eid, _ in entries]))

    def _prune_consumers(self) -> None:
        self._prune_due = time.monotonic() + PRUNE_EVERY_S
        idle_ms = max(PRUNE_IDLE_MS, 2 * self.cfg.claim_idle_ms)
        removed = self._prune(keys=[self.stream], args=[self.cfg.group, idle_ms, self.cfg.consumer])
        if removed:
            names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in removed]
            log.info(
                "removed %d consumers idle for over %d s with nothing pending: %s",
                len(names),
                idle_ms // 1000,
                ", ".join(names[:10]) + ("..." if len(names) > 10 else ""),
            )

    def _delivery_info(self, ids: Sequence[bytes]) -> dict[bytes, tuple[int, str | None]]:
        """Delivery count (XPENDING) and the last recorded error of each id, in one round trip."""
        if not ids:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for eid in ids:
            pipe.xpending_range(self.stream, self.cfg.group, eid, eid, 1)
            pipe.get(self._error_key(eid.decode()))
        replies = pipe.execute()
        info: dict[bytes, tuple[int, str | None]] = {}
        for i, eid in enumerate(ids):
            pending, error = replies[2 * i], replies[2 * i + 1]
            count = int(pending[0]["times_delivered"]) if pending else 1
            info[eid] = (count, error.decode("utf-8", "replace") if error is not None else None)
        return info

    def _messages(
        self, entries: Sequence[tuple[bytes, dict[bytes, bytes]]], info: dict[bytes, tuple[int, str | None]]
    ) -> list[Message]:
        out = []
        for eid, fields in entries:
            deliveries, last_error = info.get(eid, (1, None))
            out.append(self._decode(eid, fields, deliveries, last_error))
        with self._held_lock:
            self._held.update(eid for eid, _ in entries)
        if entries:
            last = max((eid.decode() for eid, _ in entries), key=_id_key)
            if self._last_seen is None or _id_key(last) > _id_key(self._last_seen):
                self._last_seen = last
        return out

    def _decode(self, eid: bytes, fields: dict[bytes, bytes], deliveries: int, last_error: str | None) -> Message:
        source_id = eid.decode()
        problem = None
        msg_id: str | None = None
        raw_id = fields.get(self._id_field)
        if raw_id is not None:
            try:
                msg_id = raw_id.decode("utf-8")
            except UnicodeDecodeError:
                problem = invalid_utf8(self.cfg.id_field)
        # Values stay bytes: admission decodes the ones the model needs (strict UTF-8, size first).
        decoded = {k.decode("utf-8", "replace"): v for k, v in fields.items()}
        return Message(
            source_id=source_id,
            fields=decoded,
            id=msg_id,
            problem=problem,
            original=fields,
            deliveries=deliveries,
            produced_ms=stream_id_ms(source_id),
            last_error=last_error,
        )

    # -- settling --------------------------------------------------------------------------------

    def ack(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        ids = [m.source_id for m in messages]
        with broker_errors(f"acking on {self.endpoint}"):
            pipe = self.client.pipeline(transaction=False)
            pipe.xack(self.stream, self.cfg.group, *ids)
            stale = [self._error_key(m.source_id) for m in messages if m.deliveries > 1]
            if stale:
                pipe.delete(*stale)
            pipe.execute()
        self._release(ids)

    def retry_later(self, messages: Sequence[Message], error: str) -> None:
        """Leave them pending: after ``--claim-idle-ms`` a consumer claims them, counting a delivery."""
        if not messages:
            return
        with broker_errors(f"recording a failure on {self.endpoint}"):
            pipe = self.client.pipeline(transaction=False)
            for m in messages:
                pipe.set(self._error_key(m.source_id), error[:2000], ex=self.cfg.dedupe_ttl_s)
            pipe.execute()
        self._release([m.source_id for m in messages])

    def _release(self, ids: Sequence[str]) -> None:
        with self._held_lock:
            self._held.difference_update(i.encode() for i in ids)

    def _forget_deleted(self, ids: Sequence[bytes]) -> None:
        self.deleted += len(ids)
        self.client.xack(self.stream, self.cfg.group, *ids)
        log.warning(
            "%d pending entries of %s were deleted from the stream before anyone judged them", len(ids), self.endpoint
        )

    def recover(self) -> None:
        """A read's reply may have been lost: entries delivered to us unseen are found by re-reading ours."""
        self._history = "0"

    def _error_key(self, source_id: str) -> str:
        return f"{self.stream}:error:{self.cfg.group}:{source_id}"

    # -- leases ----------------------------------------------------------------------------------

    def _renew_leases(self) -> None:
        # Lifecycle work must never break the loop: a failure is logged and retried next period.
        while not self._closing.wait(self.cfg.lease_renew_ms / 1000):
            with self._held_lock:
                ids = list(self._held)
            if not ids:
                continue
            try:
                self.client.xclaim(self.stream, self.cfg.group, self.cfg.consumer, 0, ids, justid=True)
            except Exception as e:  # any failure here only delays a renewal
                log.warning("could not renew the lease of %d entries on %s: %s", len(ids), self.endpoint, e)

    # -- reporting -------------------------------------------------------------------------------

    def backlog(self) -> Backlog | None:
        import redis

        with broker_errors(f"reading the backlog of {self.endpoint}"):
            try:
                groups = self.client.xinfo_groups(self.stream)
            except redis.exceptions.ResponseError as e:
                if not _gone(e):
                    raise
                return None  # the stream is gone (a Redis restarted empty): the next read creates it again
        for g in groups:
            name = g.get("name")
            if (name.decode() if isinstance(name, bytes) else name) == self.cfg.group:
                lag = g.get("lag")
                return Backlog(
                    lag=int(lag) if lag is not None else None,
                    pending=int(g.get("pending", 0)),
                    consumers=int(g.get("consumers", 0)),
                )
        return None

    def close(self) -> None:
        self._closing.set()
        if self._lease.is_alive():
            self._lease.join(timeout=5)


def _gone(e: Exception) -> bool:
    """Whether Redis refused a command because the stream or the group does not exist (any more)."""
    message = str(e)
    return "NOGROUP" in message or "no such key" in message.lower()


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """XREADGROUP's reply (a list or, in RESP3, a dict of stream to entries) as one list of entries."""
    if not reply:
        return []
    if isinstance(reply, dict):
        streams = list(reply.values())
        return [e for entries in streams for e in (entries[0] if entries and isinstance(entries[0], list) else entries)]
    return [e for _, entries in reply for e in entries]

"""What ``joules stream`` consumes, where its verdicts go, and how it batches and retries.

A place is written as a URL: ``redis://[user:password@]HOST[:PORT]/STREAM`` (also
``rediss://`` for TLS and ``?db=N`` for another database) or ``-`` for JSONL on
stdin (source) and stdout (sink). ``plan_endpoints`` is the one function that
pairs a source with a sink and rejects the pairs joules cannot serve.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import parse_qsl, unquote, urlsplit

from joules.errors import ConfigError
from joules.runtime.limits import MAX_TEXT_BYTES, WINDOW_ROWS

STDIO = "-"
REDIS_SCHEMES = ("redis", "rediss")
DEFAULT_REDIS_PORT = 6379


class EndpointKind(StrEnum):
    REDIS = "redis"
    STDIO = "stdio"


@dataclass(frozen=True, kw_only=True)
class RedisEndpoint:
    """One Redis stream: the server to connect to and the stream key on it."""

    connection_url: str  # what redis-py's from_url takes: scheme, credentials, host, port, db
    stream: str

    def __post_init__(self) -> None:
        if not self.stream:
            raise ConfigError(f"no stream named in {self.connection_url!r}; write redis://HOST:PORT/STREAM")

    @classmethod
    def parse(cls, url: str) -> RedisEndpoint:
        parts = urlsplit(url)
        if parts.scheme not in REDIS_SCHEMES:
            raise ConfigError(
                f"{url!r} is not a Redis stream URL; write redis://HOST:PORT/STREAM, or - for stdin/stdout"
            )
        stream = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
        if not stream:
            raise ConfigError(
                f"{url!r} names no stream; write redis://HOST:PORT/STREAM (for example redis://localhost:6379/mail)"
            )
        try:
            port = parts.port or DEFAULT_REDIS_PORT
        except ValueError:
            raise ConfigError(f"{url!r} has an invalid port; write redis://HOST:PORT/STREAM") from None
        query = dict(parse_qsl(parts.query))
        unknown = sorted(set(query) - {"db"})
        if unknown:
            raise ConfigError(f"{url!r}: unknown URL options {unknown}; the only option is ?db=N")
        if "db" in query and not query["db"].isdigit():
            raise ConfigError(f"{url!r}: db must be a database number, got {query['db']!r}")
        userinfo = parts.netloc.rpartition("@")[0]
        host = parts.hostname or "localhost"
        netloc = f"{userinfo}@" if userinfo else ""
        netloc += f"[{host}]" if ":" in host else host
        netloc += f":{port}"
        conn = f"{parts.scheme}://{netloc}/{query.get('db', '0')}"
        return cls(connection_url=conn, stream=stream)

    @property
    def server(self) -> str:
        """The server and database, without credentials: what logs and errors show."""
        parts = urlsplit(self.connection_url)
        return f"{parts.scheme}://{parts.hostname}:{parts.port}{parts.path if parts.path != '/0' else ''}"

    def same_server(self, other: RedisEndpoint) -> bool:
        return self.connection_url == other.connection_url

    def with_stream(self, stream: str) -> RedisEndpoint:
        return RedisEndpoint(connection_url=self.connection_url, stream=stream)

    def __str__(self) -> str:
        return f"{self.server}/{self.stream}"


@dataclass(frozen=True, kw_only=True)
class EndpointPlan:
    """The source and sink a stream job uses; the dead-letter stream sits beside the source."""

    kind: EndpointKind
    source: RedisEndpoint | None = None
    sink: RedisEndpoint | None = None

    @property
    def dead(self) -> RedisEndpoint | None:
        return None if self.source is None else self.source.with_stream(self.source.stream + ":dead")


def plan_endpoints(source: str, sink: str | None) -> EndpointPlan:
    """Pair ``--source`` with ``--sink``; reject what cannot be served, saying what would work."""
    if source == STDIO:
        if sink not in (None, STDIO):
            raise ConfigError(
                f"--source - (JSONL on stdin) writes verdicts as JSONL to stdout; drop --sink {sink!r} "
                "or pass --sink -. "
                "To feed a Redis stream from a file, use `joules publish FILE --to redis://HOST:PORT/STREAM`"
            )
        return EndpointPlan(kind=EndpointKind.STDIO)
    src = RedisEndpoint.parse(source)
    if sink is None:
        raise ConfigError(
            f"--source {source!r} needs a --sink: the stream for verdicts, e.g. --sink redis://HOST:PORT/verdicts"
        )
    if sink == STDIO:
        raise ConfigError("--sink - (stdout) goes with --source - (stdin); a Redis source needs a Redis --sink stream")
    snk = RedisEndpoint.parse(sink)
    if snk.same_server(src) and snk.stream == src.stream:
        raise ConfigError(f"--sink {sink!r} is the source stream itself; verdicts need a stream of their own")
    if snk.same_server(src) and snk.stream == src.stream + ":dead":
        raise ConfigError(f"--sink {sink!r} is the dead-letter stream of the source; choose another stream")
    return EndpointPlan(kind=EndpointKind.REDIS, source=src, sink=snk)


def default_consumer_name() -> str:
    """``HOST-PID``: unique per process, so two consumers never share a pending list by accident."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, kw_only=True)
class StreamConfig:
    """How messages are read, batched, retried and written. Times in ms unless named otherwise."""

    group: str
    consumer: str
    batch_size: int = WINDOW_ROWS  # messages read, judged, written and acked together (then cut into calls)
    max_wait_ms: int = 20  # a micro-batch closes when full or this long after its first message
    start: str = "0"  # where a new group starts: 0 = the whole backlog, $ = only new messages
    claim_idle_ms: int = 30_000  # pending entries idle this long belong to a dead consumer and are claimed
    max_attempts: int = 3  # deliveries of one message before it is dead-lettered
    # A JSONL line this much longer (plus room for the other fields) is refused unread; admission's
    # own bound (RuntimeOptions.max_text_bytes, the same default) judges each field. One flag sets both.
    max_text_bytes: int = MAX_TEXT_BYTES
    dedupe_ttl_s: int = 86_400  # how long the record that a message was answered is kept
    sink_maxlen: int | None = None  # trim the sink stream to about this many entries; never trimmed if None
    text_field: str | None = None  # the field holding a text model's text (None: the model's own field name)
    id_field: str = "id"
    report_every_s: float = 10.0  # a progress line on stderr this often (0: only at exit)

    def __post_init__(self) -> None:
        checks = [
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.max_wait_ms >= 0, f"--max-wait-ms must be >= 0, got {self.max_wait_ms}"),
            (self.claim_idle_ms >= 100, f"--claim-idle-ms must be >= 100, got {self.claim_idle_ms}"),
            (self.max_attempts >= 1, f"--max-attempts must be >= 1, got {self.max_attempts}"),
            (self.max_text_bytes >= 1, f"--max-text-bytes must be >= 1, got {self.max_text_bytes}"),
            (self.dedupe_ttl_s >= 1, f"--dedupe-ttl-s must be >= 1, got {self.dedupe_ttl_s}"),
            (
                self.sink_maxlen is None or self.sink_maxlen >= 1,
                f"--sink-maxlen must be >= 1, got {self.sink_maxlen}",
            ),
            (self.report_every_s >= 0, f"--report-every-s must be >= 0, got {self.report_every_s}"),
            (bool(self.group.strip()), "--group must not be empty"),
            (bool(self.consumer.strip()), "--consumer must not be empty"),
            (self.text_field is None or bool(self.text_field), "--text-field must not be empty"),
            (bool(self.id_field), "--id-field must not be empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.dedupe_ttl_s * 1000 <= self.claim_idle_ms:
            # A verdict's dedupe record must outlive the time a message can wait to be reclaimed.
            raise ConfigError(
                f"--dedupe-ttl-s ({self.dedupe_ttl_s} s) must be longer than --claim-idle-ms ({self.claim_idle_ms} ms)"
            )
        if not _valid_start(self.start):
            raise ConfigError(f"--start must be 0, $ or a stream entry id like 1700000000000-0, got {self.start!r}")

    @property
    def lease_renew_ms(self) -> int:
        """How often the entries being judged are re-claimed by their own consumer, so none looks dead."""
        return max(30, self.claim_idle_ms // 3)

    @property
    def claim_every_ms(self) -> int:
        """How often to look for a dead consumer's entries: idle ones cannot appear faster than this."""
        return min(60_000, max(50, self.claim_idle_ms // 2))


def _valid_start(start: str) -> bool:
    if start in ("0", "$"):
        return True
    ms, sep, seq = start.partition("-")
    return ms.isdigit() and (not sep or seq.isdigit())

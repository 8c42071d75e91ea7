"""``joules publish``: push a CSV or JSONL file into a Redis stream, one entry per row.

Every column (CSV) or key (JSONL object) becomes a field of the entry, as the
file has it: strings as they are (bytes that are not UTF-8 are published as
those bytes, so a consumer sees what the file held), other JSON values as JSON.
Lines that are not JSON objects are skipped and counted. ``--rate`` paces the
entries at a fixed rate, for latency benchmarks; without it they go in
pipelined chunks as fast as the server takes them.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joules.errors import ConfigError, DataError
from joules.serve.stream.config import RedisEndpoint

log = logging.getLogger("joules.stream")

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
CHUNK = 500  # entries per pipelined round trip

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass(frozen=True, kw_only=True)
class PublishConfig:
    path: Path | None  # None: stdin
    format: str | None = None  # csv or jsonl; None: from the file's extension (stdin: jsonl)
    rate: float | None = None  # entries per second; None: as fast as possible
    maxlen: int | None = None  # trim the stream to about this many entries
    limit: int | None = None  # publish at most this many entries
    progress: bool = True

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in ("csv", "jsonl"):
            raise ConfigError(f"--format must be csv or jsonl, got {self.format!r}")
        if self.rate is not None and not self.rate > 0:
            raise ConfigError(f"--rate must be > 0 entries per second, got {self.rate}")
        if self.maxlen is not None and self.maxlen < 1:
            raise ConfigError(f"--maxlen must be >= 1, got {self.maxlen}")
        if self.limit is not None and self.limit < 0:
            raise ConfigError(f"--limit must be >= 0, got {self.limit}")

    @property
    def resolved_format(self) -> str:
        if self.format:
            return self.format
        if self.path is None:
            return "jsonl"
        fmt = FORMATS.get(self.path.suffix.lower())
        if fmt is None:
            raise DataError(
                f"cannot tell the format of {str(self.path)!r} from its extension {self.path.suffix!r}; "
                "use .csv or .jsonl, or pass --format"
            )
        return fmt


@dataclass
class PublishSummary:
    stream: str
    published: int = 0
    skipped: int = 0
    seconds: float = 0.0
    first_id: str | None = None
    last_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "published": self.published,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
            "entries_per_s": round(self.published / self.seconds, 1) if self.seconds > 0 else 0.0,
            "first_id": self.first_id,
            "last_id": self.last_id,
        }


def _field_value(value: Any) -> str | bytes:
    if isinstance(value, str):
        try:
            return value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate from a JSON \\u escape: keep it visible
            return value.encode("utf-8", "backslashreplace")
    return json.dumps(value, ensure_ascii=False)


def read_records(path: Path | None, fmt: str) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """``(line, fields)`` per row; fields None for a line that cannot become an entry."""
    if fmt == "csv":
        f = sys.stdin if path is None else path.open(encoding="utf-8", errors="surrogateescape", newline="")
        with f:
            reader = csv.DictReader(f)
            for row in reader:
                fields = {k: v for k, v in row.items() if k is not None and v is not None}
                yield reader.line_num, (fields or None)
        return
    stream = sys.stdin.buffer if path is None else path.open("rb")
    with stream:
        for line_no, raw in enumerate(stream, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8", "surrogateescape"))
            except json.JSONDecodeError:
                yield line_no, None
                continue
            if not isinstance(obj, dict):
                yield line_no, None
                continue
            fields = {str(k): v for k, v in obj.items() if v is not None}
            yield line_no, (fields or None)


def publish_file(endpoint: RedisEndpoint, config: PublishConfig) -> PublishSummary:
    from tqdm import tqdm

    from joules.serve.stream.redis_streams import broker_errors, check_stream_key, connect

    if config.path is not None and not config.path.is_file():
        raise DataError(f"input file {str(config.path)!r} does not exist")
    fmt = config.resolved_format
    client = connect(endpoint, name="joules-publish")
    check_stream_key(client, endpoint, "stream")
    summary = PublishSummary(stream=str(endpoint))
    pipe = client.pipeline(transaction=False)
    queued = 0
    bar = tqdm(
        desc=f"publish {endpoint.stream}",
        unit=" entries",
        file=sys.stderr,
        mininterval=0.5,
        disable=not config.progress,
        dynamic_ncols=True,
    )

    def flush() -> None:
        nonlocal queued
        if not queued:
            return
        with broker_errors(f"publishing to {endpoint}"):
            ids = pipe.execute()
        first = ids[0].decode() if isinstance(ids[0], bytes) else str(ids[0])
        summary.first_id = summary.first_id or first
        last = ids[-1]
        summary.last_id = last.decode() if isinstance(last, bytes) else str(last)
        summary.published += len(ids)
        bar.update(len(ids))
        queued = 0

    started = time.monotonic()
    try:
        for line_no, fields in read_records(config.path, fmt):
            if config.limit is not None and summary.published + queued >= config.limit:
                break
            if fields is None:
                summary.skipped += 1
                log.warning("line %d is not a JSON object with fields; skipped", line_no)
                continue
            if config.rate is not None:
                # Entry i is due at start + i / rate; wait for it instead of bursting, so the
                # produce times a latency benchmark measures from are the schedule's.
                wait = started + (summary.published + queued) / config.rate - time.monotonic()
                if wait > 0:
                    flush()
                    time.sleep(wait)
            pipe.xadd(
                endpoint.stream,
                {k: _field_value(v) for k, v in fields.items()},
                maxlen=config.maxlen,
                approximate=True,
            )
            queued += 1
            if queued >= CHUNK:
                flush()
        flush()
    finally:
        bar.close()
        summary.seconds = time.monotonic() - started
    return summary

"""Helpers for the stream tests: messages, consumer processes, reading streams back."""

from __future__ import annotations

import json
import os
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import DATA
from tests.helpers import JOULES
from tests.serve.stream.conftest import RedisServer


def texts(n: int, seed: int = 7) -> list[str]:
    rows = [line.rstrip("\n").split("\t", 1)[1] for line in DATA.open(encoding="utf-8")]
    rng = random.Random(seed)
    return [rng.choice(rows) for _ in range(n)]


def decode(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()}


def entries(server: RedisServer, stream: str) -> list[tuple[str, dict[str, str]]]:
    """Every entry of ``stream``, decoded, read in pages."""
    out: list[tuple[str, dict[str, str]]] = []
    start = "-"
    while True:
        page = server.client.xrange(stream, start, "+", count=5000)
        if start != "-":
            page = page[1:]
        if not page:
            return out
        out += [(eid.decode(), decode(f)) for eid, f in page]
        start = page[-1][0].decode()


def pending(server: RedisServer, stream: str, group: str, consumer: str | None = None) -> int:
    if consumer is None:
        return int(server.client.xpending(stream, group)["pending"])
    return len(server.client.xpending_range(stream, group, "-", "+", 100_000, consumername=consumer))


@dataclass
class Consumer:
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def start_consumer(
    home: Path, server: RedisServer, consumer: str, log_dir: Path, *extra: str, source: str = "mail"
) -> Consumer:
    log = log_dir / f"{consumer}-{os.urandom(3).hex()}.log"
    args = [
        *JOULES,
        "stream",
        "spam",
        "--source",
        server.url(source),
        "--sink",
        server.url("verdicts"),
        "--group",
        "g",
        "--consumer",
        consumer,
        *extra,
    ]
    with log.open("wb") as f:
        proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "JOULES_HOME": str(home)})
    return Consumer(proc, log)


def stop(c: Consumer, timeout: float = 60) -> int:
    """SIGTERM, then wait for the exit code."""
    if c.proc.poll() is None:
        c.proc.terminate()
    try:
        return c.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        c.proc.kill()
        c.proc.wait()
        raise AssertionError(f"consumer did not stop within {timeout} s after SIGTERM:\n{c.tail()}") from None


def summary_of(c: Consumer) -> dict[str, Any]:
    """The --json summary a stopped consumer printed (the last JSON object in its output)."""
    text = c.log.read_text()
    start = text.rindex("\n{\n") + 1 if "\n{\n" in text else text.index("{\n")
    return json.loads(text[start:])

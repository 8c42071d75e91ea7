"""Streaming with no broker: JSONL on stdin in, one JSONL line per message out on stdout.

Each input line is a JSON object with a text field (and optionally an id
field); each produces exactly one output line, a verdict
``{"source_id": LINE, "id", "label", "action", "probabilities", "model"}`` or a
dead letter ``{"source_id": LINE, "id", "reason", "original"}``. Blank lines
are skipped. There is no broker to keep unacked messages, so this mode is for
pipelines and demos; crash safety needs ``--source redis://...``.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import IO, Any

from joules.runtime.reasons import invalid_utf8
from joules.serve.stream.base import Backlog
from joules.serve.stream.config import StreamConfig
from joules.serve.stream.messages import Message, Outcome, Written

_EOF = object()
STOP_GRACE_S = 0.05


def parse_line(raw: bytes, line_no: int, cfg: StreamConfig) -> Message:
    """One input line as a message, or as a message with the reason it cannot be judged."""
    now_ms = time.time() * 1000
    original = {"line": raw.rstrip(b"\r\n").decode("utf-8", "replace")}

    def bad(reason: str, msg_id: Any = None) -> Message:
        return Message(str(line_no), {}, msg_id, reason, original, produced_ms=now_ms)

    if len(raw) > cfg.max_text_bytes + 65_536:  # the whole line, with generous room for the other fields
        return bad(f"line is {len(raw):,} bytes, far over --max-text-bytes {cfg.max_text_bytes:,}")
    try:
        # Bytes that are not UTF-8 stay lone surrogates in the values, for admission to refuse
        # with the reason every mode gives (naming the field).
        obj = json.loads(raw.decode("utf-8", "surrogateescape"))
    except json.JSONDecodeError as e:
        return bad(f"malformed JSON: {e.msg} at column {e.colno}")
    if not isinstance(obj, dict):
        return bad(f"expected a JSON object, got {type(obj).__name__}")
    msg_id = obj.get(cfg.id_field)
    if isinstance(msg_id, str):
        try:
            msg_id.encode("utf-8")
        except UnicodeEncodeError:
            return bad(invalid_utf8(cfg.id_field))
    elif msg_id is not None and not isinstance(msg_id, int | float | bool):
        return bad(f"field {cfg.id_field!r} must be a string or a number, got {type(msg_id).__name__}")
    return Message(str(line_no), obj, msg_id, None, original, produced_ms=now_ms)


class JsonlSource:
    """Lines from a binary stream (stdin), read ahead by a thread so batches close on time."""

    def __init__(self, stream: IO[bytes], config: StreamConfig, description: str = "stdin (JSONL)") -> None:
        self.description = description
        self.cfg = config
        self._stream = stream
        # Read ahead at most one batch: lines read from a pipe are gone from it, so a stop has to
        # judge them all before exiting, and a fast producer waits instead of filling memory.
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=config.batch_size)
        self._retries: deque[Message] = deque()
        self._stopping = threading.Event()
        self._eof = False
        self._reader = threading.Thread(target=self._read, name="joules-stream-stdin", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for line_no, raw in enumerate(self._stream, 1):
                if raw.strip():
                    self._queue.put(parse_line(raw, line_no, self.cfg))
                if self._stopping.is_set():
                    break
        finally:
            self._queue.put(_EOF)

    @property
    def exhausted(self) -> bool:
        return self._eof and not self._retries and self._queue.empty()

    def fetch(self, max_count: int, block_ms: int) -> list[Message]:
        out: list[Message] = []
        while self._retries and len(out) < max_count:
            out.append(self._retries.popleft())
        if out or self._eof:
            block_ms = 0
        while len(out) < max_count and not self._eof:
            try:
                item = self._queue.get(timeout=block_ms / 1000) if block_ms and not out else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _EOF:
                self._eof = True
                break
            out.append(item)
        if not out and self._stopping.is_set() and not self._eof:
            # The reader may be handing over the line it held when the stop came: take it, or its EOF.
            try:
                item = self._queue.get(timeout=STOP_GRACE_S)
            except queue.Empty:
                return out
            if item is _EOF:
                self._eof = True
            else:
                out.append(item)
        return out

    def stop_reading(self) -> None:
        """Read no further line; ``fetch`` still returns those already read."""
        self._stopping.set()

    def ack(self, messages: Sequence[Message]) -> None:
        pass  # nothing to tell stdin

    def retry_later(self, messages: Sequence[Message], error: str) -> None:
        self._retries.extend(replace(m, deliveries=m.deliveries + 1, last_error=error) for m in messages)

    def recover(self) -> None:
        pass  # stdin has no broker to lose

    def backlog(self) -> Backlog | None:
        return None  # no group, no lag: the producer is whatever writes to stdin

    def close(self) -> None:
        pass


class JsonlSink:
    """Outcomes as JSON lines on a text stream (stdout), flushed after every batch."""

    def __init__(self, out: IO[str], description: str = "stdout (JSONL)") -> None:
        self.description = description
        self._out = out

    def write(self, outcomes: Sequence[Outcome]) -> list[Written]:
        lines = [json.dumps(self._record(o), ensure_ascii=False, allow_nan=False) + "\n" for o in outcomes]
        self._out.write("".join(lines))
        self._out.flush()
        at = time.time() * 1000
        return [Written(new=True, at_ms=at) for _ in outcomes]

    @staticmethod
    def _record(o: Outcome) -> dict[str, Any]:
        m = o.message
        rec: dict[str, Any] = {"source_id": int(m.source_id) if m.source_id.isdigit() else m.source_id}
        if m.id is not None:
            rec["id"] = m.id
        r = o.result
        if not o.dead and o.completion is not None:
            rec.update(o.completion)
            rec["model"] = o.model
        elif not o.dead:
            rec["label"] = r.label
            rec["action"] = r.action
            rec["probabilities"] = {k: round(float(v), 6) for k, v in (r.probabilities or {}).items()}
            rec["model"] = o.model
        else:
            rec["reason"] = o.reason
            rec["deliveries"] = m.deliveries
            rec["original"] = m.original.get("line")
        return rec

    def close(self) -> None:
        pass

"""Redis Streams: the sink. Verdicts to the sink stream, dead letters to ``<source>:dead``.

Every append goes through the dedupe script (``dedupe.py``), so each source
message yields at most one entry however often it is delivered.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from joules.serve.stream.config import RedisEndpoint, StreamConfig
from joules.serve.stream.dedupe import MAX_FIELDS_PER_ENTRY, Append, AppendOnce, dedupe_key
from joules.serve.stream.messages import Outcome, Written, stream_id_ms
from joules.serve.stream.redis_streams import broker_errors, check_stream_key

DEAD_FIELDS = ("source_id", "reason", "deliveries", "group", "consumer")


class RedisStreamSink:
    """Verdicts to the sink stream, dead letters to ``<source>:dead``; each at most once per source message."""

    def __init__(
        self,
        *,
        sink_client: Any,
        sink: RedisEndpoint,
        dead_client: Any,
        dead: RedisEndpoint,
        source: RedisEndpoint,
        config: StreamConfig,
    ) -> None:
        self.sink = sink
        self.dead = dead
        self.source = source
        self.cfg = config
        self.description = f"{sink} (dead letters: {dead})"
        self._sink_writer = AppendOnce(sink_client, config.dedupe_ttl_s)
        self._dead_writer = (
            self._sink_writer if dead.same_server(sink) else AppendOnce(dead_client, config.dedupe_ttl_s)
        )
        check_stream_key(sink_client, sink, "sink")
        check_stream_key(dead_client, dead, "dead-letter stream")

    def write(self, outcomes: Sequence[Outcome]) -> list[Written]:
        appends = [self._append(o) for o in outcomes]
        results: list[Written | None] = [None] * len(outcomes)
        by_writer: dict[int, tuple[AppendOnce, list[int]]] = {}
        for i, o in enumerate(outcomes):
            writer = self._dead_writer if o.dead else self._sink_writer
            by_writer.setdefault(id(writer), (writer, []))[1].append(i)
        for writer, idx in by_writer.values():
            with broker_errors(f"writing to {self.sink if writer is self._sink_writer else self.dead}"):
                done = writer.append([appends[i] for i in idx])
            for i, r in zip(idx, done, strict=True):
                results[i] = Written(new=r.new, entry_id=r.entry_id, at_ms=stream_id_ms(r.entry_id))
        return [r for r in results if r is not None]

    def _append(self, o: Outcome) -> Append:
        m = o.message
        key = dedupe_key(self.source.stream, self.cfg.group, m.source_id)
        r = o.result
        if not o.dead and o.completion is not None:
            out: dict[str | bytes, Any] = {"source_id": m.source_id, **({"id": m.id} if m.id is not None else {})}
            for k, v in o.completion.items():
                out[k] = v if isinstance(v, (str, int, float)) else json.dumps(v, allow_nan=False)
            out["model"] = o.model
            return Append(stream=self.sink.stream, dedupe_key=key, fields=out, maxlen=self.cfg.sink_maxlen)
        if not o.dead:
            fields: dict[str | bytes, Any] = {"source_id": m.source_id}
            if m.id is not None:
                fields["id"] = m.id
            fields["label"] = r.label or ""
            if r.action is not None:
                fields["action"] = r.action
            probs = {k: round(float(v), 6) for k, v in (r.probabilities or {}).items()}
            fields["probabilities"] = json.dumps(probs, allow_nan=False)
            fields["model"] = o.model
            return Append(stream=self.sink.stream, dedupe_key=key, fields=fields, maxlen=self.cfg.sink_maxlen)
        return Append(stream=self.dead.stream, dedupe_key=key, fields=self._dead_fields(o))

    def _dead_fields(self, d: Outcome) -> dict[str | bytes, Any]:
        m = d.message
        fields: dict[str | bytes, Any] = {
            "source_id": m.source_id,
            "reason": d.reason or "",
            "deliveries": m.deliveries,
            "group": self.cfg.group,
            "consumer": self.cfg.consumer,
        }
        # The original fields, under their own names; one that collides with ours gets an "original." prefix.
        for n, (k, v) in enumerate(m.original.items()):
            if n >= MAX_FIELDS_PER_ENTRY:
                fields["original_fields_truncated"] = len(m.original)
                break
            name = k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)
            fields[f"original.{name}" if name in DEAD_FIELDS or name.startswith("original") else k] = v
        return fields

    def close(self) -> None:
        pass

"""``joules stream`` over a text-generation model: one completion per message, exactly once.

The consumer loop, its sources and sinks are the classifier's (``consumer.py``): a micro-batch is read,
each message becomes exactly one outcome, outcomes are written before the messages are acked, so a crash
in between only causes a redelivery, which the sink recognises. What changes is judging: each message's
``prompt`` (one user message through the chat template, as ``joules generate`` sends it; ``--raw``: text
to complete) or ``messages`` (a chat; a JSON string in a Redis field) becomes a
``GenerationRequest``, and the whole micro-batch goes to the engine at once (``Engine.generate_many``: its
completions share the running batch). A completion is written as ``text``, ``finish_reason``,
``prompt_tokens``, ``completion_tokens`` and its cost (``energy_j``, ``usd``, ``co2_g``); a message with no
usable prompt, one over the context, or a completion whose logits were not finite is a dead letter with
its reason. An engine that cannot run leaves the batch to be delivered again (``--max-attempts``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from joules.errors import EngineUnavailableError, InputError, JoulesError
from joules.meter import Cost
from joules.runtime.results import Prediction
from joules.serve.stream.base import Sink, Source
from joules.serve.stream.config import EndpointPlan, StreamConfig
from joules.serve.stream.consumer import StreamConsumer
from joules.serve.stream.messages import Message, Outcome, dead_letter, verdict
from joules.serve.stream.metrics import StreamMetrics
from joules.serve.stream.service import StreamOptions, serve_consumer

if TYPE_CHECKING:
    from joules.runtime.generation import Engine, GenerationRequest

log = logging.getLogger("joules.stream")


@dataclass(frozen=True, kw_only=True)
class GenerationSettings:
    """How each message's completion is sampled (greedy by default: a redelivery writes the same text)."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    prompt_field: str = "prompt"
    messages_field: str = "messages"
    raw: bool = False  # a prompt as plain text to complete; default: one user message through the chat template

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise InputError(f"max_tokens must be a whole number >= 1, got {self.max_tokens!r}")


class GenerationConsumer(StreamConsumer):
    """The stream consumer with completions for verdicts."""

    def __init__(
        self,
        engine: Engine,
        settings: GenerationSettings,
        source: Source,
        sink: Sink,
        config: StreamConfig,
        metrics: StreamMetrics | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.ref = f"{engine.name}:{engine.version}"
        self._attach(self.ref, source, sink, config, metrics)

    def _request(self, m: Message) -> GenerationRequest:
        from joules.runtime.generation import SamplingParams, encoded_request

        s = self.settings
        prompt, messages = m.fields.get(s.prompt_field), m.fields.get(s.messages_field)
        if isinstance(prompt, bytes):
            prompt = prompt.decode("utf-8", "surrogateescape")
        if isinstance(messages, (str, bytes)):
            try:
                messages = json.loads(messages)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise InputError(f"{s.messages_field!r} is not a JSON list of messages: {e}") from None
        if (prompt is None) == (messages is None):
            raise InputError(
                f"a message needs exactly one of {s.prompt_field!r} (text) or {s.messages_field!r} (a chat)"
            )
        params = SamplingParams(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, seed=s.seed)
        if messages is None and (not isinstance(prompt, str) or any("\udc80" <= ch <= "\udcff" for ch in prompt)):
            raise InputError(f"{s.prompt_field!r} must be UTF-8 text")
        return encoded_request(self.engine, prompt=prompt, messages=messages, params=params, raw=s.raw)

    def judge(self, batch: Sequence[Message]) -> tuple[list[Outcome], Cost, list[tuple[Message, str]]]:
        outcomes: dict[int, Outcome] = {}
        todo: dict[int, GenerationRequest] = {}
        for i, m in enumerate(batch):
            settled = self._unjudgeable(m)
            if settled is not None:
                outcomes[i] = settled
                continue
            try:
                todo[i] = self._request(m)
            except JoulesError as e:
                outcomes[i] = dead_letter(m, str(e))
        retry: list[tuple[Message, str]] = []
        cost = Cost()
        if todo:
            try:
                results = self.engine.generate_many(list(todo.values()))
            except EngineUnavailableError as e:
                log.error("the engine cannot run; %d messages will be delivered again: %s", len(todo), e)
                return [outcomes[i] for i in sorted(outcomes)], cost, [(batch[i], str(e)) for i in todo]
            for i, res in zip(todo, results, strict=True):
                m = batch[i]
                cost = cost + res.cost
                if res.finish_reason in ("error", "abort"):
                    reason = res.error or f"the completion ended with {res.finish_reason}"
                    if m.deliveries >= self.cfg.max_attempts or res.finish_reason == "error":
                        outcomes[i] = dead_letter(m, reason, Prediction.failed(reason, res.cost))
                    else:
                        retry.append((m, reason))
                    continue
                completion = res.fields()
                # The finish reason stands in for a label in the run's tallies.
                result = Prediction(label=res.finish_reason, cost=res.cost)
                outcomes[i] = verdict(m, result, self.ref, completion)
        return [outcomes[i] for i in sorted(outcomes)], cost, retry


def run_generation_stream(
    engine: Engine,
    settings: GenerationSettings,
    plan: EndpointPlan,
    config: StreamConfig,
    options: StreamOptions | None = None,
    *,
    stop: threading.Event | None = None,
    stdin: IO[bytes] | None = None,
    stdout: IO[str] | None = None,
) -> StreamMetrics:
    """Complete every message until ``stop`` is set (or a signal comes, or stdin ends)."""

    def consumer(source: Source, sink: Sink, metrics: StreamMetrics) -> StreamConsumer:
        return GenerationConsumer(engine, settings, source, sink, config, metrics)

    ref = f"{engine.name}:{engine.version}"
    return serve_consumer(
        consumer, ref, plan, config, options, doing="completing", stop=stop, stdin=stdin, stdout=stdout
    )

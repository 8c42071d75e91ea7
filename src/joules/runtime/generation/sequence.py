"""One request's state inside the engine (nano-vllm's ``sequence.py``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from joules.meter import Measurement
from joules.runtime.generation.request import GenerationDelta, GenerationRequest
from joules.runtime.generation.sampling import SamplingParams
from joules.runtime.generation.text import TextStream


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request: GenerationRequest
    prompt_ids: list[int]
    max_tokens: int  # resolved: the request's, or what the context leaves
    sink: Callable[[GenerationDelta], None]
    text: TextStream
    rng: np.random.Generator
    number: int  # admission order: the newest running sequence is preempted first
    output_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    slot: int | None = None
    computed: int = 0  # tokens whose keys and values are in the slot
    cached_tokens: int = 0  # of the prompt, taken from the prefix cache
    counts: dict[int, int] = field(default_factory=dict)  # completion token -> times generated
    seen: set[int] = field(default_factory=set)  # prompt and completion tokens, for the repetition penalty
    arrived: float = field(default_factory=time.perf_counter)
    last_token_at: float | None = None
    # (a step's measurement, this sequence's share of it), one per step it ran in: Measurement.of_shares prices it.
    charges: list[tuple[Measurement, float]] = field(default_factory=list)
    aborted: bool = False
    preemptions: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def params(self) -> SamplingParams:
        return self.request.params

    @property
    def length(self) -> int:
        """Prompt and completion tokens so far."""
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def pending(self) -> int:
        """Tokens still to run through the model before the next one can be sampled."""
        return self.length - self.computed

    def tokens(self, start: int, n: int) -> np.ndarray:
        """Tokens ``start .. start + n - 1`` of prompt + completion."""
        p = len(self.prompt_ids)
        if start + n <= p:
            return np.asarray(self.prompt_ids[start : start + n], dtype=np.int64)
        whole = self.prompt_ids + self.output_ids
        return np.asarray(whole[start : start + n], dtype=np.int64)

    def append(self, token: int) -> None:
        self.output_ids.append(token)
        self.counts[token] = self.counts.get(token, 0) + 1
        self.seen.add(token)

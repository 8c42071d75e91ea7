"""What a caller gives the engine and what it gets back."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from joules.errors import InputError
from joules.meter import Cost
from joules.runtime.generation.sampling import SamplingParams, TokenLogprob

# Why a completion ended (OpenAI's words where OpenAI has one).
STOP = "stop"  # an end-of-sequence token, a stop token id or a stop string
LENGTH = "length"  # max_tokens, or the context is full
ABORT = "abort"  # the caller aborted it (a client that went away)
ERROR = "error"  # the model produced something unusable (non-finite logits); see GenerationDelta.error


@dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    """One completion: exactly one of ``prompt`` (plain text), ``messages`` (a chat) or ``prompt_token_ids``."""

    prompt: str | None = None
    messages: Sequence[Mapping[str, Any]] | None = None
    prompt_token_ids: Sequence[int] | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    add_generation_prompt: bool = True  # chats: end the prompt with the assistant's turn header

    def __post_init__(self) -> None:
        given = [n for n in ("prompt", "messages", "prompt_token_ids") if getattr(self, n) is not None]
        if len(given) != 1:
            raise InputError(
                f"a generation request needs exactly one of prompt, messages or prompt_token_ids; got {given}"
            )
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise InputError(f"prompt must be a string, got {type(self.prompt).__name__}")
        if not isinstance(self.id, str) or not self.id:
            raise InputError(f"request id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.params, SamplingParams):
            raise InputError(f"params must be SamplingParams, got {type(self.params).__name__}")


@dataclass(frozen=True, kw_only=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens whose keys and values came from the prefix cache

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cached_tokens": self.cached_tokens,
        }


@dataclass(frozen=True, kw_only=True)
class GenerationDelta:
    """What one step added to one completion. The last delta has ``finish_reason``, ``usage`` and ``cost``."""

    request_id: str
    text: str = ""  # never splits a character; never holds any part of a stop string
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] | None = None  # one per token id, when the request asked for logprobs
    finish_reason: str | None = None
    usage: Usage | None = None
    cost: Cost | None = None  # this completion's share of every step it was part of
    error: str | None = None  # with finish_reason "error": what went wrong
    stop_reason: str | int | None = None  # the stop string or token id that ended it, if one did

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True, kw_only=True)
class GenerationResult:
    """A whole completion (the sync API gathers the deltas)."""

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    usage: Usage
    cost: Cost
    logprobs: tuple[TokenLogprob, ...] | None = None
    error: str | None = None
    stop_reason: str | int | None = None

    def fields(self) -> dict[str, Any]:
        """The completion as a batch output row and a stream verdict write it: text, why it ended, tokens, cost."""
        return {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
            "energy_j": self.cost.energy_j,
            "usd": self.cost.usd,
            "co2_g": self.cost.co2_g,
        }

    @classmethod
    def gather(cls, deltas: Sequence[GenerationDelta]) -> GenerationResult:
        last = deltas[-1] if deltas else None
        if last is None or last.finish_reason is None:
            raise ValueError("a result needs the deltas of a finished completion")
        logprobs = [lp for d in deltas for lp in (d.logprobs or ())] if any(d.logprobs for d in deltas) else None
        return cls(
            request_id=last.request_id,
            text="".join(d.text for d in deltas),
            token_ids=tuple(t for d in deltas for t in d.token_ids),
            finish_reason=str(last.finish_reason),
            usage=last.usage or Usage(prompt_tokens=0, completion_tokens=0),
            cost=last.cost or Cost(),
            logprobs=tuple(logprobs) if logprobs is not None else None,
            error=last.error,
            stop_reason=last.stop_reason,
        )

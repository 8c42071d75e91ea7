"""The model side of generation: one forward step over a batch of sequences.

The engine owns scheduling, sampling and which sequence lives in which KV
*slot*; a ``Decoder`` owns the weights and the KV cache memory and runs one
step: append each sequence's new tokens to its slot's cache and return the
logits the engine asked for. A prefill chunk and a decode token are the same
call with a different number of tokens, so a step may mix them (chunked
prefill beside running decodes).

Two implementations share this contract: ONNX Runtime in the serving process
(``joules.runtime.generation``) and tensor-parallel ranks (``joules.parallel``),
which is why it speaks numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from joules.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class DecoderConfig:
    """The shape of a decoder-only transformer, as the engine needs to know it."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_model_len: int  # longest sequence (prompt + completion) a slot holds
    dtype: str = "float32"  # of the KV cache

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"decoder {name} must be a whole number >= 1, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"decoder num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if not isinstance(self.max_model_len, int) or self.max_model_len < 2:
            raise ConfigError(f"max_model_len must be a whole number >= 2, got {self.max_model_len!r}")

    @property
    def kv_bytes_per_token(self) -> int:
        """Keys and values of one token over all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * np.dtype(self.dtype).itemsize


@dataclass(frozen=True, kw_only=True)
class StepSequence:
    """One sequence's part of a step."""

    slot: int  # the KV slot holding this sequence's cache
    start: int  # tokens already valid in the slot's cache: the position of tokens[0]
    tokens: np.ndarray  # int64 [n >= 1]: a prefill chunk, or the one token sampled last step
    # Logits of every new token ([n, vocab]: prompt logprobs, parity checks) instead of the last one ([vocab]).
    all_logits: bool = False
    extra: dict[str, object] = field(default_factory=dict)  # room for implementation hints; never required


class Decoder(Protocol):
    """Runs a decoder-only model over KV slots ``0 .. num_slots - 1``.

    Positions ``start .. start + n - 1`` of a slot are written by ``step``; a
    smaller ``start`` than before rewinds the slot (what lies past it is
    garbage and never read). Raises ``EngineUnavailableError`` when it can no
    longer run (a rank process died); the engine then fails every request fast.
    """

    config: DecoderConfig
    num_slots: int

    def step(self, seqs: Sequence[StepSequence]) -> list[np.ndarray]:
        """Append each sequence's tokens to its slot; float32 logits per sequence, in order."""
        ...

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        """Make ``dst``'s cache positions ``[0, length)`` equal to ``src``'s (prefix reuse, compaction)."""
        ...

    def close(self) -> None:
        """Release the weights, the cache and any process or thread the decoder started."""
        ...

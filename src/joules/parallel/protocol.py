"""What the caller and rank 0 say to each other, and rank 0 to the group (no torch, no pickle).

A request is a flat int64 array: ``[op, ...]``. A step is
``[STEP, n_parts, n_tokens, (slot, start, n, mode) * n_parts, tokens...]``;
rank 0 broadcasts the same bytes to every rank. A response from rank 0 is
``<status:int64><nbytes:int64>`` and ``nbytes`` of payload: float32 logits
rows for a step, JSON for ``READY`` and ``REPORT``, UTF-8 text for an error.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

OP_STEP, OP_COPY, OP_NOOP, OP_CLOSE, OP_REPORT = 1, 2, 3, 4, 5
STATUS_OK, STATUS_ERROR = 0, 1
RESPONSE_HEAD = struct.Struct("<qq")


def encode_step(parts: Sequence[tuple[int, int, int, int]], tokens: np.ndarray) -> bytes:
    head = np.array([OP_STEP, len(parts), tokens.size], dtype=np.int64)
    meta = np.asarray(parts, dtype=np.int64).reshape(-1)
    return head.tobytes() + meta.tobytes() + np.ascontiguousarray(tokens, dtype=np.int64).tobytes()


def encode_op(op: int, *args: int) -> bytes:
    return np.array([op, *args], dtype=np.int64).tobytes()


def decode(msg: bytes) -> tuple[int, np.ndarray]:
    """``(op, the int64 words after it)``."""
    words = np.frombuffer(msg, dtype=np.int64)
    return int(words[0]), words[1:]


def decode_step(words: np.ndarray) -> tuple[list[tuple[int, int, int, int]], np.ndarray]:
    n_parts, n_tokens = int(words[0]), int(words[1])
    meta = words[2 : 2 + 4 * n_parts].reshape(n_parts, 4)
    tokens = words[2 + 4 * n_parts : 2 + 4 * n_parts + n_tokens]
    parts = [(int(a), int(b), int(c), int(d)) for a, b, c, d in meta]
    return parts, tokens

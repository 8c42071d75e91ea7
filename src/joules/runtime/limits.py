"""The one default of each concept every mode shares, in one place.

``RuntimeOptions``, the server's ``BatchingConfig``/``ServeConfig``, ``BatchConfig``
and ``StreamConfig`` (and so the CLI flags that read them) take their defaults
from here, so "rows per model call" means the same number in every mode.
"""

from __future__ import annotations

from collections.abc import Iterable

from joules.errors import ConfigError

# Rows per model call: a cap the planner (planning.py) cuts under. Past ~32 rows of short texts
# a call's fixed overhead (about 33 token-rows on the MiniLM spam model) is already shared
# thinly, about 1 token a row, and a larger cap only lets long rows pad more.
MAX_CALL_ROWS = 32

# Padded tokens per model call (rows x longest row, text models): bounds how long one call
# holds the CPU, so a request never waits behind seconds of someone else's long rows. On CPU,
# rows of 128 tokens gain nothing from calls of more than a few rows (docs/benchmarks.md);
# 1024 allows 8 of them.
MAX_CALL_TOKENS = 1024

# Rows gathered before they are cut into model calls (the server's batch window, a stream
# micro-batch): two calls' worth, so the planner has rows of similar length to group.
WINDOW_ROWS = 2 * MAX_CALL_ROWS

# Admission's bound on one text, in UTF-8 bytes, in every mode. Long texts are cut before
# tokenizing (preprocess.py), so a 1 MiB text costs little; past the bound the row is refused.
MAX_TEXT_BYTES = 1 << 20

# Generative models. Longest prompt + completion a sequence may reach: the fp32 KV cache of SmolLM2 is about
# 46 KB a token, so a full sequence holds about 94 MB (a model whose context is shorter uses its own).
MAX_MODEL_LEN = 2048
# Sequences decoded together by continuous batching (KV slots): batched steps reuse each weight for every
# sequence, so aggregate tokens/s grows with it until the arithmetic, not the weights' bandwidth, binds.
MAX_NUM_SEQS = 64
# Tokens one engine step puts through the model: the running decodes first (one each), then prompt chunks
# with what is left (chunked prefill). It bounds how long a step holds every running stream: on 2 CPU cores a
# 240-token chunk is about half a second of inter-token latency for them; more gives prompts (and throughput)
# more of each step, less gives the running streams steadier tokens (docs/benchmarks.md measures the trade).
MAX_NUM_BATCHED_TOKENS = 256
# Computed prompts kept in reserved KV slots so that a later prompt starting the same way (a shared system
# prompt, a chat's history) copies their keys and values instead of computing them; 0 turns it off.
PREFIX_CACHE_SLOTS = 4


def check_step_budget(max_num_batched_tokens: int, max_num_seqs: int) -> None:
    """Every running decode takes one token of each step first: a budget under the running sequences could
    leave a prompt (or a preempted sequence's recompute) no token, step after step, while decodes fill it."""
    if max_num_batched_tokens < max_num_seqs:
        raise ConfigError(
            f"max_num_batched_tokens ({max_num_batched_tokens}) must be >= max_num_seqs ({max_num_seqs}): "
            "each running sequence takes a token of every step; raise --max-num-batched-tokens or lower "
            "--max-num-seqs"
        )


def check_whole_numbers(config: object, bounds: Iterable[tuple[str, int]]) -> None:
    """Each named attribute of ``config`` is an int (not a bool) >= its low bound; else a ConfigError naming it."""
    for name, low in bounds:
        v = getattr(config, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ConfigError(f"{name} must be a whole number >= {low}, got {v!r}")

"""Cut a batch of rows into model calls so padding and per-call overhead cost least.

Shared by the Predictor (every serving mode) and the online server's runner.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from joules.errors import ConfigError

# Cost of one model call in token-rows (the work of one row of one token), measured on
# the fp32 MiniLM spam model on an idle 2-vCPU machine: a call costs about 3.3 ms plus
# 0.1 ms per token-row (benchmarks/online/call_cost.py, docs/benchmarks.md), so a call is worth
# about 33 token-rows of padding.
CALL_OVERHEAD_TOKENS = 33.0


def plan_runs(
    lengths: Sequence[int],
    max_rows: int,
    *,
    max_tokens: int | None = None,
    call_overhead: float = CALL_OVERHEAD_TOKENS,
) -> list[list[int]]:
    """Cut rows into model calls so that padding and call overhead together cost least.

    A call of ``n`` rows padded to its longest row ``L`` costs ``call_overhead + n * L``
    token-rows. Rows are sorted by length and cut into contiguous runs of at most
    ``max_rows`` rows and ``max_tokens`` padded tokens (a longer row goes alone) by
    dynamic programming, exact for this cost. Returns row indices per call, shortest
    rows first.
    """
    if max_rows < 1:
        raise ConfigError(f"max_rows must be >= 1, got {max_rows}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sorted_len = [max(1, int(lengths[i])) for i in order]
    n = len(order)
    best = [0.0] * (n + 1)  # best[j]: cheapest cost of the first j sorted rows
    cut = [0] * (n + 1)  # cut[j]: where the last run of that plan starts
    for j in range(1, n + 1):
        longest = sorted_len[j - 1]
        best[j] = math.inf
        for i in range(j - 1, max(0, j - max_rows) - 1, -1):
            if max_tokens is not None and i < j - 1 and (j - i) * longest > max_tokens:
                break  # longer runs ending at j only get bigger
            cost = best[i] + call_overhead + (j - i) * longest
            if cost < best[j]:
                best[j], cut[j] = cost, i
    runs: list[list[int]] = []
    j = n
    while j > 0:
        runs.append(order[cut[j] : j])
        j = cut[j]
    runs.reverse()
    return runs

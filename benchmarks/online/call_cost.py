"""What one model call costs, as a fixed part plus a part per padded token-row.

The planner (`joules.runtime.planning.plan_runs`) cuts rows into model calls by
weighing padding against per-call overhead; its constant `CALL_OVERHEAD_TOKENS`
is the ratio of the two parts measured here. The script times the model (no
tokenizer) on synthetic batches of rows x tokens, interleaving the shapes in
rounds, and fits ``seconds = a + b * rows * tokens`` to the per-shape medians
by least squares on relative error (large shapes would otherwise decide the
fit alone, and attention makes them a little superlinear: see
``per_token_row_us``).

    JOULES_HOME=... .venv/bin/python benchmarks/online/call_cost.py --model spam --rounds 5
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time

import numpy as np

from joules.runtime import RuntimeOptions, load_predictor


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="spam")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rows", default="1,2,4,8,16,32")
    p.add_argument("--tokens", default="8,16,32,64,128")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    pred = load_predictor(args.model, options=RuntimeOptions(allow_spinning=False, intra_op_threads=args.threads))
    names = list(pred.executor.inputs)
    shapes = list(itertools.product(map(int, args.rows.split(",")), map(int, args.tokens.split(","))))
    rng = np.random.default_rng(0)

    def feeds(rows: int, tokens: int) -> dict[str, np.ndarray]:
        ids = rng.integers(1000, 20000, (rows, tokens), dtype=np.int64)
        ids[:, 0], ids[:, -1] = 101, 102
        out = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        return {k: v for k, v in out.items() if k in names}

    for shape in shapes:  # warm-up: one call per shape
        pred.executor.run(feeds(*shape))
    times: dict[tuple[int, int], list[float]] = {s: [] for s in shapes}
    for _ in range(args.rounds):
        for shape in shapes:
            f = feeds(*shape)
            t = time.perf_counter()
            pred.executor.run(f)
            times[shape].append(time.perf_counter() - t)
    x = np.array([r * t for r, t in shapes], dtype=np.float64)
    y = np.array([statistics.median(times[s]) for s in shapes])
    design = np.stack([np.ones_like(x), x], 1) / y[:, None]  # rows scaled by 1/y: relative residuals
    a, b = np.linalg.lstsq(design, np.ones_like(y), rcond=None)[0]
    out = {
        "model": pred.ref,
        "rounds": args.rounds,
        "fixed_ms": round(a * 1e3, 3),
        "per_token_row_ms": round(b * 1e3, 4),
        "call_overhead_token_rows": round(a / b, 1),
        "median_ms": {f"{r}x{t}": round(statistics.median(times[(r, t)]) * 1e3, 2) for r, t in shapes},
        "per_token_row_us": {f"{r}x{t}": round(statistics.median(times[(r, t)]) / (r * t) * 1e6, 1) for r, t in shapes},
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

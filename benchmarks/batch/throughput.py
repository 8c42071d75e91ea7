"""Predictor throughput on the 5,574 SMS messages, for several ways of cutting them into model calls.

Variants run interleaved in rounds, so a busy neighbour slows all of them alike;
figures are medians over rounds and ratios are taken within a round. Each
variant is ``rows[/tokens][:unsorted]``: at most ``rows`` rows and ``tokens``
padded tokens per model call; ``unsorted`` cuts the messages in file order
instead of planning calls over length-sorted rows.

    JOULES_HOME=... .venv/bin/python benchmarks/batch/throughput.py --model spam --rounds 3 \\
        --variants 1,8,32,64,32/1024,64/1024,64/2048,32:unsorted
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from joules.bench.stats import latency_summary_ms
from joules.runtime import RuntimeOptions, load_predictor

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "sms_spam_collection" / "SMSSpamCollection.tsv"


def options(variant: str, threads: int) -> RuntimeOptions:
    cut, _, order = variant.partition(":")
    rows, _, tokens = cut.partition("/")
    return RuntimeOptions(
        max_batch_size=int(rows),
        max_batch_tokens=int(tokens) if tokens else None,
        group_by_length=order != "unsorted",
        allow_spinning=False,
        intra_op_threads=threads,
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="spam")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", default="1,8,32,64,32/1024,64/1024,64/2048,32:unsorted")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--latency-samples", type=int, default=300)
    args = p.parse_args()
    texts = [line.rstrip("\n").split("\t", 1)[1] for line in DATA.open(encoding="utf-8")]
    variants = {v: load_predictor(args.model, options=options(v, args.threads)) for v in args.variants.split(",")}
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for name, pred in variants.items():
            t = time.perf_counter()
            pred.predict_texts(texts)
            rates[name].append(len(texts) / (time.perf_counter() - t))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()), file=sys.stderr)
    single = next(iter(variants.values()))
    lat = []
    for i in np.random.default_rng(0).integers(0, len(texts), args.latency_samples):
        t = time.perf_counter()
        single.predict_texts([texts[i]])
        lat.append(time.perf_counter() - t)
    base = next(iter(rates))
    out = {
        "model": single.ref,
        "messages": len(texts),
        "rounds": args.rounds,
        "msg_per_s": {k: round(statistics.median(v), 1) for k, v in rates.items()},
        f"ratio_to_{base}": {
            k: round(statistics.median([a / b for a, b in zip(v, rates[base], strict=True)]), 2)
            for k, v in rates.items()
        },
        # joules.bench's percentile rule (MLPerf LoadGen's), as every benchmark here reports it.
        "batch1_latency_ms": {q: round(v, 2) for q, v in latency_summary_ms(lat).items() if q.startswith("p")},
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Predictor throughput on the SMS messages: length grouping on vs off, and batch-1 latency.

Variants run interleaved in rounds, so a busy neighbour slows all of them alike;
the figures are medians over rounds and the ratios are taken within a round.

    JOULES_HOME=... .venv/bin/python bench/batch/throughput.py --model spam --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from joules.runtime import RuntimeOptions, load_predictor

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "sms_spam_collection" / "SMSSpamCollection.tsv"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="spam")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--latency-samples", type=int, default=300)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    texts = [line.rstrip("\n").split("\t", 1)[1] for line in DATA.open(encoding="utf-8")]
    variants = {
        "grouped": load_predictor(args.model, options=RuntimeOptions(max_batch_size=args.batch, allow_spinning=True)),
        "unsorted": load_predictor(
            args.model, options=RuntimeOptions(max_batch_size=args.batch, allow_spinning=True, group_by_length=False)
        ),
    }
    rng = np.random.default_rng(0)
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for name, pred in variants.items():
            t = time.perf_counter()
            pred.predict_texts(texts)
            rates[name].append(len(texts) / (time.perf_counter() - t))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f} msg/s" for k, v in rates.items()), file=sys.stderr)
    single = variants["grouped"]
    lat = []
    for i in rng.integers(0, len(texts), args.latency_samples):
        t = time.perf_counter()
        single.predict_texts([texts[i]])
        lat.append((time.perf_counter() - t) * 1e3)
    ratios = [g / u for g, u in zip(rates["grouped"], rates["unsorted"], strict=True)]
    out = {
        "model": single.ref,
        "messages": len(texts),
        "batch": args.batch,
        "grouped_msg_s": round(statistics.median(rates["grouped"]), 1),
        "unsorted_msg_s": round(statistics.median(rates["unsorted"]), 1),
        "grouping_speedup": round(statistics.median(ratios), 2),
        "batch1_latency_ms": {
            q: round(float(np.percentile(lat, v)), 2) for q, v in (("p50", 50), ("p90", 90), ("p99", 99))
        },
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

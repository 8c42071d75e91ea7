"""Tokens/s and inter-token latency through the generation Engine for N = 1, 2, 3 tensor-parallel ranks.

Unlike decode.py (the raw decoder), this goes through what the server runs:
``joules.serve.engines.open_generation_engine`` -> ``Engine`` (continuous
batching, sampling, detokenizing, metering) over ``TensorParallelDecoder``.
Each layout gets ``--requests`` greedy completions of ``--tokens`` tokens
(``ignore_eos``) from random 32-token prompts, submitted together with at most
``--batch`` running at once; the ONNX Runtime engine in process ("onnx") is the
reference row. Reported: tokens/s (completion tokens / wall time, prefills
included), the median time to first token, and the median and p90 inter-token
latency that the engine's observer saw (the same figures /metrics exports).

    JOULES_HOME=... .venv/bin/python benchmarks/parallel/engine.py [--model chat] [--batch 1,8] [--json]

The model is a registry reference in JOULES_HOME (default ``chat``: SmolLM2-135M-Instruct imported
from its GGUF; the version must hold safetensors, i.e. not an optimized variant).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

LAYOUTS: list[int | None] = [None, 1, 2, 3]  # None: ONNX Runtime in process


class _Latencies:
    def __init__(self) -> None:
        self.inter: list[float] = []
        self.first: list[float] = []

    def first_token(self, seconds: float) -> None:
        self.first.append(seconds)

    def inter_token(self, seconds: float) -> None:
        self.inter.append(seconds)


def measure(ref: str, tp: int | None, batches: list[int], requests: int, tokens: int) -> list[dict[str, object]]:
    from joules.registry import Registry
    from joules.runtime.generation import EngineConfig, GenerationRequest, SamplingParams
    from joules.serve.engines import ParallelOptions, open_generation_engine

    registry = Registry()
    mv = registry.get(ref)
    bundle = registry.load(f"{mv.name}:{mv.version}")
    config = EngineConfig(max_model_len=256, max_num_seqs=max(batches), prefix_cache_slots=0)
    t0 = time.perf_counter()
    engine = open_generation_engine(
        bundle, config, parallel=ParallelOptions(tensor_parallel=tp, restart_delay_s=None), settings=registry.settings
    )
    start_s = time.perf_counter() - t0
    rows = []
    try:
        rng = np.random.default_rng(0)
        vocab = engine.spec.vocab_size
        lat = _Latencies()
        engine.add_observer(lat)
        for batch in batches:
            # `batch` requests at a time, each group to its end: exactly `batch` sequences per decode step
            reqs = [
                GenerationRequest(
                    prompt_token_ids=[int(t) for t in rng.integers(0, vocab, 32)],
                    params=SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True),
                )
                for _ in range(requests)
            ]
            lat.inter.clear()
            lat.first.clear()
            t = time.perf_counter()
            for i in range(0, len(reqs), batch):
                engine.generate_many(reqs[i : i + batch])
            wall = time.perf_counter() - t
            inter = np.asarray(lat.inter) * 1e3
            rows.append(
                {
                    "tp": "onnx" if tp is None else tp,
                    "batch": batch,
                    "start_s": round(start_s, 1),
                    "tokens_per_s": round(requests * tokens / wall, 2),
                    "itl_ms_p50": round(float(np.median(inter)), 1),
                    "itl_ms_p90": round(float(np.percentile(inter, 90)), 1),
                    "ttft_ms_p50": round(float(np.median(lat.first)) * 1e3, 1),
                }
            )
    finally:
        engine.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="chat", help="registry reference (default chat)")
    ap.add_argument("--batch", default="1,8", help="sequences running together, comma-separated (default 1,8)")
    ap.add_argument("--requests", type=int, default=8, help="completions per batch size (default 8)")
    ap.add_argument("--tokens", type=int, default=32, help="tokens per completion (default 32)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    rows = [r for tp in LAYOUTS for r in measure(args.model, tp, batches, args.requests, args.tokens)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    head = f"{'N':>4} {'batch':>5} {'tok/s':>7} {'ITL p50 ms':>10} {'ITL p90 ms':>10}"
    print(f"{head} {'TTFT p50 ms':>11} {'start s':>7}")
    for r in rows:
        print(
            f"{r['tp']!s:>4} {r['batch']:>5} {r['tokens_per_s']:>7} {r['itl_ms_p50']:>10} {r['itl_ms_p90']:>10} "
            f"{r['ttft_ms_p50']:>11} {r['start_s']:>7}"
        )


if __name__ == "__main__":
    main()

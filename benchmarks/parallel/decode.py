"""Decode speed of the tensor-parallel decoder for N = 1, 2, 3 ranks, batches of 1 and 16 sequences.

The model has SmolLM2-135M's shape (30 layers, hidden 576, 9 query / 3 KV
heads, vocabulary 49152, tied embeddings) with random weights: speed does not
depend on the values. It is built once into --model (default
/tmp/joules-bench-smollm2-shape) unless a directory with config.json is given
(e.g. the `chat` bundle's path). For each layout it prefills every sequence
with 32 tokens, then times --steps decode steps: tokens/s = batch x steps /
time, and ms per step (inter-token latency of each sequence). The split runs
over shared memory (the default on one machine) and over gloo, and with the
embedding/LM head split by vocabulary (default) or replicated.

    .venv/bin/python benchmarks/parallel/decode.py [--model DIR] [--steps 16] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

LAYOUTS = [  # (tp, transport, vocab_parallel, threads per rank; None: cores // ranks)
    (1, "auto", True, None),
    (1, "auto", True, 1),
    (2, "shm", True, None),
    (2, "gloo", True, None),
    (2, "shm", False, None),
    (3, "shm", True, None),
    (3, "gloo", True, None),
]
BUILD = """
import sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                  num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                  rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
LlamaForCausalLM(cfg).to(torch.float32).save_pretrained(sys.argv[1])
"""


def ensure_model(path: Path) -> Path:
    if not (path / "config.json").is_file():
        print(f"building a random SmolLM2-shaped model in {path} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-c", BUILD, str(path)], check=True)
    return path


def measure(
    model: Path, tp: int, transport: str, vocab_parallel: bool, threads: int | None, steps: int
) -> dict[str, object]:
    from joules.parallel import TensorParallelDecoder
    from joules.runtime.generation import StepSequence

    rng = np.random.default_rng(0)
    row: dict[str, object] = {"tp": tp, "transport": transport, "vocab_parallel": vocab_parallel}
    t0 = time.perf_counter()
    with TensorParallelDecoder(
        model,
        tp=tp,
        transport=transport,
        vocab_parallel=vocab_parallel,
        threads_per_rank=threads,
        num_slots=16,
        max_model_len=256,
    ) as dec:
        row["start_s"] = round(time.perf_counter() - t0, 1)
        row["threads"] = dec.rank_stats[0]["threads"]
        row["weight_mib_per_rank"] = [round(s["weight_bytes"] / 2**20) for s in dec.rank_stats]
        row["rss_anon_mib_per_rank"] = [round(s["memory"]["RssAnon"] / 2**20) for s in dec.rank_stats]
        vocab = dec.config.vocab_size
        for batch in (1, 16):
            prompts = [rng.integers(0, vocab, 32) for _ in range(batch)]
            outs = dec.step([StepSequence(slot=i, start=0, tokens=p) for i, p in enumerate(prompts)])
            nxt = [int(np.argmax(o)) for o in outs]
            times = []
            for k in range(steps):
                t = time.perf_counter()
                outs = dec.step([StepSequence(slot=i, start=32 + k, tokens=np.array([nxt[i]])) for i in range(batch)])
                times.append(time.perf_counter() - t)
                nxt = [int(np.argmax(o)) for o in outs]
            med = float(np.median(times))
            row[f"b{batch}_ms_per_step"] = round(med * 1e3, 1)
            row[f"b{batch}_tokens_per_s"] = round(batch / med, 1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("/tmp/joules-bench-smollm2-shape"))
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    model = ensure_model(args.model)
    rows = [measure(model, tp, tr, vp, th, args.steps) for tp, tr, vp, th in LAYOUTS]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    head = f"{'N':>2} {'thr':>3} {'transport':<9} {'vocab':<10} {'b1 ms':>7} {'b1 tok/s':>8} {'b16 ms':>7}"
    print(f"{head} {'b16 tok/s':>9}  weights/rank MiB")
    for r in rows:
        vocab = "split" if r["vocab_parallel"] else "replicated"
        print(
            f"{r['tp']:>2} {r['threads']:>3} {r['transport']:<9} {vocab:<10} "
            f"{r['b1_ms_per_step']:>7} {r['b1_tokens_per_s']:>8} {r['b16_ms_per_step']:>7} "
            f"{r['b16_tokens_per_s']:>9}  {r['weight_mib_per_rank']}"
        )


if __name__ == "__main__":
    main()

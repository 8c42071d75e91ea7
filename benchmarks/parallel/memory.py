"""Per-rank memory of a model larger than one worker's cap: refused unsplit, served split.

Builds the acceptance script's random Llama (vocabulary 49152, hidden 1536,
FFN 4224, 28 layers, 12 heads, 6 KV heads, tied embeddings: 819 M parameters,
3.3 GB in float32) into --model unless it exists, then for each N asks for a
decoder under --cap: a refusal prints its message; a group prints, per rank,
the weights and KV bytes it holds and RssAnon, VmRSS, VmData (what
RLIMIT_DATA counts) and VmHWM (peak resident) read from /proc after loading
and after a 512-token prefill and 8 decode steps.

    .venv/bin/python benchmarks/parallel/memory.py [--model DIR] [--cap 2200M] [--tp 1 2 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BUILD = """
import sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=49152, hidden_size=1536, intermediate_size=4224, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=6, max_position_embeddings=2048,
                  tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
LlamaForCausalLM(cfg).to(torch.float32).save_pretrained(sys.argv[1])
"""
MIB = 2**20


def rank_lines(pids: list[int], stats: list[dict[str, Any]]) -> list[str]:
    from joules.parallel.memory import process_memory

    out = []
    for pid, s in zip(pids, stats, strict=True):
        m = process_memory(pid)
        out.append(
            f"  rank {s['rank']}: weights {s['weight_bytes'] // MIB} MiB, KV {s['kv_bytes'] // MIB} MiB | "
            f"RssAnon {m['RssAnon'] // MIB}, VmRSS {m['VmRSS'] // MIB}, VmData {m['VmData'] // MIB}, "
            f"VmHWM {m['VmHWM'] // MIB} MiB"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("/tmp/joules-bench-3g"))
    ap.add_argument("--cap", default="2200M")
    ap.add_argument("--tp", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--max-model-len", type=int, default=2048)
    args = ap.parse_args()
    if not (args.model / "config.json").is_file():
        print(f"building the 3.3 GB random model in {args.model} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-c", BUILD, str(args.model)], check=True)

    from joules.errors import ConfigError
    from joules.parallel import TensorParallelDecoder
    from joules.runtime.generation import StepSequence

    for tp in args.tp:
        t0 = time.perf_counter()
        try:
            dec = TensorParallelDecoder(args.model, tp=tp, max_model_len=args.max_model_len, max_worker_memory=args.cap)
        except ConfigError as e:
            print(f"N={tp}: refused in {time.perf_counter() - t0:.1f} s: {e}")
            continue
        with dec:
            print(f"N={tp}: loaded in {time.perf_counter() - t0:.0f} s, {dec.num_slots} KV slots, cap {args.cap}")
            print("\n".join(rank_lines(dec.pids, dec.rank_stats)))
            rng = np.random.default_rng(0)
            out = dec.step([StepSequence(slot=0, start=0, tokens=rng.integers(0, dec.config.vocab_size, 512))])
            t = time.perf_counter()
            for k in range(8):
                out = dec.step([StepSequence(slot=0, start=512 + k, tokens=np.array([int(np.argmax(out[0]))]))])
            print(f"  after a 512-token prefill and 8 decodes ({(time.perf_counter() - t) / 8 * 1e3:.0f} ms/token):")
            print("\n".join(rank_lines(dec.pids, dec.report())))


if __name__ == "__main__":
    main()

"""The two layouts of the decoder's float32 products, side by side: a decode step of N rows in each.

Builds two ``OnnxDecoder``s on one bundle in this process, one with the column layout (the default) and
one with ``batch_invariant`` (the bundle's layout only), fills N slots of each with a ``--prompt``-token
prefill, then runs ``--steps`` decode steps of N rows, alternating the two decoders step by step (so a
noisy machine slows both alike), and prints both medians and the median of the paired ratios. With N
outside the column layout's range both run the bundle's layout: the ratio is then about 1.

    JOULES_HOME=... .venv/bin/python benchmarks/generate/layouts.py --model chat --rows 2,4,8,16,32
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from joules.registry import Registry
from joules.runtime.executor import RuntimeOptions
from joules.runtime.generation.decoder import StepSequence
from joules.runtime.generation.onnx_decoder import OnnxDecoder, decoder_config
from joules.settings import load_settings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="chat")
    p.add_argument("--rows", default="2,4,8,12,16,24,32", help="comma-separated decode batch sizes")
    p.add_argument("--prompt", type=int, default=160, help="tokens in each row's cache before the steps")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    registry = Registry(load_settings())
    mv = registry.get(args.model)
    bundle = registry.load(f"{mv.name}:{mv.version}")
    assert bundle.spec.generation is not None, f"{args.model} is not a text-generation model"
    options = RuntimeOptions(intra_op_threads=args.threads, allow_spinning=True, spin_duration_us=100)
    print(f"{mv.name}:{mv.version}, cache {args.prompt}..{args.prompt + args.steps} tokens, {args.threads} threads")
    print("rows  column layout ms  bundle layout ms  paired ratio (bundle / column)  layout used")
    for rows in (int(r) for r in args.rows.split(",")):
        config = decoder_config(bundle.spec.generation, args.prompt + args.steps + 1)
        decoders = {
            invariant: OnnxDecoder(bundle.model_path, config, rows, options, batch_invariant=invariant)
            for invariant in (False, True)
        }
        rng = np.random.default_rng(0)
        for d in decoders.values():
            for slot in range(rows):
                d.step([StepSequence(slot=slot, start=0, tokens=rng.integers(0, 1000, args.prompt))])
        times: dict[bool, list[float]] = {False: [], True: []}
        for k in range(args.steps):
            tokens = rng.integers(0, 1000, rows)
            for invariant in (False, True) if k % 2 else (True, False):
                step = [StepSequence(slot=s, start=args.prompt + k, tokens=tokens[s : s + 1]) for s in range(rows)]
                t = time.perf_counter()
                decoders[invariant].step(step)
                times[invariant].append(time.perf_counter() - t)
        column, bundle_layout = statistics.median(times[False]), statistics.median(times[True])
        paired = statistics.median(b / c for b, c in zip(times[True], times[False], strict=True))
        used = decoders[False]._layout(rows)[0]
        print(f"{rows:4d}  {column * 1e3:16.1f}  {bundle_layout * 1e3:16.1f}  {paired:30.3f}  {used}")
        for d in decoders.values():
            d.close()


if __name__ == "__main__":
    main()

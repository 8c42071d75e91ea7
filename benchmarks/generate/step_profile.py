"""Where one decode step of the generation engine's decoder goes: ONNX Runtime's own per-node profile.

Fills ``--rows`` KV slots with a ``--prompt``-token prefill each (not profiled), then runs ``--steps``
decode steps of one token per row through ``OnnxDecoder`` with ONNX Runtime's profiler on, and prints
the median step time and, per operator type and per MatMul/Gemm shape, the milliseconds a step spends.

    JOULES_HOME=... .venv/bin/python benchmarks/generate/step_profile.py --model chat --rows 16
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from joules.bundle import Bundle
from joules.registry import Registry
from joules.runtime.executor import RuntimeOptions, choose_providers, session_options
from joules.runtime.generation.columns import column_graph
from joules.runtime.generation.decoder import StepSequence
from joules.runtime.generation.onnx_decoder import OnnxDecoder, decoder_config
from joules.settings import load_settings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="chat")
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--prompt", type=int, default=100, help="tokens in each row's cache before the steps")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-model-len", type=int, default=512)
    p.add_argument(
        "--batch-invariant", action="store_true", help="no column layout: every call runs the bundle's graph"
    )
    p.add_argument("--bundle", type=Path, help="profile this bundle directory instead of a registered --model")
    args = p.parse_args()

    if args.bundle:
        bundle = Bundle.load(args.bundle)
    else:
        registry = Registry(load_settings())
        mv = registry.get(args.model)
        bundle = registry.load(f"{mv.name}:{mv.version}")
    assert bundle.spec.generation is not None, f"{args.model} is not a text-generation model"
    config = decoder_config(bundle.spec.generation, args.max_model_len)
    options = RuntimeOptions(intra_op_threads=args.threads, allow_spinning=True, spin_duration_us=100)
    decoder = OnnxDecoder(bundle.model_path, config, args.rows, options, batch_invariant=args.batch_invariant)
    rng = np.random.default_rng(0)
    for slot in range(args.rows):
        decoder.step([StepSequence(slot=slot, start=0, tokens=rng.integers(0, 1000, args.prompt))])
    with tempfile.TemporaryDirectory() as tmp:
        so = session_options(options)
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        # The session the steps will run (the layout depends on the rows), again with the profiler on.
        layout, _ = decoder._layout(args.rows)
        if layout == "columns":
            graph = column_graph(bundle.model_path)
            assert graph is not None
            session, decoder._column_values = graph.session(so, choose_providers(options))
            decoder.columns = session
        else:
            session = decoder.session = ort.InferenceSession(
                str(bundle.model_path), so, providers=choose_providers(options)
            )
        decoder._bindings.clear()  # they belong to the sessions replaced
        times = []
        for k in range(args.steps):
            pos = args.prompt + k
            t = time.perf_counter()
            decoder.step([StepSequence(slot=s, start=pos, tokens=rng.integers(0, 1000, 1)) for s in range(args.rows)])
            times.append(time.perf_counter() - t)
        events = json.loads(Path(session.end_profiling()).read_text())
    step = statistics.median(times)
    print(
        f"{args.rows} rows, cache {args.prompt}..{args.prompt + args.steps} tokens, {args.threads} threads, "
        f"{layout} layout:"
    )
    print(f"  decode step median {step * 1e3:.1f} ms ({args.rows / step:.0f} tokens/s)")
    by_op: collections.Counter[str] = collections.Counter()
    by_shape: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        op = e["args"]["op_name"]
        by_op[op] += e["dur"]
        if op in ("MatMul", "FusedMatMul", "Gemm", "MatMulNBits"):
            shapes = [next(iter(s.values())) for s in e["args"].get("input_type_shape", [])]
            by_shape[f"{op} {shapes[:2]}"] += e["dur"]
    total = sum(by_op.values())
    print("  per operator type (ms a step, share of kernel time):")
    for op, us in by_op.most_common():
        print(f"    {op:34s} {us / 1e3 / args.steps:7.2f}  {100 * us / total:5.1f} %")
    print("  per matrix product shape:")
    for shape, us in by_shape.most_common(8):
        print(f"    {us / 1e3 / args.steps:7.2f}  {shape}")


if __name__ == "__main__":
    main()

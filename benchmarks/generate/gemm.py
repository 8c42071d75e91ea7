"""What one decode step's matrix products cost on this CPU, per weight format and rows (the 16-stream ceiling).

A decode step of SmolLM2-135M multiplies ``rows`` activation rows by every weight matrix of the model
once: per layer the fused q/k/v projection ``[576, 960]``, the output projection ``[576, 576]``, the
fused gate/up ``[576, 3072]`` and the down projection ``[1536, 576]``, then the tied output head
``[576, 49152]``: 0.27 GFLOP a row. step_profile.py puts these products at about 70 % of a 16-row step. This
script times exactly those products, with distinct weights per layer as in the real model (0.54 GB in
float32, so they stream from memory as in a real step, not from cache), side by side in one run:

- ``float32``: ONNX Runtime's MatMul and Gemm (MLAS), what joules serves by default;
- ``int8`` / ``int4`` at ``accuracy_level`` 4 (int8 activations per block of a row) and 1 (float32
  activations): ONNX Runtime's MatMulNBits, packed by joules' own weight-only pass (asymmetric, blocks
  of 32: the ``int8-asym`` / ``int4-asym`` variants of ``joules optimize``);
- ``w8a8``: int8 weights per column and uint8 activations per row, ONNX's MatMulInteger (the ``w8a8``
  variant; here the two inputs are quantized once each, where the model quantizes every product's input);
Each system runs in a process of its own, with the engine's session options (``RuntimeOptions``,
spinning 100 us after a call): sessions timed side by side in one process slow each other down (up to
1.4x here), and numpy's BLAS threads, spinning between calls, slowed every session beside them more
(numpy was also slower than MLAS on these shapes, so it is not a system here). Rounds are interleaved
(each round starts every system's process once and times ``--calls`` calls per row count); the median
over rounds of each round's median is reported:

    .venv/bin/python benchmarks/generate/gemm.py --rows 1,16,64 --threads 2 --rounds 5

Prints, per system and rows, the median milliseconds of one step's products, GFLOP/s, the weight bytes
read per second, and the tokens/s a step of only these products would allow (the ceiling for that
format at that many streams), then the JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from joules.optimize.passes.w8a8 import W8A8Quant
from joules.optimize.passes.weight_only import WeightOnlyQuant
from joules.runtime.executor import RuntimeOptions, session_options


def shapes(a: argparse.Namespace) -> list[tuple[str, int, int]]:
    """(name, K, N) of one layer's products (the model's fused layout)."""
    qkv = (a.heads + 2 * a.kv_heads) * a.head_dim
    return [
        ("qkv", a.hidden, qkv),
        ("o", a.heads * a.head_dim, a.hidden),
        ("gate_up", a.hidden, 2 * a.intermediate),
        ("down", a.intermediate, a.hidden),
    ]


def flops_per_row(a: argparse.Namespace) -> int:
    per_layer = sum(k * n for _, k, n in shapes(a))
    return 2 * (a.layers * per_layer + a.hidden * a.vocab)


def weights(a: argparse.Namespace) -> dict[str, np.ndarray]:
    """Random float32 weights, [K, N] per layer product and the head as [vocab, hidden] (tied, transB)."""
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    for i in range(a.layers):
        for name, k, n in shapes(a):
            out[f"{name}.{i}"] = (rng.standard_normal((k, n), dtype=np.float32) * 0.02).astype(np.float32)
    out["head"] = (rng.standard_normal((a.vocab, a.hidden), dtype=np.float32) * 0.02).astype(np.float32)
    return out


def build(a: argparse.Namespace, w: dict[str, np.ndarray], path: Path) -> None:
    """A graph of one step's products: inputs x (hidden wide) and h (intermediate wide), one output each."""
    nodes = []
    outputs = []
    for i in range(a.layers):
        for name, k, _ in shapes(a):
            src = "h" if k == a.intermediate else "x"
            nodes.append(helper.make_node("MatMul", [src, f"{name}.{i}"], [f"y.{name}.{i}"], name=f"mm.{name}.{i}"))
            outputs.append(f"y.{name}.{i}")
    nodes.append(helper.make_node("Gemm", ["x", "head"], ["logits"], transB=1, name="head"))
    outputs.append("logits")
    graph = helper.make_graph(
        nodes,
        "products",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", a.hidden]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, ["rows", a.intermediate]),
        ],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in w.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data")


def child(path: Path, rows: list[int], a: argparse.Namespace) -> None:
    """Time one model's session: print {rows: median seconds of --calls calls} as JSON."""
    options = RuntimeOptions(intra_op_threads=a.threads, allow_spinning=True, spin_duration_us=100)
    session = ort.InferenceSession(str(path), session_options(options), providers=["CPUExecutionProvider"])
    out: dict[int, float] = {}
    for r in rows:
        rng = np.random.default_rng(r)
        feeds = {
            "x": rng.standard_normal((r, a.hidden), dtype=np.float32),
            "h": rng.standard_normal((r, a.intermediate), dtype=np.float32),
        }
        for _ in range(2):  # first calls allocate
            session.run(None, feeds)
        times = []
        for _ in range(a.calls):
            t = time.perf_counter()
            session.run(None, feeds)
            times.append(time.perf_counter() - t)
        out[r] = statistics.median(times)
    print(json.dumps(out))


def weight_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + ".data")) if p.exists())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="1,16,64", help="comma-separated activation rows (streams in a step)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=10, help="timed calls per row count in each round")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--systems", default="float32,int8-acc4,int4-acc4,int4-acc1,w8a8")
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--intermediate", type=int, default=1536)
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--vocab", type=int, default=49152)
    a = p.parse_args()
    rows = [int(r) for r in a.rows.split(",")]
    systems = a.systems.split(",")

    if a.child:
        child(Path(a.child), rows, a)
        return

    times: dict[tuple[str, int], list[float]] = {(s, r): [] for s in systems for r in rows}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths: dict[str, Path] = {}
        base = Path(tmp) / "float32.onnx"
        build(a, weights(a), base)
        for s in systems:
            if s == "float32":
                paths[s] = base
            elif s == "w8a8":  # no smoothing: it changes the weights' values, not the products' cost
                paths[s] = Path(tmp) / f"{s}.onnx"
                W8A8Quant(smooth_alpha=0).write(base, paths[s])
            else:
                bits, acc = s.removeprefix("int").split("-acc")
                paths[s] = Path(tmp) / f"{s}.onnx"
                WeightOnlyQuant(bits=int(bits), accuracy_level=int(acc), symmetric=False).write(base, paths[s])
            sizes[s] = weight_bytes(paths[s])
        for _ in range(a.rounds):
            for s in systems:
                cmd = [sys.executable, __file__, "--child", str(paths[s]), *sys.argv[1:]]
                line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
                for r, t in json.loads(line).items():
                    times[(s, int(r))].append(t)

    flop = flops_per_row(a)
    results: list[dict[str, Any]] = []
    print(f"one step's products: {flop / 1e9:.3f} GFLOP a row, {a.threads} threads, median of {a.rounds} rounds")
    header = ("system", "rows", "ms", "GFLOP/s", "GB/s", "tok/s ceiling", "weights MB")
    print(f"{header[0]:12s} " + " ".join(f"{h:>{w}s}" for h, w in zip(header[1:], (5, 8, 8, 6, 14, 11), strict=True)))
    for r in rows:
        for s in systems:
            t = statistics.median(times[(s, r)])
            res = {
                "system": s,
                "rows": r,
                "ms": t * 1e3,
                "gflops": flop * r / t / 1e9,
                "weight_gb_per_s": sizes[s] / t / 1e9,
                "tokens_per_s_ceiling": r / t,
                "weight_mb": sizes[s] / 1e6,
            }
            results.append(res)
            print(
                f"{s:12s} {r:5d} {res['ms']:8.2f} {res['gflops']:8.1f} {res['weight_gb_per_s']:6.1f} "
                f"{res['tokens_per_s_ceiling']:14.0f} {res['weight_mb']:11.0f}"
            )
    print(json.dumps({"threads": a.threads, "rounds": a.rounds, "gflop_per_row": flop / 1e9, "results": results}))


if __name__ == "__main__":
    main()

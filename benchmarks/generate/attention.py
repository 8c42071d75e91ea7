"""What decode attention costs in ONNX Runtime on this CPU, written four ways (a measurement for the next kernel).

The profile of a 16-stream decode step (step_profile.py) puts ONNX Runtime's GroupQueryAttention at a fifth
of the step, about 32 us per row and layer whatever the cache length: its CPU kernel runs one small GEMM
per (row, query head) with the keys transposed and packed on every call. This script times one step's
attention (``--layers`` nodes, SmolLM2's shape by default: 9 query heads, 3 KV heads, head size 64) at
``--rows`` rows of one new token over ``--tokens`` cached positions in a ``--max-len`` buffer, four ways:

- ``gqa``: GroupQueryAttention as the decoder graph runs it (rotary inside, keys and values written in
  place into the shared past/present buffer);
- ``matmul-window``: standard operators over the first ``tokens`` positions of a read-only cache
  (Slice, MatMul with the keys transposed, masked Softmax, MatMul); the 3 query heads of a KV head go in
  one product, so each key is read once per row;
- ``matmul-kt-window``: the same with the keys stored transposed ([rows, kv, head, max_len]), so the
  first product needs no transpose;
- ``matmul-full``: the whole buffer with a mask, no Slice (no copy, more arithmetic).

The standard-operator ways leave out writing the new key and value into the cache (the caller would do
it: ``rows x layers`` small copies) and rotary, so they are a lower bound for that design.

    .venv/bin/python benchmarks/generate/attention.py --rows 16 --tokens 128 --threads 2

Prints a JSON line per way: the median milliseconds of a whole step's attention, and per row and layer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

MS = "com.microsoft"


def _model(nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any]) -> bytes:
    graph = helper.make_graph(nodes, "attention", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    return model.SerializeToString()


def build(way: str, a: argparse.Namespace) -> tuple[bytes, dict[str, np.ndarray]]:
    """A graph of ``layers`` attention nodes chained through their output, and the arrays to feed it."""
    b, nh, nkv, hd, n, t = a.rows, a.heads, a.kv_heads, a.head_size, a.max_len, a.tokens
    g = nh // nkv
    f = TensorProto.FLOAT
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {"x0": rng.standard_normal((b, 1, nh * hd), np.float32)}
    inputs = [helper.make_tensor_value_info("x0", f, [b, 1, nh * hd])]
    nodes: list[Any] = []
    inits: list[Any] = []
    h = "x0"
    if way == "gqa":
        feeds["kv_new"] = rng.standard_normal((b, 1, nkv * hd), np.float32)
        feeds["seqlens_k"] = np.full(b, t - 1, np.int32)
        feeds["total"] = np.array(t, np.int32)
        inputs += [
            helper.make_tensor_value_info("kv_new", f, [b, 1, nkv * hd]),
            helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [b]),
            helper.make_tensor_value_info("total", TensorProto.INT32, []),
        ]
        pos = np.arange(n)[:, None] * (1.0 / 10000 ** (np.arange(0, hd, 2) / hd))[None, :]
        inits += [
            helper.make_tensor("cos", f, [n, hd // 2], np.cos(pos).astype(np.float32).ravel()),
            helper.make_tensor("sin", f, [n, hd // 2], np.sin(pos).astype(np.float32).ravel()),
        ]
        outputs = []
        for i in range(a.layers):
            pk, pv = f"pk{i}", f"pv{i}"
            for name in (pk, pv):
                feeds[name] = rng.standard_normal((b, nkv, n, hd), np.float32)
                inputs.append(helper.make_tensor_value_info(name, f, [b, nkv, n, hd]))
                outputs.append(helper.make_tensor_value_info(f"o{name}", f, [b, nkv, n, hd]))
            nodes.append(
                helper.make_node(
                    "GroupQueryAttention",
                    [h, "kv_new", "kv_new", pk, pv, "seqlens_k", "total", "cos", "sin"],
                    [f"h{i}", f"opk{i}", f"opv{i}"],
                    domain=MS,
                    num_heads=nh,
                    kv_num_heads=nkv,
                    do_rotary=1,
                    scale=float(1 / np.sqrt(hd)),
                )
            )
            h = f"h{i}"
        outputs.insert(0, helper.make_tensor_value_info(h, f, [b, 1, nh * hd]))
        return _model(nodes, inputs, outputs, inits), feeds

    transposed = way == "matmul-kt-window"
    window = n if way == "matmul-full" else t
    mask = np.zeros((b, 1, 1, window), np.float32)
    mask[..., t:] = -np.inf  # matmul-full: positions past the rows' length are masked
    feeds["mask"] = mask
    inputs.append(helper.make_tensor_value_info("mask", f, [b, 1, 1, window]))
    inits += [
        helper.make_tensor("q_shape", TensorProto.INT64, [4], [b, nkv, g, hd]),
        helper.make_tensor("o_shape", TensorProto.INT64, [3], [b, 1, nh * hd]),
        helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
        helper.make_tensor("ends", TensorProto.INT64, [1], [t]),
        helper.make_tensor("scale", f, [], [float(1 / np.sqrt(hd))]),
    ]
    for i in range(a.layers):
        pk, pv = f"pk{i}", f"pv{i}"
        k_shape = [b, nkv, hd, n] if transposed else [b, nkv, n, hd]
        feeds[pk] = rng.standard_normal(k_shape, np.float32)
        feeds[pv] = rng.standard_normal((b, nkv, n, hd), np.float32)
        inputs += [
            helper.make_tensor_value_info(pk, f, k_shape),
            helper.make_tensor_value_info(pv, f, [b, nkv, n, hd]),
        ]
        k, v = pk, pv
        if way != "matmul-full":
            axis = [3] if transposed else [2]
            axes = f"axes{i}"
            inits.append(helper.make_tensor(axes, TensorProto.INT64, [1], axis))
            nodes.append(helper.make_node("Slice", [pk, "starts", "ends", axes], [f"k{i}"]))
            v_axes = f"vaxes{i}"
            inits.append(helper.make_tensor(v_axes, TensorProto.INT64, [1], [2]))
            nodes.append(helper.make_node("Slice", [pv, "starts", "ends", v_axes], [f"v{i}"]))
            k, v = f"k{i}", f"v{i}"
        nodes.append(helper.make_node("Reshape", [h, "q_shape"], [f"q{i}"]))
        if not transposed:
            nodes.append(helper.make_node("Transpose", [k], [f"kt{i}"], perm=[0, 1, 3, 2]))
            k = f"kt{i}"
        nodes += [
            helper.make_node("MatMul", [f"q{i}", k], [f"s{i}"]),
            helper.make_node("Mul", [f"s{i}", "scale"], [f"ss{i}"]),
            helper.make_node("Add", [f"ss{i}", "mask"], [f"sm{i}"]),
            helper.make_node("Softmax", [f"sm{i}"], [f"p{i}"], axis=-1),
            helper.make_node("MatMul", [f"p{i}", v], [f"a{i}"]),
            helper.make_node("Reshape", [f"a{i}", "o_shape"], [f"h{i}"]),
        ]
        h = f"h{i}"
    outputs = [helper.make_tensor_value_info(h, f, [b, 1, nh * hd])]
    return _model(nodes, inputs, outputs, inits), feeds


def time_way(way: str, a: argparse.Namespace) -> dict[str, Any]:
    model, feeds = build(way, a)
    onnx.checker.check_model(onnx.load_from_string(model))
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1")
    session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    io = session.io_binding()
    for name, arr in feeds.items():
        if name.startswith(("pk", "pv")) and way == "gqa":
            value = ort.OrtValue.ortvalue_from_numpy(arr)
            io.bind_ortvalue_input(name, value)
            io.bind_ortvalue_output("o" + name, value)  # shared past/present: written in place
            feeds[name] = value  # type: ignore[assignment]  # keep it alive
        else:
            io.bind_cpu_input(name, arr)
    io.bind_output(session.get_outputs()[0].name, "cpu")
    for _ in range(5):
        session.run_with_iobinding(io)
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        session.run_with_iobinding(io)
        times.append(time.perf_counter() - t0)
    ms = 1000 * statistics.median(times)
    return {
        "way": way,
        "rows": a.rows,
        "tokens": a.tokens,
        "max_len": a.max_len,
        "layers": a.layers,
        "threads": a.threads,
        "step_ms": round(ms, 3),
        "us_per_row_layer": round(1000 * ms / (a.rows * a.layers), 2),
    }


def add_step_arguments(p: argparse.ArgumentParser) -> None:
    """One decode step's attention: its shape (SmolLM2's by default), threads and repeats."""
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--tokens", type=int, default=128, help="cached positions each row attends to")
    p.add_argument("--max-len", type=int, default=512, help="positions in each row's cache buffer")
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--head-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=50)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_arguments(p)
    p.add_argument("--ways", default="gqa,matmul-window,matmul-kt-window,matmul-full")
    a = p.parse_args()
    for way in a.ways.split(","):
        print(json.dumps(time_way(way, a)), flush=True)


if __name__ == "__main__":
    main()

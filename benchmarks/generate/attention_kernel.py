"""What a fused decode-attention kernel would save against GroupQueryAttention (a prototype, measured).

attention.py showed that standard ONNX operators do not beat ONNX Runtime's GroupQueryAttention, whose CPU
kernel runs small products per (row, query head). This script measures the next step its findings name:
a kernel that does one row's query heads in one pass over that row's keys and values. It is written in C
below, compiled here with the system's ``cc`` (``-O3 -march=native -fopenmp``) and called through
ctypes once per layer, as an engine with attention outside the graph would call it. It does what
GroupQueryAttention does in the decoder graph: rotary on the new query and key (half-split, Llama's
layout), write the new key and value into the slot's cache in place, attend over the row's cached
positions, with the 3 query heads of a KV head sharing every key and value read. Rows × KV heads are split
over the threads (OpenMP).

It prints, side by side, for one decode step (``--layers`` attention calls over ``--rows`` rows of one
new token each, ``--tokens`` cached positions, a ``--max-len`` buffer, 2 threads):

- ``gqa``: GroupQueryAttention in an ONNX Runtime graph (attention.py's ``gqa`` way);
- ``c-plain``: the kernel in plain C (the compiler vectorises it), through ctypes, one call per layer;
- ``c-avx2``: the same kernel with AVX2 intrinsics (4 keys x 3 heads of dot products in registers per pass,
  values accumulated 32 dimensions x 3 heads at a time);
- ``session-calls``: the cost of the graph split that attention outside the graph needs: ``--layers``+1
  ONNX Runtime calls of a trivial graph with IOBinding, one per layer segment (the products themselves
  are not counted: they cost the same either way).

Before timing, each kernel's output is checked against GroupQueryAttention's on the same inputs (and the
cache it wrote against the graph's), so the times compare the same arithmetic.

    .venv/bin/python benchmarks/generate/attention_kernel.py --rows 16 --tokens 128 --threads 2

Needs a C compiler with OpenMP (gcc); this is a measurement, not part of joules' serving path.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

# What both kernels share: headers, and rotary (half-split, Llama's layout) of one head into ``y``, times ``scale``.
PRELUDE = r"""
#include <immintrin.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

static inline void rope(const float* x, const float* c, const float* s, float* y, int half, float scale) {
    for (int i = 0; i < half; i++) {
        float x1 = x[i], x2 = x[i + half];
        y[i] = (x1 * c[i] - x2 * s[i]) * scale;
        y[i + half] = (x2 * c[i] + x1 * s[i]) * scale;
    }
}
"""

# The kernels' shared opening: the signature, the rows x KV heads loop over the threads, and the new key
# (rotated) and value written into the cache at the row's last position; each kernel goes on from there.
ATTEND_HEAD = r"""void attend(const float* q_in, const float* k_new, const float* v_new, float* kpool, float* vpool,
            const int* lens, const float* cos_t, const float* sin_t, float* out,
            int rows, int nh, int nkv, int hd, int maxlen, float scale) {
    const int g = nh / nkv, half = hd / 2;
    #pragma omp parallel for schedule(static) collapse(2)
    for (int r = 0; r < rows; r++) {
        for (int j = 0; j < nkv; j++) {
            const int L = lens[r], pos = L - 1;
            const float* c = cos_t + (size_t)pos * half;
            const float* s = sin_t + (size_t)pos * half;
            float* K = kpool + ((size_t)(r * nkv + j) * maxlen) * hd;
            float* V = vpool + ((size_t)(r * nkv + j) * maxlen) * hd;
            rope(k_new + (size_t)(r * nkv + j) * hd, c, s, K + (size_t)pos * hd, half, 1.f);
            memcpy(V + (size_t)pos * hd, v_new + (size_t)(r * nkv + j) * hd, sizeof(float) * hd);
"""

KERNEL_PLAIN = (
    PRELUDE
    + r"""

/* One decode step's attention for one layer. q [rows, nh, hd], k_new/v_new [rows, nkv, hd],
   kpool/vpool [rows, nkv, maxlen, hd] (written at position lens[r]-1), cos/sin [maxlen, hd/2],
   out [rows, nh, hd]. Query head h uses KV head h / (nh / nkv). */
"""
    + ATTEND_HEAD
    + r"""            float q[8][256];
            for (int h = 0; h < g; h++) rope(q_in + ((size_t)r * nh + j * g + h) * hd, c, s, q[h], half, scale);
            float sc[8][L];
            float mx[8], sum[8], acc[8][256];
            for (int h = 0; h < g; h++) { mx[h] = -INFINITY; sum[h] = 0.f; memset(acc[h], 0, sizeof(float) * hd); }
            for (int t = 0; t < L; t++) {
                const float* kt = K + (size_t)t * hd;
                for (int h = 0; h < g; h++) {
                    float d = 0.f;
                    for (int i = 0; i < hd; i++) d += q[h][i] * kt[i];
                    sc[h][t] = d;
                    if (d > mx[h]) mx[h] = d;
                }
            }
            for (int h = 0; h < g; h++)
                for (int t = 0; t < L; t++) { sc[h][t] = expf(sc[h][t] - mx[h]); sum[h] += sc[h][t]; }
            for (int t = 0; t < L; t++) {
                const float* vt = V + (size_t)t * hd;
                for (int h = 0; h < g; h++) {
                    const float p = sc[h][t];
                    for (int i = 0; i < hd; i++) acc[h][i] += p * vt[i];
                }
            }
            for (int h = 0; h < g; h++) {
                float* o = out + ((size_t)r * nh + j * g + h) * hd;
                const float inv = 1.f / sum[h];
                for (int i = 0; i < hd; i++) o[i] = acc[h][i] * inv;
            }
        }
    }
}
"""
)

# The same contract with AVX2 intrinsics: 4 keys x 3 query heads of products in registers per pass, the
# values accumulated 32 dimensions x 3 heads at a time (SmolLM2's shape: 3 query heads per KV head).
KERNEL_AVX2 = (
    PRELUDE
    + r"""
static inline __m128 sum4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    __m256 t1 = _mm256_hadd_ps(a0, a1), t2 = _mm256_hadd_ps(a2, a3);
    __m256 t3 = _mm256_hadd_ps(t1, t2);
    return _mm_add_ps(_mm256_castps256_ps128(t3), _mm256_extractf128_ps(t3, 1));
}

/* Same contract as the plain kernel; the 3 query heads of a KV head (g == 3), hd % 32 == 0. */
"""
    + ATTEND_HEAD
    + r"""            float q[3][256] __attribute__((aligned(32)));
            for (int h = 0; h < 3; h++) rope(q_in + ((size_t)r * nh + j * g + h) * hd, c, s, q[h], half, scale);
            float sc[3][L + 4] __attribute__((aligned(32)));
            int t = 0;
            for (; t + 4 <= L; t += 4) {
                __m256 a[3][4];
                for (int h = 0; h < 3; h++) for (int k = 0; k < 4; k++) a[h][k] = _mm256_setzero_ps();
                for (int i = 0; i < hd; i += 8) {
                    __m256 q0 = _mm256_load_ps(&q[0][i]), q1 = _mm256_load_ps(&q[1][i]), q2 = _mm256_load_ps(&q[2][i]);
                    for (int k = 0; k < 4; k++) {
                        __m256 kv = _mm256_loadu_ps(K + (size_t)(t + k) * hd + i);
                        a[0][k] = _mm256_fmadd_ps(q0, kv, a[0][k]);
                        a[1][k] = _mm256_fmadd_ps(q1, kv, a[1][k]);
                        a[2][k] = _mm256_fmadd_ps(q2, kv, a[2][k]);
                    }
                }
                for (int h = 0; h < 3; h++) _mm_storeu_ps(&sc[h][t], sum4(a[h][0], a[h][1], a[h][2], a[h][3]));
            }
            for (; t < L; t++) {
                const float* kt = K + (size_t)t * hd;
                for (int h = 0; h < 3; h++) {
                    float d = 0.f;
                    for (int i = 0; i < hd; i++) d += q[h][i] * kt[i];
                    sc[h][t] = d;
                }
            }
            float inv[3];
            for (int h = 0; h < 3; h++) {
                float mx = -INFINITY, sum = 0.f;
                for (int u = 0; u < L; u++) mx = sc[h][u] > mx ? sc[h][u] : mx;
                for (int u = 0; u < L; u++) { sc[h][u] = expf(sc[h][u] - mx); sum += sc[h][u]; }
                inv[h] = 1.f / sum;
            }
            for (int i0 = 0; i0 < hd; i0 += 32) {
                __m256 acc[3][4];
                for (int h = 0; h < 3; h++) for (int k = 0; k < 4; k++) acc[h][k] = _mm256_setzero_ps();
                for (int u = 0; u < L; u++) {
                    const float* vt = V + (size_t)u * hd + i0;
                    __m256 v0 = _mm256_loadu_ps(vt), v1 = _mm256_loadu_ps(vt + 8);
                    __m256 v2 = _mm256_loadu_ps(vt + 16), v3 = _mm256_loadu_ps(vt + 24);
                    for (int h = 0; h < 3; h++) {
                        __m256 p = _mm256_broadcast_ss(&sc[h][u]);
                        acc[h][0] = _mm256_fmadd_ps(p, v0, acc[h][0]);
                        acc[h][1] = _mm256_fmadd_ps(p, v1, acc[h][1]);
                        acc[h][2] = _mm256_fmadd_ps(p, v2, acc[h][2]);
                        acc[h][3] = _mm256_fmadd_ps(p, v3, acc[h][3]);
                    }
                }
                for (int h = 0; h < 3; h++) {
                    float* o = out + ((size_t)r * nh + j * g + h) * hd + i0;
                    __m256 sv = _mm256_set1_ps(inv[h]);
                    for (int k = 0; k < 4; k++) _mm256_storeu_ps(o + 8 * k, _mm256_mul_ps(acc[h][k], sv));
                }
            }
        }
    }
}
"""
)


KERNELS = {"c-plain": KERNEL_PLAIN, "c-avx2": KERNEL_AVX2}


def compile_kernel(tmp: Path, source: str) -> ctypes.CDLL:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("no C compiler (cc/gcc) on PATH: this measurement needs one")
    src = tmp / "attend.c"
    lib = tmp / "attend.so"
    src.write_text(source)
    cmd = [cc, "-O3", "-march=native", "-ffast-math", "-fopenmp", "-shared", "-fPIC", str(src), "-o", str(lib), "-lm"]
    subprocess.run(cmd, check=True)
    so = ctypes.CDLL(str(lib))
    f = ctypes.POINTER(ctypes.c_float)
    i32 = ctypes.POINTER(ctypes.c_int)
    so.attend.argtypes = [f, f, f, f, f, i32, f, f, f] + [ctypes.c_int] * 5 + [ctypes.c_float]
    so.attend.restype = None
    return so


def _ptr(a: np.ndarray, kind: Any = ctypes.c_float) -> Any:
    return a.ctypes.data_as(ctypes.POINTER(kind))


def main() -> None:
    from attention import add_step_arguments  # the same step as attention.py, so build() takes these args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_arguments(p)
    p.add_argument("--way", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.heads != 3 * a.kv_heads or a.head_size > 256 or a.head_size % 32:
        raise SystemExit("the kernels take 3 query heads per KV head (SmolLM2's shape) and a head size of 32k <= 256")
    if a.way is None:  # each way in its own process: OpenMP's and ONNX Runtime's threads never meet
        for way in ("check", "gqa", *KERNELS, "session-calls"):
            # Idle OpenMP threads spin between calls, as ONNX Runtime's do here (allow_spinning): with
            # OMP_WAIT_POLICY=PASSIVE they sleep, and the 30 wake-ups a step cost the AVX2 kernel ~2 ms.
            env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
            env.setdefault("OMP_WAIT_POLICY", "ACTIVE")
            cmd = [sys.executable, __file__, "--way", way, *sys.argv[1:]]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
            print(out.strip().splitlines()[-1], flush=True)
        return
    print(json.dumps(run_way(a.way, a)), flush=True)


def run_way(way: str, a: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime as ort
    from attention import build  # the gqa graph and its inputs, as attention.py times it

    b, nh, nkv, hd, n, t = a.rows, a.heads, a.kv_heads, a.head_size, a.max_len, a.tokens
    base: dict[str, Any] = {"way": way, "rows": b, "tokens": t, "layers": a.layers, "threads": a.threads}
    pos = np.arange(n)[:, None] * (1.0 / 10000 ** (np.arange(0, hd, 2) / hd))[None, :]
    cos = np.ascontiguousarray(np.cos(pos).astype(np.float32))
    sin = np.ascontiguousarray(np.sin(pos).astype(np.float32))
    lens = np.full(b, t, np.int32)
    scale = float(1 / np.sqrt(hd))

    def gqa_session(layers: int) -> tuple[Any, dict[str, np.ndarray]]:
        args = argparse.Namespace(**{**vars(a), "layers": layers})
        model, feeds = build("gqa", args)
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "1")
        return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"]), feeds

    if way == "check":
        session, feeds = gqa_session(1)
        got = session.run(None, feeds)  # [h0, opk0, opv0] (not in place: plain run)
        ref = dict(zip([o.name for o in session.get_outputs()], got, strict=True))
        diffs: dict[str, dict[str, float]] = {}
        for name, source in KERNELS.items():
            k0, v0 = feeds["pk0"].copy(), feeds["pv0"].copy()
            with tempfile.TemporaryDirectory() as tmp:
                lib = compile_kernel(Path(tmp), source)
                q = np.ascontiguousarray(feeds["x0"].reshape(b, nh, hd))
                kv = np.ascontiguousarray(feeds["kv_new"].reshape(b, nkv, hd))
                out = np.empty((b, nh, hd), np.float32)
                lib.attend(
                    _ptr(q), _ptr(kv), _ptr(kv), _ptr(k0), _ptr(v0), _ptr(lens, ctypes.c_int),
                    _ptr(cos), _ptr(sin), _ptr(out), b, nh, nkv, hd, n, scale,
                )  # fmt: skip
            diffs[name] = {
                "out": float(np.abs(out.reshape(b, 1, nh * hd) - ref["h0"]).max()),
                "k": float(np.abs(k0[:, :, :t] - ref["opk0"][:, :, :t]).max()),
                "v": float(np.abs(v0[:, :, :t] - ref["opv0"][:, :, :t]).max()),
            }
            if max(diffs[name].values()) > 1e-4:
                raise SystemExit(f"{name} does not match GroupQueryAttention: {diffs[name]}")
        return {**base, "max_abs_diff": diffs}

    times: list[float] = []
    if way == "gqa":
        session, feeds = gqa_session(a.layers)
        io = session.io_binding()
        keep = []
        for name, arr in feeds.items():
            if name.startswith(("pk", "pv")):
                value = ort.OrtValue.ortvalue_from_numpy(arr)
                io.bind_ortvalue_input(name, value)
                io.bind_ortvalue_output("o" + name, value)
                keep.append(value)
            else:
                io.bind_cpu_input(name, arr)
        io.bind_output(session.get_outputs()[0].name, "cpu")
        for _ in range(5):
            session.run_with_iobinding(io)
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            session.run_with_iobinding(io)
            times.append(time.perf_counter() - t0)
    elif way in KERNELS:
        with tempfile.TemporaryDirectory() as tmp:
            lib = compile_kernel(Path(tmp), KERNELS[way])
        rng = np.random.default_rng(0)
        q = rng.standard_normal((b, nh, hd), np.float32)
        kv = rng.standard_normal((b, nkv, hd), np.float32)
        pools = [rng.standard_normal((b, nkv, n, hd), np.float32) for _ in range(2 * a.layers)]
        out = np.empty((b, nh, hd), np.float32)
        calls = [
            (_ptr(q), _ptr(kv), _ptr(kv), _ptr(pools[2 * i]), _ptr(pools[2 * i + 1]), _ptr(lens, ctypes.c_int),
             _ptr(cos), _ptr(sin), _ptr(out), b, nh, nkv, hd, n, scale)
            for i in range(a.layers)
        ]  # fmt: skip
        for _ in range(5):
            for c in calls:
                lib.attend(*c)
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            for c in calls:
                lib.attend(*c)
            times.append(time.perf_counter() - t0)
    elif way == "session-calls":
        from onnx import TensorProto, helper

        f = TensorProto.FLOAT
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "segment",
            [helper.make_tensor_value_info("x", f, [b, 1, nh * hd])],
            [helper.make_tensor_value_info("y", f, [b, 1, nh * hd])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.add_session_config_entry("session.intra_op.allow_spinning", "1")
        session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        x = np.zeros((b, 1, nh * hd), np.float32)
        y = np.empty_like(x)
        io = session.io_binding()
        for _ in range(5):
            io.bind_cpu_input("x", x)
            io.bind_output("y", "cpu", 0, np.float32, list(y.shape), y.ctypes.data)
            session.run_with_iobinding(io)
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            for _ in range(a.layers + 1):  # each segment rebinds its input and output, as an engine would
                io.bind_cpu_input("x", x)
                io.bind_output("y", "cpu", 0, np.float32, list(y.shape), y.ctypes.data)
                session.run_with_iobinding(io)
            times.append(time.perf_counter() - t0)
    else:
        raise SystemExit(f"unknown way {way!r}")
    ms = 1000 * statistics.median(times)
    return {**base, "step_ms": round(ms, 3), "us_per_row_layer": round(1000 * ms / (b * a.layers), 2)}


if __name__ == "__main__":
    main()

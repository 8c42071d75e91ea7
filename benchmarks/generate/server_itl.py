"""Inter-token latency of one stream: through `joules serve` (SSE, /v1/completions) vs the engine in-process.

The issue's target: through the server, within 10 % of in-process at one stream. Same model, same
threads, same prompt, greedy, ``--tokens`` new tokens with end-of-sequence ignored; ``--rounds``
streams each way, alternated (in-process, server, in-process, ...) so that a machine that gets busier
affects both alike. Inter-token latency is the time between two consecutive tokens as the consumer sees
them: the engine's deltas in-process, the SSE events through HTTP (each event is one token here: a
byte-level tokenizer may hold a token back to finish a character, which only merges two gaps).

    .venv/bin/python benchmarks/generate/server_itl.py --model chat --threads 2

Prints a JSON line: p50 / mean inter-token latency (ms) each way and the ratio server / in-process.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def in_process(engine: Any, tokens: int) -> list[float]:
    from joules.runtime.generation import GenerationRequest, SamplingParams

    req = GenerationRequest(prompt=PROMPT, params=SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True))
    times = [time.perf_counter() for d in engine.stream(req) if d.token_ids]
    return gaps(times)


def through_server(url: str, model: str, tokens: int) -> list[float]:
    import httpx

    body = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    times = []
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: {") and '"finish_reason":null' in line:
                times.append(time.perf_counter())
    return gaps(times)


def summary(xs: list[float]) -> dict[str, float]:
    return {"p50_ms": statistics.median(xs) * 1000, "mean_ms": statistics.fmean(xs) * 1000, "n": len(xs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="chat")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from joules.cli.engines import generation_bundle
    from joules.runtime.generation import EngineConfig
    from joules.runtime.options import RuntimeOptions
    from joules.serve.engines import open_generation_engine

    found = generation_bundle(args.model)
    if found is None:
        raise SystemExit(f"{args.model} is not a text-generation model")
    registry, mv, bundle = found
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "joules.cli.main",
            "serve",
            args.model,
            "--port",
            str(port),
            "--threads",
            str(args.threads),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    engine = None
    try:
        import httpx

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            raise SystemExit("the server was not ready in 300 s")
        # The server's engine options: the same threads and spinning (ServeConfig.generation_options).
        engine = open_generation_engine(
            bundle,
            EngineConfig(max_model_len=min(2048, bundle.spec.generation.context_length)),
            options=RuntimeOptions(intra_op_threads=args.threads, allow_spinning=True, spin_duration_us=100),
            settings=registry.settings,
            name=mv.name,
            version=mv.version,
        )
        in_process(engine, 8)  # warm both
        through_server(url, args.model, 8)
        local: list[float] = []
        remote: list[float] = []
        for _ in range(args.rounds):
            local += in_process(engine, args.tokens)
            remote += through_server(url, args.model, args.tokens)
    finally:
        if engine is not None:
            engine.close()
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    a, b = summary(local), summary(remote)
    print(
        json.dumps(
            {
                "model": mv.ref,
                "threads": args.threads,
                "tokens": args.tokens,
                "rounds": args.rounds,
                "in_process": a,
                "server": b,
                "ratio_p50": b["p50_ms"] / a["p50_ms"],
                "ratio_mean": b["mean_ms"] / a["mean_ms"],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a text-generation model costs per million tokens, measured on this machine (``joules cost CHAT``).

A fixed set of chat prompts (or the lines of ``--data``) is run through the engine together, as a server's
running batch would run them, ``rounds`` times; each completion is metered with its share of every step
(``joules.meter``), and the median round's totals are divided by its tokens. Per million completion tokens
is the figure to compare (prompt tokens are cheaper: a whole prompt goes through the model in one step), and
it depends on the batch: a lone stream pays for every weight read alone (see docs/generate.md).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from joules.meter import Cost
from joules.meter.report import J_PER_KWH

if TYPE_CHECKING:
    from joules.runtime.generation import Engine

PROMPTS = (
    "What is the capital of France? Answer in one sentence.",
    "Write two sentences about the sea.",
    "Give me three tips for a good night's sleep.",
    "Explain what a battery does, briefly.",
    "Tell me a very short story about a cat.",
    "What is 12 times 12?",
    "Name three colours of the rainbow.",
    "Why is the sky blue? One sentence.",
)


def prompts_from(path: Path | None, samples: int) -> list[str]:
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path else []
    texts = texts or list(PROMPTS)
    return [texts[i % len(texts)] for i in range(samples)]


def measure_tokens(engine: Engine, prompts: list[str], *, max_tokens: int, rounds: int) -> dict[str, Any]:
    """The median round's cost, tokens and time, with every prompt of a round in the running batch at once."""
    from joules.runtime.generation import GenerationRequest, SamplingParams

    results: list[dict[str, Any]] = []
    for _ in range(rounds):
        requests = [
            GenerationRequest(
                messages=[{"role": "user", "content": p}],
                params=SamplingParams(max_tokens=max_tokens, temperature=0.0),
            )
            for p in prompts
        ]
        started = time.perf_counter()
        done = engine.generate_many(requests)
        seconds = time.perf_counter() - started
        total = Cost()
        for r in done:
            total = total + r.cost
        results.append(
            {
                "cost": total,
                "prompt_tokens": sum(r.usage.prompt_tokens for r in done),
                "completion_tokens": sum(r.usage.completion_tokens for r in done),
                "seconds": seconds,
            }
        )
    energies = [r["cost"].energy_j for r in results]
    return results[energies.index(statistics.median_low(energies))]


def token_report(round_: dict[str, Any], *, per_day: float | None, model: str, concurrency: int) -> dict[str, Any]:
    cost: Cost = round_["cost"]
    completion = max(1, round_["completion_tokens"])
    per_m = 1e6 / completion
    out: dict[str, Any] = {
        "model": model,
        "method": cost.method,
        "how": cost.how,
        "concurrency": concurrency,
        "prompt_tokens": round_["prompt_tokens"],
        "completion_tokens": round_["completion_tokens"],
        "completion_tokens_per_s": round_["completion_tokens"] / round_["seconds"] if round_["seconds"] > 0 else 0.0,
        "per_million_completion_tokens": {
            "energy_j": cost.energy_j * per_m,
            "kwh": cost.energy_j * per_m / J_PER_KWH,
            "usd": cost.usd * per_m,
            "co2_g": cost.co2_g * per_m,
            "cpu_hours": cost.cpu_s * per_m / 3600.0,
        },
    }
    if per_day is not None:
        day = per_day / completion
        out["per_day"] = {
            "completion_tokens": per_day,
            "kwh": cost.energy_j * day / J_PER_KWH,
            "usd": cost.usd * day,
            "co2_kg": cost.co2_g * day / 1000.0,
        }
        out["per_year"] = {k: v * 365 for k, v in out["per_day"].items()}
    return out

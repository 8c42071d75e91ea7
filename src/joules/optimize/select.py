"""Pick the variant to register: the best by the objective among those within the F1 budget.

Pure functions over plain numbers, so the rules are tested on synthetic
measurements. The rules, in order:

1. a variant qualifies when its validation F1 is at most ``max_f1_drop`` points
   (1 point = 0.01) below the original's;
2. it must also beat the original on the objective, or registering it gains nothing;
3. variants whose outputs depend on the rows batched with them (dynamic
   quantization computes activation scales per batch) are set aside while a
   qualifying variant without that exists, since under dynamic batching they
   make a served prediction non-deterministic;
4. the best remaining by the objective wins; if none is left, none is chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from joules.errors import ConfigError


class Objective(StrEnum):
    THROUGHPUT = "throughput"  # messages per second at batch 32, higher is better
    LATENCY = "latency"  # p50 milliseconds at batch 1, lower is better
    ENERGY = "energy"  # modelled joules per 1,000 predictions, lower is better


def parse_objective(value: str | Objective) -> Objective:
    try:
        return Objective(value)
    except ValueError:
        raise ConfigError(f"objective {value!r} is not one of {[str(o) for o in Objective]}") from None


@dataclass(frozen=True, kw_only=True)
class Score:
    """What selection looks at for one model."""

    name: str
    validation_f1: float
    throughput: float
    latency_p50_ms: float
    energy_per_1000_j: float
    batch_dependence: float = 0.0  # largest change of a probability when the batch changes

    def value(self, objective: Objective) -> float:
        """Higher is better."""
        if objective is Objective.THROUGHPUT:
            return self.throughput
        if objective is Objective.LATENCY:
            return -self.latency_p50_ms
        return -self.energy_per_1000_j


@dataclass(frozen=True)
class Selection:
    chosen: str | None
    verdicts: dict[str, str]  # every variant: why it was or was not chosen
    message: str


def select(
    variants: Sequence[Score],
    *,
    original: Score,
    max_f1_drop: float,
    objective: Objective,
    batch_tolerance: float = 1e-3,
    allow_batch_dependent: bool = False,
) -> Selection:
    """Apply the rules in the module docstring; ``max_f1_drop`` is in F1 points."""
    if max_f1_drop < 0:
        raise ConfigError(f"max_f1_drop must be >= 0 F1 points, got {max_f1_drop}")
    verdicts: dict[str, str] = {}
    better: list[Score] = []
    for v in variants:
        drop = (original.validation_f1 - v.validation_f1) * 100
        if drop > max_f1_drop + 1e-9:
            verdicts[v.name] = f"over budget: validation F1 drop {drop:.2f} > {max_f1_drop:g} points"
        elif v.value(objective) <= original.value(objective):
            verdicts[v.name] = f"within budget (drop {drop:.2f}) but no better than the original on {objective}"
        else:
            verdicts[v.name] = f"within budget (drop {drop:.2f} points)"
            better.append(v)
    steady = [v for v in better if v.batch_dependence <= batch_tolerance]
    pool = better if allow_batch_dependent or not steady else steady
    if not allow_batch_dependent and steady:
        for v in better:
            if v not in steady:
                verdicts[v.name] = (
                    f"within budget, but a probability moves by up to {v.batch_dependence:.3f} with the rows "
                    f"batched around it; set aside for variants without that"
                )
    if not pool:
        return Selection(
            None,
            verdicts,
            f"no variant is within the budget of {max_f1_drop:g} F1 points and better than the original "
            f"on {objective}; nothing registered",
        )
    best = max(pool, key=lambda v: v.value(objective))
    verdicts[best.name] = "chosen: " + verdicts[best.name]
    note = ""
    if best.batch_dependence > batch_tolerance:
        note = f"; its probabilities move by up to {best.batch_dependence:.3f} with the rows batched around it"
    return Selection(best.name, verdicts, f"chosen {best.name}: the best {objective} within the budget{note}")

"""Build recipes into variant bundles, each distinct chain of passes once.

Prefixes are memoised: ``fuse`` is built once for every variant that starts
with it. Training passes get a share of the time left in the run's budget
(what is left, less what measuring the variants will need, split over the
training passes not yet run), and are skipped with the reason when that share
is too small to be worth starting.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from joules.bundle import Bundle
from joules.errors import PassFailed, PassSkipped
from joules.optimize.passes.base import PassContext, describe
from joules.optimize.plan import TRAINING_PASSES, Recipe

log = logging.getLogger("joules.optimize")


@dataclass(frozen=True)
class Built:
    bundle: Bundle
    steps: list[dict[str, Any]]  # one {"pass", "settings", "details", "seconds"} per step


def step_key(step: Any) -> str:
    """A pass's identity for memoising: its name and settings, without the run's time limit."""
    d = describe(step)
    d["settings"].pop("max_seconds", None)
    return json.dumps(d, sort_keys=True, default=str)


@dataclass
class Builder:
    root: Bundle
    ctx: PassContext
    plan: list[Recipe]
    # Seconds to keep back for measuring the variants (recomputed as variants are built).
    reserve: Callable[[], float] = lambda: 0.0
    min_train_seconds: float = 20.0
    _built: dict[tuple[str, ...], Built] = field(default_factory=dict)
    # Chains that did not build, with the error to raise again for every recipe sharing them:
    # PassSkipped (does not apply) or PassFailed (raised something else).
    _failed: dict[tuple[str, ...], PassSkipped | PassFailed] = field(default_factory=dict)

    def _training_left(self) -> int:
        pending = set()
        for r in self.plan:
            for i, step in enumerate(r.steps):
                if isinstance(step, TRAINING_PASSES):
                    key = tuple(step_key(s) for s in r.steps[: i + 1])
                    if key not in self._built and key not in self._failed:
                        pending.add(key)
        return len(pending)

    def _time_limit(self, step: Any) -> Any:
        if not isinstance(step, TRAINING_PASSES):
            return step
        left = self.ctx.seconds_left()
        if left is None:
            return step
        reserve = self.reserve()
        share = (left - reserve) / max(1, self._training_left())
        if share < self.min_train_seconds:
            raise PassSkipped(
                f"the time budget is spent: {max(0.0, left):.0f} s left, {reserve:.0f} s of it "
                "kept for measuring the variants (raise --budget-minutes)"
            )
        return replace(step, max_seconds=math.floor(share))

    def build(self, recipe: Recipe, *, steps: tuple[Any, ...] | None = None) -> Built:
        """The bundle at the end of ``steps`` (the recipe's by default).

        Raises PassSkipped when a step does not apply and PassFailed (chained to the
        original error) when a step raises anything else.
        """
        chain = recipe.steps if steps is None else steps
        current = Built(self.root, [])
        for i, step in enumerate(chain):
            key = tuple(step_key(s) for s in chain[: i + 1])
            if key in self._failed:
                known = self._failed[key]
                raise type(known)(str(known))
            if key in self._built:
                current = self._built[key]
                continue
            digest = hashlib.sha256("|".join(key).encode()).hexdigest()[:12]
            out = self.ctx.workdir / f"{step.name}-{digest}"
            try:
                limited = self._time_limit(step)
                log.info("%s: running %s", recipe.name, step.name)
                result = limited(current.bundle, out, self.ctx)
            except PassSkipped as e:
                self._failed[key] = PassSkipped(f"{step.name}: {e}")
                raise self._failed[key] from e
            except Exception as e:
                # Not "does not apply": a bug or a broken input. The run goes on with the other
                # recipes (one failing pass must not lose a long run) and reports this as failed.
                self._failed[key] = PassFailed(f"{step.name}: {type(e).__name__}: {e}")
                raise self._failed[key] from e
            record = {**describe(limited), "details": result.details, "seconds": round(result.seconds, 1)}
            current = Built(result.bundle, [*current.steps, record])
            self._built[key] = current
            log.info("%s: %s done in %.1f s", recipe.name, step.name, result.seconds)
        return current

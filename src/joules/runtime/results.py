"""One result row for every serving mode.

A ``Prediction`` is what one input row became: a label, its probabilities and
the action the rules chose, with the row's share of what the model call cost;
or, when the row could not become a label (its input was refused, or the
model's output for it is not finite), only the reason. Online, batch, stream
and ``joules predict`` all hand these rows to their adapters, which encode
them for the wire (V2 tensors, /v1 JSON, CSV columns, stream fields) but never
reshape what a row means.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from joules.meter import Cost

# The reason a row whose model output holds NaN or an infinity gets, in every mode: such scores
# cannot be ranked, so neither a label (argmax of NaN is the first class) nor an action (rules
# compare against NaN as false and fall through to the default) would mean anything.
OUTPUT_NOT_FINITE = "model output is not finite"


@dataclass(frozen=True, slots=True)
class Prediction:
    """One row: ``label``, ``probabilities`` (class -> p) and ``action``, or the ``error`` reason."""

    label: str | None = None
    probabilities: Mapping[str, float] | None = None
    action: str | None = None
    cost: Cost = field(default_factory=Cost)  # this row's share of the model calls that computed it
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(cls, reason: str, cost: Cost | None = None) -> Prediction:
        return cls(error=reason, cost=cost if cost is not None else Cost())

    def to_dict(self) -> dict[str, Any]:
        """``{"label", "probabilities", "action"}``, or ``{"error"}`` for a row that has none."""
        if self.error is not None:
            return {"error": self.error}
        return {"label": self.label, "probabilities": dict(self.probabilities or {}), "action": self.action}


def total_cost(rows: Iterable[Prediction]) -> Cost:
    """The cost of several rows: the sum of their shares."""
    total = Cost()
    for r in rows:
        total = total + r.cost
    return total

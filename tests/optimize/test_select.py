"""Selection obeys the budget, the objective and the batch-dependence preference."""

from __future__ import annotations

import pytest

from joules.errors import ConfigError
from joules.optimize import Objective, Score, select

ORIGINAL = Score(name="original", validation_f1=0.96, throughput=500, latency_p50_ms=8, energy_per_1000_j=20)


def score(name: str, f1: float, thr: float, lat: float = 5, energy: float = 10, dep: float = 0.0) -> Score:
    return Score(
        name=name, validation_f1=f1, throughput=thr, latency_p50_ms=lat, energy_per_1000_j=energy, batch_dependence=dep
    )


def test_the_fastest_within_budget_wins() -> None:
    variants = [score("fast-bad", 0.94, 5000), score("ok", 0.955, 1200), score("fused", 0.96, 600)]
    sel = select(variants, original=ORIGINAL, max_f1_drop=1.0, objective=Objective.THROUGHPUT)
    assert sel.chosen == "ok"
    assert sel.verdicts["fast-bad"].startswith("over budget")
    assert sel.verdicts["ok"].startswith("chosen")


def test_the_budget_is_in_f1_points_and_inclusive() -> None:
    variants = [score("edge", 0.95, 900)]
    assert select(variants, original=ORIGINAL, max_f1_drop=1.0, objective=Objective.THROUGHPUT).chosen == "edge"
    assert select(variants, original=ORIGINAL, max_f1_drop=0.99, objective=Objective.THROUGHPUT).chosen is None


def test_none_qualifies() -> None:
    sel = select(
        [score("a", 0.90, 9000), score("b", 0.93, 3000)],
        original=ORIGINAL,
        max_f1_drop=1.0,
        objective=Objective.THROUGHPUT,
    )
    assert sel.chosen is None and "nothing registered" in sel.message
    assert all(v.startswith("over budget") for v in sel.verdicts.values())


def test_a_variant_no_better_than_the_original_is_not_chosen() -> None:
    sel = select([score("slower", 0.97, 400)], original=ORIGINAL, max_f1_drop=1.0, objective=Objective.THROUGHPUT)
    assert sel.chosen is None and "no better" in sel.verdicts["slower"]


def test_other_objectives() -> None:
    variants = [score("low-latency", 0.96, 700, lat=2, energy=15), score("low-energy", 0.96, 650, lat=6, energy=5)]
    assert select(variants, original=ORIGINAL, max_f1_drop=1, objective=Objective.LATENCY).chosen == "low-latency"
    assert select(variants, original=ORIGINAL, max_f1_drop=1, objective=Objective.ENERGY).chosen == "low-energy"


def test_batch_dependent_variants_give_way_to_steady_ones() -> None:
    variants = [score("int8-dynamic", 0.96, 1000, dep=0.06), score("int8-static", 0.958, 900)]
    sel = select(variants, original=ORIGINAL, max_f1_drop=1.0, objective=Objective.THROUGHPUT)
    assert sel.chosen == "int8-static"
    assert "batched around it" in sel.verdicts["int8-dynamic"]
    allowed = select(
        variants, original=ORIGINAL, max_f1_drop=1.0, objective=Objective.THROUGHPUT, allow_batch_dependent=True
    )
    assert allowed.chosen == "int8-dynamic"
    # With no steady variant within budget the batch-dependent one is still chosen, and says so.
    alone = select([variants[0]], original=ORIGINAL, max_f1_drop=1.0, objective=Objective.THROUGHPUT)
    assert alone.chosen == "int8-dynamic" and "batched around it" in alone.message


def test_a_negative_budget_is_refused() -> None:
    with pytest.raises(ConfigError):
        select([], original=ORIGINAL, max_f1_drop=-1, objective=Objective.THROUGHPUT)

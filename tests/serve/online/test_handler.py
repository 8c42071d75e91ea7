"""The batcher's handler on a real Predictor: length-aware calls, identical texts computed once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from joules.bundle import Bundle
from joules.meter import Cost, CostModel, Measurement
from joules.runtime import Predictor, RuntimeOptions
from joules.serve.online.handler import Job, ModelRunner
from tests.serve.online.conftest import sms


@pytest.fixture(scope="module")
def predictor(tiny_bundle_dir: Path) -> Predictor:
    return Predictor(Bundle.load(tiny_bundle_dir), options=RuntimeOptions(max_batch_size=8))


def test_each_job_gets_its_rows_and_duplicates_are_computed_once(predictor: Predictor) -> None:
    texts = sms(12, offset=50)
    long_one = "Please call me back when you get this message, it is about the flat " * 6
    jobs = [
        Job(texts=texts[:5]),
        Job(texts=[long_one, texts[0], texts[0]]),  # repeats, within and across jobs
        Job(texts=texts[5:]),
        Job(texts=[long_one]),
    ]
    calls: list[int] = []
    runner = ModelRunner(predictor, max_batch_size=8, on_call=lambda rows, m: calls.append(rows))
    outcomes = runner(jobs)
    assert [len(o) for o in outcomes] == [j.rows for j in jobs]
    for job, out in zip(jobs, outcomes, strict=True):
        alone = predictor.predict_texts(list(job.texts or ()))
        np.testing.assert_allclose(out.probabilities, alone.probabilities, atol=1e-5)
        assert out.labels == alone.labels and out.actions == alone.actions
    assert sum(calls) == len(set(texts) | {long_one})  # 13 distinct texts of 18 rows
    assert max(calls) <= 8


def test_rows_of_very_different_length_go_to_different_calls(predictor: Predictor) -> None:
    short = [f"ok {i}" for i in range(6)]
    long = [f"{i} " + "this is a much longer message that fills many tokens " * 4 for i in range(2)]
    sizes: list[int] = []
    runner = ModelRunner(predictor, max_batch_size=8, on_call=lambda rows, m: sizes.append(rows))
    runner([Job(texts=[short[0], long[0], *short[1:], long[1]])])
    assert sorted(sizes) == [2, 6]  # not one call padding six short texts to the long ones


def test_token_budget_bounds_each_call(predictor: Predictor) -> None:
    long = [f"{i} " + "word " * 200 for i in range(6)]  # each truncated to the bundle's 128 tokens
    seen: list[tuple[int, Measurement]] = []
    runner = ModelRunner(predictor, max_batch_size=8, max_batch_tokens=256, on_call=lambda r, m: seen.append((r, m)))
    runner([Job(texts=long)])
    assert [r for r, _ in seen] == [2, 2, 2]
    assert all(m.wall_s > 0 for _, m in seen)


def test_each_job_pays_its_share_and_the_shares_add_up_to_the_calls(predictor: Predictor) -> None:
    prices = CostModel(price_per_hour=0.36, vcpus=4, region="fr", grid_g_per_kwh=56.0)
    texts = sms(5, offset=80)
    # Jobs 0 and 1 ask for the same text: it is computed once and its work shared between them.
    jobs = [Job(texts=[texts[0]]), Job(texts=[texts[0]]), Job(texts=texts[1:])]
    seen: list[Measurement] = []
    runner = ModelRunner(predictor, max_batch_size=8, on_call=lambda rows, m: seen.append(m), prices=prices)
    outcomes = runner(jobs)
    whole = Cost()
    for m in seen:
        whole = whole + prices.price(m)
    for key in ("energy_j", "usd", "co2_g", "cpu_s"):
        assert sum(getattr(o.cost, key) for o in outcomes) == pytest.approx(getattr(whole, key), rel=1e-9), key
    assert outcomes[0].cost.energy_j > 0 and outcomes[0].cost == outcomes[1].cost
    assert all(o.cost.method == predictor.meter.method for o in outcomes)
    # Without prices the runner reports no cost.
    assert all(o.cost.is_zero for o in ModelRunner(predictor, max_batch_size=8)(jobs))

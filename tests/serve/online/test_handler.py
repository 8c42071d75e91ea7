"""The batcher's handler on a real Predictor: length-aware calls, identical texts computed once,
each text tokenized once, a failing row isolated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from joules.bundle import Bundle
from joules.meter import Cost, CostModel, Measurement
from joules.runtime import Prediction, Predictor, RuntimeOptions
from joules.serve.online.handler import Answer, Job, ModelRunner
from tests.serve.online.conftest import sms


@pytest.fixture(scope="module")
def predictor(tiny_bundle_dir: Path) -> Predictor:
    return Predictor(Bundle.load(tiny_bundle_dir), options=RuntimeOptions(max_batch_size=8))


def test_each_job_gets_its_rows_and_duplicates_are_computed_once(predictor: Predictor) -> None:
    texts = sms(12, offset=50)
    long_one = "Please call me back when you get this message, it is about the flat " * 6
    jobs = [
        Job(texts[:5]),
        Job([long_one, texts[0], texts[0]]),  # repeats, within and across jobs
        Job(texts[5:]),
        Job([long_one]),
    ]
    calls: list[int] = []
    encoded: list[int] = []
    real_encode = predictor.encode

    def encode(values: list[str]) -> list[object]:
        encoded.extend(len(v) for v in values)
        return real_encode(values)

    predictor.encode = encode  # type: ignore[method-assign]
    try:
        runner = ModelRunner(predictor, max_batch_size=8, on_call=lambda rows, m: calls.append(rows))
        outcomes = runner(jobs)
    finally:
        del predictor.encode
    assert len(encoded) == 13, "each distinct text is tokenized once, not once to plan and again to run"
    assert all(isinstance(o, Answer) for o in outcomes)
    assert [len(o) for o in outcomes] == [j.rows for j in jobs]  # type: ignore[arg-type]
    for job, out in zip(jobs, outcomes, strict=True):
        assert isinstance(out, Answer)
        alone = predictor.predict_texts(list(job.values))
        probs = np.array([[r.probabilities[c] for c in predictor.labels] for r in out.rows])  # type: ignore[index]
        np.testing.assert_allclose(probs, alone.probabilities, atol=1e-5)
        assert [r.label for r in out.rows] == alone.labels and [r.action for r in out.rows] == alone.actions
    assert sum(calls) == len(set(texts) | {long_one})  # 13 distinct texts of 18 rows
    assert max(calls) <= 8


def test_rows_of_very_different_length_go_to_different_calls(predictor: Predictor) -> None:
    short = [f"ok {i}" for i in range(6)]
    long = [f"{i} " + "this is a much longer message that fills many tokens " * 4 for i in range(2)]
    sizes: list[int] = []
    runner = ModelRunner(predictor, max_batch_size=8, on_call=lambda rows, m: sizes.append(rows))
    runner([Job([short[0], long[0], *short[1:], long[1]])])
    assert sorted(sizes) == [2, 6]  # not one call padding six short texts to the long ones


def test_token_budget_bounds_each_call(predictor: Predictor) -> None:
    long = [f"{i} " + "word " * 200 for i in range(6)]  # each truncated to the bundle's 128 tokens
    seen: list[tuple[int, Measurement]] = []
    runner = ModelRunner(predictor, max_batch_size=8, max_batch_tokens=256, on_call=lambda r, m: seen.append((r, m)))
    runner([Job(long)])
    assert [r for r, _ in seen] == [2, 2, 2]
    assert all(m.wall_s > 0 for _, m in seen)


def test_each_job_pays_its_share_and_the_shares_add_up_to_the_calls(tiny_bundle_dir: Path) -> None:
    prices = CostModel(price_per_hour=0.36, vcpus=4, region="fr", grid_g_per_kwh=56.0)
    predictor = Predictor(Bundle.load(tiny_bundle_dir), options=RuntimeOptions(max_batch_size=8), prices=prices)
    texts = sms(5, offset=80)
    # Jobs 0 and 1 ask for the same text: it is computed once and its work shared between them.
    jobs = [Job([texts[0]]), Job([texts[0]]), Job(texts[1:])]
    seen: list[Measurement] = []
    runner = ModelRunner(predictor, max_batch_size=8, on_call=lambda rows, m: seen.append(m))
    outcomes = [o for o in runner(jobs) if isinstance(o, Answer)]
    assert len(outcomes) == 3
    whole = Cost()
    for m in seen:
        whole = whole + prices.price(m)
    for key in ("energy_j", "usd", "co2_g", "cpu_s"):
        assert sum(getattr(o.cost, key) for o in outcomes) == pytest.approx(getattr(whole, key), rel=1e-9), key
    assert outcomes[0].cost.energy_j > 0 and outcomes[0].cost == outcomes[1].cost
    assert all(o.cost.method == predictor.meter.method for o in outcomes)


def test_a_row_that_fails_the_model_fails_only_its_job(predictor: Predictor) -> None:
    texts = sms(6, offset=120)
    real = predictor._call
    bad_id = predictor.text.tokenizer.token_to_id("poison")  # type: ignore[union-attr]

    def call(feeds: dict[str, np.ndarray]) -> np.ndarray:
        if (feeds["input_ids"] == bad_id).any():
            raise RuntimeError("the model cannot take this row")
        return real(feeds)

    predictor._call = call  # type: ignore[method-assign]
    try:
        out = ModelRunner(predictor, max_batch_size=8)([Job(texts[:3]), Job(["poison ivy"]), Job(texts[3:])])
    finally:
        del predictor._call
    assert isinstance(out[1], RuntimeError)
    assert isinstance(out[0], Answer) and isinstance(out[2], Answer)
    assert all(isinstance(r, Prediction) and r.label for a in (out[0], out[2]) for r in a.rows)  # type: ignore[union-attr]

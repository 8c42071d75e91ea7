"""Sampling on rows of logits: the rules each knob follows."""

from __future__ import annotations

import numpy as np
import pytest

from joules.errors import InputError
from joules.runtime.generation.sampling import SamplingParams, apply_penalties, choose, logprob_of


def row(seed: int = 0, n: int = 2000) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=n).astype(np.float32) * 3


def test_greedy_and_its_equivalents() -> None:
    x = row()
    best = int(np.argmax(x))
    rng = np.random.default_rng(0)
    assert choose(x, SamplingParams(temperature=0), rng) == best
    assert all(choose(x, SamplingParams(temperature=1.5, top_k=1), rng) == best for _ in range(20))
    assert all(choose(x, SamplingParams(temperature=1.0, top_p=1e-6), rng) == best for _ in range(20))


def test_top_k_and_top_p_keep_only_their_set() -> None:
    x = row(1)
    order = np.argsort(-x)
    rng = np.random.default_rng(1)
    picks = {choose(x, SamplingParams(temperature=2.0, top_k=5), rng) for _ in range(300)}
    assert picks <= set(order[:5].tolist()) and len(picks) > 1
    p = np.exp(x - x.max())
    p /= p.sum()
    nucleus = int(np.searchsorted(np.cumsum(p[order]), 0.5)) + 1
    picks = {choose(x, SamplingParams(temperature=1.0, top_p=0.5), rng) for _ in range(300)}
    assert picks <= set(order[:nucleus].tolist())


def test_seeded_draws_repeat() -> None:
    x = row(2)
    a = [choose(x, SamplingParams(seed=3), r) for r in [SamplingParams(seed=3).rng()] for _ in range(10)]
    b = [choose(x, SamplingParams(seed=3), r) for r in [SamplingParams(seed=3).rng()] for _ in range(10)]
    assert a == b


def test_penalties() -> None:
    x = np.array([2.0, -2.0, 1.0, 0.5], dtype=np.float32)
    rep = apply_penalties(x, SamplingParams(repetition_penalty=2.0), np.array([0, 1]), {})
    assert rep.tolist() == [1.0, -4.0, 1.0, 0.5]
    freq = apply_penalties(x, SamplingParams(frequency_penalty=0.5, presence_penalty=0.25), np.array([]), {2: 2})
    assert freq.tolist() == [2.0, -2.0, 1.0 - 0.5 * 2 - 0.25, 0.5]
    assert apply_penalties(x, SamplingParams(), np.array([0]), {0: 1}) is x


def test_logprobs_are_log_softmax() -> None:
    x = row(3, 50)
    lp = logprob_of(x, 7, 3)
    ref = x.astype(np.float64) - np.log(np.exp(x.astype(np.float64)).sum())
    assert abs(lp.logprob - ref[7]) < 1e-6
    assert [t for t, _ in lp.top] == np.argsort(-ref)[:3].tolist()


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": -1},
        {"temperature": float("nan")},
        {"top_p": 2},
        {"top_p": 0},
        {"max_tokens": 0},
        {"top_k": -1},
        {"top_logprobs": 21, "logprobs": True},
        {"top_logprobs": 2},
        {"stop": ["x"] * 17},
        {"stop": [""]},
        {"stop_token_ids": [-1]},
        {"frequency_penalty": 3},
        {"max_tokens": True},
    ],
)
def test_bad_parameters_are_input_errors(bad: dict[str, object]) -> None:
    with pytest.raises(InputError):
        SamplingParams(**bad)  # type: ignore[arg-type]

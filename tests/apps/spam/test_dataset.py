from __future__ import annotations

from collections import Counter

from joules.apps.spam.dataset import load_messages, split_messages
from tests.conftest import DATA


def test_duplicates_are_removed_before_splitting() -> None:
    rows = load_messages(DATA)
    assert len(rows) == 5171
    assert len({t for _, t in rows}) == len(rows)


def test_split_is_stratified_disjoint_and_seeded() -> None:
    rows = load_messages(DATA)
    ds = split_messages(rows, seed=0)
    sizes = {k: len(v) for k, v in ds.splits.items()}
    assert sum(sizes.values()) == len(rows)
    assert abs(sizes["train"] / len(rows) - 0.6) < 0.01 and abs(sizes["test"] / len(rows) - 0.2) < 0.01
    spam = {k: Counter(v.labels)["spam"] for k, v in ds.splits.items()}
    assert 125 <= spam["validation"] <= 135 and 125 <= spam["test"] <= 135
    texts = [set(v.texts) for v in ds.splits.values()]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert split_messages(rows, seed=0).splits["test"].texts == ds.splits["test"].texts
    assert split_messages(rows, seed=1).splits["test"].texts != ds.splits["test"].texts

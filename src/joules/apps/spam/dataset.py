"""The SMS Spam Collection: read, de-duplicate, split.

Exact duplicate texts are removed before splitting (5,574 messages, 5,171
unique): otherwise about 25 of the test split's spam messages also appear
verbatim in training, and the test score flatters the model.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from joules.bundle import SplitDataset
from joules.errors import DataError

LABELS = ["ham", "spam"]
FRACTIONS = {"train": 0.6, "validation": 0.2, "test": 0.2}


def _default_data() -> Path:
    env = os.environ.get("JOULES_SPAM_DATA")
    if env:
        return Path(env)
    # The project checkout ships the dataset in data/ (run from the checkout, or an installed tree beside it).
    here = Path(__file__).resolve()
    for root in [Path.cwd(), *here.parents]:
        candidate = root / "data" / "sms_spam_collection" / "SMSSpamCollection.tsv"
        if candidate.is_file():
            return candidate
    return Path("data/sms_spam_collection/SMSSpamCollection.tsv")


DEFAULT_DATA = _default_data()


def load_messages(path: Path | None = None) -> list[tuple[str, str]]:
    """``(label, text)`` pairs, exact duplicate texts removed (first occurrence kept)."""
    path = Path(path or DEFAULT_DATA)
    if not path.is_file():
        raise DataError(
            f"SMS Spam Collection not found at {str(path)!r}; pass --data PATH to the TSV file "
            "(label<TAB>text per line), or run from the project checkout, which ships data/sms_spam_collection"
        )
    seen: set[str] = set()
    rows: list[tuple[str, str]] = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            label, sep, text = line.partition("\t")
            if not sep or label not in LABELS:
                raise DataError(f"{path}:{n}: expected 'ham<TAB>text' or 'spam<TAB>text', got {line[:60]!r}")
            if text in seen:
                continue
            seen.add(text)
            rows.append((label, text))
    if len({lab for lab, _ in rows}) < 2:
        raise DataError(f"{path}: needs both ham and spam messages")
    return rows


def split_messages(rows: list[tuple[str, str]], seed: int = 0) -> SplitDataset:
    """Stratified 60/20/20 train/validation/test split with a fixed seed."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, str, str]] = []
    for label in LABELS:
        idx = [i for i, (lab, _) in enumerate(rows) if lab == label]
        perm = rng.permutation(idx)
        n = len(perm)
        n_train = round(n * FRACTIONS["train"])
        n_val = round(n * FRACTIONS["validation"])
        for i, j in enumerate(perm):
            split = "train" if i < n_train else "validation" if i < n_train + n_val else "test"
            out.append((split, label, rows[j][1]))
    # Keep the file order (not grouped by label) so splits read naturally.
    position = {text: i for i, (_, text) in enumerate(rows)}
    out.sort(key=lambda r: position[r[2]])
    return SplitDataset.from_rows(out)

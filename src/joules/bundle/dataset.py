"""The labelled split a bundle was trained and measured on (``dataset.jsonl``).

Kept inside the bundle so that optimization and evaluation of every later
version use exactly the same train/validation/test rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from joules.errors import DataError

DATASET_FILE = "dataset.jsonl"
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Split:
    texts: list[str]
    labels: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def label_indices(self, labels: tuple[str, ...]) -> list[int]:
        index = {lab: i for i, lab in enumerate(labels)}
        try:
            return [index[lab] for lab in self.labels]
        except KeyError as e:
            raise DataError(f"dataset label {e.args[0]!r} is not one of the model's labels {list(labels)}") from None


@dataclass(frozen=True)
class SplitDataset:
    splits: dict[str, Split]

    def __getitem__(self, name: str) -> Split:
        if name not in self.splits:
            raise DataError(f"the dataset has no {name!r} split; it has {sorted(self.splits)}")
        return self.splits[name]

    def write(self, path: Path) -> None:
        with path.open("w", encoding="utf-8") as f:
            for name in SPLITS:
                split = self.splits.get(name)
                if split is None:
                    continue
                for text, label in zip(split.texts, split.labels, strict=True):
                    f.write(json.dumps({"split": name, "label": label, "text": text}, ensure_ascii=False) + "\n")

    @classmethod
    def read(cls, path: Path) -> SplitDataset:
        rows: dict[str, tuple[list[str], list[str]]] = {}
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                try:
                    r = json.loads(line)
                    texts, labels = rows.setdefault(r["split"], ([], []))
                    texts.append(r["text"])
                    labels.append(r["label"])
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise DataError(f"{path}:{n}: not a dataset row {{split, label, text}}: {e}") from None
        return cls({k: Split(t, lab) for k, (t, lab) in rows.items()})

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, str, str]]) -> SplitDataset:
        """From ``(split, label, text)`` rows."""
        acc: dict[str, tuple[list[str], list[str]]] = {}
        for split, label, text in rows:
            texts, labels = acc.setdefault(split, ([], []))
            texts.append(text)
            labels.append(label)
        return cls({k: Split(t, lab) for k, (t, lab) in acc.items()})

"""The texts a benchmark sends, loaded before the run starts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from joules.bundle.dataset import DATASET_FILE, SplitDataset
from joules.errors import BenchError


def read_texts(path: Path, field: str = "text") -> list[str]:
    """Texts from a .jsonl (``field``), .csv (column ``field``) or any other file (one per line)."""
    if not path.is_file():
        raise BenchError(f"--data {str(path)!r} does not exist")
    texts: list[str] = []
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)[field]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise BenchError(f"{path}:{n}: expected a JSON object with a {field!r} string") from None
                texts.append(str(value))
    elif path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or field not in reader.fieldnames:
                raise BenchError(f"{path}: no {field!r} column (columns: {reader.fieldnames})")
            texts = [row[field] for row in reader]
    else:
        texts = [line.rstrip("\n") for line in path.open(encoding="utf-8")]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise BenchError(f"{path} holds no texts")
    return texts


def bundle_texts(bundle_dir: Path) -> list[str] | None:
    """The test split of a bundle's dataset.jsonl (all rows if it has no test split), or None."""
    path = bundle_dir / DATASET_FILE
    if not path.is_file():
        return None
    ds = SplitDataset.read(path)
    split = ds.splits.get("test")
    texts = split.texts if split is not None else [t for s in ds.splits.values() for t in s.texts]
    return [t for t in texts if t.strip()] or None


def load_texts(data: Path | None, model_ref: str) -> list[str]:
    """``--data``, else the registered model's test split."""
    if data is not None:
        return read_texts(data)
    from joules.errors import RegistryError
    from joules.registry import Registry

    try:
        registry = Registry()
        mv = registry.get(model_ref)
        texts = bundle_texts(Path(mv.path))
    except RegistryError as e:
        raise BenchError(
            f"no --data given and {model_ref!r} cannot be found in the registry ({e}); pass --data FILE"
        ) from None
    if texts is None:
        raise BenchError(
            f"{model_ref} has no dataset.jsonl in its bundle; pass --data FILE (.jsonl, .csv or text lines)"
        )
    return texts

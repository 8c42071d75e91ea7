"""Terminal output: tables for people, JSON for machines (stdout), logs on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    print(table(rows, headers))


def fmt_metric(value: Any, ci: Any = None) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    text = f"{value:.4f}"
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text


def info(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

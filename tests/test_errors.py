"""One error hierarchy: every error joules defines is a JoulesError, in errors.py."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import joules.errors as errors

ROOT = Path(__file__).resolve().parents[1] / "src" / "joules"


def test_every_error_class_is_a_joules_error() -> None:
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, BaseException)]
    assert len(classes) > 10
    assert all(issubclass(c, errors.JoulesError) for c in classes), [c for c in classes if c is not errors.JoulesError]


def test_no_module_outside_errors_py_defines_an_exception() -> None:
    exceptions = {n for n in dir(__import__("builtins")) if n.endswith(("Error", "Exception")) or n == "Exception"}
    found = []
    for path in ROOT.rglob("*.py"):
        if path == ROOT / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases}
                if bases & (exceptions | {n for n in dir(errors) if n.endswith(("Error", "Skipped"))}):
                    found.append(f"{path.relative_to(ROOT)}: class {node.name}({', '.join(sorted(bases))})")
    assert not found, "define errors in joules/errors.py:\n" + "\n".join(found)

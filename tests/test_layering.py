"""The architecture, held by a test (docs/architecture.md): layers, no import cycles, no torch
where serving runs.

Every import in src/joules counts, including those inside functions (a lazy
import is still a dependency) and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = SRC / "joules"

# From the bottom: a module imports only from its own layer or below (docs/architecture.md).
LAYERS: list[tuple[str, ...]] = [
    ("joules", "joules.errors", "joules.settings", "joules.quality", "joules.grid", "joules.hardware"),
    ("joules.bundle", "joules.decide", "joules.meter"),
    ("joules.registry",),
    ("joules.runtime",),
    ("joules.optimize", "joules.train", "joules.imports", "joules.parallel", "joules.serve", "joules.bench"),
    ("joules.apps",),
    ("joules.cli",),
]
# What the bundle format must never know: an engine, a trainer, the registry.
BUNDLE_NEVER = ("joules.runtime", "joules.train", "joules.registry", "onnxruntime", "torch", "transformers")
HEAVY = ("torch", "ray", "transformers")


def _modules() -> dict[str, Path]:
    mods = {}
    for p in ROOT.rglob("*.py"):
        name = ".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        mods[name] = p
    return mods


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module name ``path`` imports, anywhere in it (absolute, with ``from x import y`` as x and x.y)."""
    out: set[str] = set()
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


GRAPH = {m: {d for d in _imports(m, p) if d in MODULES and d != m} for m, p in MODULES.items()}
EXTERNAL = {m: _imports(m, p) for m, p in MODULES.items()}


def layer_of(module: str) -> tuple[int, str]:
    """The layer index of ``module`` and the prefix that placed it (the longest that matches)."""
    best: tuple[int, str] | None = None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and (best is None or len(prefix) > len(best[1])):
                best = (i, prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add its package to LAYERS and docs/architecture.md")
    return best


def test_every_module_has_a_layer() -> None:
    for m in MODULES:
        layer_of(m)


def test_nothing_imports_a_layer_above_its_own() -> None:
    upward = [
        f"{m} (layer {layer_of(m)[0]}) imports {d} (layer {layer_of(d)[0]})"
        for m, deps in sorted(GRAPH.items())
        for d in sorted(deps)
        if layer_of(d)[0] > layer_of(m)[0]
    ]
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_the_bundle_format_knows_no_engine_trainer_or_registry() -> None:
    bad = [
        f"{m} imports {d}"
        for m, deps in sorted(EXTERNAL.items())
        if m.startswith("joules.bundle")
        for d in sorted(deps)
        if any(d == n or d.startswith(n + ".") for n in BUNDLE_NEVER)
    ]
    assert not bad, "\n".join(bad)


def test_runtime_never_imports_a_mode_or_a_trainer() -> None:
    above = ("joules.serve", "joules.optimize", "joules.train", "joules.apps", "joules.cli", "joules.bench")
    bad = [
        f"{m} imports {d}"
        for m, deps in sorted(GRAPH.items())
        if m.startswith("joules.runtime")
        for d in sorted(deps)
        if any(d == n or d.startswith(n + ".") for n in above)
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycles() -> None:
    color: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(u: str) -> None:
        color[u] = 1
        stack.append(u)
        for v in sorted(GRAPH[u]):
            # A package's __init__ naming its own submodules (its public names) is not a cycle.
            if v.startswith(u + ".") or (u.startswith(v + ".") and MODULES[v].name == "__init__.py"):
                continue
            if color.get(v) == 1:
                cycles.append([*stack[stack.index(v) :], v])
            elif not color.get(v):
                visit(v)
        stack.pop()
        color[u] = 2

    for m in sorted(GRAPH):
        if not color.get(m):
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_layering_test_can_fail() -> None:
    """The checks above see what they must: an upward lazy import, and a cycle."""
    code = "def f():\n    from joules.cli.main import main\n    import joules.serve.online.app\n"
    seen = _imports("joules.bundle.x", _write(code))
    assert {"joules.cli.main", "joules.serve.online.app"} <= seen
    assert layer_of("joules.cli.main")[0] > layer_of("joules.bundle.spec")[0]
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("somewhere.else")


def _write(code: str) -> Path:
    import tempfile

    f = Path(tempfile.mkdtemp()) / "x.py"
    f.write_text(code, encoding="utf-8")
    return f


def test_importing_joules_its_cli_and_its_serving_modules_never_imports_torch_ray_or_transformers() -> None:
    code = (
        "import sys\n"
        "import joules, joules.cli.main as m, joules.runtime, joules.serve.online.app, joules.serve.batch.job\n"
        "import joules.serve.stream.consumer, joules.serve.stream.service, joules.serve.online.repository\n"
        "import joules.serve.ray.batch, joules.serve.ray.online, joules.serve.ray.cluster, joules.serve.stream.group\n"
        "from joules.runtime import Predictor, load_predictor\n"
        "m.build_parser()\n"
        f"print(sorted(n for n in {HEAVY!r} if n in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "[]", f"imported: {out.stdout.strip()}"


def test_building_the_cli_parser_loads_no_engine() -> None:
    """`joules --help` and `joules models list` stay quick: the parser reads config defaults only."""
    code = (
        "import sys, joules.cli.main as m\n"
        "m.build_parser()\n"
        "print(sorted(n for n in ('onnxruntime', 'tokenizers', 'starlette', 'redis') if n in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "[]", f"imported: {out.stdout.strip()}"

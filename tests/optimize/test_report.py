"""The report: Pareto frontier, a valid PNG, a Markdown table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from joules.optimize.report import HEADERS, markdown, pareto, plot


def model(name: str, thr: float, f1: float, kind: str = "variant", verdict: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "passes": [],
        "steps": [],
        "verdict": verdict,
        "throughput_msg_s": thr,
        "latency_ms": {"p50": 1.0, "p99": 2.0},
        "test": {"f1": f1, "f1_ci95": [f1 - 0.02, f1 + 0.01], "accuracy": 0.99, "roc_auc": 0.99},
        "validation": {"f1": f1},
        "f1_drop_points": {"validation": 0.0, "test": 0.0},
    }


def test_pareto_keeps_the_points_nothing_beats() -> None:
    points = [("a", 100, 0.96), ("b", 500, 0.95), ("c", 400, 0.94), ("d", 5000, 0.90), ("e", 90, 0.95)]
    assert pareto(points) == ["d", "b", "a"]


def test_plot_is_a_png_and_markdown_has_the_table(tmp_path: Path) -> None:
    data = {
        "model": "spam:1",
        "created_at": "now",
        "settings": {
            "objective": "throughput",
            "max_f1_drop": 1.0,
            "preset": "standard",
            "passes": ["fuse"],
            "budget_minutes": 30,
        },
        "preset_settings": {"measure": {"batch_size": 32}},
        "original": model("spam:1", 500, 0.96, kind="original"),
        "variants": [
            model("fuse", 520, 0.96),
            model("fuse+int8-dynamic", 1000, 0.955),
            model("bad", 3000, 0.80, verdict="over budget"),
        ],
        "references": [{"name": "pytorch-eager-fp32", "kind": "reference", "throughput_msg_s": 300, "steps": []}],
        "chosen": {"name": "spam", "version": 2, "variant": "fuse+int8-dynamic", "stage": "none"},
        "selection": "chosen fuse+int8-dynamic",
        "skipped": [{"name": "fuse+bf16", "reason": "no bf16 here"}],
        "failed": [{"name": "prune50+fuse", "passes": ["prune", "fuse"], "error": "prune: RuntimeError: boom"}],
        "comparisons": {"throughput_vs_parent": {"fuse+int8-dynamic": {"parent": "fuse", "throughput_ratio": 1.9}}},
        "seconds": {"total": 12.0},
        "machine": {"cpu": "x", "cores": 2, "python": "3", "onnxruntime": "1", "load_average": [1, 1, 1]},
    }
    path = tmp_path / "plot.png"
    plot(data, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    text = markdown(data, "plot.png")
    assert "| " + " | ".join(HEADERS) + " |" in text
    assert "Registered as spam:2" in text and "no bf16 here" in text and "![" in text
    assert "**FAILED** `prune50+fuse`: prune: RuntimeError: boom" in text
    assert text.index("## FAILED") < text.index("## Skipped"), "failures come first, apart from skips"

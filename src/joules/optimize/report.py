"""The report of an optimize run: JSON (everything), Markdown (for people), PNG (the trade-off).

Files go to ``$JOULES_HOME/reports/optimize-<name>-<version>-<UTC time>/``:
``report.json``, ``report.md`` and ``plot.png`` (test F1 against throughput,
every model with its 95 % interval, the Pareto frontier drawn, the original
and the chosen variant marked).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from joules.optimize.evaluate import Candidate


class RunState(Protocol):
    """What the report reads of a run (``run.RunState``; a Protocol, so report imports nothing of run)."""

    @property
    def ref(self) -> str: ...
    @property
    def config(self) -> Any: ...
    @property
    def preset(self) -> Any: ...
    @property
    def original(self) -> Candidate | None: ...
    @property
    def variants(self) -> list[Candidate]: ...
    @property
    def references(self) -> list[Candidate]: ...
    @property
    def skipped(self) -> list[dict[str, Any]]: ...
    @property
    def failed(self) -> list[dict[str, Any]]: ...
    @property
    def selection(self) -> Any: ...
    @property
    def measure(self) -> Any: ...
    @property
    def chosen(self) -> dict[str, Any] | None: ...
    @property
    def seconds(self) -> dict[str, float]: ...


def report_dir(reports: Path, ref: str, when: datetime) -> Path:
    return reports / f"optimize-{ref.replace(':', '-')}-{when.strftime('%Y%m%dT%H%M%SZ')}"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass  # not Linux: platform's answer stands
    out: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}
    for dist in ("onnxruntime", "onnx", "torch", "transformers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return out


def _drop(c: Candidate, original: Candidate, split: str) -> float | None:
    if split not in c.quality or split not in original.quality:
        return None
    return round((original.quality[split]["f1"] - c.quality[split]["f1"]) * 100, 3)


def record(c: Candidate, original: Candidate, verdict: str | None = None) -> dict[str, Any]:
    """One model as the JSON report and ``--json`` show it."""
    speed = c.speed
    return {
        "name": c.name,
        "kind": c.kind,
        "passes": c.passes,
        "validation": c.quality.get("validation"),
        "test": c.quality.get("test"),
        "f1_drop_points": {"validation": _drop(c, original, "validation"), "test": _drop(c, original, "test")},
        "throughput_msg_s": speed.get("throughput_msg_s"),
        "throughput_runs": speed.get("throughput_runs"),
        "latency_ms": speed.get("latency_ms"),
        "energy_j_per_1000": speed.get("energy_j_per_1000"),
        "batch_dependence": speed.get("batch_dependence"),
        "size_mb": None if c.size_mb is None else round(c.size_mb, 2),
        "peak_rss_mb": c.memory.get("peak_rss_mb"),
        "model_rss_mb": c.memory.get("model_mb"),
        "steps": c.steps,
        "verdict": verdict,
    }


def paired_ratio(a: Candidate, b: Candidate) -> float:
    """Median over rounds of a's throughput / b's in the same round: rounds are side by side in time."""
    ra, rb = a.speed.get("throughput_runs") or [], b.speed.get("throughput_runs") or []
    ratios = [x / y for x, y in zip(ra, rb, strict=False) if y]
    return float(statistics.median(ratios)) if ratios else float("nan")


def comparisons(state: RunState) -> dict[str, Any]:
    """Throughput ratios measured side by side in this run (medians of per-round ratios).

    Every variant against the original, against the variant it extends by one
    pass (what that pass bought) and against each reference engine; and the best
    distilled student, chosen as selection chooses (validation F1 within the
    run's budget, then the objective) with its test figures reported. Targets
    (say "20x PyTorch eager") belong to whoever reads the report, not here.
    """
    original = state.original
    assert original is not None
    by_passes = {tuple(c.passes): c for c in state.variants}
    out: dict[str, Any] = {
        "throughput_vs_original": {c.name: _ratio(c, original) for c in state.variants},
        "throughput_vs_parent": {},
    }
    for c in state.variants:
        parent = by_passes.get(tuple(c.passes[:-1])) if len(c.passes) > 1 else None
        if parent is not None:
            out["throughput_vs_parent"][c.name] = {
                "parent": parent.name,
                "last_pass": c.passes[-1],
                "throughput_ratio": _ratio(c, parent),
                "test_f1_drop_points": _drop(c, parent, "test"),
            }
    for r in state.references:
        out[f"throughput_vs_{r.name}"] = {c.name: _ratio(c, r) for c in state.variants}
    students = [c for c in state.variants if c.passes and c.passes[0] == "distill" and c.speed]
    within = [c for c in students if (_drop(c, original, "validation") or 0.0) <= state.config.max_f1_drop + 1e-9]
    if students:
        objective = state.config.objective
        best = max(within, key=lambda c: c.score().value(objective)) if within else None
        out["best_student"] = {
            "chosen_on": f"validation F1 drop <= {state.config.max_f1_drop:g} points, then {objective}",
            "variant": None if best is None else best.name,
        }
        if best is not None:
            out["best_student"].update(
                {
                    "validation_f1_drop_points": _drop(best, original, "validation"),
                    "test_f1_drop_points": _drop(best, original, "test"),
                    "mcnemar_vs_original": best.quality["test"].get("mcnemar_vs_original"),
                    **{f"throughput_vs_{r.name}": _ratio(best, r) for r in state.references},
                }
            )
    out["total_seconds"] = state.seconds.get("total")
    return out


def _ratio(a: Candidate, b: Candidate) -> float | None:
    r = paired_ratio(a, b)
    return None if r != r else round(r, 2)  # NaN (no paired rounds) is not JSON


def build(state: RunState, paths: dict[str, Path]) -> dict[str, Any]:
    assert state.original is not None
    verdicts = state.selection.verdicts if state.selection else {}
    return {
        "model": state.ref,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": state.config.to_dict(),
        "preset_settings": state.preset.to_dict(),
        "measured_with": asdict(state.measure) if state.measure else None,
        "original": record(state.original, state.original),
        "variants": [record(c, state.original, verdicts.get(c.name)) for c in state.variants],
        "references": [record(r, state.original) for r in state.references],
        "skipped": state.skipped,
        "failed": state.failed,
        "selection": None if state.selection is None else state.selection.message,
        "chosen": state.chosen,
        "comparisons": comparisons(state),
        "seconds": state.seconds,
        "files": {k: str(v) for k, v in paths.items()},
    }


def pareto(points: Sequence[tuple[str, float, float]]) -> list[str]:
    """Names on the frontier of (throughput, F1), both higher-better, by decreasing throughput."""
    frontier, best = [], float("-inf")
    for name, _, y in sorted(points, key=lambda p: (-p[1], -p[2])):
        if y > best:
            frontier.append(name)
            best = y
    return frontier


def plot(data: dict[str, Any], path: Path) -> None:
    """Test F1 against throughput; points are numbered, the key beside the axes names them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = [data["original"], *data["variants"]]
    models = [m for m in models if m.get("throughput_msg_s") and m.get("test")]
    fig = Figure(figsize=(12, 6.5))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.07, 0.1, 0.6, 0.82))
    chosen = (data.get("chosen") or {}).get("variant")
    key = []
    for i, m in enumerate(models):
        x, y = m["throughput_msg_s"], m["test"]["f1"] * 100
        lo, hi = (v * 100 for v in m["test"].get("f1_ci95", [m["test"]["f1"]] * 2))
        color, marker = "tab:blue", "o"
        if m["kind"] == "original":
            color, marker = "black", "s"
        elif (m.get("verdict") or "").startswith("over budget"):
            color = "tab:gray"
        ax.errorbar(x, y, yerr=[[y - lo], [hi - y]], fmt=marker, color=color, ms=6, capsize=3, alpha=0.7)
        ax.annotate(str(i), (x, y), textcoords="offset points", xytext=(4, 3 + 7 * (i % 2)), fontsize=8)
        key.append(f"{i:>2}  {m['name']}" + ("  (over budget)" if color == "tab:gray" else ""))
        if m["name"] == chosen:
            ax.scatter([x], [y], s=320, facecolors="none", edgecolors="tab:red", linewidths=2, zorder=5)
            ax.scatter([], [], s=120, facecolors="none", edgecolors="tab:red", linewidths=2, label=f"chosen: {chosen}")
    names = pareto([(m["name"], m["throughput_msg_s"], m["test"]["f1"]) for m in models])
    front = sorted((m for m in models if m["name"] in names), key=lambda m: m["throughput_msg_s"])
    ax.plot(
        [m["throughput_msg_s"] for m in front],
        [m["test"]["f1"] * 100 for m in front],
        "--",
        color="tab:orange",
        label="Pareto frontier (test F1, throughput)",
    )
    for r in data.get("references", []):
        if r.get("throughput_msg_s"):
            ax.axvline(r["throughput_msg_s"], color="tab:purple", linestyle=":", label=f"{r['name']} (speed only)")
    ax.set_xscale("log")
    batch = data["preset_settings"]["measure"]["batch_size"]
    ax.set_xlabel(f"throughput, messages/s (up to {batch} rows per call, sorted by length)")
    ax.set_ylabel("test F1 (points), 95 % bootstrap interval")
    ax.set_title(f"{data['model']}: accuracy vs throughput")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.text(0.69, 0.92, "\n".join(key), va="top", ha="left", fontsize=8, family="monospace")
    fig.savefig(str(path), dpi=110)


def _f(v: Any, digits: int = 4) -> str:
    return "-" if not isinstance(v, (int, float)) else f"{v:.{digits}f}"


def _row(m: dict[str, Any]) -> list[str]:
    t, v = m.get("test") or {}, m.get("validation") or {}
    ci = t.get("f1_ci95") or [None, None]
    mc = t.get("mcnemar_vs_original") or {}
    lat = m.get("latency_ms") or {}
    bd = (m.get("batch_dependence") or {}).get("max_abs")
    drop = m.get("f1_drop_points") or {}
    return [
        m["name"],
        " > ".join(s["pass"] for s in m.get("steps") or []) or "-",
        f"{_f(v.get('f1'))} ({_f(drop.get('validation'), 2)})",
        f"{_f(t.get('f1'))} [{_f(ci[0], 3)}, {_f(ci[1], 3)}]",
        _f(t.get("accuracy")),
        _f(t.get("roc_auc")),
        f"{t.get('prediction_flips', '-')} / {t.get('action_flips', '-')}",
        _f(mc.get("p_value"), 3),
        _f(m.get("throughput_msg_s"), 0),
        f"{_f(lat.get('p50'), 2)} / {_f(lat.get('p99'), 2)}",
        _f(m.get("size_mb"), 1),
        _f(m.get("peak_rss_mb"), 0),
        _f(m.get("energy_j_per_1000"), 2),
        _f(bd, 4),
    ]


HEADERS = [
    "model",
    "passes",
    "val F1 (drop, pts)",
    "test F1 [95% CI]",
    "test acc",
    "test ROC AUC",
    "flips pred/action",
    "McNemar p",
    "msg/s @32",
    "p50/p99 ms @1",
    "model MB",
    "peak RSS MB",
    "J/1000",
    "batch dep.",
]


def table_rows(data: dict[str, Any]) -> list[list[str]]:
    return [_row(m) for m in [data["original"], *data["variants"], *data["references"]]]


def markdown(data: dict[str, Any], plot_name: str) -> str:
    s = data["settings"]
    lines = [
        f"# Optimization of {data['model']}",
        "",
        f"{data['created_at']}. Objective **{s['objective']}**, budget **{s['max_f1_drop']:g} F1 points** "
        f"of validation F1, preset `{s['preset']}`, passes {', '.join(s['passes'])}, "
        f"time budget {s['budget_minutes']:g} min; the run took {data['seconds'].get('total', 0):.0f} s.",
        "",
        f"**{data['selection']}**"
        + (
            f" Registered as {data['chosen']['name']}:{data['chosen']['version']} (stage {data['chosen']['stage']})."
            if data["chosen"]
            else ""
        ),
        "",
        f"![test F1 against throughput]({plot_name})",
        "",
        "## Models",
        "",
        "Validation F1 decides (drop in F1 points against the original); the test split is reported. Flips and "
        "McNemar's exact test are against the original on the test split. Throughput is the median of the rounds, "
        "latency percentiles are over every batch-1 call; `batch dep.` is the largest change of a probability "
        "when a row is predicted alone instead of in its batch.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(data)]
    lines += ["", "## Verdicts", ""]
    lines += [f"- `{m['name']}`: {m['verdict']}" for m in data["variants"]]
    if data.get("failed"):
        why = "A pass raised an error: a bug or a broken input, not a pass that does not apply."
        lines += ["", "## FAILED", "", why, ""]
        lines += [f"- **FAILED** `{x['name']}`: {x['error']}" for x in data["failed"]]
    if data["skipped"]:
        lines += ["", "## Skipped (does not apply here)", ""]
        lines += [f"- `{x['name']}`: {x['reason']}" for x in data["skipped"]]
    lines += ["", "## Comparisons (measured side by side in this run)", ""]
    for k, v in data["comparisons"].items():
        lines.append(f"- {k}: {json.dumps(v)}")
    lines += ["", "## What each pass did", "", "Each step once, under the first variant that used it.", ""]
    seen: set[str] = set()
    for m in data["variants"]:
        steps = m.get("steps") or []
        for i, st in enumerate(steps):
            key = json.dumps([(x["pass"], x["settings"]) for x in steps[: i + 1]], sort_keys=True, default=str)
            if key in seen:
                continue
            seen.add(key)
            d = {k: v for k, v in (st.get("details") or {}).items() if k not in ("ops_after", "history", "sensitivity")}
            lines.append(f"- `{m['name']}` / {st['pass']} ({st['seconds']} s): {json.dumps(d, default=str)[:600]}")
    mach = data["machine"]
    measured = data.get("measured_with") or data["preset_settings"]["measure"]
    lines += [
        "",
        "## How this was measured",
        "",
        f"Machine: {mach['cpu']}, {mach['cores']} cores, Python {mach['python']}, onnxruntime {mach['onnxruntime']}, "
        f"torch {mach.get('torch')}; load average at the end {mach['load_average']}. "
        f"Measurement: {json.dumps(measured)}. Energy is modelled from process CPU time "
        "(see joules.meter). Peak RSS is measured in a fresh process per model (joules.optimize.memory).",
        "",
    ]
    return "\n".join(lines)


def write(state: RunState, directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"json": directory / "report.json", "markdown": directory / "report.md", "plot": directory / "plot.png"}
    data = build(state, paths)
    plot(data, paths["plot"])
    paths["markdown"].write_text(markdown(data, paths["plot"].name), encoding="utf-8")
    paths["json"].write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return paths

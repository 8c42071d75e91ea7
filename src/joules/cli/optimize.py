"""``joules optimize``: compress a registered model under an accuracy budget."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from joules.cli.output import info, print_json, print_table


def add_parsers(sub: argparse._SubParsersAction[Any]) -> None:
    from joules.optimize.presets import ALL_PASSES, PRESETS

    p = sub.add_parser(
        "optimize",
        help="fuse, quantize, prune and distill a model; register the best variant within an F1 budget",
        description="Build variants of a registered model with each pass and their compositions, measure them "
        "side by side (quality on validation and test, speed, size, memory, energy), register the best one "
        "by the objective whose validation F1 drop is within --max-f1-drop, and write a report.",
    )
    p.add_argument("ref", metavar="NAME[:VERSION]", help="a bare NAME means its production version")
    p.add_argument(
        "--max-f1-drop",
        type=float,
        default=1.0,
        help="largest validation F1 drop allowed, in F1 points (1.0 = 0.01; default 1.0)",
    )
    p.add_argument("--objective", choices=["throughput", "latency", "energy"], default="throughput")
    p.add_argument(
        "--min-agreement",
        type=float,
        default=0.95,
        help="text-generation models: least greedy-token agreement with float32 (default 0.95)",
    )
    p.add_argument(
        "--max-ppl-increase",
        type=float,
        default=5.0,
        help="text-generation models: largest perplexity increase on held-out text, in percent (default 5)",
    )
    p.add_argument(
        "--passes",
        default=",".join(ALL_PASSES),
        help=f"comma-separated passes (default: all: {','.join(ALL_PASSES)}; text-generation models: "
        "int8,int8-asym,int4,int4-asym,w8a8)",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="standard", help="how hard each pass tries")
    p.add_argument("--budget-minutes", type=float, default=30.0, help="wall-clock budget of the run (default 30)")
    p.add_argument("--dataset", type=Path, help="dataset.jsonl {split, label, text} for a bundle that has none")
    p.add_argument(
        "--allow-batch-dependent",
        action="store_true",
        help="let variants whose outputs depend on their batch (dynamic int8) win over steady ones",
    )
    p.add_argument("--no-torch-reference", action="store_true", help="do not time the model in PyTorch eager")
    p.add_argument("--promote", action="store_true", help="promote the registered winner to production")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout (logs on stderr)")
    p.set_defaults(func=cmd_optimize)


def summary(state: Any) -> dict[str, Any]:
    """The ``--json`` shape: report and plot paths, the chosen version, one entry per variant."""
    from joules.optimize.report import record

    verdicts = state.selection.verdicts if state.selection else {}
    chosen = state.chosen
    return {
        "report": str(state.paths["json"]),
        "markdown": str(state.paths["markdown"]),
        "plot": str(state.paths["plot"]),
        "chosen": None if chosen is None else {k: chosen[k] for k in ("name", "version", "variant", "stage")},
        "selection": state.selection.message if state.selection else None,
        "original": record(state.original, state.original),
        "variants": [record(c, state.original, verdicts.get(c.name)) for c in state.variants],
        "references": [record(r, state.original) for r in state.references],
        "skipped": state.skipped,
        "failed": state.failed,
        "seconds": state.seconds,
    }


def _is_generator(ref: str) -> bool:
    from joules.registry import Registry

    return Registry().get(ref).task == "text-generation"


def cmd_optimize_decoder(args: argparse.Namespace) -> int:
    """Text-generation models: int8/int4 weight-only and w8a8 variants, judged by a generation budget."""
    from joules.optimize.decoder import VARIANTS, DecoderOptimizeConfig, optimize_decoder
    from joules.optimize.presets import ALL_PASSES

    passes = args.passes.split(",") if args.passes != ",".join(ALL_PASSES) else list(VARIANTS)
    config = DecoderOptimizeConfig(
        variants=tuple(p.strip() for p in passes if p.strip()),
        min_agreement=args.min_agreement,
        max_ppl_increase=args.max_ppl_increase / 100,
        promote=args.promote,
    )
    with contextlib.redirect_stdout(sys.stderr):
        report = optimize_decoder(args.ref, config)
    # As for classifiers: a pass that raised makes the exit status 1, the others are still reported.
    code = 1 if report["failed"] else 0
    if args.json:
        print_json(report)
        return code
    rows = [
        [
            v["name"],
            f"{v['agreement']:.3f}",
            "n/a" if v["perplexity"] is None else f"{v['perplexity']:.2f}",
            f"{v['tokens_per_s_1']:.1f}",
            f"{v['tokens_per_s_16']:.1f}",
            f"{v['model_mb']:.0f}",
            "n/a" if v["peak_rss_mb"] is None else f"{v['peak_rss_mb']:.0f}",
            v["verdict"],
        ]
        for v in report["variants"]
    ]
    headers = ["variant", "agreement", "perplexity", "tok/s (1)", "tok/s (16)", "model MB", "peak RSS MB", "verdict"]
    print_table(rows, headers)
    for f in report["failed"]:
        info(f"FAILED {f['name']}: {f['error']}")
    c = report["chosen"]
    print(
        f"registered {c['name']}:{c['version']} ({c['variant']}, stage {c['stage']})"
        if c
        else "the float32 original stays: no variant within the budget is faster"
    )
    print(f"report: {report['paths']['markdown']}")
    return code


def cmd_optimize(args: argparse.Namespace) -> int:
    from joules.optimize import OptimizeConfig, optimize
    from joules.optimize.report import HEADERS, table_rows

    if _is_generator(args.ref):
        return cmd_optimize_decoder(args)

    config = OptimizeConfig(
        max_f1_drop=args.max_f1_drop,
        objective=args.objective,
        passes=args.passes,
        preset=args.preset,
        budget_minutes=args.budget_minutes,
        promote=args.promote,
        allow_batch_dependent=args.allow_batch_dependent,
        torch_reference=not args.no_torch_reference,
        dataset=args.dataset,
        seed=args.seed,
        progress=not args.no_progress,
    )
    # Libraries print progress on stdout (tqdm.write, ONNX Runtime's calibrators); stdout is kept
    # for the result, so everything printed during the run goes to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        state = optimize(args.ref, config)
    out = summary(state)
    # A pass that raised (not one that does not apply) is a bug or a broken input: the run still
    # reports everything else, and the exit status (1) says that something failed.
    code = 1 if out["failed"] else 0
    if args.json:
        print_json(out)
        for f in out["failed"]:
            info(f"FAILED {f['name']}: {f['error']}")
        return code
    data = {"original": out["original"], "variants": out["variants"], "references": out["references"]}
    print_table(table_rows(data), HEADERS)
    for s in out["skipped"]:
        info(f"skipped {s['name']}: {s['reason']}")
    for f in out["failed"]:
        info(f"FAILED {f['name']}: {f['error']}")
    print(out["selection"])
    if out["chosen"]:
        c = out["chosen"]
        print(f"registered {c['name']}:{c['version']} ({c['variant']}, stage {c['stage']})")
    print(f"report: {out['markdown']}\nplot: {out['plot']}")
    return code

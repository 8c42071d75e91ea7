"""``joules predict`` (one-off) and ``joules batch`` (files)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from joules.cli.common import (
    add_engine_options,
    add_predict_options,
    add_text_limit,
    default,
    ray_place,
    refuse_ray_flags,
    runtime_options,
)
from joules.cli.engines import add_generation_options, generation_bundle, open_engine
from joules.cli.output import info, print_json, print_table
from joules.errors import ConfigError
from joules.runtime.options import RuntimeOptions
from joules.serve.batch.config import BatchConfig


def add_parsers(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("predict", help="predict a few texts and print label, probabilities and action")
    p.add_argument("ref", metavar="NAME[:VERSION]")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    p.add_argument("--json", action="store_true")
    add_predict_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "batch",
        help="score a CSV, JSONL or Parquet file, resumably (a text-generation model: one completion per row)",
    )
    p.add_argument("ref", metavar="NAME[:VERSION]")
    p.add_argument("input", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument(
        "--text-column",
        default=default(BatchConfig, "text_column"),
        help="the column holding a text model's text (default: the model's text field, usually 'text')",
    )
    p.add_argument("--id-column", default=default(BatchConfig, "id_column"), help="(default %(default)s)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=default(RuntimeOptions, "max_batch_size"),
        help="rows per model call, the same default as serve and stream (default %(default)s)",
    )
    p.add_argument(
        "--chunk-rows", type=int, help="rows per checkpoint (default: sized so a checkpoint is written every ~2 s)"
    )
    p.add_argument(
        "--input-format",
        choices=["csv", "jsonl", "parquet", "emails", "images", "mbox", "image-paths"],
        help="(default: from the extension; a folder is read as .eml files or images by the model's input kind)",
    )
    p.add_argument("--output-format", choices=["csv", "jsonl", "parquet"])
    p.add_argument("--overwrite", action="store_true", help="start over, replacing the output and any checkpoint")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    add_text_limit(p)
    add_predict_options(p)
    add_generation_options(p)
    add_engine_options(p)
    p.set_defaults(func=cmd_batch)


def _predictor(args: argparse.Namespace, **options: Any) -> Any:
    from joules.runtime import load_predictor

    return load_predictor(args.ref, rules_file=args.rules, options=runtime_options(args, **options))


def cmd_predict(args: argparse.Namespace) -> int:
    from joules.errors import OutputError

    predictor = _predictor(args)
    result = predictor.predict_texts(args.texts)
    rows = result.rows()
    for i, r in enumerate(rows):
        if r.error is not None:
            raise OutputError(f"text {i}: {r.error}; no label or action is given for it")
    if args.json:
        print_json(
            {
                "model": predictor.name,
                "version": predictor.version,
                "predictions": [r.to_dict() for r in rows],
                "energy_j": result.measurement.energy_j,
            }
        )
        return 0
    table = [
        [
            t if len(t) <= 50 else t[:47] + "...",
            r.label,
            " ".join(f"{k}={v:.4f}" for k, v in (r.probabilities or {}).items()),
            r.action or "",
        ]
        for t, r in zip(args.texts, rows, strict=True)
    ]
    print_table(table, ["text", "label", "probabilities", "action"])
    return 0


def batch_config_from_args(args: argparse.Namespace) -> BatchConfig:
    return BatchConfig(
        input=args.input,
        output=args.output,
        text_column=args.text_column,
        id_column=args.id_column,
        input_format=args.input_format,
        output_format=args.output_format,
        chunk_rows=args.chunk_rows,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )


def cmd_batch(args: argparse.Namespace) -> int:
    from joules.serve.batch import run_batch

    found = generation_bundle(args.ref)
    if found is not None:
        if args.engine == "ray":
            raise ConfigError(
                f"--engine ray scores classifiers; {args.ref!r} is a text-generation model: run its batch "
                "without --engine ray (its rows share one continuously batched engine)"
            )
        return _generation_batch(args, found)
    config = batch_config_from_args(args)
    predictor = _predictor(
        args, max_batch_size=args.batch_size, max_text_bytes=args.max_text_bytes, allow_spinning=True
    )
    if args.engine == "ray":
        from joules.serve.ray.batch import RayBatchOptions, run_ray_batch

        ray_options = RayBatchOptions(place=ray_place(args), actors=args.actors)
        summary = run_ray_batch(predictor, config, ray_options, rules_file=args.rules).to_dict()
    else:
        refuse_ray_flags(args)
        summary = run_batch(predictor, config).to_dict()
    if args.json:
        print_json(summary)
        return 0
    info(
        f"model {summary['model']}: {summary['rows']:,} rows, {summary['errors']:,} errors "
        f"({summary['errors_file']}), {summary['processed']:,} scored by this run "
        f"at {summary['rows_per_s']:,.0f} rows/s"
    )
    print_table([[k, v] for k, v in summary["actions"].items()], ["action", "rows"])
    total, per = summary["cost"]["total"], summary["cost"]["per_1000"]
    print(
        f"{summary['cost']['method']} energy {total['energy_j']:.1f} J, ${total['usd']:.6f}, "
        f"{total['co2_g']:.4f} g CO2 "
        f"({per['energy_j']:.2f} J, ${per['usd']:.6f}, {per['co2_g']:.4f} g CO2 per 1,000 predictions)"
    )
    print(f"output: {summary['output']}")
    return 0


def _generation_batch(args: argparse.Namespace, found: Any) -> int:
    from joules.serve.batch.generate import GenerationBatchConfig, run_generation_batch

    config = GenerationBatchConfig(
        input=args.input,
        output=args.output,
        id_column=args.id_column,
        prompt_column=args.text_column or "prompt",
        input_format=args.input_format,
        output_format=args.output_format,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        raw=args.raw,
        chunk_rows=args.chunk_rows,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    engine = open_engine(args, found)
    try:
        summary = run_generation_batch(engine, config).to_dict()
    finally:
        engine.close()
    if args.json:
        print_json(summary)
        return 0
    info(
        f"model {summary['model']}: {summary['rows']:,} rows, {summary['errors']:,} errors "
        f"({summary['errors_file']}), {summary['processed']:,} completed by this run at "
        f"{summary['completion_tokens_per_s']:,.1f} tokens/s"
    )
    total, per = summary["cost"]["total"], summary["cost"]["per_1m_completion_tokens"]
    print(
        f"{summary['cost']['method']} energy {total['energy_j']:.1f} J, ${total['usd']:.6f}, "
        f"{total['co2_g']:.4f} g CO2 for {summary['completion_tokens']:,} completion tokens "
        f"({per['energy_j']:.0f} J, ${per['usd']:.4f}, {per['co2_g']:.2f} g CO2 per million)"
    )
    print(f"output: {summary['output']}")
    return 0

"""``joules cost``: what predictions cost a day, a month and a year, version beside version."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from joules.cli.output import info, print_json, print_table


def add_pricing_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--region", help="grid carbon intensity region: a country code, 'world' or a cloud region")
    p.add_argument("--grid-g-per-kwh", type=float, help="grid carbon intensity in gCO2e/kWh (overrides --region)")
    p.add_argument("--price-per-hour", type=float, help="the instance's price in USD per hour")
    p.add_argument("--vcpus", type=int, help="the instance's vCPUs (the price is spread over their CPU-seconds)")
    p.add_argument("--watts-per-core", type=float, help="modelled power of one busy hardware thread (W)")
    p.add_argument("--static-watts", type=float, help="modelled static power of the instance (W)")


def pricing_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "region": args.region,
        "grid_g_per_kwh": args.grid_g_per_kwh,
        "price_per_hour": args.price_per_hour,
        "vcpus": args.vcpus,
        "watts_per_core": args.watts_per_core,
        "static_watts": args.static_watts,
    }


def add_parsers(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "cost",
        help="project daily, monthly and yearly kWh, dollars and CO2 from measured per-prediction figures",
    )
    p.add_argument("ref", metavar="NAME[:VERSION]")
    p.add_argument(
        "--per-day",
        type=float,
        metavar="N",
        help="predictions per day (a text-generation model: completion tokens per day; optional, its cost is "
        "also given per million tokens)",
    )
    p.add_argument(
        "--max-tokens", type=int, default=64, help="text-generation models: tokens per completion (default 64)"
    )
    p.add_argument(
        "--compare",
        default="all",
        metavar="all|none|V,V",
        help="other versions of the model to measure beside it (default: all)",
    )
    p.add_argument("--batch-size", type=int, default=1, help="rows per model call while measuring (default 1)")
    p.add_argument("--samples", type=int, default=200, help="texts per round (default 200, from the test split)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is kept (default 3)")
    p.add_argument("--data", type=Path, help="texts to measure with (.jsonl, .csv or lines)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: one per core)")
    add_pricing_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cost)


def cmd_cost(args: argparse.Namespace) -> int:
    from joules.bench.costs import choose_versions, cost_report, measure_costs, sample_texts
    from joules.errors import BenchError
    from joules.registry import Registry
    from joules.settings import load_settings

    if args.per_day is not None and args.per_day < 0:
        raise BenchError(f"--per-day must be >= 0, got {args.per_day:g}")
    settings = load_settings(**pricing_overrides(args))
    registry = Registry(settings)
    mv = registry.get(args.ref)
    bundle = registry.load(f"{mv.name}:{mv.version}")
    if bundle.spec.generation is not None:
        return _token_cost(args, registry, mv, bundle)
    if args.per_day is None:
        raise BenchError("--per-day N is needed: how many predictions a day to project for")
    versions = choose_versions(registry, args.ref, args.compare)
    refs = [mv.ref for mv in versions]
    texts = sample_texts(refs[0], args.data, args.samples)
    info(f"measuring {', '.join(refs)} on {len(texts)} texts x {args.rounds} rounds at batch size {args.batch_size}")
    costs = measure_costs(
        refs, texts=texts, settings=settings, batch_size=args.batch_size, rounds=args.rounds, threads=args.threads
    )
    meta = {"samples": len(texts), "batch_size": args.batch_size, "rounds": args.rounds, "statistic": "median round"}
    report = cost_report(costs, per_day=args.per_day, settings=settings, meta=meta)
    if args.json:
        print_json(report)
        return 0
    s = report["settings"]
    rows = []
    for r in report.get("versions", [report]):
        pp, day, year = r["per_prediction"], r["per_day"], r["per_year"]
        rows.append(
            [
                f"{r['model']}:{r['version']}",
                r["stage"],
                f"{pp['energy_j']:.4f}",
                f"{pp['cpu_ms']:.2f}",
                f"{day['kwh']:.3f}",
                f"{day['usd']:.2f}",
                f"{day['co2_kg']:.3f}",
                f"{year['kwh']:.1f}",
                f"{year['usd']:.0f}",
                f"{year['co2_kg']:.1f}",
            ]
        )
    print(f"{args.per_day:,.0f} predictions a day; {report['method']}: {report['how']}")
    print_table(
        rows,
        ["version", "stage", "J/pred", "CPU ms/pred", "kWh/day", "$/day", "kg CO2/day", "kWh/yr", "$/yr", "kg CO2/yr"],
    )
    for ref, sv in report.get("savings_vs_primary", {}).items():
        print(
            f"{ref} vs {refs[0]}: saves {sv['kwh_per_year']:.1f} kWh, ${sv['usd_per_year']:.0f} and "
            f"{sv['co2_kg_per_year']:.1f} kg CO2 a year (energy x{sv['energy_ratio']:.2f})"
        )
    print(
        f"prices: ${s['price_per_hour']:g}/h for {s['vcpus']} vCPU; grid {s['grid_g_per_kwh']:g} gCO2e/kWh "
        f"({s['region']}); {s['watts_per_core']:g} W per busy thread, {s['static_watts']:g} W static"
    )
    return 0


def _token_cost(args: argparse.Namespace, registry: Any, mv: Any, bundle: Any) -> int:
    """A text-generation model: measured per million completion tokens, with its prompts in one running batch."""
    from joules.bench.llm_costs import measure_tokens, prompts_from, token_report
    from joules.runtime.generation import EngineConfig
    from joules.runtime.options import RuntimeOptions
    from joules.serve.engines import open_generation_engine

    samples = min(args.samples, 64) if args.samples != 200 else 16  # 200 texts suit classifiers, not completions
    prompts = prompts_from(args.data, samples)
    spec = bundle.spec.generation
    engine = open_generation_engine(
        bundle,
        EngineConfig(max_model_len=min(2048, spec.context_length), max_num_seqs=max(1, len(prompts))),
        options=RuntimeOptions(intra_op_threads=args.threads, allow_spinning=True, spin_duration_us=100),
        settings=registry.settings,
        name=mv.name,
        version=mv.version,
    )
    info(f"measuring {mv.ref} on {len(prompts)} prompts together x {args.rounds} rounds, {args.max_tokens} tokens each")
    try:
        best = measure_tokens(engine, prompts, max_tokens=args.max_tokens, rounds=args.rounds)
    finally:
        engine.close()
    report = token_report(best, per_day=args.per_day, model=mv.ref, concurrency=len(prompts))
    if args.json:
        print_json(report)
        return 0
    m = report["per_million_completion_tokens"]
    print(
        f"{mv.ref}: {report['completion_tokens']:,} completion tokens at {report['completion_tokens_per_s']:.1f}/s "
        f"({len(prompts)} completions at once); {report['method']}"
    )
    print_table(
        [[f"{m['energy_j']:,.0f}", f"{m['kwh']:.4f}", f"{m['usd']:.4f}", f"{m['co2_g']:.1f}", f"{m['cpu_hours']:.3f}"]],
        ["J/1M tok", "kWh/1M tok", "$/1M tok", "g CO2/1M tok", "CPU h/1M tok"],
    )
    if "per_day" in report:
        d, y = report["per_day"], report["per_year"]
        print(
            f"{args.per_day:,.0f} completion tokens a day: {d['kwh']:.3f} kWh, ${d['usd']:.2f}, {d['co2_kg']:.3f} kg "
            f"CO2 a day; {y['kwh']:.1f} kWh, ${y['usd']:.0f}, {y['co2_kg']:.1f} kg CO2 a year"
        )
    return 0

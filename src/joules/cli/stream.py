"""``joules stream`` (judge messages as they flow) and ``joules publish`` (push a file into a stream)."""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path
from typing import Any

from joules.cli.common import add_predict_options, add_text_limit, default, runtime_options
from joules.cli.engines import add_generation_options, generation_bundle, open_engine
from joules.cli.output import info, print_json
from joules.runtime.options import RuntimeOptions
from joules.serve.stream.config import StreamConfig

STREAM_EPILOG = """\
examples:
  joules stream spam --source redis://localhost:6379/mail --sink redis://localhost:6379/verdicts
  cat mail.jsonl | joules stream spam --source - > verdicts.jsonl

Each message gets exactly one outcome: a verdict in the sink stream (fields source_id, id, label,
action, probabilities, model), or a dead letter in <source>:dead (reason and the original fields).
"""


def add_parsers(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "stream",
        help="judge messages from a Redis stream (consumer group) or JSONL on stdin, as they arrive",
        epilog=STREAM_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("ref", metavar="NAME[:VERSION]")
    p.add_argument("--source", required=True, help="redis://HOST:PORT/STREAM, or - for JSONL on stdin")
    p.add_argument("--sink", help="redis://HOST:PORT/STREAM for verdicts (with a Redis source); - for stdout")
    p.add_argument("--group", help="consumer group (default: the model's name)")
    p.add_argument("--consumer", help="this consumer's name in the group (default: HOST-PID)")
    p.add_argument(
        "--consumers",
        type=int,
        default=1,
        metavar="N",
        help="N consumer processes of the group from this command (Redis source; default 1)",
    )
    d = partial(default, StreamConfig)
    p.add_argument(
        "--batch-size", type=int, default=d("batch_size"), help="messages per micro-batch (default %(default)s)"
    )
    p.add_argument(
        "--max-wait-ms",
        type=int,
        default=d("max_wait_ms"),
        help="close a micro-batch this long after its first message (default %(default)s)",
    )
    p.add_argument(
        "--start",
        default=d("start"),
        help="where a new group starts: 0 (the backlog, default), $ (new only), an id",
    )
    p.add_argument(
        "--claim-idle-ms",
        type=int,
        default=d("claim_idle_ms"),
        help="claim other consumers' entries pending this long (default %(default)s)",
    )
    p.add_argument(
        "--max-attempts",
        type=int,
        default=d("max_attempts"),
        help="deliveries before a message is dead-lettered (default %(default)s)",
    )
    add_text_limit(p)
    p.add_argument(
        "--dedupe-ttl-s",
        type=int,
        default=d("dedupe_ttl_s"),
        help="keep the record that a message was answered this long (default %(default)s)",
    )
    p.add_argument("--sink-maxlen", type=int, help="trim the sink stream to about this many entries (default: never)")
    p.add_argument(
        "--text-field",
        default=d("text_field"),
        help="the message field holding a text model's text (default: the model's text field, usually 'text')",
    )
    p.add_argument("--id-field", default=d("id_field"), help="(default %(default)s)")
    p.add_argument(
        "--call-rows",
        type=int,
        default=default(RuntimeOptions, "max_batch_size"),
        help="rows per model call: a micro-batch is sorted by length and cut into calls of at most this many, "
        "the same default as serve and batch (default %(default)s)",
    )
    p.add_argument(
        "--report-every-s",
        type=float,
        default=d("report_every_s"),
        help="a progress line on stderr this often (0: only at exit; default %(default)s)",
    )
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics at http://127.0.0.1:PORT/metrics")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port (default 127.0.0.1)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON at exit (stderr with --source -)")
    add_predict_options(p)
    add_generation_options(p)
    p.add_argument("--prompt-field", default="prompt", help="a text-generation model's prompt field (default prompt)")
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("publish", help="push a CSV or JSONL file into a Redis stream, one entry per row")
    p.add_argument("file", metavar="FILE", help="a .csv or .jsonl file, or - for JSONL on stdin")
    p.add_argument("--to", required=True, metavar="redis://HOST:PORT/STREAM")
    p.add_argument("--format", choices=["csv", "jsonl"], help="the file's format (default: from its extension)")
    p.add_argument("--rate", type=float, help="entries per second, paced (default: as fast as possible)")
    p.add_argument("--maxlen", type=int, help="trim the stream to about this many entries")
    p.add_argument("--limit", type=int, help="publish at most this many entries")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.set_defaults(func=cmd_publish)


def config_from_args(args: argparse.Namespace) -> StreamConfig:
    from joules.registry.names import parse_ref
    from joules.serve.stream.config import default_consumer_name

    return StreamConfig(
        group=args.group or parse_ref(args.ref).name,
        consumer=args.consumer or default_consumer_name(),
        batch_size=args.batch_size,
        max_wait_ms=args.max_wait_ms,
        start=args.start,
        claim_idle_ms=args.claim_idle_ms,
        max_attempts=args.max_attempts,
        max_text_bytes=args.max_text_bytes,
        dedupe_ttl_s=args.dedupe_ttl_s,
        sink_maxlen=args.sink_maxlen,
        text_field=args.text_field,
        id_field=args.id_field,
        report_every_s=args.report_every_s,
    )


def cmd_stream(args: argparse.Namespace) -> int:
    if args.consumers != 1:
        return _stream_group(args)
    from joules.runtime import load_predictor
    from joules.serve.stream import StreamOptions, plan_endpoints, run_stream

    plan = plan_endpoints(args.source, args.sink)
    config = config_from_args(args)
    options = StreamOptions(metrics_port=args.metrics_port, metrics_host=args.metrics_host)
    found = generation_bundle(args.ref)
    if found is not None:
        metrics = _generation_stream(args, found, plan, config, options)
    else:
        runtime = runtime_options(args, max_batch_size=args.call_rows, max_text_bytes=args.max_text_bytes)
        predictor = load_predictor(args.ref, rules_file=args.rules, options=runtime)
        metrics = run_stream(predictor, plan, config, options)
    summary = metrics.summary()
    if args.json:
        text = json.dumps(summary, indent=2)
        if args.source == "-":
            print(text, file=sys.stderr)
        else:
            print_json(summary)
        return 0
    lat = summary["e2e_latency_ms"]
    info(
        f"model {summary['model']}: {summary['verdicts']:,} verdicts, {summary['dead_letters']:,} dead letters, "
        f"{summary['duplicates_skipped']:,} duplicates skipped in {summary['seconds']:,.1f} s "
        f"({summary['messages_per_s']:,.1f} msg/s"
        + (f", e2e p50 {lat['p50']:,.0f} ms p99 {lat['p99']:,.0f} ms" if lat["p50"] is not None else "")
        + f"); {summary['cost']['method']} energy {summary['energy_j']:.1f} J, "
        f"${summary['cost']['total']['usd']:.6f}, {summary['cost']['total']['co2_g']:.4f} g CO2 "
        f"({summary['energy_j_per_1000']:.2f} J per 1,000 verdicts)"
    )
    return 0


def _generation_stream(args: argparse.Namespace, found: Any, plan: Any, config: Any, options: Any) -> Any:
    from joules.serve.stream.generation import GenerationSettings, run_generation_stream

    settings = GenerationSettings(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        raw=args.raw,
        prompt_field=args.prompt_field,
    )
    engine = open_engine(args, found)
    try:
        return run_generation_stream(engine, settings, plan, config, options)
    finally:
        engine.close()


def _stream_group(args: argparse.Namespace) -> int:
    from joules.errors import ConfigError
    from joules.serve.stream.group import GroupPlan, member_argv, run_group

    if args.consumers < 1:
        raise ConfigError(f"--consumers must be >= 1, got {args.consumers}")
    if not args.source.startswith("redis://"):
        raise ConfigError("--consumers N needs a Redis source (one group, N consumers); stdin has one reader")
    argv = sys.argv[sys.argv.index("stream") :]  # the flags as given, for each consumer
    plan = GroupPlan(consumers=args.consumers, argv=tuple(member_argv(argv, i) for i in range(args.consumers)))
    return run_group(plan)


def cmd_publish(args: argparse.Namespace) -> int:
    from joules.serve.stream import PublishConfig, RedisEndpoint, publish_file

    endpoint = RedisEndpoint.parse(args.to)
    config = PublishConfig(
        path=None if args.file == "-" else Path(args.file),
        format=args.format,
        rate=args.rate,
        maxlen=args.maxlen,
        limit=args.limit,
        progress=not args.no_progress and not args.json,
    )
    summary = publish_file(endpoint, config).to_dict()
    if args.json:
        print_json(summary)
        return 0
    info(
        f"published {summary['published']:,} entries to {summary['stream']} in {summary['seconds']:.1f} s "
        f"({summary['entries_per_s']:,.0f}/s)"
        + (f"; skipped {summary['skipped']:,} lines" if summary["skipped"] else "")
    )
    return 0

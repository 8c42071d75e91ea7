"""``joules serve``: the online server (Open Inference Protocol V2 + simple JSON API)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from joules.cli.cost import add_pricing_options, pricing_overrides


def add_parsers(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "serve",
        help="serve production models over HTTP (Open Inference Protocol V2, /v1 JSON), with dynamic batching",
        description="Serve the production version of each named model (every production model when none is "
        "named) and follow promotions without dropping a request.",
    )
    p.add_argument("models", nargs="*", metavar="NAME", help="models to serve (default: every production model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch-size", type=int, default=32, help="rows per model call (default 32)")
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        default=1024,
        help="padded tokens per model call, text models (default 1024): bounds how long one call takes",
    )
    p.add_argument(
        "--batch-window",
        type=int,
        default=64,
        help="rows gathered from the queue at once and cut by length into model calls of at most "
        "--max-batch-size rows (default 64; --max-batch-size or less: no wider window)",
    )
    p.add_argument(
        "--max-queue-delay-ms",
        type=float,
        default=2.0,
        help="longest wait for a fuller batch while another call runs (default 2)",
    )
    p.add_argument("--max-queue", type=int, default=1024, help="requests waiting before 503 (default 1024)")
    p.add_argument(
        "--timeout-ms", type=float, default=1000.0, help="deadline of each request: 504 after (default 1000)"
    )
    p.add_argument("--instances", type=int, default=1, help="model calls run in parallel (default 1)")
    p.add_argument("--rules", type=Path, help="a rule file that overrides the bundles' default rules")
    p.add_argument("--api-key-env", metavar="VAR", help="require the API key held in environment variable VAR")
    p.add_argument("--max-body-mb", type=float, default=1.0, help="largest request body, MiB (default 1)")
    p.add_argument("--max-instances", type=int, default=256, help="most rows in one request (default 256)")
    p.add_argument("--cache-size", type=int, default=0, help="response cache entries per model; 0: off (default)")
    p.add_argument("--poll-interval-s", type=float, default=2.0, help="how often to look for promotions (default 2)")
    p.add_argument("--drain-timeout-s", type=float, default=30.0, help="graceful shutdown limit (default 30)")
    p.add_argument(
        "--max-connections",
        type=int,
        default=2048,
        help="open connections before 503; health probes are still answered (default 2048)",
    )
    # Their defaults live in ServeConfig (serve/online/config.py): a flag not given is not passed,
    # so that importing the server's configuration is not needed to build the parser.
    limit = p.add_argument_group("limits on what a client may send (docs/online.md#limits)")
    limit.add_argument(
        "--max-header-kb",
        type=float,
        default=argparse.SUPPRESS,
        help="request line and headers, KiB: 431 beyond (default 64)",
    )
    limit.add_argument(
        "--max-headers", type=int, default=argparse.SUPPRESS, help="header fields per request: 431 beyond (default 100)"
    )
    limit.add_argument(
        "--header-timeout-s",
        type=float,
        default=argparse.SUPPRESS,
        help="time for a request's line and headers to arrive: 408 and close after (default 10)",
    )
    limit.add_argument(
        "--body-timeout-s",
        type=float,
        default=argparse.SUPPRESS,
        help="time for a declared body to arrive after the headers: 408 and close after (default 30)",
    )
    limit.add_argument(
        "--keep-alive-s",
        type=float,
        default=argparse.SUPPRESS,
        help="an idle connection between requests is closed after this (default 5)",
    )
    p.add_argument(
        "--model-control",
        choices=["none", "explicit"],
        default=argparse.SUPPRESS,
        help="'explicit': allow POST /v2/repository/models/NAME/load and /unload (behind the API key when one is "
        "set); 'none': refuse them with 403 (default none)",
    )
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads per instance (0: cores / instances)")
    p.add_argument(
        "--spin-us",
        type=int,
        default=100,
        help="microseconds ONNX Runtime's idle threads spin for work before sleeping; 0: never spin (default 100)",
    )
    p.add_argument("--providers", help="comma-separated ONNX Runtime execution providers (default: best available)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    # How each response's X-Joules-* cost is priced; flags win over JOULES_* variables and config.yaml.
    add_pricing_options(p)
    p.set_defaults(func=cmd_serve)


# ServeConfig fields whose flag has no argparse default (ServeConfig's applies when the flag is absent).
OPTIONAL_FIELDS = (
    "max_header_kb",
    "max_headers",
    "header_timeout_s",
    "body_timeout_s",
    "keep_alive_s",
    "model_control",
)


def config_from_args(args: argparse.Namespace) -> Any:
    from joules.runtime.batching import BatchingConfig
    from joules.serve.online import ServeConfig

    providers = tuple(x.strip() for x in args.providers.split(",")) if args.providers else None
    given = {k: getattr(args, k) for k in OPTIONAL_FIELDS if hasattr(args, k)}
    return ServeConfig(
        models=tuple(args.models),
        host=args.host,
        port=args.port,
        batching=BatchingConfig(
            max_batch_size=args.max_batch_size,
            max_batch_tokens=args.max_batch_tokens,
            window_rows=args.batch_window,
            max_queue_delay_ms=args.max_queue_delay_ms,
            max_queue=args.max_queue,
            instances=args.instances,
        ),
        timeout_ms=args.timeout_ms,
        rules_file=args.rules,
        api_key_env=args.api_key_env,
        max_body_mb=args.max_body_mb,
        max_instances=args.max_instances,
        cache_size=args.cache_size,
        poll_interval_s=args.poll_interval_s,
        drain_timeout_s=args.drain_timeout_s,
        max_connections=args.max_connections,
        threads=args.threads,
        spin_us=args.spin_us,
        providers=providers,
        access_log=args.access_log,
        **given,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from joules.registry import Registry
    from joules.serve.online import run_server
    from joules.settings import load_settings

    config = config_from_args(args)
    return run_server(config, registry=Registry(load_settings(**pricing_overrides(args))))

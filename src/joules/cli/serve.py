"""``joules serve``: the online server (Open Inference Protocol V2 + simple JSON API)."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import Any

from joules.cli.common import (
    BATCH_INVARIANT_HELP,
    add_engine_options,
    add_parallel_options,
    default,
    parallel_options,
    ray_place,
)
from joules.cli.cost import add_pricing_options, pricing_overrides
from joules.errors import ConfigError
from joules.runtime.batching import BatchingConfig
from joules.serve.online.config import ServeConfig


def add_parsers(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "serve",
        help="serve production models over HTTP (Open Inference Protocol V2, /v1 JSON), with dynamic batching",
        description="Serve the production version of each named model (every production model when none is "
        "named) and follow promotions without dropping a request.",
    )
    p.add_argument("models", nargs="*", metavar="NAME", help="models to serve (default: every production model)")
    d = partial(default, ServeConfig)
    b = partial(default, BatchingConfig)
    p.add_argument("--host", default=d("host"), help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=d("port"), help="(default %(default)s)")
    p.add_argument(
        "--max-batch-size", type=int, default=b("max_batch_size"), help="rows per model call (default %(default)s)"
    )
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        default=b("max_batch_tokens"),
        help="padded tokens per model call, text models (default %(default)s): bounds how long one call takes",
    )
    p.add_argument(
        "--batch-window",
        type=int,
        default=b("window_rows"),
        help="rows gathered from the queue at once and cut by length into model calls of at most "
        "--max-batch-size rows (default %(default)s; --max-batch-size or less: no wider window)",
    )
    p.add_argument(
        "--max-queue-delay-ms",
        type=float,
        default=b("max_queue_delay_ms"),
        help="longest wait for a fuller batch while another call runs (default %(default)s)",
    )
    p.add_argument(
        "--max-queue", type=int, default=b("max_queue"), help="requests waiting before 503 (default %(default)s)"
    )
    p.add_argument(
        "--timeout-ms",
        type=float,
        default=d("timeout_ms"),
        help="deadline of each request: 504 after (default %(default)s)",
    )
    p.add_argument(
        "--instances", type=int, default=b("instances"), help="model calls run in parallel (default %(default)s)"
    )
    p.add_argument("--rules", type=Path, help="a rule file that overrides the bundles' default rules")
    p.add_argument("--api-key-env", metavar="VAR", help="require the API key held in environment variable VAR")
    p.add_argument(
        "--max-body-mb", type=float, default=d("max_body_mb"), help="largest request body, MiB (default %(default)s)"
    )
    p.add_argument(
        "--max-instances", type=int, default=d("max_instances"), help="most rows in one request (default %(default)s)"
    )
    p.add_argument(
        "--cache-size",
        type=int,
        default=d("cache_size"),
        help="response cache entries per model; 0: off (default %(default)s)",
    )
    p.add_argument(
        "--poll-interval-s",
        type=float,
        default=d("poll_interval_s"),
        help="how often to look for promotions (default %(default)s)",
    )
    p.add_argument(
        "--drain-timeout-s",
        type=float,
        default=d("drain_timeout_s"),
        help="graceful shutdown limit (default %(default)s)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=d("max_connections"),
        help="open connections before 503; health probes are still answered (default %(default)s)",
    )
    p.add_argument(
        "--threads", type=int, default=d("threads"), help="ONNX Runtime threads per instance (0: cores / instances)"
    )
    limit = p.add_argument_group("limits on what a client may send (docs/online.md#limits)")
    limit.add_argument(
        "--max-header-kb",
        type=float,
        default=d("max_header_kb"),
        help="request line and headers, KiB: 431 beyond (default %(default)g)",
    )
    limit.add_argument(
        "--max-headers",
        type=int,
        default=d("max_headers"),
        help="header fields per request: 431 beyond (default %(default)s)",
    )
    limit.add_argument(
        "--header-timeout-s",
        type=float,
        default=d("header_timeout_s"),
        help="time for a request's line and headers to arrive: 408 and close after (default %(default)g)",
    )
    limit.add_argument(
        "--body-timeout-s",
        type=float,
        default=d("body_timeout_s"),
        help="time for a declared body to arrive after the headers: 408 and close after (default %(default)g)",
    )
    limit.add_argument(
        "--keep-alive-s",
        type=float,
        default=d("keep_alive_s"),
        help="an idle connection between requests is closed after this (default %(default)g)",
    )
    p.add_argument(
        "--model-control",
        choices=["none", "explicit"],
        default=d("model_control"),
        help="'explicit': allow POST /v2/repository/models/NAME/load and /unload (behind the API key when one is "
        "set); 'none': refuse them with 403 (default %(default)s)",
    )
    p.add_argument(
        "--spin-us",
        type=int,
        default=d("spin_us"),
        help="microseconds ONNX Runtime's idle threads spin for work before sleeping; 0: never spin "
        "(default %(default)s)",
    )
    p.add_argument(
        "--max-text-bytes",
        type=int,
        default=d("max_text_bytes"),
        help="longer texts are refused (the same rule and reason in every mode); "
        "shorter ones are cut to the model's token limit (default %(default)s)",
    )
    p.add_argument("--providers", help="comma-separated ONNX Runtime execution providers (default: best available)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    gen = p.add_argument_group("generative models (text-generation bundles: /v1/chat/completions, docs/generate.md)")
    gen.add_argument(
        "--max-model-len",
        type=int,
        default=d("max_model_len"),
        help="longest prompt + completion, tokens (the model's context if shorter; default %(default)s)",
    )
    gen.add_argument(
        "--max-num-seqs",
        type=int,
        default=d("max_num_seqs"),
        help="sequences decoded together by continuous batching (default %(default)s)",
    )
    gen.add_argument(
        "--max-waiting-seqs",
        type=int,
        default=d("max_waiting_seqs"),
        help="completions queued beyond the running ones: 503 + Retry-After past it (default %(default)s)",
    )
    gen.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=d("max_num_batched_tokens"),
        help="tokens per engine step: the running decodes, then prompt chunks with what is left; more favours "
        "throughput and new prompts, less the running streams' inter-token latency (default %(default)s)",
    )
    gen.add_argument(
        "--prefix-cache-slots",
        type=int,
        default=d("prefix_cache_slots"),
        help="computed prompts kept so a later prompt that starts the same way (a system prompt, a chat's "
        "history) reuses their keys and values; 0: no prefix caching (default %(default)s)",
    )
    gen.add_argument("--batch-invariant", action="store_true", help=BATCH_INVARIANT_HELP)
    add_parallel_options(p)
    # How each response's X-Joules-* cost is priced; flags win over JOULES_* variables and config.yaml.
    add_pricing_options(p)
    add_engine_options(p, actors=False)
    scale = p.add_mutually_exclusive_group()
    scale.add_argument(
        "--replicas", type=int, help="with --engine ray: replicas, each with its own batcher (default 1)"
    )
    scale.add_argument(
        "--autoscale", metavar="MIN,MAX", help="with --engine ray: let Ray Serve scale MIN..MAX replicas"
    )
    p.set_defaults(func=cmd_serve)


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    providers = tuple(x.strip() for x in args.providers.split(",")) if args.providers else None
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
        max_text_bytes=args.max_text_bytes,
        max_header_kb=args.max_header_kb,
        max_headers=args.max_headers,
        header_timeout_s=args.header_timeout_s,
        body_timeout_s=args.body_timeout_s,
        keep_alive_s=args.keep_alive_s,
        model_control=args.model_control,
        parallel=parallel_options(args),
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_waiting_seqs=args.max_waiting_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        prefix_cache_slots=args.prefix_cache_slots,
        batch_invariant=args.batch_invariant,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from joules.registry import Registry
    from joules.serve.online import run_server
    from joules.settings import load_settings

    config = config_from_args(args)
    settings = load_settings(**pricing_overrides(args))
    if args.engine == "ray":
        return _serve_on_ray(args, config, settings)
    if args.address or args.replicas or args.autoscale:
        raise ConfigError("--address, --replicas and --autoscale only apply with --engine ray; add --engine ray")
    return run_server(config, registry=Registry(settings))


def _serve_on_ray(args: argparse.Namespace, config: ServeConfig, settings: Any) -> int:
    from joules.serve.ray.online import RayServeOptions, parse_autoscale, run_ray_server

    if args.tensor_parallel is not None:  # ParallelOptions refuses it too; say it before Ray starts
        raise ConfigError("--engine ray does not run --tensor-parallel models yet; serve them without --engine ray")
    options = RayServeOptions(
        place=ray_place(args),
        replicas=args.replicas or 1,
        autoscale=parse_autoscale(args.autoscale) if args.autoscale else None,
    )
    return run_ray_server(config, settings, options)

"""Opening a generative model for a command (batch, stream): through ``joules.serve.engines``, the one seam."""

from __future__ import annotations

import argparse
from typing import Any

from joules.cli.common import BATCH_INVARIANT_HELP, add_parallel_options, parallel_options, runtime_options


def add_generation_options(p: argparse.ArgumentParser) -> None:
    """Flags a command that can run a text-generation model takes (a classifier ignores them)."""
    from joules.runtime.limits import MAX_MODEL_LEN, MAX_NUM_BATCHED_TOKENS, MAX_NUM_SEQS, PREFIX_CACHE_SLOTS

    g = p.add_argument_group("text-generation models (docs/generate.md)")
    g.add_argument("--max-tokens", type=int, default=256, help="most tokens per completion (default %(default)s)")
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default %(default)s)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default %(default)s)")
    g.add_argument(
        "--raw",
        action="store_true",
        help="send each prompt as plain text to complete (default: one user message through the chat template)",
    )
    g.add_argument("--seed", type=int, help="with --temperature > 0: item i samples with seed S + i (reproducible)")
    g.add_argument(
        "--max-model-len",
        type=int,
        default=MAX_MODEL_LEN,
        help="longest prompt + completion (the model's context if shorter; default %(default)s)",
    )
    g.add_argument(
        "--max-num-seqs",
        type=int,
        default=MAX_NUM_SEQS,
        help="completions decoded together (default %(default)s)",
    )
    g.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=MAX_NUM_BATCHED_TOKENS,
        help="tokens per engine step: the running decodes, then prompt chunks (default %(default)s)",
    )
    g.add_argument(
        "--prefix-cache-slots",
        type=int,
        default=PREFIX_CACHE_SLOTS,
        help="computed prompts kept for prompts that start the same way; 0: none (default %(default)s)",
    )
    g.add_argument("--batch-invariant", action="store_true", help=BATCH_INVARIANT_HELP)
    add_parallel_options(p)


def generation_bundle(ref: str) -> tuple[Any, Any, Any] | None:
    """(registry, model version, bundle) when ``ref`` names a text-generation model, else None."""
    from joules.registry import Registry
    from joules.settings import load_settings

    registry = Registry(load_settings())
    mv = registry.get(ref)
    bundle = registry.load(f"{mv.name}:{mv.version}")
    return (registry, mv, bundle) if bundle.spec.generation is not None else None


def open_engine(args: argparse.Namespace, found: tuple[Any, Any, Any]) -> Any:
    """The engine for the model ``found`` by ``generation_bundle``, with the command's flags."""
    from joules.runtime.generation import EngineConfig
    from joules.serve.engines import open_generation_engine

    registry, mv, bundle = found
    context = bundle.spec.generation.context_length
    config = EngineConfig(
        max_model_len=min(args.max_model_len, context),
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        prefix_cache_slots=args.prefix_cache_slots,
        batch_invariant=args.batch_invariant,
    )
    return open_generation_engine(
        bundle,
        config,
        parallel=parallel_options(args),
        options=runtime_options(args, allow_spinning=True, spin_duration_us=100),
        settings=registry.settings,
        name=mv.name,
        version=mv.version,
    )

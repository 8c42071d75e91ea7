"""``joules generate`` (one completion, streamed) and ``joules chat`` (a conversation in the terminal)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from joules.cli.common import add_parallel_options, parallel_options, runtime_options
from joules.cli.output import info, print_json


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=256, help="most tokens to generate (default 256)")
    p.add_argument("--temperature", type=float, help="0: greedy (default: the model's default, else 0.7)")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass (default: the model's default, else 1)")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens (default: all)")
    p.add_argument("--seed", type=int, help="same seed and prompt, same text")
    p.add_argument("--repetition-penalty", type=float, help="> 1 discourages repeating tokens (default 1)")
    p.add_argument(
        "--max-model-len",
        type=int,
        help="longest prompt + completion (default 2048, or the model's context if shorter)",
    )
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: one per core)")
    add_parallel_options(p)


def add_parsers(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("generate", help="generate text with a chat model, printing tokens as they come")
    p.add_argument("ref", metavar="NAME[:VERSION]")
    p.add_argument("prompt", metavar="PROMPT", help="sent through the chat template as one user message")
    p.add_argument("--raw", action="store_true", help="send PROMPT as plain text to complete, without the template")
    p.add_argument("--system", help="a system message before PROMPT")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end instead of streaming")
    _add_engine_options(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="talk with a chat model in the terminal (/exit or Ctrl-D to leave)")
    p.add_argument("ref", metavar="NAME[:VERSION]")
    p.add_argument("--system", help="a system message that opens the conversation")
    _add_engine_options(p)
    p.set_defaults(func=cmd_chat)


def _engine(args: argparse.Namespace) -> Any:
    from joules.registry import Registry
    from joules.runtime.generation import EngineConfig
    from joules.serve.engines import open_generation_engine
    from joules.settings import load_settings

    parallel = parallel_options(args)  # a bad flag is refused before the registry is opened
    settings = load_settings()
    registry = Registry(settings)
    mv = registry.get(args.ref)
    bundle = registry.load(f"{mv.name}:{mv.version}")
    context = bundle.spec.generation.context_length if bundle.spec.generation else EngineConfig().max_model_len
    length = args.max_model_len or min(EngineConfig().max_model_len, context)
    # One conversation at a time: a few slots, and prefix caching so each turn reuses the history's cache.
    config = EngineConfig(max_model_len=length, max_num_seqs=2, max_waiting=4, prefix_cache_slots=2)
    return open_generation_engine(
        bundle,
        config,
        parallel=parallel,
        options=runtime_options(args, allow_spinning=True, spin_duration_us=100),
        settings=settings,
        name=mv.name,
        version=mv.version,
    )


def _params(args: argparse.Namespace, engine: Any) -> Any:
    from joules.runtime.generation import SamplingParams

    defaults = engine.spec.defaults or {}
    temperature = args.temperature if args.temperature is not None else defaults.get("temperature", 0.7)
    top_p = args.top_p if args.top_p is not None else defaults.get("top_p", 1.0)
    top_k = args.top_k if args.top_k is not None else int(defaults.get("top_k", 0) or 0)
    rep = args.repetition_penalty if args.repetition_penalty is not None else defaults.get("repetition_penalty", 1.0)
    return SamplingParams(
        max_tokens=args.max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=rep,
        seed=args.seed,
    )


def cmd_generate(args: argparse.Namespace) -> int:
    from joules.runtime.generation import GenerationRequest, GenerationResult

    engine = _engine(args)
    try:
        params = _params(args, engine)
        if args.raw:
            request = GenerationRequest(prompt=args.prompt, params=params)
        else:
            messages = [{"role": "system", "content": args.system}] if args.system else []
            messages.append({"role": "user", "content": args.prompt})
            request = GenerationRequest(messages=messages, params=params)
        started = time.perf_counter()
        first: float | None = None
        deltas = []
        for d in engine.stream(request):
            if first is None and d.token_ids:
                first = time.perf_counter() - started
            deltas.append(d)
            if not args.json and d.text:
                sys.stdout.write(d.text)
                sys.stdout.flush()
        elapsed = time.perf_counter() - started
        result = GenerationResult.gather(deltas)
        if result.finish_reason == "error":
            from joules.errors import EngineUnavailableError, JoulesError

            if not engine.healthy:  # a tensor-parallel rank died
                raise EngineUnavailableError(result.error or engine.unhealthy_reason or "the engine stopped")
            raise JoulesError(result.error or "generation failed")
        decode_s = elapsed - (first or 0.0)
        tps = (
            (result.usage.completion_tokens - 1) / decode_s
            if decode_s > 0 and result.usage.completion_tokens > 1
            else None
        )
        if args.json:
            print_json(
                {
                    "model": engine.name,
                    "version": engine.version,
                    "text": result.text,
                    "finish_reason": result.finish_reason,
                    "usage": result.usage.to_dict(),
                    "cost": result.cost.to_dict(),
                    "time_to_first_token_s": first,
                    "decode_tokens_per_s": tps,
                }
            )
        else:
            sys.stdout.write("\n")
            rate = f", {tps:.1f} tokens/s" if tps else ""
            info(
                f"[{result.usage.completion_tokens} tokens, {result.finish_reason}; first token in "
                f"{(first or 0) * 1000:.0f} ms{rate}; {result.cost.energy_j:.3g} J, ${result.cost.usd:.3g}]"
            )
    finally:
        engine.close()
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from joules.errors import InputError
    from joules.runtime.generation import GenerationRequest

    engine = _engine(args)
    try:
        params = _params(args, engine)
        opening = [{"role": "system", "content": args.system}] if args.system else []
        history: list[dict[str, str]] = list(opening)
        info(f"chatting with {engine.name}:{engine.version} (/exit or Ctrl-D to leave, /reset to start over)")
        while True:
            try:
                line = input("> ")
            except EOFError:
                sys.stdout.write("\n")
                return 0
            text = line.strip()
            if text in ("/exit", "/quit"):
                return 0
            if text == "/reset":
                history = list(opening)
                info("(conversation cleared)")
                continue
            if not text:
                continue
            history.append({"role": "user", "content": text})
            while True:
                try:
                    request = GenerationRequest(messages=history, params=params)
                    stream = engine.stream(request)
                    break
                except InputError:
                    # Over the context: forget the oldest exchange, keep the system message.
                    first = len(opening)
                    if len(history) - first <= 1:
                        raise
                    del history[first : first + 2]
                    info("(the oldest turn was dropped to fit the context)")
            reply = []
            try:
                for d in stream:
                    if d.text:
                        reply.append(d.text)
                        sys.stdout.write(d.text)
                        sys.stdout.flush()
            except KeyboardInterrupt:
                stream.close()  # aborts the reply; the conversation goes on
                info("\n(interrupted)")
            sys.stdout.write("\n")
            history.append({"role": "assistant", "content": "".join(reply)})
    finally:
        engine.close()

"""Generative models in the online server: the served engine, request parameters, SSE, the OIP generate routes.

A text-generation bundle is served by one ``joules.runtime.generation.Engine``
(opened through ``joules.serve.engines.open_generation_engine``, the seam
every mode shares) instead of a Predictor and a DynamicBatcher: the engine
batches at the level of decode steps, so requests are handed to it one by one
and it streams their tokens back.

This module holds what the OpenAI routes (``openai_api.py``) and the Open
Inference Protocol's generate extension (``/v2/models/{m}/generate`` and
``/generate_stream``, Triton's names: ``text_input`` and ``parameters`` in,
``text_output`` out) share: turning parameters into ``SamplingParams``,
submitting a request off the event loop's hot path, Server-Sent Events, and
counting each completion in /metrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from joules.errors import EngineUnavailableError, InputError, OutputError, ParameterError
from joules.meter import Cost
from joules.serve.online.config import ServeConfig
from joules.serve.online.edge import read_body
from joules.serve.online.metrics import ModelState, ServerMetrics

if TYPE_CHECKING:
    from joules.runtime.generation import (
        Engine,
        EngineStats,
        GenerationDelta,
        GenerationRequest,
        GenerationStream,
        SamplingParams,
    )

log = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class OnlineServer(Protocol):
    """What the generation routes need of the server (``app.OnlineServer``): its configuration, and the one
    path every generation request takes (find the model, handle it, map errors, count the answer)."""

    config: ServeConfig

    async def generate(
        self,
        request: Request,
        name: str,
        version: str | None,
        handle: Callable[[ServedGenerator], Awaitable[Response]],
        on_error: Callable[[BaseException], Response],
    ) -> Response: ...

    def error_response(self, error: BaseException) -> Response: ...


class ServedGenerator:
    """One loaded text-generation model version: its engine, observed by the server's metrics."""

    kind = "text-generation"

    def __init__(self, name: str, version: int, engine: Engine, metrics: ServerMetrics) -> None:
        self.name = name
        self.version = version
        self.engine = engine
        self.loaded_at = time.time()
        self.metrics = metrics
        engine.add_observer(metrics.llm_observer(name, str(version)))

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def healthy(self) -> bool:
        return self.engine.healthy

    def check_healthy(self) -> None:
        reason = self.engine.unhealthy_reason
        if reason is not None:
            raise EngineUnavailableError(reason)

    def start(self) -> None:
        """Nothing to start: the engine's loop runs from its construction."""

    async def close(self, drain_s: float = 0.0) -> None:
        """Let requests in flight finish (up to ``drain_s``), then stop the engine and free its cache."""
        end = time.monotonic() + drain_s
        while time.monotonic() < end and self.engine.healthy:
            s = self.engine.stats()
            if not s.running and not s.waiting:
                break
            await asyncio.sleep(0.05)
        await asyncio.to_thread(self.engine.close)

    def state(self) -> ModelState:
        s = self.engine.stats()
        return ModelState(self.name, str(self.version), s.waiting, s.running, None)

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def count(self, cost: Cost | None) -> None:
        """Add a finished completion's cost to the server's cost counters."""
        if cost is not None and not cost.is_zero:
            self.metrics.costs.add(self.name, str(self.version), cost)

    async def submit(self, request: GenerationRequest) -> GenerationStream:
        """Queue ``request`` (tokenized on a worker thread: a long prompt must not hold the event loop)."""
        from joules.runtime.generation import GenerationRequest

        self.check_healthy()
        ids = await asyncio.to_thread(self.engine.encode, request)
        return self.engine.submit(
            GenerationRequest(
                prompt_token_ids=ids,
                params=request.params,
                id=request.id,
                add_generation_prompt=request.add_generation_prompt,
            )
        )


def generator_metadata(m: ServedGenerator) -> dict[str, Any]:
    """OIP model metadata of a generative model: the generate extension's text in, text out."""
    return {
        "name": m.name,
        "versions": [str(m.version)],
        "platform": "joules_generation",
        "task": m.kind,
        "max_model_len": m.engine.config.max_model_len,
        "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1]}],
        "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [1]}],
    }


# -- parameters ---------------------------------------------------------------------------------------


def number(body: Mapping[str, Any], key: str) -> float | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ParameterError(f"{key} must be a number, got {v!r:.80}", param=key)
    return float(v)


def whole(body: Mapping[str, Any], key: str) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ParameterError(f"{key} must be a whole number, got {v!r:.80}", param=key)
    return v


def sampling_params(
    body: Mapping[str, Any],
    engine: Engine,
    *,
    max_tokens: int | None,
    logprobs: bool = False,
    top_logprobs: int = 0,
) -> SamplingParams:
    """``SamplingParams`` from a request's fields (OpenAI's names, with vLLM's extras), the model's defaults
    filling what is not given. A bad value is a ParameterError naming the field (HTTP 400)."""
    from joules.runtime.generation import SamplingParams

    defaults = engine.spec.defaults or {}

    def pick(key: str, value: float | None, fallback: float) -> float:
        return value if value is not None else float(defaults.get(key, fallback))

    stop = body.get("stop")
    if stop is None:
        stop = ()
    elif isinstance(stop, str):
        stop = (stop,)
    elif not isinstance(stop, list):
        raise ParameterError(f"stop must be a string or a list of strings, got {stop!r:.80}", param="stop")
    stop_ids = body.get("stop_token_ids") or ()
    if not isinstance(stop_ids, (list, tuple)):
        raise ParameterError("stop_token_ids must be a list of token ids", param="stop_token_ids")
    top_k = whole(body, "top_k")
    fields: dict[str, Any] = {
        "max_tokens": max_tokens,
        "temperature": pick("temperature", number(body, "temperature"), 1.0),
        "top_p": pick("top_p", number(body, "top_p"), 1.0),
        "top_k": top_k if top_k is not None else int(defaults.get("top_k", 0) or 0),
        "repetition_penalty": pick("repetition_penalty", number(body, "repetition_penalty"), 1.0),
        "frequency_penalty": number(body, "frequency_penalty") or 0.0,
        "presence_penalty": number(body, "presence_penalty") or 0.0,
        "seed": whole(body, "seed"),
        "stop": tuple(stop),
        "stop_token_ids": tuple(stop_ids),
        "ignore_eos": bool(body.get("ignore_eos", False)),
        "min_tokens": whole(body, "min_tokens") or 0,
        "logprobs": logprobs,
        "top_logprobs": top_logprobs,
    }
    if fields["top_k"] < 0:  # vLLM's "-1: all tokens"
        fields["top_k"] = 0
    try:
        return SamplingParams(**fields)
    except InputError as e:
        raise ParameterError(str(e), param=_param_of(str(e), fields)) from None


def _param_of(message: str, fields: Mapping[str, Any]) -> str | None:
    """The field a SamplingParams message is about (its messages start with the field's name)."""
    head = message.split(" ", 1)[0]
    return head if head in fields else None


def max_tokens_of(body: Mapping[str, Any], default: int | None) -> int | None:
    """``max_completion_tokens`` (OpenAI's newer name) or ``max_tokens``; must be >= 1 when given."""
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    v = whole(body, key)
    if v is None:
        return default
    if v < 1:
        raise ParameterError(f"{key} must be at least 1, got {v}", param=key)
    return v


# -- answers ------------------------------------------------------------------------------------------


def dumps(obj: Any) -> bytes:
    """Strict JSON: a non-finite number is an error here, never a NaN literal on the wire."""
    return json.dumps(obj, allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode()


def json_response(obj: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(dumps(obj), status_code=status, headers=dict(headers or {}), media_type="application/json")


def sse_event(obj: Any) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def sse_response(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)


def cost_dict(cost: Cost | None) -> dict[str, Any]:
    c = cost or Cost()
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in c.to_dict().items()}


def check_finished(delta: GenerationDelta) -> None:
    """A completion that ended in error (non-finite logits) is an OutputError (422), never text."""
    if delta.finish_reason == "error":
        raise OutputError(delta.error or "the model produced unusable output")


async def stream_deltas(
    stream: GenerationStream, served: ServedGenerator, on_last: Callable[[GenerationDelta], None] | None = None
) -> AsyncIterator[GenerationDelta]:
    """The deltas of ``stream``; the request is aborted if the consumer stops early (client gone).

    Every completion's cost reaches the server's counters, an aborted one's too (the tokens it was given
    before its client left were computed): the stream hands its last delta to ``served.count`` either way.
    """
    stream.on_last = lambda d: served.count(d.cost)
    try:
        async for d in stream:
            if d.finished and on_last is not None:
                on_last(d)
            yield d
    finally:
        await stream.aclose()


# -- the Open Inference Protocol's generate extension -------------------------------------------------


def _oip_request(body: Any, served: ServedGenerator) -> GenerationRequest:
    from joules.runtime.generation import GenerationRequest

    if not isinstance(body, dict):
        raise InputError('the body must be a JSON object: {"text_input": "...", "parameters": {...}}')
    text = body.get("text_input")
    if not isinstance(text, str):
        raise ParameterError("text_input must be a string (the prompt to complete)", param="text_input")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise ParameterError("parameters must be an object", param="parameters")
    logprobs = bool(params.get("logprobs", False))
    sp = sampling_params(
        params,
        served.engine,
        max_tokens=max_tokens_of(params, None),
        logprobs=logprobs,
        top_logprobs=(whole(params, "top_logprobs") or 0) if logprobs else 0,
    )
    return GenerationRequest(prompt=text, params=sp)


async def read_json(request: Request, server: OnlineServer) -> Any:
    body = await read_body(request, server.config.max_body_bytes)
    try:
        return json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"the body is not valid JSON: {e}") from None


async def oip_generate(server: OnlineServer, request: Request, *, stream: bool) -> Response:
    """POST /v2/models/{m}/generate (one JSON answer) or /generate_stream (SSE, one event per delta)."""
    from joules.serve.online.edge import unless_disconnected

    async def handle(served: ServedGenerator) -> Response:
        req = _oip_request(await read_json(request, server), served)
        gen = await served.submit(req)
        head = {"model_name": served.name, "model_version": str(served.version), "id": req.id}
        if stream:

            async def events() -> AsyncIterator[bytes]:
                async for d in stream_deltas(gen, served):
                    if d.finish_reason == "error":
                        yield sse_event({**head, "error": d.error})
                        return
                    if not d.text and not d.finished:
                        continue  # a token held back (part of a character or of a stop string)
                    event: dict[str, Any] = {**head, "text_output": d.text}
                    if d.finished:
                        event["finish_reason"] = d.finish_reason
                        event["usage"] = d.usage.to_dict() if d.usage else None
                        event["joules_cost"] = cost_dict(d.cost)
                    yield sse_event(event)

            return sse_response(events())
        deltas = await unless_disconnected(request, gather(gen, served))
        last = deltas[-1]
        cost = last.cost or Cost()
        out = {
            **head,
            "text_output": "".join(d.text for d in deltas),
            "finish_reason": last.finish_reason,
            "usage": last.usage.to_dict() if last.usage else None,
            "joules_cost": cost_dict(cost),
        }
        return json_response(out, headers=cost.headers())

    return await server.generate(
        request, request.path_params["model"], request.path_params.get("version"), handle, server.error_response
    )


async def gather(gen: GenerationStream, served: ServedGenerator) -> list[GenerationDelta]:
    """Every delta of a completion (cancelled, it aborts the request); an errored completion raises."""
    deltas = [d async for d in stream_deltas(gen, served)]
    if deltas[-1].finish_reason == "error":
        served.check_healthy()  # a rank that died mid-request: 503 (the engine is down), not 422
    check_finished(deltas[-1])
    return deltas

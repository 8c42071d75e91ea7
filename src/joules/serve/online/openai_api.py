"""OpenAI-compatible routes: ``POST /v1/chat/completions`` and ``POST /v1/completions``.

The request and answer shapes are OpenAI's (platform.openai.com/docs/api-reference/chat and
/completions), so the official ``openai`` client works against a joules server, streaming and not:

- ``"stream": true`` answers Server-Sent Events, one ``chat.completion.chunk`` (or ``text_completion``)
  per engine delta, the finish reason in the last choice chunk, then ``data: [DONE]``;
  ``stream_options.include_usage`` adds a last chunk with no choices and the ``usage``;
- errors are ``{"error": {"message", "type", "param", "code"}}`` with the status from the one table in
  ``errors.py`` (400 a bad parameter, 404 an unknown model, 503 + Retry-After a full queue);
- fields joules does not support that would change the output (``n`` > 1, ``tools``,
  ``response_format`` other than text, ``logit_bias``, ``suffix``, ``echo``, ``best_of`` > 1, audio)
  are a 400 naming the field, never silently ignored; fields that change nothing joules computes
  (``user``, ``metadata``, ``store``, ...) are accepted.

Each answer carries its cost: ``X-Joules-*`` headers and a ``joules_cost`` object (a stream has it in
its last chunks, headers being sent before the first token).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from joules.errors import InputError, ModelNotFoundError, ParameterError, QueueFullError
from joules.meter import Cost
from joules.serve.online.errors import error_response
from joules.serve.online.generation import (
    SSE_DONE,
    OnlineServer,
    ServedGenerator,
    cost_dict,
    gather,
    json_response,
    max_tokens_of,
    read_json,
    sampling_params,
    sse_event,
    sse_response,
    stream_deltas,
    whole,
)

if TYPE_CHECKING:
    from joules.runtime.generation import GenerationDelta, GenerationRequest, TokenLogprob

MAX_COMPLETION_LOGPROBS = 5  # OpenAI's bound for /v1/completions' logprobs
LOWEST_LOGPROB = -9999.0  # what a logprob of -inf is sent as (strict JSON; OpenAI sends -9999.0 too)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_error(error: BaseException) -> Response:
    """``error`` in OpenAI's shape, with the status (and Retry-After) of the one table in errors.py."""
    base = error_response(error)
    message = json.loads(bytes(base.body))["error"]
    status = base.status_code
    code: str | None = None
    if isinstance(error, ModelNotFoundError):
        code = "model_not_found"
    elif isinstance(error, QueueFullError):
        code = "overloaded"
    elif status == 400:
        code = "invalid_value"
    body = {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error"),
            "param": getattr(error, "param", None),
            "code": code,
        }
    }
    keep = {k: v for k, v in base.headers.items() if k.lower() in ("retry-after", "www-authenticate")}
    return json_response(body, status=status, headers=keep)


def _refuse_unsupported(body: Mapping[str, Any], *, chat: bool) -> None:
    """A 400 for each field that would change the output in a way joules does not implement."""
    n = whole(body, "n")
    if n is not None and n != 1:
        raise ParameterError(f"n must be 1 (joules returns one choice per request), got {n}", param="n")
    for key in ("tools", "functions"):
        if body.get(key):
            raise ParameterError(f"{key} (function calling) is not supported by joules", param=key)
    for key in ("tool_choice", "function_call"):
        if body.get(key) not in (None, "none"):
            raise ParameterError(f"{key} is not supported by joules (no function calling)", param=key)
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise ParameterError(
            "response_format is not supported by joules (no JSON mode or schemas); leave it out or use "
            '{"type": "text"}',
            param="response_format",
        )
    if body.get("logit_bias"):
        raise ParameterError("logit_bias is not supported by joules", param="logit_bias")
    if body.get("audio") is not None or body.get("modalities") not in (None, ["text"]):
        raise ParameterError("joules answers text only (no audio)", param="modalities")
    if not chat:
        if body.get("suffix"):
            raise ParameterError("suffix (insertion) is not supported by joules", param="suffix")
        if body.get("echo"):
            raise ParameterError("echo is not supported by joules", param="echo")
        best_of = whole(body, "best_of")
        if best_of is not None and best_of != 1:
            raise ParameterError(f"best_of must be 1, got {best_of}", param="best_of")


def _stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise ParameterError(f"stream must be true or false, got {stream!r:.40}", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ParameterError("stream_options must be an object", param="stream_options")
    return stream, bool(options.get("include_usage", False))


def chat_request(body: Mapping[str, Any], served: ServedGenerator) -> GenerationRequest:
    from joules.runtime.generation import GenerationRequest

    _refuse_unsupported(body, chat=True)
    if "messages" not in body:
        raise ParameterError("messages is required: a list of {role, content} objects", param="messages")
    logprobs = body.get("logprobs") or False
    if not isinstance(logprobs, bool):
        raise ParameterError(f"logprobs must be true or false, got {logprobs!r:.40}", param="logprobs")
    top = whole(body, "top_logprobs") or 0
    if top and not logprobs:
        raise ParameterError("top_logprobs needs logprobs: true", param="top_logprobs")
    params = sampling_params(
        body, served.engine, max_tokens=max_tokens_of(body, None), logprobs=logprobs, top_logprobs=top
    )
    try:
        return GenerationRequest(messages=body["messages"], params=params, id="chatcmpl-" + uuid.uuid4().hex)
    except InputError as e:
        raise ParameterError(str(e), param="messages") from None


def completion_request(body: Mapping[str, Any], served: ServedGenerator) -> GenerationRequest:
    from joules.runtime.generation import GenerationRequest

    _refuse_unsupported(body, chat=False)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # one prompt in a list
    top = whole(body, "logprobs")
    if top is not None and not 0 <= top <= MAX_COMPLETION_LOGPROBS:
        raise ParameterError(f"logprobs must be in [0, {MAX_COMPLETION_LOGPROBS}], got {top}", param="logprobs")
    # OpenAI's (and vLLM's) default for /v1/completions is 16 tokens.
    params = sampling_params(
        body, served.engine, max_tokens=max_tokens_of(body, 16), logprobs=top is not None, top_logprobs=top or 0
    )
    rid = "cmpl-" + uuid.uuid4().hex
    if isinstance(prompt, str):
        return GenerationRequest(prompt=prompt, params=params, id=rid)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return GenerationRequest(prompt_token_ids=prompt, params=params, id=rid)
    if isinstance(prompt, list) and len(prompt) > 1:
        raise ParameterError("send one prompt per request (joules returns one choice per request)", param="prompt")
    raise ParameterError("prompt must be a string or a list of token ids", param="prompt")


# -- answers ------------------------------------------------------------------------------------------


def _lp(x: float) -> float:
    return x if math.isfinite(x) else LOWEST_LOGPROB


class _Tokens:
    """Token ids as the text each stands for (logprobs name tokens by their text, as OpenAI does)."""

    def __init__(self, served: ServedGenerator) -> None:
        self.tokenizer = served.engine.tokenizer

    def text(self, token_id: int) -> str:
        return str(self.tokenizer.decode([token_id], skip_special_tokens=False))

    def chat_entry(self, lp: TokenLogprob) -> dict[str, Any]:
        def one(tid: int, value: float) -> dict[str, Any]:
            t = self.text(tid)
            return {"token": t, "logprob": _lp(value), "bytes": list(t.encode("utf-8"))}

        return {**one(lp.token_id, lp.logprob), "top_logprobs": [one(t, v) for t, v in lp.top]}

    def chat_logprobs(self, lps: tuple[TokenLogprob, ...] | None) -> dict[str, Any] | None:
        return None if lps is None else {"content": [self.chat_entry(x) for x in lps]}

    def completion_logprobs(self, lps: tuple[TokenLogprob, ...] | None, offset: int) -> dict[str, Any] | None:
        if lps is None:
            return None
        tokens, values, tops, offsets = [], [], [], []
        for x in lps:
            t = self.text(x.token_id)
            tokens.append(t)
            values.append(_lp(x.logprob))
            tops.append({self.text(i): _lp(v) for i, v in x.top})
            offsets.append(offset)
            offset += len(t)
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def _usage(d: GenerationDelta) -> dict[str, Any] | None:
    if d.usage is None:
        return None
    u = d.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }


def _finish(reason: str | None) -> str | None:
    return None if reason is None else ("length" if reason == "length" else "stop")


async def _answer(
    server: OnlineServer, request: Request, served: ServedGenerator, body: Mapping[str, Any], *, chat: bool
) -> Response:
    from joules.serve.online.edge import unless_disconnected

    req = chat_request(body, served) if chat else completion_request(body, served)
    stream, include_usage = _stream_flags(body)
    gen = await served.submit(req)
    toks = _Tokens(served)
    head = {
        "id": req.id,
        "object": ("chat.completion.chunk" if stream else "chat.completion") if chat else "text_completion",
        "created": int(time.time()),
        "model": served.name,
        "system_fingerprint": f"joules-{served.ref}",
    }
    if stream:
        return sse_response(_events(gen, served, head, toks, chat=chat, include_usage=include_usage))
    deltas = await unless_disconnected(request, gather(gen, served))
    last = deltas[-1]
    text = "".join(d.text for d in deltas)
    lps = tuple(x for d in deltas for x in (d.logprobs or ())) if req.params.logprobs else None
    choice: dict[str, Any] = {"index": 0, "finish_reason": _finish(last.finish_reason)}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
        choice["logprobs"] = toks.chat_logprobs(lps)
    else:
        choice["text"] = text
        choice["logprobs"] = toks.completion_logprobs(lps, 0)
    cost = last.cost or Cost()
    out = {**head, "choices": [choice], "usage": _usage(last), "joules_cost": cost_dict(cost)}
    return json_response(out, headers=cost.headers())


async def _events(
    gen: Any, served: ServedGenerator, head: dict[str, Any], toks: _Tokens, *, chat: bool, include_usage: bool
) -> AsyncIterator[bytes]:
    extra = {"usage": None} if include_usage else {}

    def chunk(text: str | None, lps: Any, finish: str | None, *, role: bool = False) -> bytes:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice["delta"] = delta
            choice["logprobs"] = toks.chat_logprobs(lps)
        else:
            choice["text"] = text or ""
            choice["logprobs"] = toks.completion_logprobs(lps, offset)
        return sse_event({**head, "choices": [choice], **extra})

    offset = 0
    if chat:
        yield chunk("", None, None, role=True)
    async for d in stream_deltas(gen, served):
        if d.finish_reason == "error":
            yield sse_event({"error": {"message": d.error, "type": "server_error", "param": None, "code": None}})
            yield SSE_DONE
            return
        if d.text or d.logprobs:
            yield chunk(d.text, d.logprobs, None)
            offset += len(d.text)
        if d.finished:
            cost = cost_dict(d.cost)
            finish = chunk(None if chat else "", None, _finish(d.finish_reason))
            event = json.loads(finish[len(b"data: ") :])
            event["joules_cost"] = cost
            yield sse_event(event)
            if include_usage:
                yield sse_event({**head, "choices": [], "usage": _usage(d), "joules_cost": cost})
    yield SSE_DONE


# -- routes -------------------------------------------------------------------------------------------


async def _route(server: OnlineServer, request: Request, *, chat: bool) -> Response:
    try:
        body = await read_json(request, server)
        if not isinstance(body, dict):
            raise InputError("the body must be a JSON object")
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise ParameterError("model is required: the name of a served model (GET /v1/models)", param="model")
    except Exception as e:
        return openai_error(e)

    async def handle(served: ServedGenerator) -> Response:
        return await _answer(server, request, served, body, chat=chat)

    return await server.generate(request, name, None, handle, openai_error)


async def chat_completions(server: OnlineServer, request: Request) -> Response:
    return await _route(server, request, chat=True)


async def completions(server: OnlineServer, request: Request) -> Response:
    return await _route(server, request, chat=False)

"""A prompt or a chat as ``joules generate`` sends it, tokenized and checked against the context.

``joules batch`` and ``joules stream`` over a generation model turn each row or message into a request
here, before the engine sees it, so that a prompt too long for the context becomes that row's error (an
error row, a dead letter) instead of failing the whole batch in ``Engine.generate_many``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from joules.errors import InputError
from joules.runtime.generation.request import GenerationRequest
from joules.runtime.generation.sampling import SamplingParams

if TYPE_CHECKING:
    from joules.runtime.generation.engine import Engine


def encoded_request(
    engine: Engine,
    *,
    prompt: str | None,
    messages: Sequence[Mapping[str, Any]] | None,
    params: SamplingParams,
    raw: bool = False,
    request_id: str | None = None,
) -> GenerationRequest:
    """The request of one ``prompt`` (text) or ``messages`` (a chat), its prompt as token ids.

    A prompt goes as one user message through the model's chat template, as ``joules generate`` sends it;
    ``raw`` (or a model with no template): as plain text to complete. InputError if the prompt's tokens
    and ``params.max_tokens`` do not fit the engine's context. The caller checks the prompt's type first.
    """
    max_tokens = params.max_tokens if params.max_tokens is not None else 1  # None: at least one token
    if messages is None and not raw and engine.chat_template is not None:
        messages = [{"role": "user", "content": prompt}]  # as `joules generate` sends it
    if messages is not None:
        request = GenerationRequest(messages=messages, params=params)
    else:
        request = GenerationRequest(prompt=prompt, params=params)
    ids = engine.encode(request)
    limit = engine.config.max_model_len
    if len(ids) + max_tokens > limit:
        raise InputError(
            f"the prompt has {len(ids)} tokens + {max_tokens} to generate; the context holds {limit}: "
            "shorten the prompt or lower --max-tokens"
        )
    if request_id is None:
        return GenerationRequest(prompt_token_ids=ids, params=params)
    return GenerationRequest(prompt_token_ids=ids, params=params, id=request_id)

"""encoded_request: a prompt or chat as `joules generate` sends it, as token ids, checked against the context."""

from __future__ import annotations

import pytest

from joules.errors import InputError
from joules.runtime.generation import Engine, GenerationRequest, SamplingParams, encoded_request


def test_a_prompt_goes_as_a_user_message_unless_raw(engine: Engine) -> None:
    params = SamplingParams(max_tokens=4)
    req = encoded_request(engine, prompt="Hello there", messages=None, params=params)
    chat = [{"role": "user", "content": "Hello there"}]
    plain = engine.encode(GenerationRequest(prompt="Hello there", params=params))
    if engine.chat_template is not None:
        assert list(req.prompt_token_ids or []) == engine.encode(GenerationRequest(messages=chat, params=params))
    else:
        assert list(req.prompt_token_ids or []) == plain
    raw = encoded_request(engine, prompt="Hello there", messages=None, params=params, raw=True, request_id="row-3")
    assert list(raw.prompt_token_ids or []) == plain
    assert raw.id == "row-3" and raw.params is params


def test_a_prompt_over_the_context_is_refused_with_its_sizes(engine: Engine) -> None:
    limit = engine.config.max_model_len
    n = len(engine.encode(GenerationRequest(prompt="Hello there")))
    params = SamplingParams(max_tokens=limit - n + 1)
    with pytest.raises(InputError) as e:
        encoded_request(engine, prompt="Hello there", messages=None, params=params, raw=True)
    assert str(e.value) == (
        f"the prompt has {n} tokens + {limit - n + 1} to generate; the context holds {limit}: "
        "shorten the prompt or lower --max-tokens"
    )
    ok = encoded_request(
        engine, prompt="Hello there", messages=None, params=SamplingParams(max_tokens=limit - n), raw=True
    )
    assert len(ok.prompt_token_ids or []) == n

"""Chat templates: a conversation (messages) to the prompt text a chat model was trained on.

A bundle's template is Jinja source shipped with the model (Hugging Face's
``chat_template``). It is data, never code: it is rendered in jinja2's
``ImmutableSandboxedEnvironment``, which refuses attribute access to Python
internals and any mutation of the values it is given, with the few helpers
Hugging Face templates expect (``raise_exception``, ``tojson``,
``strftime_now``), as ``transformers``' ``chat_template_utils`` provides them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from joules.errors import BundleError, InputError

ROLES = ("system", "user", "assistant", "tool", "developer")


def _raise(message: str) -> None:
    raise InputError(f"the model's chat template refused the conversation: {message}")


@lru_cache(maxsize=16)
def _compile(source: str) -> Any:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # transformers' settings for chat templates (chat_template_utils.py): trimmed blocks, loop controls.
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, undefined=jinja2.Undefined, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(
        x, indent=indent, ensure_ascii=ensure_ascii
    )
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateError as e:
        raise BundleError(f"the chat template is not valid Jinja: {e}") from e


def check_messages(messages: Any) -> list[dict[str, str]]:
    """Messages as a list of {role, content} with string content; InputError otherwise."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        raise InputError("messages must be a non-empty list of {role, content} objects")
    out: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise InputError(f"messages[{i}] must be an object with role and content, got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise InputError(f"messages[{i}].role must be one of {list(ROLES)}, got {role!r}")
        if isinstance(content, list):
            # OpenAI's content parts: joules' models read text parts only.
            texts = []
            for part in content:
                if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise InputError(f"messages[{i}].content: only text parts are supported, got {part!r:.80}")
                texts.append(part["text"])
            content = "".join(texts)
        if not isinstance(content, str):
            raise InputError(f"messages[{i}].content must be a string, got {type(content).__name__}")
        out.append({"role": str(role), "content": content})
    return out


def render_chat(
    template: str,
    messages: Any,
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """The prompt text for ``messages`` under ``template`` (sandboxed)."""
    import jinja2

    checked = check_messages(messages)
    try:
        return str(
            _compile(template).render(
                messages=checked,
                add_generation_prompt=add_generation_prompt,
                bos_token=bos_token,
                eos_token=eos_token,
            )
        )
    except jinja2.exceptions.SecurityError as e:
        raise BundleError(f"the chat template tried something the sandbox forbids: {e}") from e
    except jinja2.TemplateError as e:
        raise InputError(f"the chat template could not render these messages: {e}") from e

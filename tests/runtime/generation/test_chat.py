"""Chat templates are data: rendered in a sandbox, messages checked."""

from __future__ import annotations

import pytest

from joules.errors import BundleError, InputError
from joules.runtime.generation.chat import render_chat
from tests.llm import CHAT_TEMPLATE


def test_renders_the_smollm2_template() -> None:
    text = render_chat(CHAT_TEMPLATE, [{"role": "user", "content": "Hi"}])
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert text.startswith("<|im_start|>system\n")  # the template's default system message
    own = render_chat(CHAT_TEMPLATE, [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}])
    assert own.startswith("<|im_start|>system\nS<|im_end|>")
    parts = render_chat(
        CHAT_TEMPLATE, [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    )
    assert "user\nab<|im_end|>" in parts


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.append(1) }}",  # the values given are immutable
        "{% for c in ().__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    ],
)
def test_a_template_cannot_reach_python(template: str) -> None:
    with pytest.raises((BundleError, InputError)):
        render_chat(template, [{"role": "user", "content": "x"}])


def test_template_errors_and_bad_messages() -> None:
    with pytest.raises(InputError, match="refused"):
        render_chat("{{ raise_exception('only user turns') }}", [{"role": "user", "content": "x"}])
    with pytest.raises(BundleError, match="not valid Jinja"):
        render_chat("{% for %}", [{"role": "user", "content": "x"}])
    for bad in ([], "hi", [{"role": "wizard", "content": "x"}], [{"role": "user", "content": 3}], [["user", "x"]]):
        with pytest.raises(InputError):
            render_chat(CHAT_TEMPLATE, bad)
